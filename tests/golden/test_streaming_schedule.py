"""The original streaming control logic (docs/streaming.md), replayed through the serving engine
with a scripted decoder.

Each variant's recorded LLM pieces are cleaned and routed as the original did; each sentence a
replica received becomes one engine job (engine_replay.py). The scripted decoder returns the
recorded token of each step of the current segment, so the engine must feed the recorded text ids,
start segments where the original reset its model, and cut the recorded chunks.

One documented difference (docs/model.md, "where it differs from upstream on purpose"): the
original ended a segment once more than `max_audio_length` tokens were *unsent* and dropped them;
the engine caps a sentence's *total* tokens and still sends what is pending. Segments the original
cut off that way are expected to follow the engine's rule instead, derived from the same record.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmvox_common.resequencer import Resequencer
from llmvox_common.text_cleaning import clean_llm_piece
from llmvox_common.tts_streams import AudioPart
from llmvox_tts.loading.bundle import ModelBundle, build_tiny
from llmvox_tts.streaming.sentence_stream import StopReason

from .engine_replay import JobRun, replay_replica
from .upstream_oracle import PieceRouter, rstrip_eos, split_sentences

pytestmark = pytest.mark.unit
CASE = "streaming_schedule"


class ScriptedDecoder:
    """Plays back the recorded tokens of one replica, segment by segment."""

    def __init__(self, segments: list[list[dict[str, int]]], label: str) -> None:
        self.segments = segments
        self.label = label
        self.segment = -1
        self.index = 0

    def start_segment(self, slot: int) -> None:
        self.segment += 1
        self.index = 0
        assert self.segment < len(self.segments), f"{self.label}: more segments than recorded"

    def step(self, slots: list[int], text_ids: list[int]) -> list[int]:
        assert len(slots) == 1, f"{self.label}: one job at a time"
        assert self.segment >= 0, f"{self.label}: a step before any segment started"
        recorded = self.segments[self.segment]
        where = f"{self.label} segment {self.segment} step {self.index}"
        assert self.index < len(recorded), f"{where}: more than {len(recorded)} steps"
        token = int(recorded[self.index]["token"])
        self.index += 1
        return [token]


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    # Only its tokenizer and vocoder are used: the scripted decoder stands in for the model.
    return build_tiny(seed=0)


def _variants(case: dict[str, Any]) -> list[dict[str, Any]]:
    variants = case["expected"]["variants"]
    assert variants, "no variants in the case"
    return variants


def _label(variant: dict[str, Any], index: int) -> str:
    return f"variant {index} ({variant.get('name', '?')})"


def _recorded_segments(replica: dict[str, Any]) -> list[list[dict[str, int]]]:
    segments: list[list[dict[str, int]]] = []
    for step in replica["steps"]:
        while len(segments) <= step["segment"]:
            segments.append([])
        segments[step["segment"]].append(step)
    return segments


def _recorded_chunks(replica: dict[str, Any]) -> list[list[int]]:
    """Chunk sizes per segment, from the replica's events (a switch or end closes a segment)."""
    chunks: list[list[int]] = [[]]
    for event in replica["events"]:
        if event["type"] == "audio":
            chunks[-1].append(int(event["n_tokens"]))
        else:
            chunks.append([])
    return chunks[:-1]


@pytest.fixture
def expected(golden_case) -> list[list[list[dict[str, Any]]]]:
    """Per variant, replica and segment: what the engine must do (steps, chunks, stop)."""
    out = []
    for variant in _variants(golden_case):
        config = variant["config"]
        eoa, cap = config["eoa_token_id"], config["max_audio_length"]
        per_replica = []
        for replica in variant["replicas"]:
            segments = []
            for steps, chunks in zip(
                _recorded_segments(replica), _recorded_chunks(replica), strict=True
            ):
                if steps[-1]["token"] == eoa:
                    segments.append(
                        {"steps": steps, "chunks": chunks, "stop": StopReason.END_OF_AUDIO}
                    )
                    continue
                # Cut off by the original: once more than `cap` tokens were unsent it ended the
                # segment and dropped them. The engine stops at `cap` tokens in all and sends
                # what is pending.
                assert len(steps) - sum(chunks) == cap + 1
                assert eoa not in [st["token"] for st in steps]
                kept, sent = [], 0
                for size in chunks:
                    if sent + size > cap:
                        break
                    kept.append(size)
                    sent += size
                if sent < cap:
                    kept.append(cap - sent)
                segments.append(
                    {"steps": steps[:cap], "chunks": kept, "stop": StopReason.MAX_AUDIO_LENGTH}
                )
            per_replica.append(segments)
        out.append(per_replica)
    return out


def _replay(bundle: ModelBundle, variant: dict[str, Any], label: str) -> list[list[JobRun]]:
    config = variant["config"]
    runs = []
    for r, replica in enumerate(variant["replicas"]):
        sentences = split_sentences(variant["routed_queues"][r], config["eos_token"])
        recorded = _recorded_segments(replica)
        assert len(sentences) == len(recorded), f"{label} replica {r}: one segment per sentence"
        decoder = ScriptedDecoder(recorded, f"{label} replica {r}")
        runs.append(
            replay_replica(
                bundle,
                decoder,
                sentences,
                initial_dump=config[f"initial_dump_size_{r + 1}"],
                max_dump=config["max_dump_size"],
                max_audio_length=config["max_audio_length"],
            )
        )
    return runs


