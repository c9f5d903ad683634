"""Scorers on hand-made arrays: values, gates, ties, NaN prompt positions, ratio limits, combinators."""

import dataclasses

import numpy as np
import pytest

from tokenclean.errors import ConfigError, MismatchError
from tokenclean.selection.from_scores import mask_counts, score_for, select_for, select_scored
from tokenclean.selection.scorers import (SCORERS, curve_positive, percentile_ranks, prompt_excess, prompt_gain,
                                          small_loss_gate)
from tokenclean.selection.select import SelectConfig, select_tokens

nan = np.nan
# three samples: [nan, 3, 1] [nan, 2, 2, 2] [nan, 0.5, -1] as base - ref with ref = 1 (base = score + 1)
SCORE = np.array([nan, 3, 1, nan, 2, 2, 2, nan, 0.5, -1], dtype=np.float32)
OFFSETS = np.array([0, 3, 7, 10])
REF = np.where(np.isnan(SCORE), nan, 1.0).astype(np.float32)
BASE = SCORE + REF
PROMPT_FREE = REF + np.array([nan, 0.1, 0.2, nan, 0.3, 0.4, 0.5, nan, 0.6, 0.7], np.float32)


def kept(cfg: SelectConfig, base=BASE, ref=REF, offsets=OFFSETS, prompt_free=PROMPT_FREE):
    mask, counts = select_for(cfg, base, ref, offsets, prompt_free_loss=prompt_free)
    return np.flatnonzero(mask).tolist(), counts


CONFIGS = [SelectConfig(keep_ratio=0.6), SelectConfig(keep_ratio=3 / 7), SelectConfig(keep_ratio=0.5, level="sample"),
           SelectConfig(level="threshold", threshold=1.0, min_kept_per_sample=1),
           SelectConfig(keep_ratio=0.3, min_kept_per_sample=2)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.level}-{c.keep_ratio:.2f}-{c.min_kept_per_sample}")
def test_excess_selects_exactly_what_select_tokens_does(cfg):
    mask, counts = select_for(cfg, BASE, REF, OFFSETS)
    expected_mask, expected_counts = select_tokens(BASE - REF, OFFSETS, cfg)
    assert np.array_equal(mask, expected_mask)
    assert counts == {**expected_counts, "gated_tokens": 0}


def test_ties_go_to_the_earlier_token_and_all_equal_scores_keep_the_first():
    assert kept(SelectConfig(keep_ratio=3 / 7))[0] == [1, 4, 5]  # the three 2s tie: positions 4, 5 kept
    flat = np.where(np.isnan(SCORE), nan, 2.0).astype(np.float32)
    for name in ("excess", "small-loss", "curve-positive", "prompt", "prompt-excess"):
        idx, counts = kept(SelectConfig(keep_ratio=3 / 7, scorer=name), base=flat + 3, ref=flat - 1,
                           prompt_free=flat + 4)
        assert idx == [1, 2, 4] and counts["kept_tokens"] == 3 and counts["gated_tokens"] == 0, name
    assert np.array_equal(percentile_ranks(np.full(4, 7.0)), np.full(4, 0.5))


@pytest.mark.parametrize("name", list(SCORERS))
def test_prompt_positions_are_never_candidates_and_ratio_one_keeps_every_ungated_token(name):
    mask, counts = select_for(SelectConfig(keep_ratio=1.0, scorer=name), BASE, REF, OFFSETS,
                              prompt_free_loss=PROMPT_FREE)
    score = score_for(SelectConfig(scorer=name), BASE, REF, OFFSETS, prompt_free_loss=PROMPT_FREE)
    assert np.isnan(score[[0, 3, 7]]).all() and not mask[[0, 3, 7]].any()
    assert counts["response_tokens"] == 7
    assert np.array_equal(mask, ~np.isnan(score) & ~np.isneginf(score))
    assert counts["kept_tokens"] == 7 - counts["gated_tokens"]


