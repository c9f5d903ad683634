"""Training step throughput on the packaged real models: fp32 vs bf16 autocast, loss at kept positions only vs
full logits, in one run (interleaved, so the shared machine's drift hits every variant alike).

Models: SmolLM2-135M-Instruct (vocabulary 49,152) and Gemma-3-270M (262,144), converted from their GGUF packages
(``common.gguf_model_dir``). Batch 2 x 256 random tokens, 60% of positions kept; full fine-tune (forward, backward,
AdamW step). bf16 autocast = ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss, as the Trainer
does with ``bf16=True``: weights and optimiser state stay fp32.

    python bench/bench_bf16_training.py [--models smollm2,gemma3] [--steps 2] [--lora]
    python bench/bench_bf16_training.py --models smollm2 --curve 12 [--lora]

``--lora``: the model wrapped in the tool's default adapter (r 64, alpha 16, dropout 0.1, every linear layer), only
the adapter trained. ``--curve N``: instead of timing, N optimizer steps (AdamW, lr 1e-4) on the first GSM8K chats,
2 per step (response tokens only), from the same weights in fp32 and under bf16 autocast: the two loss curves side by
side and their largest difference, against the step-to-step change of the fp32 curve. ``--held-out K`` with it:
every 10 steps both models' loss on K other chats, read in fp32 (what the weights learnt) and, for the bf16 run,
also under autocast (what its own training loss reads).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import torch

from bench_training import full_logits_loss, kept_loss
from common import gguf_model_dir, run_facts

from tokenclean.compute.modeling import load_model
from tokenclean.compute.adapters import adapter_sums_in_fp32
from tokenclean.core.tokens import IGNORE_INDEX

VARIANTS = {  # name: (loss function, bf16 autocast)
    "fp32, kept positions": (kept_loss, False),
    "bf16 autocast, kept positions": (kept_loss, True),
    "fp32, full logits": (full_logits_loss, False),
    "bf16 autocast, full logits": (full_logits_loss, True),
}
SUMS = "bf16 autocast + fp32 adapter sums, kept positions"  # with --lora: how the tool trains an adapter in bf16


def kept_loss_fp32_sums(model, ids, attention, labels):
    """``kept_loss`` with each LoRA layer adding its adapter's output in fp32, as the tool trains under autocast."""
    with adapter_sums_in_fp32(model):
        return kept_loss(model, ids, attention, labels)


