"""Fidelity of the reduced precisions on a briefly trained published-size decoder.

Random weights say little about reduced precision: their logits are nearly tied, so any rounding
flips tokens. This benchmark first gives the decoder something to be sure about:
1. speech: espeak-ng speaks `--sentences` sentences (offline), resampled to 24 kHz;
2. codes: a published-size WavTokenizer with random weights whose codebook is fitted to its own
   encoder's outputs on generated speech-like sound (the tiny profile's recipe,
   `fit_codebook_to_speech`), so the sentences spread over hundreds of codes;
3. training: the published-size decoder (4 layers, 8 heads, width 768 = text 256 + codebook 512)
   trains `--steps` AdamW steps on those codes (fp32, the training alignment of
   training/alignment.py); a few held-out sentences are kept apart.
Then per precision (fp32 = the exact mode; bf16; int8 = model/precision.py's batch-invariant
int8; `int8-dynamic` = torch's dynamic quantisation, per-tensor activation scale, for
comparison), on the held-out and training sentences:
- teacher-forced agreement: the share of steps whose greedy token equals fp32's, both reading the
  true history (one early difference does not count twice);
- free running: greedy decoding through the serving path (`SpeechTokenDecoder`) from the start of
  each sentence for as many steps as fp32 needs to reach end-of-audio (or `--free-steps`); how
  many sentences come out identical to fp32, and the first step where each differs;
- batch invariance: the same free run with all sentences in one batch; whether every sentence's
  tokens equal its run alone.

    python bench/precision.py                 # table + JSON file under bench/results/
    python bench/precision.py --json          # one JSON object on stdout
    python bench/precision.py --steps 40      # quicker, less trained
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
from results_file import write_report
from torch import nn

from llmvox_tts.constants import EOA_TOKEN_ID, LOSS_IGNORE_INDEX, SAMPLE_RATE, TEXT_PAD_ID
from llmvox_tts.loading.bundle import random_decoder
from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer
from llmvox_tts.model.gpt import GPTConfig, LLMVoXDecoder
from llmvox_tts.model.precision import with_precision
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.model.wavtokenizer import WavTokenizer, WavTokenizerConfig
from llmvox_tts.model.wavtokenizer.random_init import (
    fit_codebook_to_speech,
    random_wavtokenizer_state_dict,
)
from llmvox_tts.training.alignment import align_item, collate, decoder_inputs
from llmvox_tts.training.dataset import load_audio_24k

PUBLISHED_GPT = GPTConfig(
    n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096
)
TEXT_WIDTH = 256

# Sentences from a small vocabulary, so held-out sentences reuse words the model has heard.
SUBJECTS = ["The old man", "A small dog", "My sister", "The farmer", "Our teacher", "A tall girl"]
VERBS = ["found", "painted", "carried", "watched", "cleaned", "wanted"]
OBJECTS = ["the red boat", "a green apple", "the wooden door", "a quiet garden", "the blue kite"]


def sentences(count: int) -> list[str]:
    every = [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS]
    # A fixed stride through the combinations: every subject, verb and object appears early.
    stride = 7
    order = [every[(i * stride) % len(every)] for i in range(len(every))]
    return order[:count]


def speak(texts: list[str], work: Path) -> list[torch.Tensor]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed (scripts/ensure-espeak.sh installs it)")
    out = []
    for i, text in enumerate(texts):
        wav = work / f"s{i:03d}.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True)
        out.append(load_audio_24k(wav))
    return out


def published_wavtokenizer(seed: int) -> WavTokenizer:
    cfg = WavTokenizerConfig.published()
    wt = WavTokenizer(cfg)
    wt.load_state_dict(random_wavtokenizer_state_dict(cfg, seed=seed))
    fit_codebook_to_speech(wt.eval(), seed=seed)
    return wt


def batch_rows(
    items: list[tuple[str, list[int]]], codebook: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = ByT5Tokenizer()
    aligned = [align_item(codes, text, codebook, tokenizer) for text, codes in items]
    collated = collate(aligned, codebook)
    return decoder_inputs(collated, table), collated.targets


def train(
    model: LLMVoXDecoder,
    train_items: list[tuple[str, list[int]]],
    codebook: torch.Tensor,
    table: torch.Tensor,
    args: argparse.Namespace,
) -> list[float]:
    gen = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1
    )
    model.train()
    losses = []
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / 10)  # a short warm-up keeps the first steps stable
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm
        picks = torch.randint(0, len(train_items), (args.batch_size,), generator=gen).tolist()
        x, targets = batch_rows([train_items[i] for i in picks], codebook, table)
        _, loss = model(x, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if not args.json and (step % 10 == 0 or step == args.steps - 1):
            print(f"  train step {step:4d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    return losses


def variants(model: LLMVoXDecoder) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {p: with_precision(model, p) for p in ("fp32", "bf16", "int8")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager quantisation API is deprecated, still shipped
        out["int8-dynamic"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
        )
    return out


def teacher_forced(
    models: dict[str, nn.Module],
    items: list[tuple[str, list[int]]],
    codebook: torch.Tensor,
    table: torch.Tensor,
) -> dict[str, dict[str, float]]:
    """Per precision: agreement with fp32's greedy tokens, accuracy against the true codes, and
    fp32's median top-1 margin (how far from a tie the choices are)."""
    agree = dict.fromkeys(models, 0)
    right = dict.fromkeys(models, 0)
    total = 0
    margins: list[float] = []
    for item in items:
        x, targets = batch_rows([item], codebook, table)
        keep = targets[0] != LOSS_IGNORE_INDEX
        with torch.inference_mode():
            logits = {
                name: m(x.to(m.transformer.wpe.weight.dtype), targets)[0][0].float()
                for name, m in models.items()
            }
        reference = logits["fp32"].argmax(-1)
        top2 = logits["fp32"].topk(2, dim=-1).values
        margins.extend((top2[:, 0] - top2[:, 1])[keep].tolist())
        for name, lg in logits.items():
            guess = lg.argmax(-1)
            agree[name] += int((guess == reference)[keep].sum())
            right[name] += int((guess == targets[0])[keep].sum())
        total += int(keep.sum())
    return {
        name: {
            "agreement_with_fp32": agree[name] / total,
            "accuracy": right[name] / total,
            "fp32_median_margin": statistics.median(margins),
            "tokens": total,
        }
        for name in models
    }


