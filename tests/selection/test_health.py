"""The score-health diagnostic on hand-made loss arrays."""

import numpy as np
import pytest

from tokenclean.selection.health import NOISE_FLOOR, score_health, selection_agreement, split_half_agreement


def _pool(n_samples: int = 40, length: int = 30, prompt: int = 10, seed: int = 0):
    """Flat (base_loss, response_mask, offsets) of ``n_samples`` samples: ``prompt`` prompt tokens (loss NaN at
    position 0, finite elsewhere, as a prompt-scoring model would give) then response tokens."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.7, n_samples * length)  # mean 1.4 nats, like SmolLM2 on GSM8K
    mask = np.tile(np.arange(length) >= prompt, n_samples)
    offsets = np.arange(n_samples + 1) * length
    base[offsets[:-1]] = np.nan
    return base, mask, offsets


def test_near_zero_scores_are_near_noise():
    """A reference that moved by ~0.003 nats per token (the 2-step warm-up) is flagged, with advice."""
    base, mask, offsets = _pool()
    ref = base - np.random.default_rng(1).normal(0.002, 0.003, base.shape)
    h = score_health(base - ref, base, ref, mask, offsets, keep_ratio=0.6)
    assert h.verdict == "near noise"
    assert h.relative_move < 0.01
    assert h.below_floor_share > 0.95 and h.undecided_share > 0.95 and h.undecided_loss_share > 0.95
    assert abs(h.threshold) < NOISE_FLOOR
    assert len(h.warnings) == 1 and "--warmup-min-steps" in h.warnings[0] and "--warmup-data" in h.warnings[0]


def test_clearly_separated_scores_are_healthy():
    """A reference that learned a per-sample skill (every sample moved by its own amount, 0-1 nats) passes."""
    base, mask, offsets = _pool()
    rng = np.random.default_rng(2)
    gain = np.repeat(rng.uniform(0.0, 1.0, len(offsets) - 1), np.diff(offsets))
    ref = base - gain * base * 0.6 - rng.normal(0, 0.05, base.shape)
    h = score_health(base - ref, base, ref, mask, offsets, keep_ratio=0.6)
    assert h.verdict == "healthy" and h.warnings == []
    assert h.relative_move > 0.2
    assert h.undecided_share < 0.2 and h.undecided_loss_share < 0.05
    assert h.split_half > 0.8  # both halves of a sample see its gain


def test_means_divide_by_scored_response_tokens_only():
    """Prompt tokens (even with huge scores) and NaN response tokens are ignored; means are over the rest."""
    base = np.array([np.nan, 9.0, 9.0, 2.0, 4.0, np.nan, np.nan, 3.0])
    ref = np.array([np.nan, 0.0, 0.0, 1.0, 3.0, 1.0, np.nan, 2.0])
    mask = np.array([False, False, False, True, True, True, False, True])
    h = score_health(base - ref, base, ref, mask, np.array([0, 5, 8]), keep_ratio=0.5)
    assert h.response_tokens == 3  # positions 3, 4, 7 (5: base NaN)
    assert h.mean_base_loss == pytest.approx(3.0)
    assert h.mean_ref_loss == pytest.approx(2.0)
    assert h.mean_abs_score == pytest.approx(1.0)
    assert h.relative_move == pytest.approx(1 / 3)
    assert h.threshold == pytest.approx(1.0)
    assert h.score_quantiles["q50"] == pytest.approx(1.0)


def test_undecided_tokens_the_base_already_knows_cost_nothing():
    """Half the tokens sit at the threshold (score 0) but the base predicts them already (loss 0): 50% of the
    tokens are undecided, 0% of the loss; the other half moved by 0.5 of their 1.0 nats."""
    base = np.array([np.nan] + [0.0, 1.0] * 50)
    ref = np.array([np.nan] + [0.0, 0.5] * 50)
    mask = np.array([False] + [True] * 100)
    h = score_health(base - ref, base, ref, mask, np.array([0, 101]), keep_ratio=0.6)
    assert h.threshold == pytest.approx(0.0)
    assert h.undecided_share == pytest.approx(0.5) and h.undecided_loss_share == pytest.approx(0.0)
    assert h.verdict == "healthy"


def test_a_decided_but_tiny_move_is_still_near_noise():
    """Scores spread wide of the noise floor (0 to 0.38 nats: 6% undecided) but a mean move of 4.75% of the
    base loss of 4 nats: the reference barely moved."""
    base = np.array([np.nan] + [4.0] * 100)
    ref = base - np.concatenate([[np.nan], np.linspace(0.0, 0.38, 100)])
    h = score_health(base - ref, base, ref, np.array([False] + [True] * 100), np.array([0, 101]), keep_ratio=0.5)
    assert h.undecided_loss_share < 0.1 and h.relative_move == pytest.approx(0.0475)
    assert h.verdict == "near noise"


def test_the_ranked_score_is_measured_and_gated_tokens_are_left_out():
    """A score other than base - reference (every token moved by 1 nat): the threshold, the move and the undecided
    share are the score's; the gated token (-inf) is never ranked, so it is not counted."""
    base = np.array([np.nan, 2.0, 2.0, 2.0, 2.0, 2.0])
    score = np.array([np.nan, 0.5, 0.4, -np.inf, 0.2, 0.1])
    h = score_health(score, base, base - 1.0, np.array([False] + [True] * 5), np.array([0, 6]), keep_ratio=0.5)
    assert h.response_tokens == 4 and h.threshold == pytest.approx(0.4)  # keep 2 of 4
    assert h.mean_abs_score == pytest.approx(0.3) and h.mean_ref_loss == pytest.approx(1.0)


