"""A stand-in for the original per-token decoding loop, used only as the benchmark baseline.

Written from the behaviour docs/model.md and docs/streaming.md describe (no upstream code): one
sequence at a time; each step looks the previous token up through a codes→features call,
concatenates and normalises the input row, appends it to the whole input history and hands that
history to the model, which adds positions to all of it, runs only the last row, and grows its
key/value cache with torch.cat; the token is a softmax then argmax, read back with .item().
It runs on the same weights as our decoder, so the two compute the same tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmvox_tts.constants import TEXT_PAD_ID
from llmvox_tts.model.gpt import LLMVoXDecoder


class UpstreamStyleLoop:
    def __init__(
        self, model: LLMVoXDecoder, text_table: torch.Tensor, codebook: torch.Tensor
    ) -> None:
        self.model = model
        self.text_table = text_table
        self.codebook = codebook

    def _codes_to_features(self, codes: torch.Tensor) -> torch.Tensor:
        # (1, 1, L) codes -> (1, C, L) features, as the codec's quantizer decode returns them
        return self.codebook[codes[0]].transpose(1, 2)

    def _forward(self, history: torch.Tensor, cache: list | None) -> tuple[torch.Tensor, list]:
        m = self.model
        t = history.shape[1]
        h = history + m.transformer.wpe(torch.arange(t, device=history.device))
        h = h[:, -1:, :]
        new_cache = []
        n_embd, n_head = m.config.n_embd, m.config.n_head
        for i, block in enumerate(m.transformer.h):
            a = block.ln_1(h)
            q, k, v = block.attn.c_attn(a).split(n_embd, dim=2)
            if cache is not None:
                k = torch.cat([cache[i][0], k], dim=1)
                v = torch.cat([cache[i][1], v], dim=1)
            new_cache.append((k, v))
            tk = k.shape[1]
            qh = q.view(1, 1, n_head, n_embd // n_head).transpose(1, 2)
            kh = k.view(1, tk, n_head, n_embd // n_head).transpose(1, 2)
            vh = v.view(1, tk, n_head, n_embd // n_head).transpose(1, 2)
            y = F.scaled_dot_product_attention(qh, kh, vh)
            y = y.transpose(1, 2).contiguous().view(1, 1, n_embd)
            h = h + block.attn.c_proj(y)
            h = h + block.mlp(block.ln_2(h))
        return m.lm_head(m.transformer.ln_f(h)), new_cache

    @torch.inference_mode()
    def generate(self, text_ids: list[int], steps: int) -> list[int]:
        device = self.text_table.device
        history = None
        cache = None
        prev: int | None = None
        tokens = []
        for n in range(steps):
            text_id = text_ids[n] if n < len(text_ids) else TEXT_PAD_ID
            text = self.text_table[torch.tensor([[text_id]], device=device)]  # (1, 1, D)
            if prev is None:
                speech = torch.zeros(1, 1, self.codebook.shape[1], device=device)
            else:
                feats = self._codes_to_features(torch.tensor([[[prev]]], device=device))
                speech = feats.transpose(1, 2)  # (1, 1, C)
            row = F.normalize(torch.cat([text, speech], dim=-1), p=2.0, dim=-1)
            history = row if history is None else torch.cat([history, row], dim=1)
            logits, cache = self._forward(history, cache)
            probs = F.softmax(logits[:, -1, :], dim=-1)
            prev = int(torch.argmax(probs, dim=-1).item())
            tokens.append(prev)
        return tokens
