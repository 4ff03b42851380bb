"""Decoder input rows: text embedding ⊕ previous speech codebook row, L2-normalised.

docs/model.md, "The input of each step".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decoder_input(text_rows: torch.Tensor, speech_rows: torch.Tensor) -> torch.Tensor:
    """(..., D) and (..., C) -> (..., D + C), each row divided by max(‖row‖₂, 1e-8)."""
    return F.normalize(torch.cat([text_rows, speech_rows], dim=-1), p=2.0, dim=-1, eps=1e-8)


class InputBuilder:
    """Looks up both tables and builds a batch of input rows for one decoder step.

    `prev_tokens` < 0 means "no previous token" (step 0 of a segment): the speech part is zeros.
    """

    def __init__(self, text_table: torch.Tensor, codebook: torch.Tensor) -> None:
        self.text_table = text_table
        # One extra all-zero row at the end serves every step 0 without a branch per row.
        self.codebook = torch.cat([codebook, codebook.new_zeros(1, codebook.shape[1])], dim=0)
        self.zero_row = codebook.shape[0]

    @property
    def width(self) -> int:
        return self.text_table.shape[1] + self.codebook.shape[1]

    def __call__(self, text_ids: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        prev = torch.where(prev_tokens < 0, self.zero_row, prev_tokens)
        return self.rows(text_ids, prev)

    def rows(self, text_ids: torch.Tensor, codebook_rows: torch.Tensor) -> torch.Tensor:
        """Like calling, with speech given as codebook rows (`zero_row` for the zero frame)."""
        return decoder_input(self.text_table[text_ids], self.codebook[codebook_rows])