def test_clean_text(golden_case) -> None:
    expected = golden_case["expected"]["clean_text"]
    inputs = golden_case["inputs"]["clean_text_inputs"]
    assert set(inputs) == set(expected)
    got = {text: clean_llm_piece(text) for text in inputs}
    assert got == expected


def test_eos_rstrip(golden_case) -> None:
    expected = golden_case["expected"]["eos_rstrip"]
    inputs = golden_case["inputs"]["rstrip_inputs"]
    assert set(inputs) == set(expected)
    eos_tokens = {v["config"]["eos_token"] for v in _variants(golden_case)}
    assert len(eos_tokens) == 1, f"several eos strings, which one is rstripped? {eos_tokens}"
    (eos,) = eos_tokens
    assert {text: rstrip_eos(text, eos) for text in inputs} == expected


def test_cleaning_and_routing(golden_case) -> None:
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        chunks = variant["llm_chunks"]
        cleaned = [clean_llm_piece(chunk) for chunk in chunks]
        assert cleaned == variant["clean_text_per_chunk"], label

        router = PieceRouter(variant["config"]["eos_token"])
        queues: list[list[str]] = [[], []]
        for chunk, clean in zip(chunks, cleaned, strict=True):
            routed = router.route(chunk)
            if routed.text is None:
                # Only the raw skip list and pieces that clean to nothing are dropped.
                assert chunk in ("", "-") or not clean, f"{label}: {chunk!r} dropped"
                continue
            assert routed.queue is not None
            queues[routed.queue].append(routed.text)
        assert queues == [list(q) for q in variant["routed_queues"]], label


def test_engine_replay(golden_case, bundle, expected) -> None:
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        for r, runs in enumerate(_replay(bundle, variant, label)):
            for s, (run, want) in enumerate(zip(runs, expected[i][r], strict=True)):
                where = f"{label} replica {r} sentence {s}"
                assert [(st.text_id, st.token) for st in run.steps] == [
                    (st["text_id"], st["token"]) for st in want["steps"]
                ], where
                assert run.segments == 1, f"{where}: segments started"
                assert [len(p.tokens) for p in run.parts] == want["chunks"], where
                # Every token produced is sent, in order, EOA included.
                assert [t for p in run.parts for t in p.tokens] == [st.token for st in run.steps]
                assert [p.part for p in run.parts] == list(range(len(run.parts))), where
                assert [p.last for p in run.parts] == [False] * (len(run.parts) - 1) + [True]
                assert run.stop_reason == want["stop"], where


def test_replica_events(golden_case, bundle, expected) -> None:
    # The original's per-replica event queue: each sentence's chunks, then a switch to the other
    # replica, or the end after the sentence that held the eos marker.
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        for r, runs in enumerate(_replay(bundle, variant, label)):
            events: list[dict[str, Any]] = []
            for run in runs:
                events += [{"type": "audio", "n_tokens": len(p.tokens)} for p in run.parts]
                events.append({"type": "end"} if run.sentence.ends_answer else {"type": "switch"})
            want = []
            recorded = variant["replicas"][r]
            for event, segment in zip(
                recorded["events"], _segment_of_events(recorded), strict=True
            ):
                if event["type"] == "audio":
                    continue
                chunks = expected[i][r][segment]["chunks"]
                want += [{"type": "audio", "n_tokens": n} for n in chunks]
                if event["type"] == "switch":
                    assert event["to"] == 1 - r, label
                    want.append({"type": "switch"})
                else:
                    want.append({"type": "end"})
            assert events == want, f"{label} replica {r}"


def _segment_of_events(replica: dict[str, Any]) -> list[int]:
    segment, out = 0, []
    for event in replica["events"]:
        out.append(segment)
        if event["type"] != "audio":
            segment += 1
    return out


def test_merged_order(golden_case, bundle, expected) -> None:
    """The client's view: the parts of all sentences through the gateway's resequencer, in
    sentence order, against the original's merged order (sentence k went to replica k % 2)."""
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        runs = _replay(bundle, variant, label)
        order = [(k % 2, k // 2) for k in range(sum(len(r) for r in runs))]
        assert sorted(order) == sorted((r, s) for r in range(2) for s in range(len(runs[r])))
        resequencer = Resequencer(first_seq=0, last_seq=len(order) - 1)
        released: list[AudioPart] = []
        # Replica 1's parts arrive first: the resequencer, not arrival, sets the order.
        for r in (1, 0):
            for s, run in enumerate(runs[r]):
                for part in run.parts:
                    seq = order.index((r, s))
                    released += resequencer.push(
                        AudioPart(seq, part.part, part.last, b"", len(part.tokens), f"r{r}")
                    )
        assert resequencer.finished, label
        merged: list[tuple[str, int]] = []
        for part in released:
            r, s = order[part.seq]
            merged.append(("audio", r))
            if part.last:
                merged.append(("end", r) if runs[r][s].sentence.ends_answer else ("switch", 1 - r))

        want: list[tuple[str, int]] = []
        seen, audio = [0, 0], 0
        for kind, who in (tuple(x) for x in variant["merged_order"]):
            if kind == "audio":
                audio += 1
                continue
            r = who if kind == "end" else 1 - who
            recorded = _recorded_chunks(variant["replicas"][r])[seen[r]]
            assert audio == len(recorded), f"{label}: the record disagrees with itself"
            want += [("audio", r)] * len(expected[i][r][seen[r]]["chunks"]) + [(kind, who)]
            seen[r], audio = seen[r] + 1, 0
        assert merged == want, label