def test_threshold_is_the_last_kept_score():
    base = np.array([np.nan, 0.5, 0.4, 0.3, 0.2, 0.1])
    ref = np.zeros(6)
    mask = np.array([False, True, True, True, True, True])
    h = score_health(base - ref, base, ref, mask, np.array([0, 6]), keep_ratio=0.6)  # keep 3 of 5
    assert h.threshold == pytest.approx(0.3)
    assert h.undecided_share == pytest.approx(1 / 5)  # only 0.3 itself is within 0.01 of it


def test_empty_and_all_nan_give_no_scores():
    for base, mask in ((np.array([]), np.array([], bool)), (np.full(4, np.nan), np.ones(4, bool))):
        h = score_health(base - base, base, base.copy(), mask, np.array([0, len(base)]))
        assert h.verdict == "no scores" and h.response_tokens == 0 and h.split_half is None
        assert "nothing to select" in h.warnings[0]
        assert h.to_dict()["verdict"] == "no scores"


def test_to_dict_round_trips_every_field():
    base, mask, offsets = _pool(n_samples=12)
    d = score_health(np.full_like(base, 0.5), base, base - 0.5, mask, offsets).to_dict()
    assert set(d) >= {"relative_move", "below_floor_share", "threshold", "undecided_share", "undecided_loss_share",
                      "split_half",
                      "verdict", "warnings"}
    assert d["relative_move"] == pytest.approx(0.5 / np.nanmean(base[mask]))


def test_split_half_is_near_zero_for_unstructured_scores():
    base, mask, offsets = _pool(n_samples=200)
    score = np.random.default_rng(3).normal(0, 1, base.shape)
    rho = split_half_agreement(score, mask & np.isfinite(base), offsets)
    assert abs(rho) < 0.2


def test_split_half_needs_enough_samples():
    base, mask, offsets = _pool(n_samples=5)
    assert split_half_agreement(base, mask & np.isfinite(base), offsets) is None


def test_selection_agreement_is_chance_corrected():
    mask = np.ones(1000, bool)
    rng = np.random.default_rng(4)
    a = rng.random(1000) < 0.6
    assert selection_agreement(a, a, mask) == pytest.approx(1.0)
    assert abs(selection_agreement(a, rng.random(1000) < 0.6, mask)) < 0.1
    prompt_disagrees = a.copy()
    mask[:100] = False
    prompt_disagrees[:100] = ~a[:100]
    assert selection_agreement(a, prompt_disagrees, mask) == pytest.approx(1.0)
