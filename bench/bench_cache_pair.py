"""What the score cache and pair scoring save: base losses from the cache vs computed, and base + LoRA reference
scored with one model (adapter off, then on) vs two models loaded one after the other. Measured in one run.

Workload: the first 300 GSM8K chats (shuffled with seed 0), the scoring benchmark's random-init Llama (4 layers,
hidden 256, GPT-2 vocabulary), saved as a model directory; the reference is a LoRA adapter on it (r=64, alpha=16,
all linear layers: the paper's settings, random non-zero weights), saved both as an adapter and merged into a
second model directory. fp32 on CPU. Every timing loads the models from disk, as a run does.

    python bench/bench_cache_pair.py [--samples 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import gpt2_tokenizer, gsm8k_conversations, llama, machine, timed

from tokenclean import api, modeling
from tokenclean.tokens import tokenize


def make_models(root: Path, lora_r: int) -> tuple[Path, Path, Path]:
    """(base directory, adapter directory, merged reference directory) under ``root``."""
    from peft import LoraConfig, get_peft_model

    base = root / "base"
    model = llama()
    model.save_pretrained(base)
    gpt2_tokenizer().save_pretrained(base)
    adapted = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    adapted.save_pretrained(root / "adapter")
    adapted.merge_and_unload().save_pretrained(root / "merged")
    gpt2_tokenizer().save_pretrained(root / "merged")
    return base, root / "adapter", root / "merged"


def fresh_process_state() -> None:
    """Forget the per-process file hashes, so every timing includes fingerprinting the model files, as a new
    run's process does."""
    modeling._FILE_HASH_CACHE.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=64)
    args = ap.parse_args()
    print(machine())
    tokens = tokenize(gsm8k_conversations(args.samples), gpt2_tokenizer())
    print(f"workload: {len(tokens)} samples, {tokens.meta['tokens']} tokens, {tokens.meta['response_tokens']} "
          f"response tokens; LoRA r={args.lora_r}")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        base_dir, adapter, merged = make_models(root, args.lora_r)
        kw = {"progress": False}
        times: dict[str, list[float]] = {}
        for rep in range(args.repeats):  # alternate the variants, so drift in the machine's speed hits all
            cache = root / f"cache-{rep}"
            fresh_process_state()
            miss, t = timed(api.score, base_dir, tokens, cache=cache, **kw)
            times.setdefault("base, computed (cache miss: load + score + store)", []).append(t)
            fresh_process_state()
            hit, t = timed(api.score, base_dir, tokens, cache=cache, **kw)
            times.setdefault("base, cache hit (fingerprint + read)", []).append(t)
            assert hit.meta["cache_hit"] and np.array_equal(hit.token_loss, miss.token_loss, equal_nan=True)

            fresh_process_state()
            (two_base, two_ref), t = timed(lambda: (api.score(base_dir, tokens, **kw), api.score(merged, tokens, **kw)))
            times.setdefault("base + reference, two models", []).append(t)
            fresh_process_state()
            (pair_base, pair_ref), t = timed(api.score_pair, base_dir, adapter, tokens, **kw)
            times.setdefault("base + reference, one model (pair)", []).append(t)

            fresh_process_state()
            _, t = timed(api.score, merged, tokens, **kw)
            times.setdefault("reference only (base cached), merged model", []).append(t)
            fresh_process_state()
            _, t = timed(api.score_pair, base_dir, adapter, tokens, cache=cache, **kw)
            times.setdefault("reference only (base cached), pair: adapter on the base", []).append(t)
        base_diff = float(np.nanmax(np.abs(pair_base.token_loss - two_base.token_loss)))
        ref_diff = float(np.nanmax(np.abs(pair_ref.token_loss - two_ref.token_loss)))
    print(machine())
    for name, ts in times.items():
        print(f"{name}: " + ", ".join(f"{t:.2f}" for t in ts) + f" s (best {min(ts):.2f} s)")
    best = {k: min(v) for k, v in times.items()}
    names = list(best)
    print(f"cache hit vs computed: {best[names[0]] / best[names[1]]:.0f}x faster")
    print(f"pair vs two models: {best[names[2]] / best[names[3]]:.2f}x (>1: the pair is faster)")
    print(f"reference only, pair vs merged: {best[names[4]] / best[names[5]]:.2f}x (>1: the pair is faster)")
    print(f"max |loss difference| pair vs two models: base {base_diff:.1e}, reference {ref_diff:.1e}")


if __name__ == "__main__":
    main()
