"""WavTokenizer model, config inference, ISTFT, resampling and loader (docs/wavtokenizer.md)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from llmvox_tts.loading.wavtokenizer import load_wavtokenizer, read_wavtokenizer_yaml
from llmvox_tts.model.resample import convert_audio, resample
from llmvox_tts.model.wavtokenizer import (
    WavTokenizer,
    WavTokenizerCheckpointError,
    WavTokenizerConfig,
    istft_same,
    random_wavtokenizer_state_dict,
)
from llmvox_tts.model.wavtokenizer.seanet import WNConv1d

pytestmark = pytest.mark.unit

# Keys, shapes and kinds of the published checkpoint, recorded from the original loader
# (docs/checkpoints.md); kept in the repository so the layout check needs no outside files.
MANIFEST = Path(__file__).resolve().parent / "data" / "wavtokenizer_published_layout.json"

TINY = WavTokenizerConfig.tiny()
# Other sizes, as in the private golden set: vocabulary, widths, depths and strides all differ.
OTHER_SIZES = [
    TINY.replace(
        vq_bins=4096,
        codebook_dim=32,
        n_filters=8,
        lstm_layers=1,
        dim=96,
        intermediate_dim=288,
        num_layers=3,
        adanorm_num_embeddings=2,
    ),
    TINY.replace(
        vq_bins=512,
        codebook_dim=48,
        n_filters=2,
        ratios=(4, 4, 5, 2),
        hop_length=160,
        n_fft=640,
        dim=32,
        intermediate_dim=64,
        num_layers=1,
        lstm_layers=3,
        with_codec_decoder=False,
    ),
    TINY.replace(num_quantizers=2, decoder_ratios=(8, 5, 4, 2), ratios=(8, 4, 5, 2)),
]


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_wavtokenizer_state_dict(TINY, seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_sd: dict[str, torch.Tensor]) -> WavTokenizer:
    return WavTokenizer.from_state_dict(tiny_sd)


def _lightning(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    sd = dict(state_dict)
    sd["multiperioddisc.discriminators.0.convs.0.weight_v"] = torch.zeros(3)
    sd["melspec_loss.mel_spec.mel_scale.fb"] = torch.zeros(4)
    return {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "1.8.6",
        "state_dict": sd,
        "hyper_parameters": {"sample_rate": 24000},
    }


# ------------------------------------------------------------------------------ layout


def test_published_layout_matches_manifest():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        model = WavTokenizer(WavTokenizerConfig.published())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(e["key"], e["shape"]) for e in manifest["keys"]]
    assert len(theirs) == 289
    assert dict(ours) == dict(theirs)
    assert ours == theirs, "same keys and shapes, but not in the upstream order"
    buffers = {name for name, _ in model.named_buffers()}
    for entry in manifest["keys"]:
        assert (entry["key"] in buffers) == (entry["kind"] == "buffer"), entry["key"]
    numel = sum(v.numel() for v in model.state_dict().values())
    assert numel == manifest["numel_total"]


@pytest.mark.parametrize(
    "cfg",
    [TINY, WavTokenizerConfig.published(), *OTHER_SIZES],
    ids=["tiny", "published", "other1", "other2", "other3"],
)
def test_config_round_trip(cfg: WavTokenizerConfig):
    with torch.device("meta"):
        sd = WavTokenizer(cfg).state_dict()
    assert WavTokenizerConfig.from_state_dict(sd) == cfg


@pytest.mark.parametrize("cfg", OTHER_SIZES, ids=["other1", "other2", "other3"])
def test_other_sizes_decode_and_encode(cfg: WavTokenizerConfig):
    model = WavTokenizer.from_state_dict(random_wavtokenizer_state_dict(cfg, seed=1))
    assert model.config == cfg
    codes = torch.randint(0, cfg.vq_bins, (2, 5))
    with torch.inference_mode():
        wav = model.decode(codes)
        _, enc_codes, features = model.encode_24k(torch.randn(2, 3 * cfg.hop_length + 7))
    assert wav.shape == (2, 5 * cfg.hop_length)
    assert torch.isfinite(wav).all()
    assert enc_codes.shape == (2, 4)
    assert features.shape == (2, cfg.codebook_dim, 4)


def test_random_init_is_seeded(tiny_sd: dict[str, torch.Tensor]):
    again = random_wavtokenizer_state_dict(TINY, seed=3)
    other = random_wavtokenizer_state_dict(TINY, seed=4)
    assert all(torch.equal(tiny_sd[k], again[k]) for k in tiny_sd)
    assert not torch.equal(tiny_sd["backbone.embed.weight"], other["backbone.embed.weight"])
    codebook = "feature_extractor.encodec.quantizer.vq.layers.0._codebook"
    assert torch.equal(tiny_sd[f"{codebook}.inited"], torch.ones(1))
    torch.testing.assert_close(tiny_sd["head.istft.window"], torch.hann_window(1280))
    rows = tiny_sd["backbone.norm.scale.weight"]
    assert len({tuple(r.tolist()) for r in rows}) == rows.shape[0]


# ------------------------------------------------------------------------------ decode


def test_codes_to_features_layouts(tiny: WavTokenizer):
    codes = torch.tensor([[0, 5, TINY.vq_bins - 1], [453, 2, 1]])
    features = tiny.codes_to_features(codes)
    assert features.shape == (2, TINY.codebook_dim, 3)
    assert torch.equal(features[1, :, 0], tiny.codebook[453])
    assert torch.equal(tiny.codes_to_features(codes[None]), features)
    with pytest.raises(ValueError, match="out of range"):
        tiny.codes_to_features(torch.tensor([[TINY.vq_bins]]))


def test_batch_decode_equals_single(tiny: WavTokenizer):
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, TINY.vq_bins, (3, 17), generator=gen)
    with torch.inference_mode():
        batch = tiny.decode(codes)
        for i in range(3):
            single = tiny.decode(codes[i : i + 1])
            torch.testing.assert_close(batch[i : i + 1], single, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 40])
def test_decode_length(tiny: WavTokenizer, length: int):
    with torch.inference_mode():
        wav = tiny.decode(torch.randint(0, TINY.vq_bins, (2, length)))
    assert wav.shape == (2, 320 * length)
    assert torch.isfinite(wav).all()


def test_decode_works_outside_inference_mode(tiny_sd: dict[str, torch.Tensor]):
    model = WavTokenizer.from_state_dict(tiny_sd)  # a fresh, empty envelope cache
    codes = torch.randint(0, TINY.vq_bins, (1, 9))
    with torch.inference_mode():
        first = model.decode(codes)  # fills the envelope cache inside inference mode
    with torch.no_grad():
        second = model.decode(codes)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_bandwidth_id_is_checked(tiny: WavTokenizer):
    with pytest.raises(ValueError, match="bandwidth_id"):
        tiny.decode(torch.zeros(1, 2, dtype=torch.long), bandwidth_id=TINY.adanorm_num_embeddings)


def _reference_istft(spec: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """The "same" ISTFT (docs/wavtokenizer.md) written out frame by frame in float64."""
    n_fft = window.shape[0]
    length = spec.shape[-1]
    total = (length - 1) * hop + n_fft
    y = torch.zeros(spec.shape[0], total, dtype=torch.float64)
    env = torch.zeros(total, dtype=torch.float64)
    w = window.double()
    for t in range(length):
        frame = torch.fft.irfft(spec[:, :, t].to(torch.complex128), n=n_fft) * w
        y[:, t * hop : t * hop + n_fft] += frame
        env[t * hop : t * hop + n_fft] += w * w
    pad = (n_fft - hop) // 2
    return y[:, pad : total - pad] / env[pad : total - pad]


@pytest.mark.parametrize(
    ("length", "n_fft", "hop"), [(1, 1280, 320), (4, 1280, 320), (9, 1280, 320), (6, 640, 160)]
)
def test_istft_same_matches_definition(length: int, n_fft: int, hop: int):
    gen = torch.Generator().manual_seed(length)
    bins = n_fft // 2 + 1
    spec = torch.complex(
        torch.randn(2, bins, length, generator=gen), torch.randn(2, bins, length, generator=gen)
    )
    window = torch.hann_window(n_fft, periodic=True)
    out = istft_same(spec, window, hop)
    assert out.shape == (2, hop * length)
    torch.testing.assert_close(
        out.double(), _reference_istft(spec, window, hop), atol=1e-6, rtol=1e-5
    )


# ------------------------------------------------------------------------------ weight norm


def _parametrized_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in sd.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        renamed[key] = value
    return renamed


def test_weight_norm_key_variants(tiny_sd: dict[str, torch.Tensor], tiny: WavTokenizer, tmp_path):
    renamed = _parametrized_names(tiny_sd)
    assert sum(".parametrizations.weight.original" in k for k in renamed) > 0
    # Direct strict load into a built model ...
    direct = WavTokenizer(TINY).eval()
    direct.load_state_dict(renamed, strict=True)
    # ... and through the loader.
    path = tmp_path / "renamed.ckpt"
    torch.save(_lightning(renamed), path)
    loaded = load_wavtokenizer(path)
    audio = torch.randn(1, 4000, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = tiny.encode_24k(audio)[0]
        for model in (direct, loaded):
            torch.testing.assert_close(model.encode_24k(audio)[0], want, atol=0, rtol=0)


def test_weight_norm_matches_torch():
    conv = torch.nn.Conv1d(6, 5, 4)
    wn = torch.nn.utils.parametrizations.weight_norm(conv)
    g = wn.parametrizations.weight.original0.detach()
    v = wn.parametrizations.weight.original1.detach() * 3
    wn.parametrizations.weight.original1.data.copy_(v)
    mine = WNConv1d(6, 5, 4)
    mine.load_state_dict({"bias": conv.bias.detach(), "weight_g": g, "weight_v": v})
    torch.testing.assert_close(mine.weight, wn.weight.detach(), atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------------------ encode


def test_encode_resamples(tiny: WavTokenizer):
    audio_16k = torch.randn(2, 3000, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        codes = tiny.encode(audio_16k, 16_000)
        want = tiny.encode_24k(resample(audio_16k, 16_000, 24_000))[1]
    assert codes.shape == (2, math.ceil(4500 / 320))
    assert torch.equal(codes, want)
    assert torch.equal(tiny.encode(audio_16k[0], 16_000), want[:1])


def test_short_input_encodes(tiny: WavTokenizer):
    for length in (1, 7, 319, 321, 700):
        with torch.inference_mode():
            out, codes, _ = tiny.encode_24k(torch.randn(1, length))
        assert out.shape[-1] == codes.shape[-1] == math.ceil(length / 320)


# ------------------------------------------------------------------------------ resampling


def test_convert_audio_shapes():
    stereo = torch.randn(2, 1600)
    assert convert_audio(stereo, 16_000).shape == (1, 2400)
    assert convert_audio(stereo[0], 16_000).shape == (2400,)
    assert convert_audio(stereo[None].repeat(3, 1, 1), 16_000).shape == (3, 1, 2400)
    assert convert_audio(stereo[:1], 16_000, target_channels=2).shape == (2, 2400)
    torch.testing.assert_close(convert_audio(stereo, 24_000), stereo.mean(0, keepdim=True))
    mono = torch.randn(1, 500)
    assert torch.equal(convert_audio(mono, 24_000), mono)


def test_resample_keeps_a_tone():
    t = torch.arange(16_000, dtype=torch.float64) / 16_000
    tone = torch.sin(2 * math.pi * 440 * t).float()
    out = resample(tone, 16_000, 24_000)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(24_000, dtype=torch.float64) / 24_000)
    # Away from the zero-padded edges the band-limited tone comes through unchanged.
    torch.testing.assert_close(out[200:-200].double(), ref[200:-200], atol=2e-3, rtol=0)


# ------------------------------------------------------------------------------ loader


def test_loader_lightning_and_bare(tiny_sd: dict[str, torch.Tensor], tmp_path):
    lightning = tmp_path / "lightning.ckpt"
    torch.save(_lightning(tiny_sd), lightning)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_sd, bare)
    codes = torch.randint(0, TINY.vq_bins, (1, 6))
    outs = []
    for path in (lightning, bare):
        model = load_wavtokenizer(path)
        assert not model.training
        assert model.config == TINY
        with torch.inference_mode():
            outs.append(model.decode(codes))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_loader_missing_file(tmp_path):
    path = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        load_wavtokenizer(path)


@pytest.mark.parametrize(
    "key",
    [
        "backbone.convnext.1.pwconv2.bias",
        "head.out.weight",
        "feature_extractor.encodec.decoder.model.15.conv.conv.bias",
        "feature_extractor.encodec.quantizer.vq.layers.0._codebook.inited",
    ],
)
def test_loader_rejects_missing_key(tiny_sd: dict[str, torch.Tensor], tmp_path, key: str):
    sd = {k: v for k, v in tiny_sd.items() if k != key}
    path = tmp_path / "broken.ckpt"
    torch.save(_lightning(sd), path)
    with pytest.raises(WavTokenizerCheckpointError, match=key.replace(".", r"\.")):
        load_wavtokenizer(path)


def test_loader_rejects_wrong_shape(tiny_sd: dict[str, torch.Tensor], tmp_path):
    sd = dict(tiny_sd)
    sd["backbone.pos_net.2.q.bias"] = torch.zeros(TINY.dim + 1)
    path = tmp_path / "broken.ckpt"
    torch.save(_lightning(sd), path)
    with pytest.raises(WavTokenizerCheckpointError, match=r"shape mismatch: backbone\.pos_net"):
        load_wavtokenizer(path)


class _TrainingObject:
    """Stands for a Lightning callback object that the weights-only unpickler refuses."""

    def __init__(self) -> None:
        self.best = 1.5


def test_loader_falls_back_for_non_weight_objects(tiny_sd, tmp_path, caplog):
    ckpt = _lightning(tiny_sd)
    ckpt["callbacks"] = {"ModelCheckpoint": _TrainingObject()}
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, path)
    with caplog.at_level(logging.WARNING):
        model = load_wavtokenizer(path)
    assert model.config == TINY
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in r.getMessage() for r in warnings)


# ------------------------------------------------------------------------------ yaml

YAML_TEMPLATE = """\
seed_everything: 3407
data:
  class_path: decoder.dataset.VocosDataModule
  init_args:
    train_params: {{filelist_path: train.txt, sampling_rate: 24000, num_samples: 72000}}
