"""End to end through the serving engine: LLM pieces → the original's routing → one engine job per
sentence with the real tiny models → parts → the gateway's resequencer → PCM.

Each original replica is one engine fed its sentences in turn (engine_replay.py), with chunk
left-context and hold-back 0, the original's way of decoding chunks.
"""

from pathlib import Path

import pytest
import torch

from llmvox_common.resequencer import Resequencer
from llmvox_common.tts_streams import AudioPart
from llmvox_tts.loading.bundle import ModelBundle
from llmvox_tts.loading.llmvox import load_llmvox_decoder
from llmvox_tts.loading.text_embedding import load_text_table
from llmvox_tts.loading.wavtokenizer import load_wavtokenizer
from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer
from llmvox_tts.worker.engine import EnginePart, ReplicaEngine

from .conftest import assert_close
from .engine_replay import JobRun, replay_replica, upstream_limits
from .upstream_oracle import route_pieces, split_sentences

pytestmark = pytest.mark.unit
CASE = "e2e_streaming"


@pytest.fixture
def models(golden_case, save_checkpoint, tmp_path: Path) -> ModelBundle:
    ck = golden_case["checkpoint"]
    decoder = load_llmvox_decoder(save_checkpoint(ck["llmvox"], "ckpt_english_tiny.pt"))
    wavtokenizer = load_wavtokenizer(save_checkpoint(ck["wavtokenizer"], "wavtokenizer.ckpt"))
    t5_dir = tmp_path / "charsiu"
    t5_dir.mkdir()
    torch.save(ck["t5_state_dict"], t5_dir / "pytorch_model.bin")
    return ModelBundle(
        tokenizer=ByT5Tokenizer(),
        text_table=load_text_table(t5_dir),
        decoder=decoder,
        wavtokenizer=wavtokenizer.eval(),
        untrained=False,
        description="golden e2e_streaming models",
    )


def _lookups(runs: list[JobRun]) -> list[list[int]]:
    """The codebook rows the work needed, in the order the engine did it: the previous token at
    every step but a segment's first (a zero frame there), and each chunk it decoded."""
    lookups: list[list[int]] = []
    for run in runs:
        for kind, index in run.order:
            if kind == "part":
                lookups.append(list(run.parts[index].tokens))
            elif index > 0:
                lookups.append([run.steps[index - 1].token])
    return lookups