def test_ratio_zero_is_refused_and_a_ratio_rounding_to_zero_keeps_nothing():
    with pytest.raises(ConfigError, match=r"keep_ratio must be in \(0, 1\]"):
        SelectConfig(keep_ratio=0.0, scorer="small-loss")
    idx, counts = kept(SelectConfig(keep_ratio=0.05, scorer="small-loss"))  # round(0.35) = 0
    assert idx == [] and counts["kept_tokens"] == 0 and counts["samples_zero_kept"] == 3
    assert counts["score_threshold"] is None


def test_response_mask_narrows_the_candidates():
    response = ~np.isnan(SCORE)
    response[1] = False
    score = score_for(SelectConfig(), BASE, REF, OFFSETS, response_mask=response)
    assert np.isnan(score[1]) and score[2] == 1.0 and np.isnan(score[0])


# -- the small-loss gate ---------------------------------------------------------------------------------------------
def one_sample(ref_values, base_values=None):
    """One sample: position 0 (no loss) then the given tokens."""
    ref = np.r_[nan, np.asarray(ref_values, np.float32)].astype(np.float32)
    base = ref + 1 if base_values is None else np.r_[nan, np.asarray(base_values, np.float32)].astype(np.float32)
    return base, ref, np.array([0, len(ref)])


def test_gate_drops_the_tokens_above_the_reference_loss_quantile():
    base, ref, offsets = one_sample(np.arange(100), base_values=2 * np.arange(100))  # excess = ref: hard ranks first
    gate = small_loss_gate(ref, 0.9)  # quantile of 0..99 at 0.9 = 89.1
    assert np.flatnonzero(gate).tolist() == list(range(91, 101))  # refs 90..99
    assert not small_loss_gate(ref, 1.0).any()
    # the gated tokens have the highest excess, so they are exactly what the gate changes
    assert np.flatnonzero(select_for(SelectConfig(keep_ratio=0.1), base, ref, offsets)[0]).tolist() == \
        list(range(91, 101))
    mask, counts = select_for(SelectConfig(keep_ratio=0.1, scorer="small-loss"), base, ref, offsets)
    assert np.flatnonzero(mask).tolist() == list(range(81, 91))  # the budget stays 10 of 100: the next ten
    assert counts["gated_tokens"] == 10 and counts["response_tokens"] == 100
    mask, counts = select_for(SelectConfig(keep_ratio=1.0, scorer="small-loss", gate_quantile=0.5), base, ref, offsets)
    assert counts["kept_tokens"] == 50 and not mask[51:].any()  # median 49.5: refs 50..99 never kept


def test_gate_keeps_ties_at_the_quantile_and_beats_min_kept():
    base, ref, offsets = one_sample([1, 1, 1, 1, 5], base_values=[2, 2, 2, 2, 50])
    assert np.flatnonzero(small_loss_gate(ref, 0.5)).tolist() == [5]
    cfg = SelectConfig(keep_ratio=0.2, scorer="small-loss", gate_quantile=0.5, min_kept_per_sample=5)
    mask, counts = select_for(cfg, base, ref, offsets)
    assert np.flatnonzero(mask).tolist() == [1, 2, 3, 4]  # min-kept tops up, but never with a gated token
    equal = one_sample([3.0] * 6)[1]
    assert not small_loss_gate(equal, 0.1).any()  # all-equal losses: nothing is above the quantile


def test_gate_quantile_is_validated():
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ConfigError, match=r"gate_quantile must be in \(0, 1\]"):
            SelectConfig(scorer="small-loss", gate_quantile=bad)