def free_run(
    model: nn.Module,
    texts: list[str],
    table: torch.Tensor,
    codebook: torch.Tensor,
    steps: list[int],
    together: bool,
) -> list[list[int]]:
    """Greedy tokens of each text, `steps[i]` steps (or until EOA): one batch, or one by one."""
    tokenizer = ByT5Tokenizer()
    ids = [tokenizer.encode_words(t) for t in texts]
    groups = [list(range(len(texts)))] if together else [[i] for i in range(len(texts))]
    out: list[list[int]] = [[] for _ in texts]
    for group in groups:
        dec = SpeechTokenDecoder(model, table, codebook, num_slots=len(group))  # type: ignore[arg-type]
        for slot in range(len(group)):
            dec.start_segment(slot)
        live = list(range(len(group)))
        for n in range(max(steps[i] for i in group)):
            live = [s for s in live if len(out[group[s]]) < steps[group[s]]]
            live = [s for s in live if not out[group[s]] or out[group[s]][-1] != EOA_TOKEN_ID]
            if not live:
                break
            text_ids = [ids[group[s]][n] if n < len(ids[group[s]]) else TEXT_PAD_ID for s in live]
            for s, token in zip(live, dec.step(live, text_ids), strict=True):
                out[group[s]].append(token)
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for n, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return n
    return None if len(a) == len(b) else min(len(a), len(b))


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    texts = sentences(args.sentences + args.held_out)
    with tempfile.TemporaryDirectory() as tmp:
        audio = speak(texts, Path(tmp))
    wt = published_wavtokenizer(args.seed)
    with torch.inference_mode():
        codes = [wt.encode(a, SAMPLE_RATE)[0].tolist() for a in audio]
    codebook = wt.codebook.detach().clone()
    flat = torch.tensor([c for cs in codes for c in cs])
    counts = torch.bincount(flat, minlength=codebook.shape[0])
    table = torch.randn(386, TEXT_WIDTH, generator=torch.Generator().manual_seed(args.seed + 1))
    items = list(zip(texts, codes, strict=True))
    held, seen = items[: args.held_out], items[args.held_out :]
    prepared_s = time.perf_counter() - started

    model = random_decoder(PUBLISHED_GPT, seed=args.seed + 2, lm_head_std=0.02)
    started = time.perf_counter()
    losses = train(model, seen, codebook, table, args)
    train_s = time.perf_counter() - started

    torch.set_grad_enabled(False)
    models = variants(model)
    forced = {
        "held_out": teacher_forced(models, held, codebook, table),
        "train": teacher_forced(models, seen[: args.held_out], codebook, table),
    }
    free_texts = [t for t, _ in held + seen][: args.free_sentences]
    reference = free_run(
        models["fp32"], free_texts, table, codebook, [args.free_steps] * len(free_texts), False
    )
    lengths = [len(r) for r in reference]
    free: dict[str, dict] = {}
    for name, m in models.items():
        alone = (
            reference
            if name == "fp32"
            else free_run(m, free_texts, table, codebook, lengths, False)
        )
        together = free_run(m, free_texts, table, codebook, lengths, True)
        divergence = [first_divergence(r, a) for r, a in zip(reference, alone, strict=True)]
        free[name] = {
            "identical_sentences": sum(d is None for d in divergence),
            "sentences": len(free_texts),
            "first_divergence_steps": divergence,
            "token_agreement": sum(
                x == y
                for r, a in zip(reference, alone, strict=True)
                for x, y in zip(r, a, strict=False)
            )
            / sum(lengths),
            "batch_invariant": together == alone,
        }
    return {
        "benchmark": "precision",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "out_dir")},
        "data": {
            "sentences": len(items),
            "held_out": len(held),
            "speech_tokens": int(flat.numel()),
            "distinct_codes": int((counts > 0).sum()),
            "top_code_share": float(counts.max()) / flat.numel(),
            "prepare_s": prepared_s,
        },
        "training": {
            "steps": args.steps,
            "seconds": train_s,
            "first_loss": losses[0],
            "last_loss_mean10": statistics.fmean(losses[-10:]),
        },
        "teacher_forced": forced,
        "free_running": free,
        "free_steps_per_sentence": lengths,
    }


