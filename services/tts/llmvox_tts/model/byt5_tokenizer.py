"""ByT5 byte tokenizer with the two tokens LLMVoX adds (docs/checkpoints.md, text embedding).

Ids: `<pad>`=0, `</s>`=1, `<unk>`=2, byte b → b+3, `<extra_id_N>`=259+N (N < 125),
`[PAD]`=384, `EOS`=385. Every call appends `</s>`. Special-token strings are matched anywhere in
the text, even inside words ("VIDEOS" → V, I, D, EOS, </s>), because that is what the tokenizer
the model was trained with does; we reproduce it rather than "fix" it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property

from ..constants import BYT5_EOS_ID, TEXT_EOS_ID, TEXT_PAD_ID

_BYTE_OFFSET = 3
_NUM_EXTRA_IDS = 125


class ByT5Tokenizer:
    """Text → ids without any vocabulary file; `len()` is 386 like the upstream tokenizer."""

    def __init__(self, extra_ids: int = _NUM_EXTRA_IDS) -> None:
        self.extra_ids = extra_ids
        specials = {"<pad>": 0, "</s>": BYT5_EOS_ID, "<unk>": 2}
        # The extra ids follow the bytes in order: <extra_id_0> is 259.
        for n in range(extra_ids):
            specials[f"<extra_id_{n}>"] = 256 + _BYTE_OFFSET + n
        specials["[PAD]"] = TEXT_PAD_ID
        specials["EOS"] = TEXT_EOS_ID
        self.special_ids: dict[str, int] = specials

    @cached_property
    def _special_pattern(self) -> re.Pattern[str]:
        # Longest alternative first, so "<extra_id_12>" wins over any shorter prefix.
        names = sorted(self.special_ids, key=len, reverse=True)
        return re.compile("|".join(re.escape(n) for n in names))

    def __len__(self) -> int:
        return 256 + _BYTE_OFFSET + self.extra_ids + 2

    @property
    def pad_token_id(self) -> int:
        # Upstream adds "[PAD]" then "EOS", each as the pad token, so the last one wins.
        return TEXT_EOS_ID

    def encode(self, text: str, *, append_eos: bool = True) -> list[int]:
        ids: list[int] = []
        pos = 0
        for match in self._special_pattern.finditer(text):
            ids.extend(b + _BYTE_OFFSET for b in text[pos : match.start()].encode("utf-8"))
            ids.append(self.special_ids[match.group()])
            pos = match.end()
        ids.extend(b + _BYTE_OFFSET for b in text[pos:].encode("utf-8"))
        if append_eos:
            ids.append(BYT5_EOS_ID)
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_words(self, text: str) -> list[int]:
        """Training-side text encoding: split on single spaces, `</s>` after each word, then EOS."""
        ids: list[int] = []
        for word_ids in self.encode_batch(text.split(" ")):
            ids.extend(word_ids)
        ids.append(TEXT_EOS_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Best-effort inverse, for logs and debugging (specials are spelled out)."""
        names = {v: k for k, v in self.special_ids.items()}
        out = bytearray()
        text = []
        for i in ids:
            if _BYTE_OFFSET <= i < 256 + _BYTE_OFFSET:
                out.append(i - _BYTE_OFFSET)
                continue
            text.append(out.decode("utf-8", errors="replace"))
            out.clear()
            text.append(names.get(i, f"<{i}>"))
        text.append(out.decode("utf-8", errors="replace"))
        return "".join(text)


_DEFAULT = ByT5Tokenizer()


def encode(text: str) -> list[int]:
    """Ids of one tokenizer call on `text` (with the trailing `</s>`)."""
    return _DEFAULT.encode(text)
