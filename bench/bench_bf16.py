"""bf16 vs fp32 scoring on the packaged real models: speed, % of each dtype's matmul peak, and agreement; and,
given its path, the paper's own scoring script side by side. All ratios come from one run.

Workload: the first ``--samples`` GSM8K chats (shuffled with seed 0), default template (the paper's format).
Models: SmolLM2-135M-Instruct and Gemma-3-270M, converted from their GGUF packages (``common.gguf_model_dir``).
Scores need a base and a reference: the reference is the base after ``--ref-steps`` AdamW steps (lr 1e-4) on the
first 8 chats, which gives scores of a realistic spread. Variants, each scoring base and reference:
- fp32: fp32 weights (what ``--dtype auto`` picks for scoring, on every device since 2026-12-07);
- bf16: bf16 weights, the output projection in bf16, its log-softmax in fp32 (``--dtype bfloat16``);
- bf16 trunk + fp32 head: the same with the head's matmul in fp32 (cast per chunk; measured, not the default);
- bf16, fp32 last 1 or 2 layer(s) + head: the trunk's first layers in bf16, the rest in fp32;
- bf16 autocast: fp32 weights and residual stream, every matmul (the head's too) in bf16 under ``torch.autocast``.
Without native bf16 the agreement over all chats is emulated (``Bf16Emulation``: fp32 speed, bf16 values), and the
emulation is checked against real bf16 arithmetic on the ``--real-chats`` shortest chats.
Agreement: max/mean |loss difference| against fp32 and the share of fp32's global top-60% (by score) that the
variant also selects. % of peak: FLOPs needed (2 x non-embedding parameters per token + 2 x hidden x vocab per
response token) / seconds / best n^3 matmul rate *of the variant's dtype*, probed between the runs.

    python bench/bench_bf16.py [--samples 64] [--models smollm2,gemma3]
                               [--paper-script /tmp/paper/calculate_token_loss.py]

With ``--paper-script`` (a copy of UCSC-REAL/TokenCleaning's scripts/calculate_token_loss.py kept outside this
repository, run through ``--paper-driver``, a scratch driver that stubs its deepspeed import), the script (in fp32,
and in the bf16 mixed precision of its launch config) and our ``score`` end to end (load model, tokenize, score,
write; ``--dtype auto``, i.e. fp32, and ``--dtype bfloat16``) each run in a subprocess under ``/usr/bin/time -v``
(wall time, peak RSS), and the script's per-token losses are compared with ours (fp32) on its own encoding.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import gguf_model_dir, gsm8k_conversations, matmul_flops, non_embedding_params, run_facts, \
    selection_agreement

import tokenclean.compute.losses as losses_module
from tokenclean.compute.losses import kept_token_loss_sum
from tokenclean.compute.modeling import load_model, load_tokenizer
from tokenclean.compute.scoring import ScoreConfig, score_tokens
from tokenclean.core.tokens import TokenizeConfig, make_labels, tokenize

FP32_TAILS = (1, 2)
"""Decoder layers kept in fp32 (with the final norm and the head) in the mixed variants: the mix the issue asks
for when bf16 trunk + fp32 head misses the agreement target."""


def tail_variant(tail: int) -> str:
    return f"bf16, fp32 last {tail} layer(s) + head"


AUTOCAST = "bf16 autocast (fp32 weights and residual stream)"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16 trunk + fp32 head": torch.bfloat16,
          **{tail_variant(tail): torch.bfloat16 for tail in FP32_TAILS}, AUTOCAST: torch.bfloat16}


def variant_context(variant: str):
    """What scoring runs under for ``variant``: the fp32 head for the mixed variants, autocast for AUTOCAST (its
    matmuls, the head's included, in bf16; norms, softmaxes and the residual adds in fp32, as torch's CPU autocast
    lists them)."""
    if variant == AUTOCAST:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return fp32_head() if variant not in ("fp32", "bf16") else contextlib.nullcontext()


@contextlib.contextmanager
def fp32_head():
    """Within the block, scoring's output projection multiplies in fp32 (hidden and weight cast per chunk)."""
    plain = losses_module.head_losses

    def head(hidden, weight, targets, bias=None, chunk_tokens=None):
        return plain(hidden.float(), weight.float(), targets, None if bias is None else bias.float(), chunk_tokens)

    losses_module.head_losses = head
    try:
        yield
    finally:
        losses_module.head_losses = plain