def print_table(report: dict) -> None:
    data, tr = report["data"], report["training"]
    print(
        f"\ndata: {data['sentences']} sentences ({data['held_out']} held out), "
        f"{data['speech_tokens']} tokens, {data['distinct_codes']} distinct codes "
        f"(top {data['top_code_share']:.1%})"
    )
    print(
        f"training: {tr['steps']} steps in {tr['seconds']:.0f} s, loss {tr['first_loss']:.2f} "
        f"-> {tr['last_loss_mean10']:.2f}"
    )
    held, seen = report["teacher_forced"]["held_out"], report["teacher_forced"]["train"]
    print(f"fp32 median top-1 logit margin (held out): {held['fp32']['fp32_median_margin']:.2f}")
    print(
        f"{'precision':>13} {'TF agree held':>14} {'TF agree train':>15} {'acc held':>9} "
        f"{'free identical':>15} {'free agree':>11} {'first divergence':>20} {'batch-inv':>10}"
    )
    for name, free in report["free_running"].items():
        div = [d for d in free["first_divergence_steps"] if d is not None]
        print(
            f"{name:>13} {held[name]['agreement_with_fp32']:>14.4f} "
            f"{seen[name]['agreement_with_fp32']:>15.4f} {held[name]['accuracy']:>9.3f} "
            f"{free['identical_sentences']:>7}/{free['sentences']:<7} "
            f"{free['token_agreement']:>11.3f} {str(div) if div else '-':>20} "
            f"{free['batch_invariant']!s:>10}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--steps", type=int, default=120, help="training steps")
    parser.add_argument("--batch-size", type=int, default=4, help="sentences per training step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sentences", type=int, default=60, help="training sentences")
    parser.add_argument("--held-out", type=int, default=6, help="held-out sentences")
    parser.add_argument("--free-sentences", type=int, default=8, help="free-running sentences")
    parser.add_argument("--free-steps", type=int, default=200, help="free-running steps at most")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    out = write_report("precision", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
