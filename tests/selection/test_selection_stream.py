"""The streamed (out-of-core) global selection equals ``select_tokens``, ties and all."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenclean.core.artifacts import Scores
from tokenclean.selection.select import SelectConfig, round_half_up, select_tokens
from tokenclean.selection.stream import key_value, order_key, select_global_array, select_global_parquet


def reference_mask(score: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Sort-based top-k: value descending, then earlier token; NaN never kept."""
    cand = np.flatnonzero(~np.isnan(score))
    k = int(round_half_up(keep_ratio * len(cand)))
    order = np.lexsort((cand, -score[cand]))[:k]
    mask = np.zeros(len(score), bool)
    mask[cand[order]] = True
    return mask


def tied_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores with heavy ties (a few distinct values, both zeros), NaN gaps, and samples of varied length."""
    rng = np.random.default_rng(seed)
    score = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 0.25, 3.0, 1e-40], np.float32), n)
    score[rng.random(n) < 0.3] = np.nan
    score[:: 7] += rng.standard_normal(len(score[:: 7])).astype(np.float32)
    offsets = np.r_[0, np.sort(rng.integers(0, n, n // 10)), n].astype(np.int64)
    return score.astype(np.float32), offsets


def test_order_key_sorts_like_floats():
    x = np.array([-np.float32(3e38), -2.5, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3e38], np.float32)
    keys = order_key(x)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert keys[3] == keys[4]  # -0.0 == 0.0
    assert [key_value(int(k)) for k in keys[4:]] == [float(v) for v in x[4:]]


def test_global_selection_equals_sort_reference():
    for seed in range(5):
        score, offsets = tied_scores(5000, seed)
        for ratio in (0.0001, 0.3, 0.6, 0.999, 1.0):
            mask, _ = select_tokens(score, offsets, SelectConfig(keep_ratio=ratio))
            np.testing.assert_array_equal(mask, reference_mask(score, ratio))


@pytest.mark.parametrize("chunk", [1, 97, 1 << 20])
def test_array_stream_equals_select_tokens(chunk):
    for seed in range(3):
        score, offsets = tied_scores(3000, seed)
        for ratio in (0.0001, 0.5, 0.6, 1.0):
            expected, counts = select_tokens(score, offsets, SelectConfig(keep_ratio=ratio))
            mask, threshold = select_global_array(score, ratio, chunk_tokens=chunk)
            np.testing.assert_array_equal(mask, expected)
            assert threshold.k == counts["kept_tokens"]
            assert threshold.value == counts["score_threshold"]


def test_array_stream_on_memmap(tmp_path):
    score, offsets = tied_scores(20000, 7)
    np.save(tmp_path / "score.npy", score)
    mapped = np.load(tmp_path / "score.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "mask.npy", mode="w+", dtype=bool, shape=score.shape)
    select_global_array(mapped, 0.6, chunk_tokens=1000, out=out)
    np.testing.assert_array_equal(out, select_tokens(score, offsets, SelectConfig(keep_ratio=0.6))[0])


def test_no_candidates_and_infinite_scores():
    mask, threshold = select_global_array(np.full(10, np.nan, np.float32), 0.6)
    assert not mask.any() and threshold.k == 0 and threshold.value is None
    with pytest.raises(Exception, match="infinite"):
        select_global_array(np.array([1.0, np.inf], np.float32), 0.6)


def test_parquet_stream_equals_select_tokens(tmp_path):
    rng = np.random.default_rng(3)
    score, offsets = tied_scores(6000, 3)
    ref_loss = rng.random(len(score)).astype(np.float32)
    base_loss = ref_loss + score  # float32: score = base - ref recomputed below
    ids = [f"s{i}" for i in range(len(offsets) - 1)]
    Scores(ids, base_loss, offsets, {}).save(tmp_path / "base")
    Scores(ids, ref_loss, offsets, {}).save(tmp_path / "ref")
    expected, counts = select_tokens(base_loss - ref_loss, offsets, SelectConfig(keep_ratio=0.6))
    out = tmp_path / "sel" / "keep_mask.parquet"
    got = select_global_parquet(tmp_path / "base" / Scores.FILE, tmp_path / "ref" / Scores.FILE, out, 0.6,
                                batch_rows=37)
    assert got == counts
    table = pq.read_table(out)
    assert table.column("sample_id").to_pylist() == ids
    column = table.column("keep_mask").combine_chunks()
    np.testing.assert_array_equal(column.flatten().to_numpy(zero_copy_only=False), expected)
    np.testing.assert_array_equal(column.offsets.to_numpy(), offsets)


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 24])
def test_in_memory_and_streamed_break_ties_the_same_way(chunk):
    """All candidates tie: both keep the earliest k, whatever the chunking (NaN gaps and -0.0 included)."""
    score = np.array([0.0, np.nan, -0.0, 0.0, np.nan, 0.0, -0.0, 0.0, 0.0, np.nan], np.float32)
    offsets = np.array([0, 4, 4, 10])
    for ratio, expected in ((0.3, [0, 2]), (0.5, [0, 2, 3, 5]), (1.0, [0, 2, 3, 5, 6, 7, 8])):
        in_memory, counts = select_tokens(score, offsets, SelectConfig(keep_ratio=ratio))
        streamed, threshold = select_global_array(score, ratio, chunk_tokens=chunk)
        assert np.flatnonzero(in_memory).tolist() == expected
        np.testing.assert_array_equal(streamed, in_memory)
        assert threshold.value == counts["score_threshold"] == 0.0


@pytest.mark.parametrize("chunk", [5, 1 << 24])
def test_float64_scores_keep_their_precision(chunk):
    """Scores that differ below float32's resolution are ranked by their float64 values, not tied."""
    score = np.array([1.0, 1.0 + 1e-12, np.nan, 1.0 + 2e-12, 1.0, -1e-300, 1e-300], np.float64)
    offsets = np.array([0, 3, 7])
    mask, counts = select_tokens(score, offsets, SelectConfig(keep_ratio=2 / 6))
    assert np.flatnonzero(mask).tolist() == [1, 3]
    assert counts["score_threshold"] == 1.0 + 1e-12
    streamed, threshold = select_global_array(score, 2 / 6, chunk_tokens=chunk)
    np.testing.assert_array_equal(streamed, mask)
    assert threshold.value == 1.0 + 1e-12
    tiny, _ = select_global_array(score, 5 / 6, chunk_tokens=chunk)
    assert np.flatnonzero(tiny).tolist() == [0, 1, 3, 4, 6]  # 1e-300 > -1e-300, both beyond float32's range


def test_float64_random_scores_equal_a_full_sort():
    rng = np.random.default_rng(11)
    score = rng.standard_normal(4000) * 1e-6 + 5.0  # float64, distinct only beyond float32 precision
    score[rng.random(4000) < 0.2] = np.nan
    score[::50] = score[1]  # exact float64 ties too
    for ratio in (0.001, 0.37, 0.6, 1.0):
        mask, _ = select_global_array(score, ratio, chunk_tokens=333)
        np.testing.assert_array_equal(mask, reference_mask(score, ratio))


def test_float64_order_keys_sort_like_floats():
    x = np.array([-1.7e308, -1.0 - 1e-15, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1.0 + 2.3e-16, 1.7e308])
    keys = order_key(x)
    assert keys.dtype == np.uint64
    assert np.all(np.diff(keys.astype(object)) >= 0) and keys[4] == keys[5]
    assert [key_value(int(k), np.float64) for k in keys[5:]] == x[5:].tolist()
