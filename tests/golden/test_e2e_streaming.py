"""End to end: LLM pieces → upstream routing → two replicas with the real tiny models → PCM.

The replicas run the upstream control loop (UpstreamReplica) over our model code: the loaded
decoder (batched KV-cache path, one slot), the resized text table and the WavTokenizer.
"""

from pathlib import Path

import pytest
import torch

from llmvox_tts.loading.llmvox import load_llmvox_decoder
from llmvox_tts.loading.text_embedding import load_text_table
from llmvox_tts.loading.wavtokenizer import load_wavtokenizer
from llmvox_tts.model.byt5_tokenizer import encode
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.streaming.text_cleaning import route_pieces
from llmvox_tts.streaming.upstream_replica import (
    AudioChunk,
    End,
    Switch,
    UpstreamReplica,
    merge_replica_streams,
)

from .conftest import assert_close

pytestmark = pytest.mark.unit
CASE = "e2e_streaming"


class RecordingSegmentModel:
    """One decoder slot behind the upstream SegmentModel protocol; logs codebook lookups."""

    def __init__(self, decoder: SpeechTokenDecoder, lookups: list[list[int]]) -> None:
        self.decoder = decoder
        self.lookups = lookups
        self.prev: int | None = None

    def reset(self) -> None:
        self.decoder.start_segment(0)
        self.prev = None

    def step(self, text_id: int) -> int:
        if self.prev is not None:  # step 0 of a segment uses a zero frame, no lookup
            self.lookups.append([self.prev])
        (token,) = self.decoder.step([0], [text_id])
        self.prev = token
        return token


@pytest.fixture
def models(golden_case, save_checkpoint, tmp_path: Path):
    ck = golden_case["checkpoint"]
    decoder = load_llmvox_decoder(save_checkpoint(ck["llmvox"], "ckpt_english_tiny.pt"))
    wavtokenizer = load_wavtokenizer(save_checkpoint(ck["wavtokenizer"], "wavtokenizer.ckpt"))
    t5_dir = tmp_path / "charsiu"
    t5_dir.mkdir()
    torch.save(ck["t5_state_dict"], t5_dir / "pytorch_model.bin")
    return decoder, wavtokenizer, load_text_table(t5_dir)


def test_end_to_end_stream(golden_case, models) -> None:
    decoder, wavtokenizer, text_table = models
    exp = golden_case["expected"]
    server = golden_case["config"]["server"]
    pcm_tol = golden_case["tolerances"]["pcm_f32"]
    tol = {"atol": float(pcm_tol["atol"]), "rtol": float(pcm_tol["rtol"])}
    assert_close(text_table, exp["text_embedding_table"], atol=1e-6, rtol=1e-6, what="table")

    queues = route_pieces(golden_case["inputs"]["llm_chunks"], eos_token=server["eos_token"])
    assert queues == [list(q) for q in exp["routed_queues"]]

    dump_sizes = [server["initial_dump_size_1"], server["initial_dump_size_2"]]
    events_per_replica: list[list[tuple[object, torch.Tensor | None]]] = []
    for r, pieces in enumerate(queues):
        lookups: list[list[int]] = []
        decode_calls: list[tuple[int, torch.Tensor]] = []
        model = RecordingSegmentModel(
            SpeechTokenDecoder(decoder, text_table, wavtokenizer.codebook, num_slots=1), lookups
        )
        replica = UpstreamReplica(
            model,
            encode,
            replica_index=r,
            initial_dump_size=dump_sizes[r],
            max_dump_size=server["max_dump_size"],
            max_audio_length=server["max_audio_length"],
            eos_token=server["eos_token"],
            pad_token_id=server["pad_token_id"],
            eoa_token_id=server["eoa_token_id"],
            max_steps=decoder.config.block_size * 4,
        )
        events = []
        for event in replica.run(pieces):
            pcm = None
            if isinstance(event, AudioChunk):
                lookups.append(list(event.tokens))
                with torch.inference_mode():
                    pcm = wavtokenizer.decode(torch.tensor([event.tokens]))[0]
                decode_calls.append((len(event.tokens), pcm))
            events.append((event, pcm))
        events_per_replica.append(events)

        want = exp["per_replica"][r]
        assert replica.text_ids_fed == [list(x) for x in want["text_ids_fed"]], f"replica {r}"
        assert [s.token for s in replica.steps] == list(want["generated_tokens"]), f"replica {r}"
        assert lookups == [list(x) for x in want["codes_to_features_calls"]], f"replica {r}"
        assert [n for n, _ in decode_calls] == [c["n_tokens"] for c in want["decode_calls"]]
        for i, ((_, pcm), call) in enumerate(zip(decode_calls, want["decode_calls"], strict=True)):
            assert_close(pcm, call["waveform"][0], what=f"replica {r} decode {i}", **tol)

    merged = merge_replica_streams([[e for e, _ in events] for events in events_per_replica])
    pcm_of = {id(e): pcm for events in events_per_replica for e, pcm in events}
    stream = exp["stream"]
    assert len(merged) == len(stream)
    received = []
    for (source, event), want in zip(merged, stream, strict=True):
        if want["type"] == "audio":
            assert isinstance(event, AudioChunk)
            assert source == want["replica"]
            assert_close(pcm_of[id(event)], want["pcm_f32"], what="stream audio", **tol)
            received.append(pcm_of[id(event)])
        elif want["type"] == "switch":
            assert isinstance(event, Switch)
            assert event.to == want["to"]
        else:
            assert isinstance(event, End)
            assert source == want["replica"]
    assert_close(torch.cat(received), exp["full_pcm_f32"], what="full stream", **tol)
