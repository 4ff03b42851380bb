"""Training data preparation: dataset parsing/validation, audio reading, shards, resumability."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from llmvox_common.audio import write_wav
from llmvox_tts.loading.bundle import build_tiny
from llmvox_tts.training.dataset import (
    AudioError,
    load_audio_24k,
    load_dataset,
    read_audio,
)
from llmvox_tts.training.prepare import EncoderSpec, prepare
from llmvox_tts.training.shards import (
    PreparedItem,
    iter_items,
    read_meta,
    read_shard,
    read_tables,
    write_meta,
    write_shard,
)

pytestmark = pytest.mark.unit


def _tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows))
    return path


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------ dataset rows


def test_json_list_both_path_conventions(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    write_wav(audio / "a.wav", _tone(0.1, 16_000), 16_000)
    write_wav(audio / "u2.wav", _tone(0.1, 16_000), 16_000)
    data = _write_json(
        tmp_path / "d.json",
        [
            {"speech_folder": str(audio), "speech_file": "a.wav", "answer_text": "hi", "id": "u1"},
            {"speech_folder": str(audio), "answer_text": "there", "id": "u2"},  # <id>.wav
        ],
    )
    rows, problems, n = load_dataset(data)
    assert n == 2
    assert problems == []
    assert [(r.id, r.audio_path.name, r.index) for r in rows] == [
        ("u1", "a.wav", 0),
        ("u2", "u2.wav", 1),
    ]


def test_speech_data_folder_overrides_row_folder(tmp_path: Path) -> None:
    write_wav(tmp_path / "real" / "7.wav", _tone(0.1, 24_000))
    data = _write_json(
        tmp_path / "d.json", [{"speech_folder": "/nowhere", "answer_text": "x", "id": 7}]
    )
    rows, problems, _ = load_dataset(data, tmp_path / "real")
    assert problems == []
    assert rows[0].id == "7"
    assert rows[0].audio_path == tmp_path / "real" / "7.wav"
    _, problems, _ = load_dataset(data)
    assert "missing audio file" in problems[0].reason


def test_jsonl_and_every_bad_row_reason(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav", _tone(0.1, 24_000))
    folder = str(tmp_path)
    data = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"speech_folder": folder, "answer_text": "fine", "id": "ok"}),
            json.dumps({"speech_folder": folder, "answer_text": "again", "id": "ok"}),
            json.dumps({"speech_folder": folder, "answer_text": "  ", "id": "x1"}),
            json.dumps({"speech_folder": folder, "answer_text": "a", "id": "gone"}),
            json.dumps([1, 2]),
            "{not json",
            json.dumps({"speech_folder": folder, "answer_text": 5, "id": "x2"}),
            json.dumps({"speech_folder": folder, "answer_text": "a"}),
            json.dumps({"answer_text": "a", "id": "nofolder"}),
        ],
    )
    rows, problems, n = load_dataset(data)
    assert n == 9
    assert [r.id for r in rows] == ["ok"]
    reasons = {p.index: p.reason for p in problems}
    assert reasons[1] == "duplicate id"
    assert reasons[2] == "empty text"
    assert reasons[3].startswith("missing audio file")
    assert "bad row shape" in reasons[4]
    assert "list" in reasons[4]
    assert "bad row shape" in reasons[5]
    assert "answer_text" in reasons[6]
    assert "'id'" in reasons[7]
    assert "no audio folder" in reasons[8]
    assert "row 1 (id 'ok'): duplicate id" in [str(p) for p in problems]


def test_single_object_json_is_rejected(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"id": "a", "answer_text": "b"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_dataset(data)


# ------------------------------------------------------------------------------------ audio


def test_stereo_wav_is_mixed_and_resampled(tmp_path: Path) -> None:
    left, right = _tone(0.5, 16_000), np.zeros(8000, dtype=np.float32)
    pcm = (np.stack([left, right], 1) * 32767).round().astype("<i2")
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    wav, rate = read_audio(path)
    assert rate == 16_000
    assert wav.shape == (2, 8000)
    out = load_audio_24k(path)
    assert out.shape == (12_000,)
    # Mono is the channel mean, before resampling (docs/wavtokenizer.md, resampling).
    assert out.abs().max() == pytest.approx(0.15, abs=0.01)


def test_unreadable_and_empty_audio(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not audio")
    with pytest.raises(AudioError, match="unreadable"):
        load_audio_24k(junk)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="empty"):
        load_audio_24k(empty)


# ----------------------------------------------------------------------------------- shards


def test_shard_round_trip(tmp_path: Path) -> None:
    items = [
        PreparedItem("a", "one", torch.tensor([1, 453, 4095, 0]), 1.5),
        PreparedItem("b", "two words", torch.tensor([7], dtype=torch.long), 0.25),
        PreparedItem("c", "empty codes", torch.zeros(0, dtype=torch.long), 0.0),
    ]
    write_shard(tmp_path / "shard-00000.pt", items)
    back = read_shard(tmp_path / "shard-00000.pt")
    assert [(b.id, b.text, b.codes.tolist(), b.seconds) for b in back] == [
        (i.id, i.text, i.codes.tolist(), i.seconds) for i in items
    ]
    assert not list(tmp_path.glob("*.tmp"))
    write_shard(tmp_path / "shard-00001.pt", [])
    assert read_shard(tmp_path / "shard-00001.pt") == []


# ---------------------------------------------------------------------- prepare + resuming


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(0)


def _dataset(tmp_path: Path, n: int = 7) -> Path:
    audio = tmp_path / "audio"
    rows = []
    for i in range(n):
        rate = (16_000, 22_050, 24_000)[i % 3]
        write_wav(audio / f"u{i}.wav", _tone(0.05 + 0.02 * i, rate, 200.0 + 30 * i), rate)
        rows.append(
            {"speech_folder": str(audio), "answer_text": f"utterance number {i}", "id": f"u{i}"}
        )
    rows.insert(3, {"speech_folder": str(audio), "answer_text": "", "id": "bad"})
    (audio / "broken.wav").write_bytes(b"RIFF....")
    rows.append(
        {"speech_folder": str(audio), "speech_file": "broken.wav", "answer_text": "b", "id": "br"}
    )
    return _write_json(tmp_path / "d.json", rows)


def _run(tmp_path: Path, data: Path, out: str, tiny, **kw):
    spec = EncoderSpec(profile="tiny", seed=0)
    return prepare(
        data,
        tmp_path / out,
        spec,
        tiny.text_table,
        tiny.wavtokenizer.codebook,
        shard_size=3,
        progress=False,
        encoder=tiny.wavtokenizer,
        echo=lambda s: None,
        **kw,
    )


def _snapshot(out: Path):
    meta = read_meta(out)
    items = [(it.id, it.text, it.codes.tolist(), it.seconds) for it in iter_items(out)]
    return meta["shards"], meta["complete"], items


def test_prepare_skips_bad_rows_and_counts(tmp_path: Path, tiny) -> None:
    data = _dataset(tmp_path)
    summary = _run(tmp_path, data, "clean", tiny)
    assert (summary.items_ok, summary.items_skipped, summary.shards_total) == (7, 2, 3)
    assert any("empty text" in p for p in summary.problems)
    assert any("unreadable audio" in p for p in summary.problems)
    items = list(iter_items(tmp_path / "clean"))
    assert [it.id for it in items] == [f"u{i}" for i in range(7)]
    for it in items:
        assert it.codes.numel() == -(-round(it.seconds * 24_000) // 320)
    assert summary.speech_tokens == sum(it.codes.numel() for it in items)
    _table, codebook = read_tables(tmp_path / "clean")
    assert torch.equal(codebook, tiny.wavtokenizer.codebook)
    meta = read_meta(tmp_path / "clean")
    assert meta["untrained"]
    assert "untrained tiny profile" in meta["source"]
    assert (meta["codebook_size"], meta["codebook_dim"], meta["text_dim"]) == (4096, 64, 32)


def test_resume_after_interrupt_and_after_lost_shard(tmp_path: Path, tiny) -> None:
    data = _dataset(tmp_path)
    _run(tmp_path, data, "clean", tiny)
    clean = _snapshot(tmp_path / "clean")

    # Interrupted after the first shard: the rerun writes only the other two.
    first = _run(tmp_path, data, "resumed", tiny, max_new_shards=1)
    assert first.shards_written == 1
    assert read_meta(tmp_path / "resumed")["complete"] is False
    second = _run(tmp_path, data, "resumed", tiny)
    assert (second.shards_reused, second.shards_written) == (1, 2)
    assert _snapshot(tmp_path / "resumed") == clean
    assert (second.items_ok, second.items_skipped) == (7, 2)

    # A lost shard (file and meta entry gone) is the only one redone.
    out = tmp_path / "resumed"
    (out / "shard-00001.pt").unlink()
    meta = read_meta(out)
    meta["shards"] = [s for s in meta["shards"] if s["file"] != "shard-00001.pt"]
    write_meta(out, {k: v for k, v in meta.items() if k != "format_version"})
    before = (out / "shard-00000.pt").stat().st_mtime_ns
    third = _run(tmp_path, data, "resumed", tiny)
    assert (third.shards_reused, third.shards_written) == (2, 1)
    assert (out / "shard-00000.pt").stat().st_mtime_ns == before
    assert _snapshot(out) == clean


def test_resume_refuses_other_inputs(tmp_path: Path, tiny) -> None:
    data = _dataset(tmp_path)
    _run(tmp_path, data, "out", tiny, max_new_shards=1)
    with pytest.raises(ValueError, match="other inputs"):
        prepare(
            data,
            tmp_path / "out",
            EncoderSpec(profile="tiny", seed=0),
            tiny.text_table,
            tiny.wavtokenizer.codebook,
            shard_size=2,
            progress=False,
            encoder=tiny.wavtokenizer,
        )
