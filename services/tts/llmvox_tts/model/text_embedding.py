"""The text side of the decoder input: the charsiu ByT5 embedding table, resized to 386 rows.

Upstream loads a whole T5 model, adds "[PAD]" and then "EOS" to the tokenizer, grows the input
embedding by one row at each addition and overwrites every new row with the mean of the rows
before it (docs/checkpoints.md). Only that table is ever used, so we keep only the table.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..constants import BYT5_VOCAB_SIZE, TEXT_VOCAB_SIZE

# Names under which a T5 checkpoint stores the (tied) input embedding, most canonical first.
T5_EMBEDDING_KEYS = (
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
)


def t5_input_embedding(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The shared input table `(384, D)` of a T5 state dict (any of its tied copies)."""
    for key in T5_EMBEDDING_KEYS:
        if key in state_dict:
            table = state_dict[key]
            break
    else:
        raise KeyError(
            f"no T5 input embedding in the state dict: expected one of {list(T5_EMBEDDING_KEYS)}"
        )
    if table.dim() != 2 or table.shape[0] != BYT5_VOCAB_SIZE:
        raise ValueError(
            f"T5 input embedding has shape {tuple(table.shape)}; a ByT5 model has "
            f"{BYT5_VOCAB_SIZE} rows"
        )
    return table


def resize_with_mean_rows(table: torch.Tensor, rows: int = TEXT_VOCAB_SIZE) -> torch.Tensor:
    """Grow `table` one row at a time up to `rows`, each new row the mean of all rows before it."""
    if table.shape[0] > rows:
        raise ValueError(f"table already has {table.shape[0]} rows, more than {rows}")
    out = table.detach().to(torch.float32)
    while out.shape[0] < rows:
        out = torch.cat([out, out.mean(dim=0, keepdim=True)], dim=0)
    return out.contiguous()


def llmvox_text_table(t5_state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The `(386, D)` table LLMVoX reads text embeddings from."""
    return resize_with_mean_rows(t5_input_embedding(t5_state_dict))