model:
  class_path: decoder.experiment.WavTokenizer
  init_args:
    sample_rate: 24000
    initial_learning_rate: 2e-4
    mel_loss_coeff: 45
    feature_extractor:
      class_path: decoder.feature_extractors.EncodecFeatures
      init_args:
        encodec_model: encodec_24khz
        bandwidths: [6.6, 6.6, 6.6, 6.6]
        train_codebooks: true
        num_quantizers: 1
        dowmsamples: [8, 5, 4, 2]
        vq_bins: {vq_bins}
        vq_kmeans: 200
    backbone:
      class_path: decoder.models.VocosBackbone
      init_args:
        input_channels: {input_channels}
        dim: {dim}
        intermediate_dim: {intermediate_dim}
        num_layers: {num_layers}
        adanorm_num_embeddings: 4
    head:
      class_path: decoder.heads.ISTFTHead
      init_args:
        dim: {dim}
        n_fft: 1280
        hop_length: 320
        padding: same
trainer:
  max_steps: 20000000
"""


def _yaml(tmp_path: Path, **sizes: int) -> Path:
    values = {
        "vq_bins": 1024,
        "input_channels": 64,
        "dim": 64,
        "intermediate_dim": 192,
        "num_layers": 2,
    } | sizes
    path = tmp_path / "wavtokenizer.yaml"
    path.write_text(YAML_TEMPLATE.format(**values))
    return path


def test_read_published_yaml(tmp_path):
    path = _yaml(
        tmp_path, vq_bins=4096, input_channels=512, dim=768, intermediate_dim=2304, num_layers=12
    )
    assert read_wavtokenizer_yaml(path) == WavTokenizerConfig.published()


def test_loader_checks_yaml_against_weights(tiny_sd, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(_lightning(tiny_sd), ckpt)
    assert load_wavtokenizer(ckpt, _yaml(tmp_path)).config == TINY
    with pytest.raises(WavTokenizerCheckpointError, match="num_layers: config 3 vs weights 2"):
        load_wavtokenizer(ckpt, _yaml(tmp_path, num_layers=3))


def test_yaml_flat_layout_and_errors(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "feature_extractor: {dowmsamples: [8, 5, 4, 2], vq_bins: 1024, unknown_field: 1}\n"
        "backbone: {input_channels: 64, dim: 64, intermediate_dim: 192, num_layers: 2,"
        " adanorm_num_embeddings: 4}\n"
        "head: {dim: 64, n_fft: 1280, hop_length: 320, padding: same}\n"
    )
    cfg = read_wavtokenizer_yaml(flat)
    assert (cfg.vq_bins, cfg.codebook_dim, cfg.dim, cfg.num_layers) == (1024, 64, 64, 2)
    flat.write_text(flat.read_text().replace("padding: same", "padding: center"))
    with pytest.raises(WavTokenizerCheckpointError, match="padding"):
        read_wavtokenizer_yaml(flat)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        read_wavtokenizer_yaml(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_published_size_random_decode_is_finite():
    model = WavTokenizer.from_state_dict(
        random_wavtokenizer_state_dict(WavTokenizerConfig.published(), seed=0)
    )
    with torch.inference_mode():
        wav = model.decode(torch.randint(0, 4096, (1, 75)))
    assert wav.shape == (1, 24_000)
    assert torch.isfinite(wav).all()


def test_tiny_profile_codebook_spreads_speech_over_many_codes():
    """The tiny profile's codebook is fitted to its encoder's outputs on speech-like sound; a
    random codebook put almost every frame of speech on a handful of codes (7 distinct codes
    for 624 frames of espeak speech, 70 % one code)."""
    from llmvox_tts.loading.bundle import tiny_wavtokenizer
    from llmvox_tts.model.wavtokenizer.random_init import speech_like_waveform

    wt = tiny_wavtokenizer(0)
    # Other sound than the codebook was fitted on (another seed): 10 s, 750 frames.
    audio = speech_like_waveform(10.0, seed=12345)
    with torch.inference_mode():
        codes = wt.encode(audio, 24_000)[0]
    counts = torch.bincount(codes, minlength=4096)
    # Measured: espeak speech gives 729 distinct codes over 15 588 frames, the top one 17 %.
    assert int((counts > 0).sum()) > 150
    assert counts.max().item() / codes.numel() < 0.3
    assert torch.equal(tiny_wavtokenizer(0).codebook, wt.codebook)  # deterministic


def test_speech_like_waveform_is_seeded_and_bounded():
    from llmvox_tts.model.wavtokenizer.random_init import speech_like_waveform

    a = speech_like_waveform(2.0, seed=3)
    assert a.shape == (48_000,)
    assert a.dtype == torch.float32
    assert torch.equal(a, speech_like_waveform(2.0, seed=3))
    assert not torch.equal(a, speech_like_waveform(2.0, seed=4))
    assert a.abs().max() <= 1.0
