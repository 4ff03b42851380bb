"""The replica engine: continuous batching equals one job at a time; chunk joins with context.

Models: the tiny random-weight profile (untrained, its audio is noise).
"""

import math

import pytest
import torch

from llmvox_tts.constants import HOP_LENGTH
from llmvox_tts.loading.bundle import build_tiny
from llmvox_tts.streaming.sentence_stream import SynthesisLimits
from llmvox_tts.worker.engine import EngineFullError, ReplicaEngine, decode_whole

pytestmark = pytest.mark.unit

LIMITS = SynthesisLimits(max_tokens_per_text_id=4.0, min_token_budget=20)
SENTENCES = ["Hello there friend", "How are you", "Fine thanks", "A much longer sentence here"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=1)


def run_alone(tiny, text: str, context: int = 0, holdback: int = 0):
    engine = ReplicaEngine(
        tiny, max_batch=1, context_tokens=context, holdback_tokens=holdback, limits=LIMITS
    )
    engine.add("j", first_chunk=5, max_chunk=40)
    for word in text.split():
        engine.push_text("j", word)
    engine.close_text("j")
    parts = []
    while engine.has_work:
        parts.extend(engine.step())
    return parts


def test_batched_jobs_equal_each_alone_with_late_joins_and_streamed_text(tiny) -> None:
    alone = {text: run_alone(tiny, text) for text in SENTENCES}
    engine = ReplicaEngine(tiny, max_batch=4, limits=LIMITS)
    got: dict[str, list] = {text: [] for text in SENTENCES}
    words = {text: text.split() for text in SENTENCES}
    joined: list[str] = []
    step = 0
    while True:
        # One job joins every third step; words arrive one per two steps (text runs dry).
        if step % 3 == 0 and len(joined) < len(SENTENCES):
            text = SENTENCES[len(joined)]
            engine.add(text, first_chunk=5, max_chunk=40)
            joined.append(text)
        if step % 2 == 0:
            for text in joined:
                if words[text]:
                    engine.push_text(text, words[text].pop(0))
                    if not words[text]:
                        engine.close_text(text)
        for part in engine.step():
            got[part.job].append(part)
            if part.last:
                engine.remove(part.job)
        step += 1
        if len(joined) == len(SENTENCES) and not engine.jobs:
            break
        assert step < 5000
    assert engine.stats.starved_steps > 0
    for text in SENTENCES:
        assert [p.tokens for p in got[text]] == [p.tokens for p in alone[text]]
        assert [p.part for p in got[text]] == list(range(len(alone[text])))
        assert got[text][-1].last
        for a, b in zip(got[text], alone[text], strict=True):
            torch.testing.assert_close(a.pcm, b.pcm, atol=1e-5, rtol=1e-4)


def test_slots_are_bounded_and_reused(tiny) -> None:
    engine = ReplicaEngine(tiny, max_batch=2, limits=LIMITS)
    engine.add("a", first_chunk=5, max_chunk=5)
    engine.add("b", first_chunk=5, max_chunk=5)
    with pytest.raises(EngineFullError):
        engine.add("c", first_chunk=5, max_chunk=5)
    engine.remove("a")
    engine.add("c", first_chunk=5, max_chunk=5)  # the freed slot is taken again
    with pytest.raises(EngineFullError):
        engine.add("d", first_chunk=5, max_chunk=5)


def snr_db(reference: torch.Tensor, joined: torch.Tensor) -> float:
    noise = (reference - joined).pow(2).sum().item()
    return 10 * math.log10(reference.pow(2).sum().item() / max(noise, 1e-20))


def test_context_makes_chunk_joins_closer_to_whole_sentence_decoding(tiny) -> None:
    text = "This sentence is long enough to span several chunks of audio"
    plain = run_alone(tiny, text, context=0)
    tokens = [t for p in plain for t in p.tokens]
    whole = decode_whole(tiny, tokens)
    with_context = run_alone(tiny, text, context=24)
    assert [t for p in with_context for t in p.tokens] == tokens  # same speech, other joins
    joined_plain = torch.cat([p.pcm for p in plain])
    joined_context = torch.cat([p.pcm for p in with_context])
    assert joined_plain.shape == joined_context.shape == (len(tokens) * HOP_LENGTH,)
    # Chunks still miss the frames after them (the vocoder looks both ways), so the gain is
    # bounded; measured here (tiny profile with its speech-fitted codebook, seed 1): 0.7 dB
    # without context, 2.4 dB with 24 tokens; seed 0 gives 2.6, 4.6 and 5.6 dB with 96.
    assert snr_db(whole, joined_context) > snr_db(whole, joined_plain) + 1.0
    more = torch.cat([p.pcm for p in run_alone(tiny, text, context=96)])
    assert snr_db(whole, more) > snr_db(whole, joined_context)


def test_holdback_mends_chunk_ends_and_keeps_every_token(tiny) -> None:
    text = "This sentence is long enough to span several chunks of audio"
    plain = run_alone(tiny, text)
    tokens = [t for p in plain for t in p.tokens]
    whole = decode_whole(tiny, tokens)
    context_only = torch.cat([p.pcm for p in run_alone(tiny, text, context=24)])
    held = run_alone(tiny, text, context=24, holdback=4)
    assert [t for p in held for t in p.tokens] == tokens  # nothing lost or repeated
    assert len(held[0].tokens) == len(plain[0].tokens) - 4  # the first part waits for 4 more
    assert held[-1].last
    joined = torch.cat([p.pcm for p in held])
    assert joined.shape == whole.shape
    # Measured (tiny profile with its speech-fitted codebook, seed 1): 0.7 dB plain, 2.4 dB with
    # context only, 3.0 dB with the hold-back on top (random codebook: 5.1, 7.6, 10.4 dB).
    assert snr_db(whole, joined) > snr_db(whole, context_only) + 0.4


