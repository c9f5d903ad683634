"""Training step: loss (and its output projection) only at kept positions vs full logits, in one run.

A small Llama (2 layers, hidden 256, MLP 1024) at vocab 32k and 128k; batch 4 x 512 tokens, 60% of the positions
kept (as after cleaning with keep_ratio 0.6 on half-response data, roughly). Forward + backward + AdamW step.

    python bench/bench_training.py [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import llama, machine

from tokenclean.compute.losses import kept_token_loss_sum
from tokenclean.core.tokens import IGNORE_INDEX


def full_logits_loss(model, ids, attention, labels):
    """The plain path: logits at every position, cross-entropy with ignore_index."""
    logits = model(input_ids=ids, attention_mask=attention).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def kept_loss(model, ids, attention, labels):
    loss_sum, n = kept_token_loss_sum(model, ids, attention, labels)
    return loss_sum / max(n, 1)


def step_seconds(loss_fn, vocab: int, steps: int, batch: int, seq: int, kept: float) -> tuple[float, float]:
    model = llama(vocab=vocab, layers=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.where(torch.rand(batch, seq, generator=g) < kept, ids, IGNORE_INDEX)
    attention = torch.ones_like(ids)
    times, loss = [], None
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        loss = loss_fn(model, ids, attention, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2], float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--kept", type=float, default=0.6)
    args = ap.parse_args()
    print(machine())
    for vocab in (32000, 128256):
        full, full_loss = step_seconds(full_logits_loss, vocab, args.steps, args.batch, args.seq, args.kept)
        ours, ours_loss = step_seconds(kept_loss, vocab, args.steps, args.batch, args.seq, args.kept)
        print(f"vocab {vocab}: full logits {full:.2f} s/step, kept positions only {ours:.2f} s/step, "
              f"ratio {full / ours:.2f}x (median of {args.steps}; last losses {full_loss:.4f} vs {ours_loss:.4f})")


if __name__ == "__main__":
    main()
