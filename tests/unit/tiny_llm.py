"""The tiny models the generation-engine unit tests run on (test_llm_engine.py,
test_llm_batching.py): a word-level tokenizer over `w2..w{vocab-1}` (id `i` is the word `wi`,
0 is `[UNK]`, 1 is `<eos>`) and a Llama with RANDOM WEIGHTS (seeded, so each build is the same),
built in memory: no files, no downloads. Their text means nothing."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmvox_llm.requests import Sampling


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    words = {"[UNK]": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    backend = Tokenizer(WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>"
    )


def random_llama(
    vocab: int,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
) -> LlamaForCausalLM:
    """A Llama of random weights from seed 0, in eval mode; `<eos>` (id 1) ends and pads."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> Sampling:
    return Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=max_tokens, stop=stop)
