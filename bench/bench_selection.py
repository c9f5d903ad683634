"""Global selection: 10^8 float32 scores with tokenclean vs the research code's Python sort, in one run.

The Python sort (a list of (score, index) tuples, sorted, top k taken, as the paper's code does) is measured on
10^6 and 10^7 scores and extrapolated to 10^8 as n log n from the 10^7 figure; its memory is the RSS growth.

    python bench/bench_selection.py [--n 100000000] [--skip-python]
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from common import machine

from tokenclean.selection.select import SelectConfig, select_tokens
from tokenclean.selection.stream import select_global_array
from tokenclean.core.threshold import CHUNK_TOKENS


def pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a pool of n tokens: 40% prompt tokens (NaN), samples of ~200 tokens."""
    rng = np.random.default_rng(seed)
    score = rng.standard_normal(n, dtype=np.float32)
    score[rng.random(n, dtype=np.float32) < 0.4] = np.nan
    offsets = np.r_[0, np.sort(rng.integers(0, n, n // 200)), n].astype(np.int64)
    return score, offsets


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def python_sort(score: np.ndarray, keep_ratio: float) -> tuple[float, float]:
    """The research code's way: Python tuples, sorted. Returns (seconds, MB of RSS growth)."""
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    items = [(s, i) for i, s in enumerate(score.tolist()) if s == s]
    items.sort(key=lambda t: t[0], reverse=True)
    keep = {i for _, i in items[: round(keep_ratio * len(items))]}
    seconds = time.perf_counter() - start
    grown = rss_mb() - before
    del items, keep
    return seconds, grown


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10**8)
    ap.add_argument("--skip-python", action="store_true")
    args = ap.parse_args()
    print(machine())
    score, offsets = pool(args.n)
    print(f"{args.n:.0e} scores ({score.nbytes / 1e9:.1f} GB float32), {len(offsets) - 1} samples")

    tracemalloc.start()
    start = time.perf_counter()
    mask, counts = select_tokens(score, offsets, SelectConfig(keep_ratio=0.6))
    ours_s = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"ours, in memory (select_tokens, global): {ours_s:.2f} s, peak {peak / 1e9:.2f} GB beyond the scores "
          f"(tracemalloc; includes the 0.1 GB output mask); kept {counts['kept_tokens']}")

    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "score.npy", score)
        mapped = np.load(Path(d) / "score.npy", mmap_mode="r")
        out = np.lib.format.open_memmap(Path(d) / "mask.npy", mode="w+", dtype=bool, shape=score.shape)
        tracemalloc.start()
        start = time.perf_counter()
        select_global_array(mapped, 0.6, out=out)
        stream_s = time.perf_counter() - start
        stream_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        same = bool(np.array_equal(out, mask))
    print(f"ours, streamed from a memory-mapped file (threshold passes, {CHUNK_TOKENS:,}-token chunks): {stream_s:.2f} s, peak "
          f"{stream_peak / 1e9:.2f} GB; identical mask: {same}")

    if not args.skip_python:
        figures = {}
        for n in (10**6, 10**7):
            figures[n] = python_sort(score[:n], 0.6)
            print(f"python sort over {n:.0e}: {figures[n][0]:.1f} s, RSS +{figures[n][1]:.0f} MB")
        s7, m7 = figures[10**7]
        scale = args.n / 1e7 * math.log(args.n) / math.log(1e7)
        est_s, est_mb = s7 * scale, m7 * args.n / 1e7
        print(f"python sort over {args.n:.0e} (extrapolated from 10^7 as n log n; memory linear): ~{est_s:.0f} s, "
              f"~{est_mb / 1e3:.0f} GB; ours is ~{est_s / ours_s:.0f}x faster")
    print(f"ru_maxrss of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")


if __name__ == "__main__":
    main()
