"""Does a model read its context? Two probes behind issue 13's finding that the demo's tiny base cannot learn its
tasks (results in experiments/README.md, "The demo world").

``check MODEL_DIR...``: for each model directory,
- in-context retrieval: 200 notes of three "<name> lives in <town>." records (the demo lexicon's names and towns,
  seed 0) followed by "<one of the names> lives in"; the share where the right town (all its tokens, and the full
  stop) is the likeliest of the notes' three towns (chance: 1/3);
- induction: 16 rows of 40 random token ids (ids >= 300, seed 0) repeated once; mean loss on the first copy and on
  the second. A model that copies from its context has a much lower loss on the second.

``train --hidden H --layers L --seq T --lr LR --steps N [--offsets random]``: a fresh Llama (4 heads, batch 16)
trained from scratch on rows of T random ids in which one span repeats, and nothing else; prints both copies' losses
every 50 steps. ``--offsets fixed`` (the first probe): the row is a span of T/2 ids and its copy, so the second copy
is always exactly T/2 positions back, which a purely positional "look T/2 back" head solves without reading what
came before. ``--offsets random``: a span of T/4 ids at a random place, its copy at a random later place, random ids
around them: only a head that finds the current token's earlier occurrence and copies its successor (an induction
head) lowers the second copy's loss. The two differ (experiments/README.md, "The demo world").

    python experiments/induction_probe.py check tokenclean-demo/base
    python experiments/induction_probe.py train --hidden 128 --layers 2 --seq 64 --lr 3e-3 --steps 400
    python experiments/induction_probe.py train --hidden 128 --layers 2 --seq 64 --lr 3e-3 --steps 400 --offsets random
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def retrieval(model, tokenizer, n: int = 200) -> float:
    """Share of ``n`` notes where the queried name's town outscores the notes' two other towns (chance 1/3)."""
    from tokenclean.demo.lexicon import NAMES, TOWNS

    rng = random.Random(0)
    hits = 0
    for _ in range(n):
        names, towns = rng.sample(NAMES, 3), rng.sample(TOWNS, 3)
        q = rng.randrange(3)
        notes = " ".join(f"{name} lives in {town}." for name, town in zip(names, towns))
        prompt = tokenizer(f"{notes} {names[q]} lives in", return_tensors="pt").input_ids  # (1, P)
        logp = []
        for town in towns:  # the whole town (a town may take several tokens), given the notes and the question
            cont = tokenizer(f" {town}.", add_special_tokens=False, return_tensors="pt").input_ids  # (1, C)
            ids = torch.cat([prompt, cont], 1)
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, prompt.shape[1] - 1 : -1].float(), -1)  # (C, V)
            logp.append(float(lp.gather(-1, cont[0, :, None]).sum()))
        hits += int(max(range(3), key=logp.__getitem__) == q)
    return hits / n


def copy_losses(model, rows: int = 16, half: int = 40, seed: int = 0) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of ``rows`` random sequences of ``half`` ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(300, model.config.vocab_size, (rows, half), generator=g)
    ids = torch.cat([x, x], 1)  # (rows, 2 * half)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (rows, 2 * half - 1): loss of token t + 1
    return float(nll[:, : half - 1].mean()), float(nll[:, half:].mean())


def check(paths: list[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in paths:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        first, second = copy_losses(model)
        print(f"{path}: in-context retrieval {retrieval(model, AutoTokenizer.from_pretrained(path)):.1%} (chance "
              f"33.3%); repeated random ids: loss {first:.2f} on the first copy, {second:.2f} on the second")


def repeated_rows(rows: int, seq: int, vocab: int, offsets: str, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(ids (rows, seq), first (rows, seq - 1), second (rows, seq - 1)): random ids in which one span repeats, and
    masks of the next-token targets inside the first copy and inside the second (each copy's first token, which
    nothing predicts, excluded). ``fixed``: span seq/2, copy right after it; ``random``: span seq/4 at random
    places."""
    ids = torch.randint(300, vocab, (rows, seq), generator=g)
    first, second = torch.zeros(rows, seq - 1, dtype=torch.bool), torch.zeros(rows, seq - 1, dtype=torch.bool)
    span = seq // 2 if offsets == "fixed" else seq // 4
    for r in range(rows):
        if offsets == "fixed":
            a, b = 0, span
        else:
            a = int(torch.randint(0, seq - 2 * span + 1, (1,), generator=g))
            b = int(torch.randint(a + span, seq - span + 1, (1,), generator=g))
        ids[r, b : b + span] = ids[r, a : a + span]
        first[r, a : a + span - 1] = True  # target t + 1 sits at index t
        second[r, b : b + span - 1] = True
    return ids, first, second


def train(hidden: int, layers: int, seq: int, lr: float, steps: int, vocab: int = 2048, batch: int = 16,
          offsets: str = "fixed") -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=3 * hidden, max_position_embeddings=seq))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g, start = torch.Generator().manual_seed(0), time.time()
    for step in range(1, steps + 1):
        ids, _, _ = repeated_rows(batch, seq, vocab, offsets, g)
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 50 == 0:
            probe = torch.Generator().manual_seed(10**6 + step)  # fresh rows, never trained on
            ids, first_mask, second_mask = repeated_rows(64, seq, vocab, offsets, probe)
            with torch.no_grad():
                logp = torch.log_softmax(model.eval()(ids).logits.float(), -1)
            nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (64, seq - 1): loss of token t + 1
            first, second = float(nll[first_mask].mean()), float(nll[second_mask].mean())
            model.train()
            print(f"step {step} ({time.time() - start:.0f} s): loss first copy {first:.2f}, second copy {second:.2f}",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("paths", nargs="+")
    t = sub.add_parser("train")
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seq", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--offsets", choices=["fixed", "random"], default="fixed")
    args = p.parse_args()
    if args.cmd == "check":
        check(args.paths)
    else:
        train(args.hidden, args.layers, args.seq, args.lr, args.steps, offsets=args.offsets)


if __name__ == "__main__":
    main()