class Bf16Emulation(torch.overrides.TorchFunctionMode):
    """bf16 numerics at fp32 speed, for CPUs whose bf16 matmuls are too slow to score a real workload (this AVX2
    EPYC: ``torch.mm`` in bf16 ran at 0.12 GFLOP/s). Every float32 tensor an op returns is rounded to bf16 in
    place: the model's weights (rounded beforehand) and activations hold bf16 values, while products accumulate
    in fp32, as oneDNN's bf16 kernels do. ``active = False`` pauses it (the fp32 log-softmax of the head)."""

    active = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (self.active and isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.is_contiguous()
                and out.numel() and (torch.is_inference_mode_enabled() or not out.is_inference())):
            # (a strided view, e.g. expand, is of an already-rounded tensor; results leaving inference mode are)
            out.copy_(out.to(torch.bfloat16))
        return out


@contextlib.contextmanager
def emulated_bf16(model, fp32_head_matmul: bool, fp32_tail: int = 0):
    """Within the block, scoring ``model`` runs under ``Bf16Emulation`` from the start of each forward of its body
    up to the head (or up to its last ``fp32_tail`` decoder layers, which then run in fp32 with the final norm).
    The head's logits are rounded to bf16 (as a bf16 matmul writes them) unless ``fp32_head_matmul``; their
    log-softmax, and what scoring does with the losses after the head, are fp32 (as with real bf16 weights)."""
    plain = losses_module.head_losses
    mode = Bf16Emulation()
    mode.active = False  # from the body's first forward on
    body = model.get_decoder()
    hooks = [body.register_forward_pre_hook(lambda *_: setattr(mode, "active", True))]
    if fp32_tail:
        hooks.append(body.layers[-fp32_tail].register_forward_pre_hook(lambda *_: setattr(mode, "active", False)))
    hooks += fp32_inside(model, mode)

    def head(hidden, weight, targets, bias=None, chunk_tokens=None):
        mode.active = False  # until the next forward of the body
        if fp32_head_matmul:
            return plain(hidden, weight, targets, bias, chunk_tokens)
        out = torch.empty(len(targets))
        for i in range(0, len(targets), 512):  # the same reduction as head_losses, on bf16-rounded logits
            logits = torch.mm(weight, hidden[i : i + 512].T).bfloat16().float()  # (V, c)
            cols = torch.arange(logits.shape[1])
            out[i : i + 512] = torch.logsumexp(logits, 0) - logits[targets[i : i + 512], cols]
        return out

    losses_module.head_losses = head
    try:
        with mode:
            yield
    finally:
        losses_module.head_losses = plain
        for h in hooks:
            h.remove()


FP32_INSIDE = ("RotaryEmbedding", "RMSNorm")
"""Modules (by class-name suffix) that a bf16 model computes in fp32 inside and casts to bf16 on the way out:
transformers' rotary embeddings (angles from fp32 positions: in bf16, positions above 256 are not exact, so rounding
them turns every high-frequency angle to noise) and RMS norms (the variance in fp32)."""


