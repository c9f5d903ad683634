"""Global selection for pools larger than memory: exact, streamed, equal to ``select_tokens`` (level ``global``).

The scores are read in chunks, three times, with memory bounded by the chunk size:

1. count the candidates (non-NaN scores) and histogram the top 16 bits of each score's *order key* (the float32
   bit pattern mapped to a uint32 that sorts like the float);
2. histogram the low 16 bits of the scores in the bucket holding the k-th largest: this gives the k-th largest
   score exactly, and how many scores are above it;
3. emit the keep-masks: scores above the k-th, plus as many scores equal to it as are still needed, earliest
   token first (the tie rule of ``select_tokens``).

Scores are float32 (as stored); -0.0 and +0.0 are one value, as for ``>``/``==``. Sources: a (memory-mapped)
flat array, or the base and reference ``token_loss.parquet`` files, streamed by record batch, with the keep-mask
written to a Parquet file batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .select import _per_sample_sums as _sums
from .select import round_half_up

Chunks = Callable[[], Iterable[np.ndarray]]  # a fresh iterator over float32 score chunks, in token order


def order_key(score: np.ndarray) -> np.ndarray:
    """uint32 keys that sort like the float32 ``score`` (NaN excluded by the caller); -0.0 maps to +0.0's key."""
    bits = (np.asarray(score, np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))


def key_value(key: int) -> float:
    """The float32 whose order key is ``key``."""
    bits = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return float(np.array([bits], np.uint32).view(np.float32)[0])


@dataclass
class Threshold:
    """Where the global top-k ends: keep scores with key > ``key``, plus the first ``ties`` equal to it."""

    candidates: int  # N, non-NaN scores
    k: int  # round(keep_ratio * N)
    key: int | None  # order key of the k-th largest score (None when k = 0)
    ties: int  # how many scores equal to the k-th largest are kept (the earliest ones)

    @property
    def value(self) -> float | None:
        return None if self.key is None else key_value(self.key)


def _candidate_keys(chunk: np.ndarray, position: int) -> np.ndarray:
    chunk = np.asarray(chunk, np.float32)
    if np.isinf(chunk).any():
        bad = position + int(np.flatnonzero(np.isinf(chunk))[0])
        raise ConfigError(f"score of token {bad} (flat index) is infinite; losses must be finite")
    return order_key(chunk[~np.isnan(chunk)])


def find_threshold(chunks: Chunks, keep_ratio: float) -> Threshold:
    """Passes 1 and 2: the exact k-th largest candidate score with k = round_half_up(keep_ratio x candidates)."""
    high = np.zeros(1 << 16, np.int64)
    n, position = 0, 0
    for chunk in chunks():
        keys = _candidate_keys(chunk, position)
        position += len(chunk)
        n += len(keys)
        high += np.bincount(keys >> 16, minlength=1 << 16)
    k = int(round_half_up(keep_ratio * n))
    if k == 0:
        return Threshold(n, 0, None, 0)
    above = np.cumsum(high[::-1])[::-1]  # above[b] = scores with high bits >= b
    bucket = int(np.flatnonzero(above >= k)[-1])
    rank = k - (int(above[bucket + 1]) if bucket + 1 < len(above) else 0)  # k-th largest is rank-th in bucket
    low = np.zeros(1 << 16, np.int64)
    for chunk in chunks():
        keys = order_key(np.asarray(chunk, np.float32)[~np.isnan(chunk)])
        low += np.bincount(keys[keys >> 16 == bucket] & 0xFFFF, minlength=1 << 16)
    above_low = np.cumsum(low[::-1])[::-1]
    sub = int(np.flatnonzero(above_low >= rank)[-1])
    greater_in_bucket = int(above_low[sub + 1]) if sub + 1 < len(above_low) else 0
    return Threshold(n, k, (bucket << 16) | sub, rank - greater_in_bucket)


def emit_masks(chunks: Chunks, threshold: Threshold) -> Iterator[np.ndarray]:
    """Pass 3: the keep-mask of each chunk (bool, same length as the chunk)."""
    ties_left = threshold.ties
    for chunk in chunks():
        chunk = np.asarray(chunk, np.float32)
        mask = np.zeros(len(chunk), bool)
        if threshold.key is not None:
            cand = ~np.isnan(chunk)
            keys = order_key(np.where(cand, chunk, np.float32(0)))
            mask = cand & (keys > threshold.key)
            if ties_left:
                tied = np.flatnonzero(cand & (keys == threshold.key))[:ties_left]
                mask[tied] = True
                ties_left -= len(tied)
        yield mask


