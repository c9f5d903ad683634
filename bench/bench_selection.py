"""Global selection: 10^8 float32 scores with tokenclean vs the research code's Python sort, in one run; or, with
``--out-of-core``, 10^9 scores that never sit in memory.

The Python sort (a list of (score, index) tuples, sorted, top k taken, as the paper's code does) is measured on
10^6 and 10^7 scores and extrapolated to 10^8 as n log n from the 10^7 figure; its memory is the RSS growth.

Out of core (``--out-of-core``, default n 10^9): the scores are written in chunks to a ``.npy`` file (4 GB at 10^9),
selected from a memory map into a memory-mapped mask, and the mask is then checked against an exact reference: the
k-th largest valid score by ``np.partition`` (the one step that holds the valid scores in memory, after the timing),
every entry above it kept, every entry below it dropped, and of the entries equal to it the earliest kept, as many
as k leaves. Memory is the peak of the process's anonymous RSS (what it owns; the memory-mapped file's pages in the
page cache are the kernel's, reclaimable) sampled every 50 ms, and tracemalloc's peak.

    python bench/bench_selection.py [--n 100000000] [--skip-python]
    python bench/bench_selection.py --out-of-core [--n 1e9] [--dir /tmp]   # needs 5 GB free in --dir
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import tempfile
import threading
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


def write_pool(path: Path, n: int, seed: int = 0, chunk: int = 1 << 24) -> np.memmap:
    """``pool``'s scores (40% NaN), written ``chunk`` at a time to a ``.npy`` file and memory-mapped read-only."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n,))
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        part = rng.standard_normal(min(chunk, n - i), dtype=np.float32)
        part[rng.random(len(part), dtype=np.float32) < 0.4] = np.nan
        out[i : i + len(part)] = part
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


class AnonPeak(threading.Thread):
    """Peak anonymous RSS (kB, /proc/self/status RssAnon) of this process, sampled every ``every`` s until stopped."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.peak_kb, self.done = every, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))
            self.done.wait(self.every)

    def stop(self) -> float:
        """Stop sampling; the peak in GB."""
        self.done.set()
        self.join()
        return self.peak_kb / 2**20


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def check_exact(score: np.ndarray, mask: np.ndarray, keep_ratio: float, chunk: int = 1 << 24) -> tuple[bool, int]:
    """Whether ``mask`` is the exact global top-``keep_ratio`` of the valid ``score`` entries (ties to the earlier
    entry), by ``np.partition`` of the valid scores; and k."""
    valid = np.concatenate([c[~np.isnan(c)] for c in (score[i : i + chunk] for i in range(0, len(score), chunk))])
    k = int(math.floor(keep_ratio * len(valid) + 0.5))
    kth = np.partition(valid, len(valid) - k)[len(valid) - k]
    above = int(np.count_nonzero(valid > kth))
    del valid
    ties_left, ok = k - above, True
    for i in range(0, len(score), chunk):
        s, m = np.asarray(score[i : i + chunk]), np.asarray(mask[i : i + chunk])
        tie = s == kth
        take = np.cumsum(tie) <= ties_left
        ok &= bool(np.array_equal(m, (s > kth) | (tie & take)))
        ties_left -= int(np.count_nonzero(tie & take))
    return ok and ties_left == 0, k


def out_of_core(n: int, directory: str | None) -> None:
    """Time the streamed selection of ``n`` scores on disk, its memory, and check the mask exactly."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        start = time.perf_counter()
        score = write_pool(Path(d) / "score.npy", n)
        print(f"{n:.0e} scores ({n * 4 / 1e9:.1f} GB float32 on disk, 40% NaN) written in "
              f"{time.perf_counter() - start:.0f} s")
        out = np.lib.format.open_memmap(Path(d) / "mask.npy", mode="w+", dtype=bool, shape=(n,))
        base_kb = status_kb("RssAnon")
        sampler = AnonPeak()
        sampler.start()
        tracemalloc.start()
        start = time.perf_counter()
        _, threshold = select_global_array(score, 0.6, out=out)
        out.flush()
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = sampler.stop()
        print(f"ours, streamed from a memory-mapped file ({CHUNK_TOKENS:,}-token chunks) into a memory-mapped mask: "
              f"{seconds:.1f} s, peak anonymous RSS {peak:.2f} GB ({base_kb / 2**20:.2f} GB before it), tracemalloc "
              f"peak {traced / 1e9:.3f} GB")
        start = time.perf_counter()
        same, k = check_exact(score, out, 0.6)
        print(f"exact reference (np.partition of the valid scores, ties to the earlier entry; "
              f"{time.perf_counter() - start:.0f} s): mask identical: {same}; k = {k:,}, kept {int(out.sum()):,}")


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
    ap.add_argument("--n", type=lambda t: int(float(t)), default=None, help="scores (default 1e8; --out-of-core 1e9)")
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument("--out-of-core", action="store_true", help="scores on disk, n 10^9 unless --n is given")
    ap.add_argument("--dir", help="where --out-of-core writes its files (default: the system's temporary directory)")
    args = ap.parse_args()
    print(machine())
    if args.out_of_core:
        out_of_core(args.n or 10**9, args.dir)
        print(f"ru_maxrss of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
        return
    args.n = args.n or 10**8
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
