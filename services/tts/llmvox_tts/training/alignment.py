"""Training alignment of text and speech, as the upstream data pipeline builds it
(docs/training-data.md, "How a training batch is built").

Text runs one id per decoder step ahead of the speech; nothing else aligns them. The model learns
to lag behind the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..constants import EOA_TOKEN_ID, LOSS_IGNORE_INDEX, TEXT_PAD_ID
from ..model.byt5_tokenizer import ByT5Tokenizer
from ..model.inputs import decoder_input


@dataclass(frozen=True)
class AlignedItem:
    text_tokens: torch.Tensor  # (Lt,) words + </s> each, then EOS
    speech_out_tokens: torch.Tensor  # (S,) codes without EOA, then EOA
    speech_embeddings: torch.Tensor  # (S, C) zero row, then codebook rows of the codes


@dataclass(frozen=True)
class TrainingBatch:
    text_tokens: torch.Tensor  # (B, Lt_max) padded with [PAD]
    speech_embeddings: torch.Tensor  # (B, S_max, C) padded with the EOA codebook row
    targets: torch.Tensor  # (B, S_max) padded with the loss ignore index


def align_item(
    codes: Sequence[int],
    answer_text: str,
    codebook: torch.Tensor,
    tokenizer: ByT5Tokenizer,
    eoa_token_id: int = EOA_TOKEN_ID,
) -> AlignedItem:
    # EOA is an ordinary code; inside an utterance it would teach the model to stop early.
    kept = [int(c) for c in codes if int(c) != eoa_token_id]
    targets = torch.tensor([*kept, eoa_token_id], dtype=torch.long)
    frames = torch.cat(
        [codebook.new_zeros(1, codebook.shape[1]), codebook[torch.tensor(kept, dtype=torch.long)]]
    )
    text = torch.tensor(tokenizer.encode_words(answer_text), dtype=torch.long)
    return AlignedItem(text_tokens=text, speech_out_tokens=targets, speech_embeddings=frames)


def collate(
    items: Sequence[AlignedItem], codebook: torch.Tensor, eoa_token_id: int = EOA_TOKEN_ID
) -> TrainingBatch:
    n = len(items)
    text_len = max(it.text_tokens.shape[0] for it in items)
    speech_len = max(it.speech_out_tokens.shape[0] for it in items)
    text = torch.full((n, text_len), TEXT_PAD_ID, dtype=torch.long)
    targets = torch.full((n, speech_len), LOSS_IGNORE_INDEX, dtype=torch.long)
    # Padding frames are the EOA feature, not zeros: that is what the model was trained on.
    frames = codebook[eoa_token_id].expand(n, speech_len, codebook.shape[1]).clone()
    for i, it in enumerate(items):
        text[i, : it.text_tokens.shape[0]] = it.text_tokens
        targets[i, : it.speech_out_tokens.shape[0]] = it.speech_out_tokens
        frames[i, : it.speech_embeddings.shape[0]] = it.speech_embeddings
    return TrainingBatch(text_tokens=text, speech_embeddings=frames, targets=targets)


def decoder_inputs(batch: TrainingBatch, text_table: torch.Tensor) -> torch.Tensor:
    """(B, S, D + C) input rows: text cut or padded with [PAD] to the speech length S."""
    steps = batch.speech_embeddings.shape[1]
    text = batch.text_tokens[:, :steps]
    if text.shape[1] < steps:
        pad = text.new_full((text.shape[0], steps - text.shape[1]), TEXT_PAD_ID)
        text = torch.cat([text, pad], dim=1)
    return decoder_input(text_table[text], batch.speech_embeddings)
