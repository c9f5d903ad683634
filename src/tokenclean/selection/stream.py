"""Global selection for pools larger than memory: exact, streamed, equal to ``select_tokens`` (level ``global``).

The algorithm is ``core.threshold`` (``select_tokens`` runs the same one on an in-memory array): the scores
are read in chunks, a few times, with memory bounded by the chunk size. Sources here: a (memory-mapped) flat
array, or the base and reference ``token_loss.parquet`` files, streamed by record batch, with the keep-mask
written to a Parquet file batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.tokens import per_sample_sum
from ..errors import ConfigError
from .select import selection_counts
from ..core.threshold import CHUNK_TOKENS, Threshold, emit_masks, find_threshold, key_value, order_key, select_top  # noqa: F401


def select_global_array(score: np.ndarray, keep_ratio: float, chunk_tokens: int = CHUNK_TOKENS,
                        out: np.ndarray | None = None) -> tuple[np.ndarray, Threshold]:
    """Keep-mask of a flat score array (e.g. ``np.load(path, mmap_mode="r")``), read ``chunk_tokens`` at a time;
    ``out`` (bool, e.g. a writable memmap) receives the mask. Equal to ``select_tokens``'s global mask."""
    return select_top(score, keep_ratio, chunk_tokens=chunk_tokens, out=out)


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
    candidates, kept = [], []  # (n_samples,) per batch: 16 bytes per sample, not per token
    schema = pa.schema([("sample_id", pa.string()), ("keep_mask", pa.list_(pa.bool_()))])
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batches = _parquet_score_batches(Path(base), Path(ref), batch_rows)
            for (ids, offsets, score), mask in zip(batches, emit_masks(chunks, threshold)):
                candidates.append(per_sample_sum(~np.isnan(score), offsets))
                kept.append(per_sample_sum(mask, offsets))
                column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(mask))
                writer.write_table(pa.table({"sample_id": ids, "keep_mask": column}, schema=schema))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return selection_counts(np.concatenate([np.zeros(0, np.int64), *candidates]),
                            np.concatenate([np.zeros(0, np.int64), *kept]), threshold.value)