def test_batched_equals_alone_with_context_and_holdback(tiny) -> None:
    texts = ["one two three four", "five six seven eight nine"]
    alone = [run_alone(tiny, t, context=8, holdback=2) for t in texts]
    engine = ReplicaEngine(tiny, max_batch=2, context_tokens=8, holdback_tokens=2, limits=LIMITS)
    got: dict[str, list] = {t: [] for t in texts}
    for t in texts:
        engine.add(t, first_chunk=5, max_chunk=40)
        for word in t.split():
            engine.push_text(t, word)
        engine.close_text(t)
    while engine.has_work:
        for part in engine.step():
            got[part.job].append(part)
            if part.last:
                engine.remove(part.job)
    for t, ref in zip(texts, alone, strict=True):
        assert [p.tokens for p in got[t]] == [p.tokens for p in ref]
        for a, b in zip(got[t], ref, strict=True):
            torch.testing.assert_close(a.pcm, b.pcm, atol=1e-5, rtol=1e-4)


# -- batch invariance: a job regenerated after a crash must repeat the tokens already sent --------


def _speech_decoder(decoder, text_dim: int, codebook_dim: int, slots: int, seed: int = 0):
    from llmvox_tts.model.speech_decoder import SpeechTokenDecoder

    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(384, text_dim, generator=generator)
    codebook = torch.randn(decoder.config.vocab_size, codebook_dim, generator=generator)
    return SpeechTokenDecoder(decoder, table, codebook, num_slots=slots)


def _decode_mix(make, jobs: dict[int, list[int]], watched: int) -> list[torch.Tensor]:
    """Step the jobs {slot: text ids} together (each leaves when its ids run out) and return the
    logits of slot `watched` at each of its steps."""
    speech = make()
    logits: list[torch.Tensor] = []
    original = speech.decoder.decode_step

    def recording(x, cache, slots=None):
        out = original(x, cache, slots)
        logits.append(out[slots.index(watched)].clone())
        return out

    for slot in jobs:
        speech.start_segment(slot)
    speech.decoder.decode_step = recording  # type: ignore[method-assign]
    try:
        for step in range(max(len(ids) for ids in jobs.values())):
            slots = [s for s, ids in jobs.items() if step < len(ids)]
            if watched not in slots:
                break
            speech.step(slots, [jobs[s][step] for s in slots])
    finally:
        del speech.decoder.decode_step
    return logits


def _assert_batch_invariant(make, slots: int, steps: int, mixes: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    watched_ids = [rng.randrange(384) for _ in range(steps)]
    alone = _decode_mix(make, {0: watched_ids}, 0)
    for _ in range(mixes):
        size = rng.randrange(2, slots + 1)
        chosen = rng.sample(range(slots), size)
        # Others of other lengths: some leave before the watched job ends, some outlive it
        # (longer key spans in the step than its own).
        jobs = {s: [rng.randrange(384) for _ in range(rng.randrange(3, 2 * steps))] for s in chosen}
        jobs[chosen[0]] = watched_ids
        got = _decode_mix(make, jobs, chosen[0])
        assert len(got) == len(alone)
        for step, (a, b) in enumerate(zip(alone, got, strict=True)):
            assert torch.equal(a, b), f"logits differ at step {step} in a batch of {size}"


def test_decoding_is_batch_invariant_tiny() -> None:
    """Bit-identical logits (so identical greedy tokens, even at near-ties) whatever batch a
    sentence lands in: sizes across a ROW_TILE, positions, others joining and leaving, key
    spans across KEY_BLOCKs."""
    from llmvox_tts.loading.bundle import random_decoder, tiny_gpt_config

    # lm_head_std of nanoGPT's init: logits close together, as near-ties make flips likely.
    decoder = random_decoder(tiny_gpt_config(32, 4096, 32), seed=5, lm_head_std=0.02).eval()
    _assert_batch_invariant(lambda: _speech_decoder(decoder, 32, 32, 24), 24, 150, 6, seed=1)


def test_decoding_is_batch_invariant_published_layout() -> None:
    """The published decoder's shapes (4 layers, 8 heads, 768 wide; random weights)."""
    from llmvox_tts.loading.bundle import random_decoder
    from llmvox_tts.model.gpt import GPTConfig

    decoder = random_decoder(GPTConfig(block_size=512), seed=3, lm_head_std=0.02).eval()
    _assert_batch_invariant(lambda: _speech_decoder(decoder, 256, 512, 20), 20, 70, 2, seed=2)


def test_engine_tokens_are_batch_invariant(tiny) -> None:
    """Through the serving engine: each sentence's tokens alone equal its tokens in a batch
    whose members join at different steps."""
    alone = {t: [tok for p in run_alone(tiny, t) for tok in p.tokens] for t in SENTENCES}
    for order in (SENTENCES, SENTENCES[::-1]):
        engine = ReplicaEngine(tiny, max_batch=4, limits=LIMITS)
        got: dict[str, list[int]] = {t: [] for t in SENTENCES}
        pending = list(order)
        step = 0
        while pending or engine.jobs:
            if pending and step % 4 == 0:
                text = pending.pop(0)
                engine.add(text, first_chunk=5, max_chunk=40)
                for word in text.split():
                    engine.push_text(text, word)
                engine.close_text(text)
            for part in engine.step():
                got[part.job].extend(part.tokens)
                if part.last:
                    engine.remove(part.job)
            step += 1
            assert step < 5000
        assert got == alone