def fp32_inside(model, mode: Bf16Emulation) -> list:
    """Hooks that pause ``mode`` inside each ``FP32_INSIDE`` module of ``model`` and round its outputs to bf16 on
    the way out when ``mode`` was active on the way in, as the real bf16 model's casts do."""
    outer = []

    def enter(*_):
        outer.append(mode.active)
        mode.active = False

    def leave(_module, _args, output):
        mode.active = outer.pop()
        if mode.active:
            for t in output if isinstance(output, tuple) else (output,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    t.copy_(t.to(torch.bfloat16))
        return output

    found = [m for m in model.modules() if type(m).__name__.endswith(FP32_INSIDE)]
    return [h for m in found for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]


def bf16_valued(model, fp32_tail: int = 0):
    """A copy of ``model`` in fp32 whose weights hold bf16 values (what ``model.to(torch.bfloat16)`` keeps), except
    the last ``fp32_tail`` decoder layers and the final norm, which keep their fp32 weights when ``fp32_tail``."""
    out = copy.deepcopy(model).to(torch.bfloat16).to(torch.float32)
    if fp32_tail:
        body, plain = out.get_decoder(), model.get_decoder()
        for mine, theirs in [*zip(body.layers[-fp32_tail:], plain.layers[-fp32_tail:]), (body.norm, plain.norm)]:
            mine.load_state_dict(theirs.state_dict())
    return out


def mixed_bf16(model32, tail: int):
    """Real arithmetic: a bf16 copy of ``model32`` whose last ``tail`` decoder layers and final norm are fp32; what
    enters the first fp32 layer (hidden states, rotary tables) is cast to fp32. Score it under ``fp32_head``."""
    model = copy.deepcopy(model32).to(torch.bfloat16)
    body = model.get_decoder()
    for module in [*body.layers[-tail:], body.norm]:
        module.float()

    def to_fp32(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        return tuple(to_fp32(v) for v in value) if isinstance(value, tuple) else value

    body.layers[-tail].register_forward_pre_hook(
        lambda _, args, kwargs: (to_fp32(args), {k: to_fp32(v) for k, v in kwargs.items()}), with_kwargs=True)
    return model


def emulated_variants(base32, ref32, tokens, fp32: tuple | None = None) -> dict:
    """{variant: (base losses, ref losses)} with bf16 emulated (``Bf16Emulation``); fp32 computed plainly, unless
    ``fp32`` already holds those two arrays for ``tokens``."""
    def losses(model, fp32_head_matmul: bool, tail: int = 0):
        with emulated_bf16(model, fp32_head_matmul, tail):
            return score_tokens(model, tokens, ScoreConfig(), progress=False).token_loss

    found = {"fp32": fp32 or tuple(score_tokens(m, tokens, ScoreConfig(), progress=False).token_loss
                                   for m in (base32, ref32))}
    pair = tuple(bf16_valued(m) for m in (base32, ref32))
    found["bf16"] = tuple(losses(m, False) for m in pair)
    found["bf16 trunk + fp32 head"] = tuple(losses(m, True) for m in pair)
    for tail in FP32_TAILS:
        found[tail_variant(tail)] = tuple(
            losses(bf16_valued(m, tail), True, tail) for m in (base32, ref32))
    return found


def reference(base, tokens, steps: int, rows: int = 8):
    """A copy of ``base`` after ``steps`` AdamW steps (lr 1e-4) on the first ``rows`` chats' response tokens."""
    ref = copy.deepcopy(base).train()
    sub = tokens.select(np.arange(rows))
    width = int(sub.lengths.max())
    ids = np.zeros((rows, width), np.int64)
    labels = np.full((rows, width), -100, np.int64)
    flat_labels = make_labels(sub.flat_input_ids(), sub.flat_response_mask())
    for r in range(rows):
        a, b = sub.offsets[r], sub.offsets[r + 1]
        ids[r, : b - a], labels[r, : b - a] = sub.flat_input_ids()[a:b], flat_labels[a:b]
    ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)
    attention = torch.from_numpy((np.arange(width)[None] < sub.lengths[:, None]).astype(np.int64))
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    for _ in range(steps):
        loss_sum, n = kept_token_loss_sum(ref, ids_t, attention, labels_t)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return ref.eval()


def score_variants(models32: tuple, tokens, repeats: int, probe_n: int, variants=tuple(DTYPES)
                   ) -> tuple[dict, dict, list]:
    """Scores ``tokens`` with each of ``variants`` of each of ``models32`` (fp32 models; bf16 copies are made), in
    real arithmetic, ``repeats`` times round-robin with matmul probes (``probe_n``^3) between. Returns
    ({variant: tuple of losses per model}, {variant: [seconds per pass]}, [(fp32, bf16) FLOP/s probes])."""
    models = {"fp32": models32, AUTOCAST: models32}
    if "bf16" in variants or "bf16 trunk + fp32 head" in variants:
        models["bf16"] = models["bf16 trunk + fp32 head"] = tuple(copy.deepcopy(m).to(torch.bfloat16)
                                                                  for m in models32)
    for tail in FP32_TAILS:
        if tail_variant(tail) in variants:
            models[tail_variant(tail)] = tuple(mixed_bf16(m, tail) for m in models32)
    models = {v: models[v] for v in variants}
    found, seconds, probes = {}, {v: [] for v in models}, []

    def probe():
        probes.append((matmul_flops(probe_n), matmul_flops(probe_n, dtype=torch.bfloat16)))

    for _ in range(repeats):
        probe()
        for v, group in models.items():
            with variant_context(v):
                out = []
                for m in group:
                    s = score_tokens(m, tokens, ScoreConfig(), progress=False)
                    seconds[v].append(s.meta["seconds"])
                    out.append(s.token_loss)
            found[v] = tuple(out)
    probe()
    return found, seconds, probes


def bench_scoring(name: str, samples: int, speed_samples: int | None, repeats: int, ref_steps: int,
                  real_chats: int, real_autocast: bool) -> None:
    """Speed (real arithmetic) and agreement (real bf16 where the CPU has it, emulated elsewhere) of each variant."""
    from tokenclean.compute.hardware import cpu_has_native_bf16

    path = gguf_model_dir(name)
    if path is None:
        print(f"{name}: skipped (its GGUF package is not installed)")
        return
    native = cpu_has_native_bf16()
    tokens = tokenize(gsm8k_conversations(samples), load_tokenizer(path), TokenizeConfig(template="default"))
    base32 = load_model(path, "cpu", "float32").eval()
    start = time.perf_counter()
    ref32 = reference(base32, tokens, ref_steps)
    ref_seconds = time.perf_counter() - start
    # Without native bf16, torch.mm in bf16 is ~1000x slower than fp32 here: time it on the shortest chats only.
    speed_samples = speed_samples or (samples if native else 2)
    speed_tokens = tokens.select(np.argsort(tokens.lengths, kind="stable")[:speed_samples])
    n_tokens, n_scored = speed_tokens.meta["tokens"], speed_tokens.meta["response_tokens"]
    cfg = base32.config
    need = 2 * non_embedding_params(base32) * n_tokens + 2 * cfg.hidden_size * cfg.vocab_size * n_scored
    print(f"\n{name}: {path}; vocabulary {cfg.vocab_size}; reference made in {ref_seconds:.0f} s")
    print(f"speed: {speed_samples} chats, {n_tokens} tokens, {n_scored} response tokens, {need / 1e9:.1f} GFLOP per "
          f"pass; real arithmetic in each dtype, base model, best of {repeats}")
    pair_speed = (base32,) if not native or speed_samples != samples else (base32, ref32)
    found, seconds, probes = score_variants(pair_speed, speed_tokens, repeats, 2048 if native else 512)
    peak = {torch.float32: max(p[0] for p in probes), torch.bfloat16: max(p[1] for p in probes)}
    print(f"matmul {2048 if native else 512}^3 probes, GFLOP/s (fp32, bf16): "
          + "; ".join(f"{a / 1e9:.2f}, {b / 1e9:.2f}" for a, b in probes))
    best32 = min(seconds["fp32"])
    for v in seconds:
        sec = min(seconds[v])
        print(f"  {v}: {sec:.2f} s ({n_tokens / sec:.0f} tok/s; passes {', '.join(f'{x:.1f}' for x in seconds[v])}), "
              f"{best32 / sec:.2f}x fp32's speed, {need / sec / peak[DTYPES[v]]:.0%} of the {DTYPES[v]} matmul peak "
              f"({peak[DTYPES[v]] / 1e9:.2f} GFLOP/s)")
    if not native and real_chats:
        # The emulation checked against real arithmetic on the shortest chats (the real bf16 kernels here are slow)
        short = tokens.select(np.argsort(tokens.lengths, kind="stable")[:real_chats])
        real = score_variants((base32, ref32), short, 1, 512, ("fp32", "bf16", "bf16 trunk + fp32 head", AUTOCAST))[0]
        report_agreement(real, short, "real bf16 arithmetic")
        report_agreement(emulated_variants(base32, ref32, short, real["fp32"]), short, "the same chats, bf16 emulated")
    if not (native and speed_samples == samples):
        found = emulated_variants(base32, ref32, tokens) if not native else \
            score_variants((base32, ref32), tokens, 1, 2048)[0]
    report_agreement(found, tokens, "real bf16" if native else "bf16 emulated at fp32 speed (Bf16Emulation)")
    if not native and real_autocast:
        # autocast has no emulation (which ops it rounds is torch's list), and its real kernels are the fast ones
        autocast = score_variants((base32, ref32), tokens, 1, 512, (AUTOCAST,))[0]
        report_agreement({"fp32": found["fp32"], **autocast}, tokens, "real bf16 autocast arithmetic")


def report_agreement(found: dict, tokens, how: str) -> None:
    fp32_base, fp32_ref = found["fp32"]
    fp32_score = fp32_base - fp32_ref
    scored = ~np.isnan(fp32_base)
    print(f"agreement, {how}: {len(tokens)} chats, {int(scored.sum())} response tokens; fp32 scores mean "
          f"{np.nanmean(fp32_score):.3f}, std {np.nanstd(fp32_score):.3f} nats")
    for v, (b, r) in found.items():
        if v == "fp32":
            continue
        diff = np.abs(b[scored] - fp32_base[scored])
        score_diff = np.abs((b - r)[scored] - fp32_score[scored])
        # how many tokens so small a difference can move across the selection's threshold at all
        threshold = np.quantile(fp32_score[scored], 0.4)
        near = np.mean(np.abs(fp32_score[scored] - threshold) < score_diff.mean())
        print(f"  {v}: |loss difference| max {diff.max():.4f}, mean {diff.mean():.5f}; |score difference| mean "
              f"{score_diff.mean():.5f}; global top-60% agreement {selection_agreement(fp32_score, b - r):.2%} (by "
              f"loss alone {selection_agreement(fp32_base, b):.2%}); {near:.2%} of the tokens score within that mean "
              f"of the threshold")


def ours_end_to_end(model_dir: str, jsonl: str, out_dir: str, dtype: str = "auto") -> None:
    """The subprocess side of the side-by-side: load (``--dtype`` ``dtype``, under scoring's rule), tokenize, score,
    write; prints the wall."""
    from tokenclean.compute.hardware import scoring_dtype
    from tokenclean.core.data import Conversation

    start = time.perf_counter()
    rows = [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    convs = [Conversation(str(i), r["messages"], i) for i, r in enumerate(rows)]
    tokens = tokenize(convs, load_tokenizer(model_dir), TokenizeConfig(template="default"))
    scores = score_tokens(load_model(model_dir, "cpu", scoring_dtype(dtype)), tokens, ScoreConfig(), progress=False)
    scores.save(out_dir)
    np.savez(Path(out_dir) / "flat.npz", loss=scores.token_loss, ids=tokens.flat_input_ids(), offsets=tokens.offsets)
    print(f"OURS_WALL_S {time.perf_counter() - start:.2f} dtype {scores.meta['compute']['dtype']}", flush=True)


def timed_subprocess(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds printed by the command, peak RSS in GB from /usr/bin/time -v, output)."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed:\n{text[-3000:]}")
    wall = float(re.search(r"(?:PAPER|OURS)_WALL_S ([\d.]+)", text).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1e6
    return wall, rss, text


def side_by_side(name: str, samples: int, script: str, driver: str, batch: int, repeats: int) -> None:
    path = gguf_model_dir(name)
    if path is None:
        print(f"{name}: side-by-side skipped (its GGUF package is not installed)")
        return
    work = Path(tempfile.mkdtemp(prefix=f"paper-vs-ours-{name}-"))
    jsonl = work / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": c.messages}) + "\n" for c in gsm8k_conversations(samples)))
    # the paper's script in fp32 and in its launch config's mixed precision (accelerate bf16 autocast); ours under
    # --dtype auto (fp32 for scoring) and --dtype bfloat16; alternated, so every variant sees the machine's drift
    variants = [("paper", "fp32"), ("paper", "bf16"), ("ours", "auto"), ("ours", "bfloat16")]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for who, precision in variants:
            out = work / f"{who}-{precision}"
            out.mkdir(exist_ok=True)
            cmd = ([sys.executable, driver, script, str(path), str(jsonl), str(out), str(batch), precision]
                   if who == "paper" else
                   [sys.executable, __file__, "--ours-end-to-end", str(path), str(jsonl), str(out), precision])
            wall, rss, _ = timed_subprocess(cmd)
            runs.setdefault((who, precision), []).append((wall, rss))
    best = {v: min(r) for v, r in runs.items()}
    print(f"\n{name}, {samples} chats, end to end (load, tokenize, score, write), best of {repeats}:")
    for (who, precision), (wall, _) in best.items():
        print(f"  {'paper' + chr(39) + 's script' if who == 'paper' else 'ours'} {precision}: {wall:.1f} s "
              f"(runs {[round(r[0], 1) for r in runs[who, precision]]}), peak RSS "
              f"{max(r[1] for r in runs[who, precision]):.2f} GB")
    ours32 = best["ours", "auto"][0]
    print(f"  ours (auto = fp32) vs the paper's fp32: {best['paper', 'fp32'][0] / ours32:.2f}x; vs its bf16 mixed "
          f"precision: {best['paper', 'bf16'][0] / ours32:.2f}x; ours bfloat16 vs its bf16: "
          f"{best['paper', 'bf16'][0] / best['ours', 'bfloat16'][0]:.2f}x")
    for precision in ("fp32", "bf16"):
        print(f"  paper {precision}: " + agreement_with_paper(work / f"paper-{precision}", path))


def agreement_with_paper(paper_dir: Path, model_dir: Path) -> str:
    """Our per-token losses of the paper's own encoding of each chat (its input ids; response tokens = its labels
    != -100), compared with the paper's losses at those positions. (Its encoding has no leading BOS where our
    default template adds the tokenizer's, so the same ids are scored rather than each side's own.)"""
    import pyarrow as pa

    from tokenclean.compute.scoring import compute_token_loss
    from tokenclean.core.tokens import TokenTable

    paper_losses = torch.load(next(paper_dir.glob("token_losses_*.pt")), weights_only=True)
    encoded = json.loads((paper_dir / "encoded.json").read_text())
    table = TokenTable(pa.table({
        "sample_id": pa.array([str(i) for i in range(len(encoded))]),
        "input_ids": pa.array([e["input_ids"] for e in encoded], pa.list_(pa.int32())),
        "response_mask": pa.array([[lab != -100 for lab in e["labels"]] for e in encoded], pa.list_(pa.bool_())),
    }))
    ours = compute_token_loss(load_model(model_dir, "cpu", "float32"), table, progress=False)  # ours in fp32
    theirs = np.concatenate([np.asarray(p[: len(e["input_ids"])], np.float32) for p, e in zip(paper_losses, encoded)])
    scored = ~np.isnan(ours)
    d = np.abs(ours[scored] - theirs[scored])
    return (f"same ids (the paper's encoding), {int(scored.sum())} response tokens: |loss difference| ours vs the "
            f"paper's script max {d.max():.2e}, mean {d.mean():.2e}; global top-60% by loss agreement "
            f"{selection_agreement(ours, np.where(scored, theirs, np.nan)):.2%}")


def main() -> None:
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--ours-end-to-end":
        return ours_end_to_end(*sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--speed-samples", type=int, help="chats timed per variant (default: all where the CPU has "
                    "native bf16, the 2 shortest elsewhere)")
    ap.add_argument("--ref-steps", type=int, default=3)
    ap.add_argument("--real-chats", type=int, default=16, help="without native bf16: the shortest chats on which "
                    "the emulation is checked against real bf16 arithmetic (0: not checked)")
    ap.add_argument("--real-autocast", action="store_true", help="without native bf16: the autocast variant's "
                    "agreement over all chats in real arithmetic too (~0.15x fp32's speed here)")
    ap.add_argument("--paper-script", help="path to the paper's calculate_token_loss.py (outside this repository)")
    ap.add_argument("--paper-driver", default="/tmp/paper/driver.py")
    ap.add_argument("--paper-batch", type=int, default=6,
                    help="the paper's BATCH_SIZE_PER_GPU (as in its fixed_model_cleaning.sh)")
    ap.add_argument("--paper-repeats", type=int, default=2)
    ap.add_argument("--skip-scoring", action="store_true", help="only the side-by-side")
    args = ap.parse_args()
    print(run_facts())
    for name in args.models.split(","):
        if not args.skip_scoring:
            bench_scoring(name, args.samples, args.speed_samples, args.repeats, args.ref_steps, args.real_chats,
                          args.real_autocast)
        if args.paper_script:
            side_by_side(name, args.samples, args.paper_script, args.paper_driver, args.paper_batch, args.paper_repeats)
    print("at the end: " + run_facts().splitlines()[-1].split("; ")[-1])


if __name__ == "__main__":
    main()