# -- the paper code's fixed rule --------------------------------------------------------------------------------------
def test_curve_positive_uses_the_paper_constants():
    eps = 1e-3
    #               passes       just under 2r+0.07   ref just < 5   ref = 5     ref > 5     ref 0: base > 0.07
    ref = np.array([nan, 1.0, 1.0, 4.999, 5.0, 6.0, 0.0, 0.0], np.float32)
    base = np.array([nan, 2.07 + eps, 2.07 - eps, 20.0, 20.0, 20.0, 0.07 + eps, 0.07 - eps], np.float32)
    score = curve_positive(base, ref)
    assert np.isnan(score[0])
    assert np.isneginf(score[1:]).tolist() == [False, True, False, True, True, False, True]
    np.testing.assert_allclose(score[[1, 3, 6]], (base - ref)[[1, 3, 6]])
    offsets = np.array([0, 8])
    rule = [1, 3, 6]
    for cfg in (SelectConfig(scorer="curve-positive", level="threshold", threshold=0.0),
                SelectConfig(scorer="curve-positive", keep_ratio=1.0)):
        assert np.flatnonzero(select_for(cfg, base, ref, offsets)[0]).tolist() == rule
    # with a budget, the passers with the most excess: 3 (15.0) of the three passers
    assert np.flatnonzero(select_for(SelectConfig(scorer="curve-positive", keep_ratio=1 / 7), base, ref,
                                     offsets)[0]).tolist() == [3]


# -- union and intersection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_union_contains_each_level_which_contains_the_intersection(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=20)  # >= 2 candidates: sample level keeps one
    offsets = np.r_[0, np.cumsum(lengths)]
    ref = rng.normal(2, 1, offsets[-1]).astype(np.float32)
    base = (ref + rng.normal(0, 1, offsets[-1]).round(1)).astype(np.float32)  # rounded: ties
    ref[offsets[:-1]] = base[offsets[:-1]] = nan
    cfg = SelectConfig(keep_ratio=0.4)
    g = select_tokens(base - ref, offsets, cfg)[0]
    s = select_tokens(base - ref, offsets, dataclasses.replace(cfg, level="sample"))[0]
    union, counts = select_for(dataclasses.replace(cfg, scorer="union"), base, ref, offsets)
    inter = select_for(dataclasses.replace(cfg, scorer="intersection"), base, ref, offsets)[0]
    assert np.array_equal(union, g | s) and np.array_equal(inter, g & s)
    assert (union >= g).all() and (union >= s).all() and (g >= inter).all() and (s >= inter).all()
    assert counts["kept_tokens"] == int(union.sum()) and counts["samples_zero_kept"] == 0


def test_combinators_need_level_global():
    with pytest.raises(ConfigError, match="leave level at 'global'"):
        SelectConfig(scorer="union", level="sample")
    with pytest.raises(ConfigError, match="unknown scorer 'loss'"):
        SelectConfig(scorer="loss")


# -- the prompt-conditioned scores -----------------------------------------------------------------------------------
def test_prompt_gain_and_its_rank_combination_with_excess():
    ref = np.array([nan, 1.0, 2.0, 3.0, 1.0], np.float32)
    base = np.array([nan, 4.0, 3.0, 3.5, 1.0], np.float32)  # excess 3, 1, 0.5, 0
    prompt_free = np.array([nan, 1.0, 4.0, 5.0, nan], np.float32)  # gain 0, 2, 2, missing
    gain = prompt_gain(ref, prompt_free)
    assert np.isnan(gain[0]) and gain[1:4].tolist() == [0.0, 2.0, 2.0] and np.isneginf(gain[4])
    # percentile ranks: excess [1, 2/3, 1/3, 0]; gain over 3 finite values [0, 0.75, 0.75], missing -> 0.5
    combined = prompt_excess(base, ref, prompt_free)
    np.testing.assert_allclose(combined[1:], [(1 + 0) / 2, (2 / 3 + 0.75) / 2, (1 / 3 + 0.75) / 2, (0 + 0.5) / 2])
    assert np.isnan(combined[0])
    offsets = np.array([0, 5])
    idx = np.flatnonzero(select_for(SelectConfig(scorer="prompt", keep_ratio=1.0), base, ref, offsets,
                                    prompt_free_loss=prompt_free)[0]).tolist()
    assert idx == [1, 2, 3]  # the token without a prompt-free loss is gated
    idx = np.flatnonzero(select_for(SelectConfig(scorer="prompt-excess", keep_ratio=0.5), base, ref, offsets,
                                    prompt_free_loss=prompt_free)[0]).tolist()
    assert idx == [2, 3]  # combined 0.5, 0.708, 0.542, 0.25


