"""Selection on hand-made arrays: counts, ties, levels, zero-kept samples, ratio limits."""

import numpy as np
import pytest

from tokenclean.errors import ConfigError
from tokenclean.selection.select import SelectConfig, sample_ranks, select_tokens, top_k_mask

nan = np.nan
# three samples: [nan, 3, 1] [nan, 2, 2, 2] [nan, 0.5, -1]
SCORE = np.array([nan, 3, 1, nan, 2, 2, 2, nan, 0.5, -1], dtype=np.float32)
OFFSETS = np.array([0, 3, 7, 10])


def kept(cfg: SelectConfig, score=SCORE, offsets=OFFSETS):
    mask, counts = select_tokens(score, offsets, cfg)
    return np.flatnonzero(mask).tolist(), counts


def test_global_top_k_with_deterministic_ties():
    # 7 candidates, keep round(0.6 * 7) = 4: 3, then three 2s tie for ranks 2-4 -> all three kept; 1 dropped
    idx, counts = kept(SelectConfig(keep_ratio=0.6))
    assert idx == [1, 4, 5, 6]
    assert counts["kept_tokens"] == 4 and counts["response_tokens"] == 7 and counts["dropped_tokens"] == 3
    # keep 3: the tie at 2 is broken towards the earlier tokens (positions 4, 5)
    idx, _ = kept(SelectConfig(keep_ratio=3 / 7))
    assert idx == [1, 4, 5]
    assert counts["samples_zero_kept"] == 1  # the third sample (0.5, -1) keeps nothing
    assert counts["score_threshold"] == 2.0


def test_ratio_one_keeps_every_candidate_and_zero_is_refused():
    idx, counts = kept(SelectConfig(keep_ratio=1.0))
    assert idx == [1, 2, 4, 5, 6, 8, 9]
    assert counts["kept_share"] == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"keep_ratio must be in \(0, 1\]"):
            SelectConfig(keep_ratio=bad)


def test_sample_level_keeps_ratio_within_every_sample():
    idx, counts = kept(SelectConfig(keep_ratio=0.5, level="sample"))
    # per sample: round(0.5*2)=1 -> pos 1; round(0.5*3)=2 -> first two tied 2s; round(0.5*2)=1 -> 0.5
    assert idx == [1, 4, 5, 8]
    assert counts["samples_zero_kept"] == 0


def test_threshold_and_min_kept_per_sample():
    idx, _ = kept(SelectConfig(level="threshold", threshold=1.0))
    assert idx == [1, 4, 5, 6]
    idx, counts = kept(SelectConfig(level="threshold", threshold=1.0, min_kept_per_sample=1))
    assert idx == [1, 4, 5, 6, 8]  # the third sample is topped up with its best token
    assert counts["samples_zero_kept"] == 0


def test_samples_without_candidates_and_empty_input():
    score = np.array([nan, nan, nan, 1.0, 2.0], dtype=np.float32)
    mask, counts = select_tokens(score, np.array([0, 2, 2, 5]), SelectConfig(keep_ratio=0.5))
    assert np.flatnonzero(mask).tolist() == [4]
    assert counts["samples_with_response"] == 1 and counts["samples_zero_kept"] == 0
    mask, counts = select_tokens(np.array([nan], np.float32), np.array([0, 1]), SelectConfig())
    assert not mask.any() and counts["kept_tokens"] == 0


def test_infinite_score_is_refused():
    with pytest.raises(ConfigError, match="sample 1, token 2 is infinite"):
        select_tokens(np.array([nan, 1, nan, 1, np.inf], np.float32), np.array([0, 2, 5]), SelectConfig())


def test_top_k_matches_a_full_sort_on_random_data():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, 10_000).astype(np.float32)  # many ties
    for k in (0, 1, 137, 5000, 9999, 10_000):
        mask = top_k_mask(values, k)
        order = np.lexsort((np.arange(len(values)), -values))  # by value desc, then index
        expected = np.zeros(len(values), bool)
        expected[order[:k]] = True
        assert np.array_equal(mask, expected)


def test_sample_ranks():
    ranks = sample_ranks(np.array([1.0, 3.0, 2.0, 5.0, 5.0]), np.array([0, 0, 0, 1, 1]))
    assert ranks.tolist() == [2, 0, 1, 0, 1]


def test_trailing_empty_samples_do_not_shorten_the_last_sample():
    """Per-sample counts are right when the pool ends with samples that have no tokens."""
    score = np.array([np.nan, 1.0, np.nan, 2.0, 3.0], np.float32)
    offsets = np.array([0, 2, 2, 5, 5])
    mask, counts = select_tokens(score, offsets, SelectConfig(keep_ratio=1.0, level="sample"))
    assert mask.tolist() == [False, True, False, True, True]
    assert counts["kept_tokens"] == 3 and counts["samples_zero_kept"] == 0