def select_global_array(score: np.ndarray, keep_ratio: float, chunk_tokens: int = 1 << 24,
                        out: np.ndarray | None = None) -> tuple[np.ndarray, Threshold]:
    """Keep-mask of a flat float32 score array (e.g. ``np.load(path, mmap_mode="r")``), read ``chunk_tokens`` at
    a time; ``out`` (bool, e.g. a writable memmap) receives the mask. Equal to ``select_tokens``'s global mask."""
    def chunks():
        return (score[i : i + chunk_tokens] for i in range(0, len(score), chunk_tokens))

    threshold = find_threshold(chunks, keep_ratio)
    out = np.zeros(len(score), bool) if out is None else out
    for i, mask in zip(range(0, len(score), chunk_tokens), emit_masks(chunks, threshold)):
        out[i : i + len(mask)] = mask
    return out, threshold


def _parquet_score_batches(base: Path, ref: Path, batch_rows: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(sample_id array, offsets, flat float32 score = base - ref) per record batch of the two loss files."""
    import pyarrow.parquet as pq

    base_file, ref_file = pq.ParquetFile(base), pq.ParquetFile(ref)
    if base_file.metadata.num_rows != ref_file.metadata.num_rows:
        raise ConfigError(f"{base} and {ref} have different numbers of samples; score the same data with both")
    pairs = zip(base_file.iter_batches(batch_rows, columns=["sample_id", "token_loss"]),
                ref_file.iter_batches(batch_rows, columns=["sample_id", "token_loss"]))
    for b, r in pairs:
        lb, lr = b.column("token_loss"), r.column("token_loss")
        ob, orf = lb.offsets.to_numpy(), lr.offsets.to_numpy()
        if not np.array_equal(ob - ob[0], orf - orf[0]) or b.column("sample_id") != r.column("sample_id"):
            raise ConfigError(f"{base} and {ref} cover different samples or token counts; score the same data")
        vb = lb.values.slice(ob[0], ob[-1] - ob[0]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        vr = lr.values.slice(orf[0], orf[-1] - orf[0]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        yield b.column("sample_id"), (ob - ob[0]).astype(np.int64), vb - vr


def select_global_parquet(base: str | os.PathLike, ref: str | os.PathLike, out: str | os.PathLike,
                          keep_ratio: float, batch_rows: int = 65536) -> dict[str, Any]:
    """Global top-``keep_ratio`` selection over two ``token_loss.parquet`` files too large for memory.

    Streams both files ``batch_rows`` samples at a time (three passes) and writes ``out``, a ``keep_mask.parquet``
    with columns ``sample_id`` and ``keep_mask`` like ``Selection.save``. The mask equals ``select_tokens`` (level
    global) on the whole arrays. Returns the same counts as ``select_tokens``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def chunks():
        return (s for _, _, s in _parquet_score_batches(Path(base), Path(ref), batch_rows))

    threshold = find_threshold(chunks, keep_ratio)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    samples = with_response = zero_kept = 0
    schema = pa.schema([("sample_id", pa.string()), ("keep_mask", pa.list_(pa.bool_()))])
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batches = _parquet_score_batches(Path(base), Path(ref), batch_rows)
            for (ids, offsets, score), mask in zip(batches, emit_masks(chunks, threshold)):
                cand = _sums(~np.isnan(score), offsets)
                kept = _sums(mask, offsets)
                samples += len(offsets) - 1
                with_response += int((cand > 0).sum())
                zero_kept += int(((cand > 0) & (kept == 0)).sum())
                column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(mask))
                writer.write_table(pa.table({"sample_id": ids, "keep_mask": column}, schema=schema))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    n, k = threshold.candidates, threshold.k
    return {
        "response_tokens": n, "kept_tokens": k, "dropped_tokens": n - k, "kept_share": k / n if n else 0.0,
        "samples": samples, "samples_with_response": with_response, "samples_zero_kept": zero_kept,
        "score_threshold": threshold.value,
    }