def test_end_to_end_stream(golden_case, models: ModelBundle) -> None:
    exp = golden_case["expected"]
    server = golden_case["config"]["server"]
    pcm_tol = golden_case["tolerances"]["pcm_f32"]
    tol = {"atol": float(pcm_tol["atol"]), "rtol": float(pcm_tol["rtol"])}
    assert_close(models.text_table, exp["text_embedding_table"], atol=1e-6, rtol=1e-6, what="table")

    queues = route_pieces(golden_case["inputs"]["llm_chunks"], eos_token=server["eos_token"])
    assert queues == [list(q) for q in exp["routed_queues"]]

    runs: list[list[JobRun]] = []
    for r, queue in enumerate(queues):
        sentences = split_sentences(queue, server["eos_token"])
        replica_runs = replay_replica(
            models,
            None,
            sentences,
            initial_dump=server[f"initial_dump_size_{r + 1}"],
            max_dump=server["max_dump_size"],
            max_audio_length=server["max_audio_length"],
        )
        runs.append(replica_runs)
        want = exp["per_replica"][r]
        where = f"replica {r}"
        fed = [t for ids in want["text_ids_fed"] for t in ids]
        assert [s.text_id for run in replica_runs for s in run.steps] == fed, where
        tokens = [s.token for run in replica_runs for s in run.steps]
        assert tokens == list(want["generated_tokens"]), where
        assert all(run.segments == 1 for run in replica_runs), where
        assert _lookups(replica_runs) == [list(x) for x in want["codes_to_features_calls"]], where
        parts = [part for run in replica_runs for part in run.parts]
        assert [len(p.tokens) for p in parts] == [c["n_tokens"] for c in want["decode_calls"]]
        for i, (part, call) in enumerate(zip(parts, want["decode_calls"], strict=True)):
            assert_close(part.pcm, call["waveform"][0], what=f"{where} decode {i}", **tol)

    # Sentence k went to replica k % 2; the gateway puts parts back in sentence order.
    order = [(k % 2, k // 2) for k in range(sum(len(r) for r in runs))]
    resequencer = Resequencer(first_seq=0, last_seq=len(order) - 1)
    released: list[AudioPart] = []
    for r in (1, 0):  # arrival order is not release order
        for s, run in enumerate(runs[r]):
            seq = order.index((r, s))
            for part in run.parts:
                wire = part.pcm.numpy().astype("<f4").tobytes()
                released += resequencer.push(
                    AudioPart(seq, part.part, part.last, wire, len(part.tokens), f"r{r}")
                )
    assert resequencer.finished

    # The client's view: audio in order, a switch between sentences, the end after the last.
    stream: list[dict] = []
    received: list[torch.Tensor] = []
    for part in released:
        r, s = order[part.seq]
        stream.append({"type": "audio", "replica": r})
        received.append(torch.from_numpy(part.samples.copy()))
        if part.last:
            if runs[r][s].sentence.ends_answer:
                stream.append({"type": "end", "replica": r})
            else:
                stream.append({"type": "switch", "to": 1 - r})
    assert stream == [{k: v for k, v in e.items() if k != "pcm_f32"} for e in exp["stream"]]
    audio = [e["pcm_f32"] for e in exp["stream"] if e["type"] == "audio"]
    for i, (got, want) in enumerate(zip(received, audio, strict=True)):
        assert_close(got, want, what=f"stream audio {i}", **tol)
    assert_close(torch.cat(received), exp["full_pcm_f32"], what="full stream", **tol)


def test_sentences_batched_on_one_engine_match(golden_case, models: ModelBundle) -> None:
    """The pool batches jobs: every sentence of the answer at once on one engine (one slot each,
    each with the first chunk its original replica had reached) gives the same tokens and, within
    the tolerance, the same samples as the original."""
    exp = golden_case["expected"]
    server = golden_case["config"]["server"]
    pcm_tol = golden_case["tolerances"]["pcm_f32"]
    tol = {"atol": float(pcm_tol["atol"]), "rtol": float(pcm_tol["rtol"])}
    queues = route_pieces(golden_case["inputs"]["llm_chunks"], eos_token=server["eos_token"])
    jobs: dict[str, tuple[int, JobRun]] = {}
    for r, queue in enumerate(queues):
        sentences = split_sentences(queue, server["eos_token"])
        replica_runs = replay_replica(
            models,
            None,
            sentences,
            initial_dump=server[f"initial_dump_size_{r + 1}"],
            max_dump=server["max_dump_size"],
            max_audio_length=server["max_audio_length"],
        )
        for s, run in enumerate(replica_runs):
            jobs[f"replica {r} sentence {s}"] = (r, run)

    engine = ReplicaEngine(
        models,
        max_batch=len(jobs),
        limits=upstream_limits(server["max_audio_length"]),
    )
    for key, (_, run) in jobs.items():
        engine.add(key, first_chunk=run.first_chunk, max_chunk=server["max_dump_size"])
        for piece in run.sentence.pieces:
            engine.push_text(key, piece)
        engine.close_text(key)
    parts: dict[str, list[EnginePart]] = {key: [] for key in jobs}
    while engine.has_work:
        for part in engine.step():
            parts[part.job].append(part)
            if part.last:
                engine.remove(part.job)
    assert not engine.jobs

    for r, want in enumerate(exp["per_replica"]):
        keys = [key for key, (replica, _) in jobs.items() if replica == r]
        got = [part for key in keys for part in parts[key]]
        tokens = [t for part in got for t in part.tokens]
        assert tokens == list(want["generated_tokens"]), f"replica {r}"
        for i, (part, call) in enumerate(zip(got, want["decode_calls"], strict=True)):
            assert_close(part.pcm, call["waveform"][0], what=f"replica {r} part {i}", **tol)
