"""Upstream streaming control logic (MODEL_SPEC 8.1-8.3) replayed with a scripted model.

Each variant's replicas are driven by a model that returns the recorded token of step i; the
replica must then feed the recorded text id at every step, reset the model exactly at the recorded
segment boundaries, and emit the recorded events. Every number comes from the variant's config.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmvox_tts.model.byt5_tokenizer import encode
from llmvox_tts.streaming.text_cleaning import PieceRouter, clean_llm_piece, rstrip_eos
from llmvox_tts.streaming.upstream_replica import (
    AudioChunk,
    End,
    Event,
    Switch,
    UpstreamReplica,
    merge_replica_streams,
)

pytestmark = pytest.mark.unit
CASE = "streaming_schedule"


class ScriptedModel:
    """Plays back the recorded tokens, checking the fed text id and segment at every step."""

    def __init__(self, steps: list[dict[str, int]], label: str) -> None:
        self.steps = steps
        self.label = label
        self.index = 0
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def step(self, text_id: int) -> int:
        where = f"{self.label} step {self.index}"
        assert self.index < len(self.steps), f"{where}: more than {len(self.steps)} steps"
        expected = self.steps[self.index]
        assert text_id == expected["text_id"], f"{where}: text id {text_id}, recorded {expected}"
        # The replica resets once when built, then once per segment end.
        assert self.resets - 1 == expected["segment"], (
            f"{where}: model in segment {self.resets - 1}, recorded {expected['segment']}"
        )
        self.index += 1
        return int(expected["token"])


def _event_record(event: Event) -> dict[str, Any]:
    if isinstance(event, AudioChunk):
        return {"type": "audio", "n_tokens": len(event.tokens)}
    if isinstance(event, Switch):
        return {"type": "switch", "to": event.to}
    assert isinstance(event, End)
    return {"type": "end"}


def _merged_record(replica: int, event: Event) -> tuple[str, int]:
    # Golden layout: ('audio', replica), ('switch', to), ('end', replica).
    if isinstance(event, Switch):
        return ("switch", event.to)
    return (event.kind, replica)


def _variants(case: dict[str, Any]) -> list[dict[str, Any]]:
    variants = case["expected"]["variants"]
    assert variants, "no variants in the case"
    return variants


def _label(variant: dict[str, Any], index: int) -> str:
    return f"variant {index} ({variant.get('name', '?')})"


def _replay(variant: dict[str, Any], replica_index: int, label: str):
    config = variant["config"]
    recorded = variant["replicas"][replica_index]
    model = ScriptedModel(list(recorded["steps"]), f"{label} replica {replica_index}")
    replica = UpstreamReplica(
        model,
        encode,
        replica_index=replica_index,
        initial_dump_size=config[f"initial_dump_size_{replica_index + 1}"],
        max_dump_size=config["max_dump_size"],
        max_audio_length=config["max_audio_length"],
        eos_token=config["eos_token"],
        pad_token_id=config["pad_token_id"],
        eoa_token_id=config["eoa_token_id"],
        max_steps=len(recorded["steps"]) + 1,
    )
    events = list(replica.run(variant["routed_queues"][replica_index]))
    return replica, model, events


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


def test_replica_replay(golden_case) -> None:
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        for r, recorded in enumerate(variant["replicas"]):
            replica, model, events = _replay(variant, r, label)
            where = f"{label} replica {r}"
            assert model.index == len(recorded["steps"]), f"{where}: stopped early"
            assert [(s.segment, s.text_id, s.token) for s in replica.steps] == [
                (s["segment"], s["text_id"], s["token"]) for s in recorded["steps"]
            ], where
            assert [_event_record(e) for e in events] == list(recorded["events"]), where
            _check_chunk_contents(replica, events, where)


def _check_chunk_contents(replica: UpstreamReplica, events: list[Event], where: str) -> None:
    """The chunks of a segment are its tokens in order from the segment's first step."""
    tokens_per_segment: dict[int, list[int]] = {}
    for step in replica.steps:
        tokens_per_segment.setdefault(step.segment, []).append(step.token)
    segment, sent = 0, 0
    for event in events:
        if isinstance(event, AudioChunk):
            expected = tokens_per_segment[segment][sent : sent + len(event.tokens)]
            assert list(event.tokens) == expected, f"{where}: segment {segment} chunk content"
            sent += len(event.tokens)
        else:
            segment, sent = segment + 1, 0


def test_text_ids_fed_cover_every_step(golden_case) -> None:
    # One embedding call per piece (or per PAD step): together they are the fed ids, in order.
    for i, variant in enumerate(_variants(golden_case)):
        for r in range(len(variant["replicas"])):
            replica, _, _ = _replay(variant, r, _label(variant, i))
            flat = [t for ids in replica.text_ids_fed for t in ids]
            assert flat == [s.text_id for s in replica.steps]
            pad = [variant["config"]["pad_token_id"]]
            n_pieces = sum(ids != pad for ids in replica.text_ids_fed)
            assert n_pieces == len(variant["routed_queues"][r])


def test_merged_order(golden_case) -> None:
    for i, variant in enumerate(_variants(golden_case)):
        label = _label(variant, i)
        streams = [_replay(variant, r, label)[2] for r in range(len(variant["replicas"]))]
        merged = [_merged_record(r, e) for r, e in merge_replica_streams(streams)]
        assert merged == [tuple(x) for x in variant["merged_order"]], label
