"""Greedy speech-token decoding of many independent segments at once (docs/model.md).

Each slot is one segment: it starts with an empty cache at position 0 and a zero speech frame,
then each step feeds one text id and the codebook row of the slot's previous token. Slots step
together in one batched decoder call, whatever their lengths.
"""

from __future__ import annotations

import torch

from .gpt import LLMVoXDecoder
from .inputs import InputBuilder


def check_tables_fit(
    decoder: LLMVoXDecoder, text_table: torch.Tensor, codebook: torch.Tensor
) -> None:
    """The decoder reads text ⊕ codebook rows and predicts codebook rows: the sizes must agree
    (the text width is inferred, not published, so it is checked here: docs/checkpoints.md)."""
    width = text_table.shape[1] + codebook.shape[1]
    if width != decoder.config.n_embd:
        raise ValueError(
            f"text width {text_table.shape[1]} + codebook width {codebook.shape[1]} = {width} "
            f"but the decoder's n_embd is {decoder.config.n_embd}: these models do not belong "
            "together"
        )
    if codebook.shape[0] != decoder.config.vocab_size:
        raise ValueError(
            f"codebook has {codebook.shape[0]} codes but the decoder predicts "
            f"{decoder.config.vocab_size}"
        )


class SpeechTokenDecoder:
    def __init__(
        self,
        decoder: LLMVoXDecoder,
        text_table: torch.Tensor,
        codebook: torch.Tensor,
        num_slots: int,
        *,
        initial_capacity: int = 256,
    ) -> None:
        check_tables_fit(decoder, text_table, codebook)
        weight = decoder.transformer.wpe.weight
        self.decoder = decoder
        self.inputs = InputBuilder(
            text_table.to(weight.device, weight.dtype), codebook.to(weight.device, weight.dtype)
        )
        self.cache = decoder.new_cache(num_slots, initial_capacity=initial_capacity)
        self.device = weight.device
        # Previous token of each slot as a row of the input builder's codebook, whose extra
        # last row is the zero frame of a segment's first step.
        self._prev = torch.full(
            (num_slots,), self.inputs.zero_row, dtype=torch.long, device=self.device
        )
        self._all_slots = torch.arange(num_slots, device=self.device)

    @property
    def num_slots(self) -> int:
        return self.cache.num_slots

    def lengths(self, slot: int) -> int:
        return self.cache.lengths[slot]

    def start_segment(self, slot: int) -> None:
        self.cache.reset(slot)
        self._prev[slot] = self.inputs.zero_row

    @torch.inference_mode()
    def step(self, slots: list[int], text_ids: list[int]) -> list[int]:
        """One decoder step for each slot; returns each slot's greedy token."""
        if len(slots) != len(text_ids):
            raise ValueError("one text id per slot")
        contiguous = slots == list(range(len(slots)))
        if contiguous:
            index = self._all_slots[: len(slots)]
        else:
            index = torch.as_tensor(slots, device=self.device)
        ids = torch.as_tensor(text_ids, device=self.device)
        x = self.inputs.rows(ids, self._prev[index])
        logits = self.decoder.decode_step(x, self.cache, slots)
        tokens = logits.argmax(dim=-1)  # first maximal index on ties, like upstream
        self._prev[index] = tokens
        return tokens.tolist()
