"""What the score cache and pair scoring save: base losses from the cache vs computed, and base + LoRA reference
scored with one model (adapter off, then on) vs two models loaded one after the other. Measured in one run.

Workload: the first 200 GSM8K chats (shuffled with seed 0), the scoring benchmark's random-init Llama (4 layers,
hidden 256, GPT-2 vocabulary), saved as a model directory; the reference is a LoRA adapter on it (r=64, alpha=16,
all linear layers: the paper's settings, random non-zero weights), saved both as an adapter and merged into a
second model directory. fp32 on CPU. Every timing loads the models from disk, as a run does.

    python bench/bench_cache_pair.py [--samples 200] [--repeats 2] [--lora-r 64]
    python bench/bench_cache_pair.py --setup-only --hidden 2048 --layers 16 --mlp 5504   # a ~1B model's set-up
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import gpt2_tokenizer, gsm8k_conversations, llama, machine, timed

from tokenclean import api
from tokenclean.compute import modeling
from tokenclean.core.tokens import tokenize


def make_models(root: Path, lora_r: int, size: dict[str, int] | None = None) -> tuple[Path, Path, Path]:
    """(base directory, adapter directory, merged reference directory) under ``root``; ``size``: ``llama()``'s
    keyword arguments (default: the scoring benchmark's model)."""
    from peft import LoraConfig, get_peft_model

    base = root / "base"
    model = llama(**(size or {}))
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


def median_time(fn, repeats: int = 5) -> float:
    return float(np.median([timed(fn)[1] for _ in range(repeats)]))


def load_costs(base_dir: Path, adapter: Path, merged: Path) -> dict[str, float]:
    """Median seconds of what differs between the two ways: loading a model directory, attaching the adapter to
    a loaded base, and merging + unmerging it. (The scoring passes are the same work in both.)"""
    from peft import PeftModel

    def attach():
        PeftModel.from_pretrained(modeling.load_model(base_dir), str(adapter))

    attach_and_load = median_time(attach)
    peft = PeftModel.from_pretrained(modeling.load_model(base_dir), str(adapter))
    costs = {
        "load the base": median_time(lambda: modeling.load_model(base_dir)),
        "load the merged reference": median_time(lambda: modeling.load_model(merged)),
        "load the base + attach the adapter": attach_and_load,
        "merge + unmerge the adapter": median_time(lambda: (peft.merge_adapter(), peft.unmerge_adapter())),
    }
    # The merge is many small matmuls (r x in x out); on a busy machine, OpenMP threads waiting for each other
    # can dominate them, so they are also timed on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs["merge + unmerge the adapter, 1 thread"] = median_time(lambda: (peft.merge_adapter(), peft.unmerge_adapter()))
    torch.set_num_threads(threads)
    return costs


def report_setup(costs: dict[str, float]) -> None:
    for name, t in costs.items():
        print(f"{name}: {t:.3f} s (median of 5)")
    two = costs["load the base"] + costs["load the merged reference"]
    pair = costs["load the base + attach the adapter"] + costs["merge + unmerge the adapter"]
    print(f"model set-up, two models: {two:.3f} s; one model + adapter: {pair:.3f} s; saved {two - pair:+.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--setup-only", action="store_true", help="only the model set-up costs (no scoring)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=1024)
    args = ap.parse_args()
    print(machine())
    size = {"hidden": args.hidden, "layers": args.layers, "mlp": args.mlp, "heads": max(4, args.hidden // 128)}
    if args.setup_only:
        with tempfile.TemporaryDirectory() as d:
            base_dir, adapter, merged = make_models(Path(d), args.lora_r, size)
            n = sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))
            print(f"model: {size}, {n / 1e9:.2f} GB of fp32 weights; LoRA r={args.lora_r}")
            report_setup(load_costs(base_dir, adapter, merged))
        return
    tokens = tokenize(gsm8k_conversations(args.samples), gpt2_tokenizer())
    print(f"workload: {len(tokens)} samples, {tokens.meta['tokens']} tokens, {tokens.meta['response_tokens']} "
          f"response tokens; LoRA r={args.lora_r}")
    kw = {"progress": False}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        base_dir, adapter, merged = make_models(root, args.lora_r, size)
        cache_times: dict[str, list[float]] = {"computed": [], "hit": []}
        for rep in range(args.repeats):
            cache = root / f"cache-{rep}"
            fresh_process_state()
            miss, t = timed(api.score, base_dir, tokens, cache=cache, **kw)
            cache_times["computed"].append(t)
            fresh_process_state()
            hit, t = timed(api.score, base_dir, tokens, cache=cache, **kw)
            cache_times["hit"].append(t)
            assert hit.meta["cache_hit"] and np.array_equal(hit.token_loss, miss.token_loss, equal_nan=True)
        costs = load_costs(base_dir, adapter, merged)
        fresh_process_state()
        (two_base, two_ref), two_s = timed(lambda: (api.score(base_dir, tokens, **kw), api.score(merged, tokens, **kw)))
        fresh_process_state()
        (pair_base, pair_ref), pair_s = timed(api.score_pair, base_dir, adapter, tokens, **kw)
        base_diff = float(np.nanmax(np.abs(pair_base.token_loss - two_base.token_loss)))
        ref_diff = float(np.nanmax(np.abs(pair_ref.token_loss - two_ref.token_loss)))
    print(machine())
    computed, hit = min(cache_times["computed"]), min(cache_times["hit"])
    print("base losses computed (load + score + store), s: " + ", ".join(f"{t:.2f}" for t in cache_times["computed"]))
    print("base losses from the cache (fingerprint the model files + read), s: "
          + ", ".join(f"{t:.2f}" for t in cache_times["hit"]))
    print(f"cache hit vs computed (best of each): {hit:.2f} s vs {computed:.2f} s, {computed / hit:.0f}x faster")
    report_setup(costs)
    print(f"end to end once each (noisy): two models {two_s:.1f} s, pair {pair_s:.1f} s; the two scoring passes "
          f"are the same work in both")
    print(f"max |loss difference| pair vs two models: base {base_diff:.1e}, reference {ref_diff:.1e}")


if __name__ == "__main__":
    main()
