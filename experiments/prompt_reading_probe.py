"""Can a tiny from-scratch Llama learn to read a key from its prompt when a variable-length opener stands between?

The demo's tasks all need it: the fine-tuned model must carry the word, number or name of the prompt into its
answer, and an opener of 0-12 tokens ("Sure, I can help with that.") comes first. This probe isolates that skill
on synthetic ids, with nothing else to learn:

1. **Pretraining** on facts "K = V ;" and "K ; W ;" (two facts per key, V = f(K), W = g(K), 100 keys) mixed with
   filler runs, until the base knows every fact (checked: the right V ranked first after "K =").
2. **SFT** on prompts "Q <task> ... K ? A" answered by "<opener> K = f(K) ;" (task 0) or "<opener> K ; g(K) ;"
   (task 1): restate the key, then the fact the base already knows. 40 of the 200 (task, key) pairs are held out.
3. **Eval** on the held-out pairs, greedy: does the model restate K (it has written K in other tasks' answers), and
   write K and its fact?

Conditions (where the key stands relative to the answer):

- ``fixed``: the prompt is always "Q <task> F K ? A" and there is no opener: the key is a fixed number of tokens
  before the answer (a positional head suffices);
- ``anchor``: 1-5 filler tokens before the key, the key always right before "?", and an opener of 0, 4, 5, 6 or 8
  tokens (a head at "?" can read the key one back, and a head anywhere can find "?");
- ``free``: the key among 0-4 fillers on each side, and an opener (the demo's situation).

    python experiments/prompt_reading_probe.py fixed --pretrain-steps 1500 --sft-steps 600

Model: the demo's tiny base shape (hidden 128, 4 layers, 4 heads, MLP 384, tied embeddings), batch 16, sequences
of 64 ids, AdamW with cosine decay (lr 3e-3 pretraining, 1e-3 SFT). Plain PyTorch loop, not ``Trainer``: a probe of
~2,000 steps on synthetic ids, where the Trainer's per-step overhead would be most of the time.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PAD, EQ, SEP, QMARK, Q, A = range(6)
N_KEYS, N_FILLERS, BATCH, SEQ = 100, 60, 16, 64


class World:
    """Keys, their two facts, fillers, openers and the held-out (task, key) pairs, from one seed."""

    def __init__(self, cond: str, seed: int) -> None:
        self.cond, self.rng = cond, random.Random(seed)
        self.keys = list(range(6, 6 + N_KEYS))
        self.values = list(range(6 + N_KEYS, 6 + 2 * N_KEYS))
        self.fillers = list(range(6 + 2 * N_KEYS, 6 + 2 * N_KEYS + N_FILLERS))
        # opener words; the last two also name the tasks (the 5-id opener holds both: a wart of the runs recorded in
        # experiments/README.md, kept so that they reproduce; the fixed layout has no opener)
        words = list(range(self.fillers[-1] + 1, self.fillers[-1] + 21))
        self.vocab = words[-1] + 1
        self.task_words = words[18:20]
        self.openers = [[], words[0:6], words[6:10], words[10:18], words[18:20] + words[0:3]]
        self.facts = [{k: self.rng.choice(self.values) for k in self.keys} for _ in range(2)]
        pairs = [(t, k) for t in (0, 1) for k in self.keys]
        self.heldout = sorted(self.rng.sample(pairs, 40))
        self.train_pairs = [p for p in pairs if p not in set(self.heldout)]

    def fact(self, task: int, key: int) -> list[int]:
        return [key, EQ, self.facts[0][key], SEP] if task == 0 else [key, SEP, self.facts[1][key], SEP]

    def pretrain_row(self) -> list[int]:
        row: list[int] = []
        while len(row) < SEQ:
            if self.rng.random() < 0.5:
                row += self.fact(self.rng.randrange(2), self.rng.choice(self.keys))
            else:
                row += self.rng.sample(self.fillers, self.rng.randint(1, 4)) + [SEP]
        return row[:SEQ]

    def prompt(self, task: int, key: int) -> list[int]:
        r, f = self.rng, self.fillers
        if self.cond == "fixed":
            body = [f[0], key, QMARK]
        elif self.cond == "anchor":
            body = r.sample(f, r.randint(1, 5)) + [key, QMARK]
        else:
            body = r.sample(f, r.randint(0, 4)) + [key] + r.sample(f, r.randint(0, 4)) + [QMARK]
        return [Q, self.task_words[task], *body, A]

    def opener(self) -> list[int]:
        return [] if self.cond == "fixed" else self.rng.choice(self.openers)


def batches(world: World, sft: bool):
    while True:
        if not sft:
            ids = torch.tensor([world.pretrain_row() for _ in range(BATCH)])
            yield ids, ids
            continue
        rows = []
        for _ in range(BATCH):
            task, key = world.rng.choice(world.train_pairs)
            prompt = world.prompt(task, key)
            rows.append((prompt + world.opener() + world.fact(task, key), len(prompt)))
        width = max(len(r) for r, _ in rows)
        ids = torch.full((BATCH, width), PAD)
        labels = torch.full((BATCH, width), -100)
        for i, (row, n_prompt) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])  # loss on the response only
        yield ids, labels


def train(model, data, steps: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, int(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids, labels = next(data)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return loss.item()


@torch.no_grad()
def facts_known(model, world: World) -> float:
    """Share of keys whose task-0 fact is the base's top prediction after "; K =" (all 100 keys)."""
    model.eval()
    ids = torch.tensor([[SEP, k, EQ] for k in world.keys])
    top = model(input_ids=ids).logits[:, -1].argmax(-1).tolist()
    return sum(t == world.facts[0][k] for t, k in zip(top, world.keys)) / len(world.keys)


@torch.no_grad()
def heldout_accuracy(model, world: World, draws: int = 3) -> tuple[float, float]:
    """(key restated, key and fact right) over the held-out pairs, ``draws`` prompts each, greedy after the opener."""
    model.eval()
    key_ok = both_ok = 0
    for task, key in world.heldout:
        for _ in range(draws):
            ids = torch.tensor([world.prompt(task, key) + world.opener()])
            out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=PAD)[0, ids.shape[1]:].tolist()
            key_ok += out[:1] == [key]
            both_ok += out == world.fact(task, key)[:3]
    n = draws * len(world.heldout)
    return key_ok / n, both_ok / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cond", choices=("fixed", "anchor", "free"))
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    world = World(args.cond, args.seed)
    config = LlamaConfig(vocab_size=world.vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=PAD)
    model = LlamaForCausalLM(config)
    start = time.perf_counter()
    pre_loss = train(model, batches(world, sft=False), args.pretrain_steps, 3e-3)
    known = facts_known(model, world)
    sft_loss = train(model, batches(world, sft=True), args.sft_steps, 1e-3)
    key_acc, both_acc = heldout_accuracy(model, world)
    print(f"{args.cond}: pretrain {args.pretrain_steps} steps (loss {pre_loss:.2f}), base knows {known:.0%} of the "
          f"facts; SFT {args.sft_steps} steps (loss {sft_loss:.2f}); held-out pairs: key restated {key_acc:.0%}, "
          f"key and fact {both_acc:.0%}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