def test_prompt_scorers_need_prompt_free_losses_and_arrays_must_align():
    with pytest.raises(ConfigError, match="needs the reference's prompt-free losses"):
        score_for(SelectConfig(scorer="prompt"), BASE, REF, OFFSETS)
    with pytest.raises(MismatchError, match="prompt_free_loss has 3 entries but the offsets cover 10 tokens"):
        score_for(SelectConfig(scorer="prompt-excess"), BASE, REF, OFFSETS, prompt_free_loss=PROMPT_FREE[:3])


def test_counts_of_a_gated_selection():
    score = np.array([nan, 3.0, -np.inf, 1.0, nan, -np.inf, -np.inf], np.float32)
    offsets = np.array([0, 4, 7])
    mask, counts = select_scored(score, offsets, SelectConfig(keep_ratio=0.5))
    assert np.flatnonzero(mask).tolist() == [1, 3]  # budget round(0.5 * 5) = 3; only two are not gated
    assert counts == mask_counts(score, offsets, mask)
    assert counts["response_tokens"] == 5 and counts["kept_tokens"] == 2 and counts["gated_tokens"] == 3
    assert counts["samples_zero_kept"] == 1 and counts["score_threshold"] == 1.0


@pytest.mark.parametrize("config, why", [
    (SelectConfig(scorer="curve-positive"),
     "--scorer curve-positive ruled out every one (its fixed rule keeps a token only when loss_base > 2·loss_ref + "
     "0.07 and loss_ref < 5 nats: 6 tokens have a reference loss of 5 nats or more, 1 too little excess); use "
     "--scorer excess, or small-loss"),
    (SelectConfig(level="threshold", threshold=9.0), "no token scores above --threshold 9 (the highest score is 3); "
                                                     "lower --threshold"),
    (SelectConfig(keep_ratio=0.05), "--keep-ratio 0.05 of them rounds to 0 tokens; raise --keep-ratio"),
])
def test_a_selection_that_keeps_nothing_stops_with_why_and_what_to_change(tmp_path, config, why):
    from tokenclean.api import select
    from tokenclean.core.artifacts import Scores

    ids, offsets = ["a", "b"], np.array([0, 4, 8])
    ref = np.array([nan, 6, 6, 6, nan, 7, 7, 7], np.float32)  # above the curve rule's 5 nats everywhere
    base = ref + np.array([nan, 1, 2, 3, nan, 3, 2, 1], np.float32) * 7  # 2·ref + 0.07 < base: excess is large
    base_dir, ref_dir = tmp_path / "base", tmp_path / "ref"
    Scores(ids, base, offsets, {}).save(base_dir)
    Scores(ids, ref, offsets, {}).save(ref_dir)
    if config.scorer == "curve-positive":  # the same scores under excess keep tokens
        assert select(base_dir, ref_dir, config=SelectConfig()).meta["kept_tokens"] == 4
    else:  # ... and under the other settings' defaults too
        assert select(base_dir, ref_dir, config=SelectConfig(scorer=config.scorer)).meta["kept_tokens"] == 4
        base = ref + np.array([nan, 1, 2, 3, nan, 3, 2, 1], np.float32)  # highest score 3
        Scores(ids, base, offsets, {}).save(base_dir)
    with pytest.raises(ConfigError) as e:
        select(base_dir, ref_dir, tmp_path / "sel", config)
    assert str(e.value).startswith(f"selection ({base_dir}, {ref_dir}): the selection keeps 0 of 6 response tokens, "
                                   "so there is nothing to train on: ")
    assert why in str(e.value) and not (tmp_path / "sel").exists()