def one_step(model, opt, loss_fn, bf16: bool, batch) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = loss_fn(model, *batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def with_lora(model):
    """``model`` under the tool's default LoRA adapter, as it trains one on a CPU (``compute.adapters.with_lora``)."""
    from tokenclean.compute.training import TrainConfig
    from tokenclean.compute.adapters import with_lora as tool_lora

    return tool_lora(model, TrainConfig(), "cpu")


def padded_batch(rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows`` (one-sample token tables) right-padded into (ids, attention, labels), labels on response tokens."""
    ids = [torch.tensor(r.flat_input_ids(), dtype=torch.long) for r in rows]
    resp = [torch.as_tensor(r.flat_response_mask()) for r in rows]
    width = max(len(x) for x in ids)
    pad = lambda x, v: torch.cat([x, torch.full((width - len(x),), v, dtype=x.dtype)])  # noqa: E731
    batch_ids = torch.stack([pad(x, 0) for x in ids])
    labels = torch.stack([pad(torch.where(m, x, IGNORE_INDEX), IGNORE_INDEX) for x, m in zip(ids, resp)])
    attention = torch.stack([pad(torch.ones_like(x), 0) for x in ids])
    return batch_ids, attention, labels


@torch.no_grad()
def held_out_loss(model, batches, bf16: bool) -> float:
    """Mean loss over every response token of ``batches`` (dropout off), in fp32 or under bf16 autocast."""
    from tokenclean.compute.losses import kept_token_loss_sum

    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss_sum, n = kept_token_loss_sum(model, *batch)
        total, count = total + float(loss_sum), count + int(n)
    model.train()
    return total / max(count, 1)


def loss_curves(name: str, steps: int, lora: bool, held_out: int = 0, every: int = 10,
                fp32_sum: bool = False) -> None:
    """fp32 and bf16-autocast fine-tunes from the same weights on the same GSM8K batches: their per-step losses.
    With ``held_out`` K: every ``every`` steps, each model's mean loss on K other chats, evaluated in fp32 (what
    the weights have learnt) and, for the bf16 run, also under autocast (what its training loss reads)."""
    from common import gsm8k_conversations

    from tokenclean.compute.modeling import load_tokenizer
    from tokenclean.core.tokens import TokenizeConfig, tokenize

    path = gguf_model_dir(name)
    if path is None:
        print(f"{name}: skipped (its GGUF package is not installed)")
        return
    tokens = tokenize(gsm8k_conversations(2 * steps + held_out), load_tokenizer(path),
                      TokenizeConfig(template="default"))
    batches = [padded_batch([tokens.select([i]), tokens.select([i + 1])]) for i in range(0, 2 * steps, 2)]
    held = [padded_batch([tokens.select([i])]) for i in range(2 * steps, 2 * steps + held_out)]
    curves, evals = {}, {}
    for bf16 in (False, True):
        run = "bf16 autocast" if bf16 else "fp32"
        torch.manual_seed(0)  # the same adapter initialisation and dropout masks in both runs
        model = load_model(path, "cpu", "float32").train()
        model = with_lora(model) if lora else model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        losses = []
        sums = functools.partial(adapter_sums_in_fp32, model) if bf16 and fp32_sum else contextlib.nullcontext
        for step, batch in enumerate(batches, 1):
            with sums(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = kept_loss(model, *batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if held and (step % every == 0 or step == steps):
                rng = torch.get_rng_state()  # evaluation draws nothing, but keep the dropout stream untouched
                evals[(run, step, "fp32")] = held_out_loss(model, held, bf16=False)
                if bf16:
                    with sums():
                        evals[(run, step, "bf16")] = held_out_loss(model, held, bf16=True)
                torch.set_rng_state(rng)
        curves[run] = losses
        del model, opt
    fp32, bf16 = curves["fp32"], curves["bf16 autocast"]
    print(f"{name}, {'LoRA' if lora else 'full fine-tune'}{' (bf16 run: adapter sums in fp32)' if fp32_sum else ''}: "
          "loss per step (2 GSM8K chats a step, lr 1e-4)")
    for i, (a, b) in enumerate(zip(fp32, bf16), 1):
        print(f"  step {i:2d}: fp32 {a:.4f}  bf16 autocast {b:.4f}  difference {b - a:+.4f}")
    moves = [abs(b - a) for a, b in zip(fp32, fp32[1:])]
    print(f"  largest |difference| {max(abs(b - a) for a, b in zip(fp32, bf16)):.4f} nats; the fp32 curve's own "
          f"step-to-step change: median {sorted(moves)[len(moves) // 2]:.4f}, largest {max(moves):.4f}")
    if held:
        n = sum(int((b[2][:, 1:] != IGNORE_INDEX).sum()) for b in held)
        print(f"  held-out loss ({held_out} other chats, {n} response tokens; dropout off):")
        for step in sorted({s for _, s, _ in evals}):
            a, b, c = (evals[("fp32", step, "fp32")], evals[("bf16 autocast", step, "fp32")],
                       evals[("bf16 autocast", step, "bf16")])
            print(f"  step {step:2d}: fp32-trained {a:.4f} | bf16-trained, read in fp32 {b:.4f} ({b - a:+.4f}), "
                  f"read under autocast {c:.4f} ({c - a:+.4f})")


def bench_model(name: str, steps: int, batch: int, seq: int, kept: float, layers: int | None, fp32_only: bool,
                lora: bool = False) -> None:
    path = gguf_model_dir(name)
    if path is None:
        print(f"{name}: skipped (its GGUF package is not installed)")
        return
    model = load_model(path, "cpu", "float32").train()
    if layers:  # the first ``layers`` blocks only (same widths and vocabulary): where bf16 is slow, a whole step is
        model.model.layers = model.model.layers[:layers]  # too slow to time
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    variants = {v: x for v, x in VARIANTS.items() if not (fp32_only and x[1])}
    if lora and not fp32_only:
        variants[SUMS] = (kept_loss_fp32_sums, True)
    vocab = model.config.vocab_size
    model = with_lora(model) if lora else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)  # tiny steps: the weights barely move between variants
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < kept, ids, IGNORE_INDEX)
    data = (ids, torch.ones_like(ids), labels)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for v, (fn, bf16) in variants.items():  # warm-up step of each variant
        one_step(model, opt, fn, bf16, data)
    for _ in range(steps):  # round-robin, so each variant sees the same load
        for v, (fn, bf16) in variants.items():
            times[v].append(one_step(model, opt, fn, bf16, data))
    best = {v: min(t) for v, t in times.items()}
    tokens = batch * seq
    print(f"{name}{f' (first {layers} layers)' if layers else ''}{', LoRA' if lora else ', full fine-tune'} "
          f"(vocabulary {vocab}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), "
          f"batch {batch} x {seq}, best of {steps} steps per variant:")
    for v, s in best.items():
        print(f"  {v}: {s:.2f} s/step ({tokens / s:.0f} tok/s); all: {', '.join(f'{t:.2f}' for t in times[v])}")
    print(f"  kept positions vs full logits (fp32): {best['fp32, full logits'] / best['fp32, kept positions']:.2f}x")
    if not fp32_only:
        print(f"  bf16 autocast vs fp32 (kept positions): "
              f"{best['fp32, kept positions'] / best['bf16 autocast, kept positions']:.2f}x; kept vs full (bf16): "
              f"{best['bf16 autocast, full logits'] / best['bf16 autocast, kept positions']:.2f}x")
    if SUMS in best:
        print(f"  bf16 autocast with fp32 adapter sums (the tool's LoRA) vs fp32 (kept positions): "
              f"{best['fp32, kept positions'] / best[SUMS]:.2f}x")
    del model, opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--kept", type=float, default=0.6)
    ap.add_argument("--layers", type=int, help="keep only the first N transformer blocks")
    ap.add_argument("--fp32-only", action="store_true", help="skip the bf16 variants (slow without native bf16)")
    ap.add_argument("--lora", action="store_true", help="train the default LoRA adapter instead of every weight")
    ap.add_argument("--curve", type=int, metavar="N", help="compare the fp32 and bf16 loss curves over N steps")
    ap.add_argument("--held-out", type=int, default=0, metavar="K", help="with --curve: every 10 steps, both "
                    "models' loss on K other chats, read in fp32 (and the bf16 run's also under autocast)")
    ap.add_argument("--fp32-adapter-sum", action="store_true", help="with --curve --lora: the bf16 run adds each "
                    "adapter's output to its frozen layer's in fp32, as the tool does (compute.training."
                    "adapter_sums_in_fp32); without it, in bf16 as peft does alone")
    args = ap.parse_args()
    print(run_facts())
    for name in args.models.split(","):
        if args.curve:
            loss_curves(name, args.curve, args.lora, args.held_out, fp32_sum=args.fp32_adapter_sum)
        else:
            bench_model(name, args.steps, args.batch, args.seq, args.kept, args.layers, args.fp32_only, args.lora)
    print(run_facts().splitlines()[-1].split("; ")[-1], "(at the end)")


if __name__ == "__main__":
    main()
