"""Bootstrap intervals over held-out prompts (demo.intervals)."""

import numpy as np
import pytest

from tokenclean.demo.intervals import paired_interval, ratio_interval


def test_ratio_interval_brackets_the_ratio_of_sums_and_narrows_with_more_prompts():
    rng = np.random.default_rng(1)
    small = rng.random(20) < 0.3
    large = rng.random(2000) < 0.3
    a = ratio_interval(small.astype(float), np.ones(20))
    b = ratio_interval(large.astype(float), np.ones(2000))
    assert a["value"] == pytest.approx(small.mean()) and a["lo"] <= a["value"] <= a["hi"]
    assert b["hi"] - b["lo"] < (a["hi"] - a["lo"]) / 4
    assert b["lo"] < 0.3 < b["hi"]
    # a loss: summed token losses over tokens, weighted by each prompt's token count
    loss = ratio_interval(np.array([2.0, 6.0]), np.array([1.0, 3.0]))
    assert loss["value"] == pytest.approx(2.0) and loss["lo"] == loss["hi"] == pytest.approx(2.0)


def test_paired_interval_sees_a_consistent_gap_and_no_gap():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, size=100)
    counts = rng.integers(5, 30, size=100).astype(float)
    better = (base - 0.05) * counts, counts  # lower by 0.05 on every prompt
    same = base * counts, counts
    gap = paired_interval(better, same)
    assert gap["diff"] == pytest.approx(-0.05) and gap["hi"] < 0 and gap["share_below"] == 1.0
    none = paired_interval(same, same)
    assert none["diff"] == none["lo"] == none["hi"] == 0.0
    noisy = paired_interval((rng.permutation(base) * counts, counts), same)  # same values, other prompts
    assert noisy["lo"] < 0 < noisy["hi"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_interval(same, (counts[:5], counts[:5]))
