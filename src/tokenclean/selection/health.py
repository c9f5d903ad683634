"""Score health: is the reference far enough from the base for the selection's score to rank anything?

The score is the one the selection ranked by (``Selection.score``, in nats: ``loss_base - loss_ref`` for the
excess scorers). A reference warmed up for a couple of optimizer steps is almost the base: every score is near
zero, the global top-``keep_ratio`` threshold sits inside rounding noise, and the selection is an arbitrary cut
through a narrow, meaningless spread. ``score_health`` measures this from the score and the two loss arrays alone
(a pure function: no I/O, no torch) and says what to do. It applies to scorers whose score is in nats
(``Scorer.nats``). The measures and their thresholds were chosen from
the warm-up-length study in ``experiments/README.md`` ("Warm-up length and score health").

All arrays are flat over the tokens of all samples (the ``TokenTable`` layout): ``offsets`` (n_samples + 1,)
delimit samples. A token counts when it is a response token and its score and both losses are finite (position 0
and prompt tokens are never scored, gated tokens are never ranked); every mean below divides by the number of such
tokens unless it says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..core.threshold import kept_count, top_k_mask

# Scores smaller than this are within what scoring precision alone changes a loss by: bf16 scoring (the default
# on a GPU) moves a token's loss by a median of 0.013 nats against fp32 (SmolLM2-135M on GSM8K, 811 tokens;
# experiments/README.md), so two models closer than this cannot be told apart token by token.
NOISE_FLOOR = 0.01  # nats
# Verdict: "near noise" when the reference moved by less than MIN_RELATIVE_MOVE of the base loss, or when more
# than MAX_UNDECIDED_LOSS of the base loss sits in tokens within NOISE_FLOOR of the selection threshold (their
# keep/drop decision would flip under rounding). In the study, 2 and 5 optimizer steps fail both (0.6% / 50% and
# 3.6% / 12%), 10 steps pass both (8.0% / 5.8%), 50 steps with margin (23% / 1.5%).
MIN_RELATIVE_MOVE = 0.05
MAX_UNDECIDED_LOSS = 0.10
ADVICE = ("warm the reference up longer (raise --warmup-min-steps or --warmup-epochs) or on a larger or curated "
          "warm-up set (--warmup-data, or the pool's top-rated rows with --warmup-rated-by)")


@dataclass
class ScoreHealth:
    """What the scores of one base/reference pair look like, and whether a selection from them means anything."""

    response_tokens: int  # scored response tokens (response, score and both losses finite)
    mean_base_loss: float  # nats, mean over those tokens
    mean_ref_loss: float
    mean_abs_score: float  # mean |score| over those tokens
    score_quantiles: dict[str, float]  # {"q10", "q50", "q90"}: the score's 10/50/90% quantiles, nats
    relative_move: float  # mean_abs_score / mean_base_loss
    noise_floor: float  # nats
    below_floor_share: float  # share of those tokens with |score| < noise_floor
    keep_ratio: float
    threshold: float  # score of the last kept token of the global top-keep_ratio selection
    undecided_share: float  # share of those tokens with |score - threshold| < noise_floor
    undecided_loss_share: float  # base loss of the undecided tokens / base loss of all those tokens
    split_half: float | None  # Spearman rho of per-sample mean score, odd vs even response positions
    verdict: str  # "healthy", "near noise" or "no scores"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_health(
    score: np.ndarray,
    base_loss: np.ndarray,
    ref_loss: np.ndarray,
    response_mask: np.ndarray,
    offsets: np.ndarray,
    keep_ratio: float = 0.6,
    noise_floor: float = NOISE_FLOOR,
    min_relative_move: float = MIN_RELATIVE_MOVE,
    max_undecided_loss: float = MAX_UNDECIDED_LOSS,
) -> ScoreHealth:
    """Health of ``score``, the score a selection ranked by (nats), against the base loss it is a share of.

    ``score``, ``base_loss``, ``ref_loss``: (total_tokens,) float, NaN where not scored (``score`` -inf where
    gated); ``response_mask``: (total_tokens,) bool; ``offsets``: (n_samples + 1,) int. Prompt tokens are ignored
    even when they carry a loss.

    >>> base = np.full(21, 2.0); base[0] = np.nan              # one sample: position 0 unscored
    >>> ref = base - np.linspace(0.0, 1.0, 21)                 # scores 0.05 .. 1.0 nats
    >>> h = score_health(base - ref, base, ref, np.arange(21) > 0, np.array([0, 21]))
    >>> h.verdict, round(h.relative_move, 4), round(h.threshold, 2), h.undecided_share
    ('healthy', 0.2625, 0.45, 0.05)
    """
    score = np.asarray(score, np.float64)
    base_loss, ref_loss = np.asarray(base_loss, np.float64), np.asarray(ref_loss, np.float64)
    used = np.asarray(response_mask, bool) & np.isfinite(score) & np.isfinite(base_loss) & np.isfinite(ref_loss)
    n = int(used.sum())
    if n == 0:
        return ScoreHealth(0, float("nan"), float("nan"), float("nan"), {}, float("nan"), noise_floor, float("nan"),
                           keep_ratio, float("nan"), float("nan"), float("nan"), None, "no scores",
                           ["no response token has a finite score and base and reference losses: nothing to select from"])
    ranked = score
    score = score[used]  # (n,)
    mean_base, mean_abs = float(base_loss[used].mean()), float(np.abs(score).mean())
    relative_move = mean_abs / mean_base if mean_base > 0 else float("inf")
    k = max(1, int(kept_count(keep_ratio, n)))
    threshold = float(score[top_k_mask(score, k)].min())
    near = np.abs(score - threshold) < noise_floor  # (n,) keep/drop would flip under rounding
    undecided = float(near.mean())
    # Weighted by the base loss: an undecided token the base already predicts (loss ~0) costs nothing either way.
    undecided_loss = float(base_loss[used][near].sum() / base_loss[used].sum()) if mean_base > 0 else 0.0
    health = ScoreHealth(
        response_tokens=n, mean_base_loss=mean_base, mean_ref_loss=float(ref_loss[used].mean()),
        mean_abs_score=mean_abs, score_quantiles=_quantiles(score), relative_move=relative_move,
        noise_floor=noise_floor,
        below_floor_share=float((np.abs(score) < noise_floor).mean()), keep_ratio=keep_ratio,
        threshold=threshold, undecided_share=undecided, undecided_loss_share=undecided_loss,
        split_half=split_half_agreement(ranked, used, np.asarray(offsets)), verdict="healthy")
    if relative_move < min_relative_move or undecided_loss > max_undecided_loss:
        health.verdict = "near noise"
        health.warnings.append(
            f"the selection is close to noise: the reference moved by a mean |score| of {mean_abs:.4f} nats "
            f"({relative_move:.1%} of the base loss {mean_base:.3f}; healthy: >= {min_relative_move:.0%}), and "
            f"{undecided:.0%} of the response tokens ({undecided_loss:.0%} of the base loss; healthy: <= "
            f"{max_undecided_loss:.0%}) lie within {noise_floor} nats of the selection threshold {threshold:.4f}, "
            f"so rounding decides whether they are kept; {ADVICE}")
    return health


def _quantiles(score: np.ndarray) -> dict[str, float]:
    return {f"q{q}": float(v) for q, v in zip((10, 50, 90), np.quantile(score, [0.1, 0.5, 0.9]))}


def split_half_agreement(score: np.ndarray, used: np.ndarray, offsets: np.ndarray, min_tokens: int = 2,
                         min_samples: int = 10) -> float | None:
    """Spearman rank correlation, across samples, between the mean score of a sample's odd-numbered and of its
    even-numbered scored tokens.

    A reliability measure of the per-sample ranking: when the reference learned something about a sample (its
    style, its facts), both halves of the sample show it; when the scores are unrelated to the sample, the halves
    disagree (rho near 0). It is scale-free, so it says whether the ranking has structure, not whether the
    differences are large enough to trust (``relative_move`` and ``undecided_share`` say that). Samples with fewer
    than ``min_tokens`` scored tokens in either half are left out; None when fewer than ``min_samples`` remain.
    ``score``, ``used``: (total_tokens,); ``offsets``: (n_samples + 1,).
    """
    from scipy.stats import spearmanr

    idx = np.flatnonzero(used)
    n_samples = len(offsets) - 1
    sample_of = np.searchsorted(offsets, idx, side="right") - 1  # (n_used,) sorted
    rank = np.arange(len(idx)) - np.searchsorted(sample_of, np.arange(n_samples))[sample_of]  # within the sample
    means, enough = [], np.ones(n_samples, bool)
    for parity in (1, 0):  # odd-numbered, even-numbered scored tokens
        pick = rank % 2 == parity
        count = np.bincount(sample_of[pick], minlength=n_samples)
        total = np.bincount(sample_of[pick], weights=score[idx[pick]], minlength=n_samples)
        enough &= count >= min_tokens
        means.append(total / np.maximum(count, 1))
    if enough.sum() < min_samples:
        return None
    x, y = means[0][enough], means[1][enough]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # a constant half ranks nothing
    return float(spearmanr(x, y).statistic)


def selection_agreement(keep_a: np.ndarray, keep_b: np.ndarray, response_mask: np.ndarray) -> float:
    """Cohen's kappa between two keep-masks over the response tokens: 1 = the same selection, 0 = no more
    agreement than two independent random selections of the same sizes. ``keep_a``, ``keep_b``,
    ``response_mask``: (total_tokens,) bool."""
    m = np.asarray(response_mask, bool)
    a, b = np.asarray(keep_a, bool)[m], np.asarray(keep_b, bool)[m]
    if len(a) == 0:
        return float("nan")
    observed = float((a == b).mean())
    pa, pb = a.mean(), b.mean()
    chance = float(pa * pb + (1 - pa) * (1 - pb))
    return 1.0 if chance == 1.0 else (observed - chance) / (1 - chance)
