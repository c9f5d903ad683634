"""Token scorers: what ranks the response tokens, as pure functions of per-token loss arrays (no I/O, no torch),
and the registry ``SCORERS`` that holds every rule about each of them.

A scorer turns per-token losses into a score; selection keeps the top of it at the configured level (``global``,
``sample``, ``threshold``), keep ratio and ``min_kept_per_sample`` (``from_scores.select_scored``, which calls
``selection.select_tokens``). Every array is flat over the tokens of all samples, (total_tokens,), aligned with the
token table (entry j = loss of token j); ``offsets`` (n_samples + 1,) delimit the samples. In a score:

- higher = more informative = kept first;
- NaN = not a candidate (prompt tokens, position 0): never kept and not counted by the keep ratio;
- -inf = a *gated* response token, one the scorer rules out as noise: it counts in the keep ratio's denominator
  (so ``keep_ratio`` stays a share of all response tokens and scorers are compared at the same budget) but is never
  kept, not by ``min_kept_per_sample`` either. When the gate removes more than ``1 - keep_ratio`` of the tokens,
  fewer than ``keep_ratio`` are kept (``counts["gated_tokens"]`` says how many were gated).

Scorers (``SCORERS``; ``SelectConfig.scorer`` names one):

- ``excess``: base loss - reference loss (the paper's score).
- ``small-loss``: excess, gating tokens whose reference loss is above the ``gate_quantile`` quantile of all response
  tokens' reference losses (the noisy-label rule "clean tokens have small loss").
- ``curve-positive``: the paper code's fixed rule as a gate on excess: a token passes when
  loss_base > 2·loss_ref + 0.07 and loss_ref < 5. Passing tokens are ranked by excess, so ``level threshold`` with
  ``threshold`` <= 0.07, or ``keep_ratio 1``, keeps exactly the rule's tokens (the paper code's
  ``global-curve-positive``, which has no budget); a smaller keep ratio keeps the passers with the most excess.
- ``union`` / ``intersection``: the excess score, keeping the union / intersection of the ``global`` and ``sample``
  selections at ``keep_ratio`` (the paper code's levels of those names; they need ``level global``).
- ``prompt``: prompt-free loss - loss, both under the reference (T-SHIRT): how much the prompt helps predict the
  token. Response tokens without a prompt-free loss (see ``prompt_free``) are gated.
- ``prompt-excess``: the mean of the percentile ranks of excess and of the prompt gain (a token without a
  prompt-free loss gets the middle rank, 0.5, for the prompt term).

``level threshold`` compares ``threshold`` with the scorer's own units: nats for all but ``prompt-excess``, whose
score is a rank in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The paper code's `global-curve-positive` rule: keep when loss_base > CURVE_SLOPE * loss_ref + CURVE_MARGIN and
# loss_ref < CURVE_MAX_REF.
CURVE_SLOPE, CURVE_MARGIN, CURVE_MAX_REF = 2.0, 0.07, 5.0


def excess(base_loss: np.ndarray, ref_loss: np.ndarray) -> np.ndarray:
    """The paper's score, base - reference loss; the default. (total_tokens,) in, (total_tokens,) out."""
    return base_loss - ref_loss


def small_loss_gate(ref_loss: np.ndarray, gate_quantile: float) -> np.ndarray:
    """(total_tokens,) bool, True at tokens whose reference loss is above the ``gate_quantile`` quantile of the
    finite reference losses (linear interpolation); ties at the quantile pass. NaN entries are never gated."""
    finite = ref_loss[~np.isnan(ref_loss)]
    if gate_quantile >= 1.0 or not len(finite):
        return np.zeros(len(ref_loss), bool)
    limit = np.quantile(finite.astype(np.float64), gate_quantile)
    with np.errstate(invalid="ignore"):
        return ref_loss.astype(np.float64) > limit


def small_loss_excess(base_loss: np.ndarray, ref_loss: np.ndarray, gate_quantile: float = 0.9) -> np.ndarray:
    """Excess, gated (-inf) where the reference loss is in the top ``1 - gate_quantile``: use when the reference
    learned part of the noise (garbled spans it still finds hard outscore informative tokens). (total_tokens,)."""
    score = excess(base_loss, ref_loss)
    score[small_loss_gate(ref_loss, gate_quantile)] = -np.inf
    return score


def curve_positive(base_loss: np.ndarray, ref_loss: np.ndarray) -> np.ndarray:
    """Excess where loss_base > 2·loss_ref + 0.07 and loss_ref < 5 (the paper code's fixed constants), -inf at the
    other response tokens: for comparison with ``small-loss``, whose gate adapts to the losses. (total_tokens,)."""
    base, ref = base_loss.astype(np.float64), ref_loss.astype(np.float64)  # the rule in float64, like Python floats
    with np.errstate(invalid="ignore"):
        passes = (base > CURVE_SLOPE * ref + CURVE_MARGIN) & (ref < CURVE_MAX_REF)
    score = excess(base_loss, ref_loss)
    score[~np.isnan(score) & ~passes] = -np.inf
    return score


def prompt_gain(ref_loss: np.ndarray, prompt_free_loss: np.ndarray) -> np.ndarray:
    """Prompt-free loss - loss under the reference (T-SHIRT): use to keep tokens that depend on the prompt rather
    than on the response's own prefix. -inf where a candidate has no prompt-free loss. (total_tokens,)."""
    gain = prompt_free_loss.astype(ref_loss.dtype) - ref_loss
    gain[~np.isnan(ref_loss) & np.isnan(prompt_free_loss)] = -np.inf
    return gain


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """(n,) float64 rank of each finite value among the finite ones, scaled to [0, 1] (0 = lowest; ties share their
    average rank; a single value gets 0.5); NaN and infinite entries give NaN."""
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    n = int(finite.sum())
    if n == 0:
        return out
    # Average ranks by hand (np.unique), so numpy stays the only dependency (scipy.stats.rankdata does the same).
    unique, inverse, count = np.unique(values[finite], return_inverse=True, return_counts=True)
    average = np.cumsum(count) - (count - 1) / 2.0  # 1-based average rank of each distinct value
    out[finite] = (average[inverse] - 1) / (n - 1) if n > 1 else 0.5
    return out


def prompt_excess(base_loss: np.ndarray, ref_loss: np.ndarray, prompt_free_loss: np.ndarray) -> np.ndarray:
    """Mean of the percentile ranks of excess and prompt gain, in [0, 1]: use to favour, among tokens the warm-up
    taught, those the prompt explains. Ranks, not z-scores, because loss differences are heavy-tailed (a few
    garbled tokens at +10 nats would set the scale). A candidate without a prompt-free loss gets 0.5 for the prompt
    term. (total_tokens,) float64, NaN at non-candidates."""
    score = excess(base_loss, ref_loss)
    gain = percentile_ranks(prompt_gain(ref_loss, prompt_free_loss))
    gain[np.isnan(gain) & ~np.isnan(score)] = 0.5
    return (percentile_ranks(score) + gain) / 2.0


def curve_gate(base_loss: np.ndarray, ref_loss: np.ndarray, gate_quantile: float) -> str:
    """What ``curve-positive``'s rule ruled out, counted over the candidates (for the error when it is all)."""
    both = ~np.isnan(base_loss) & ~np.isnan(ref_loss)
    base, ref = base_loss[both].astype(np.float64), ref_loss[both].astype(np.float64)
    high, flat = int((ref >= CURVE_MAX_REF).sum()), int((base <= CURVE_SLOPE * ref + CURVE_MARGIN).sum())
    return (f"its fixed rule keeps a token only when loss_base > {CURVE_SLOPE:g}·loss_ref + {CURVE_MARGIN:g} and "
            f"loss_ref < {CURVE_MAX_REF:g} nats: {high:,} tokens have a reference loss of {CURVE_MAX_REF:g} nats or "
            f"more, {flat:,} too little excess")


EXCESS_UNITS = "nats of base - reference loss"


@dataclass(frozen=True)
class Scorer:
    """A registered scorer and every rule about it. ``SelectConfig``, the methods (``runs.methods``), ``compare`` and
    the report read these attributes; none keeps a list of scorers of its own."""

    score: Callable[[np.ndarray, np.ndarray, np.ndarray | None, float], np.ndarray]  # (base, ref, prompt-free, gate q)
    help: str  # what it ranks by, one line (``--scorer``'s help)
    units: str = EXCESS_UNITS  # of its score, and so of a selection threshold on it
    nats: bool = True  # its score is a loss difference in nats, so score health (``selection.health``) applies
    setting: str | None = None  # the ``SelectConfig`` field that only it reads
    # a scorer that may rule tokens out (-inf: never kept, still counted by the keep ratio) says what its gate
    # ruled out, (base, ref, gate q) -> text, and what to change when it rules out every token (``nothing_kept``)
    gate: Callable[[np.ndarray, np.ndarray, float], str] | None = None
    gate_advice: str = ""
    needs_prompt_free: bool = False  # needs the reference's losses of the responses without their prompts
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (global mask, sample mask) -> mask
    fallback: str | None = None  # what ranks in its place at level sample, where a combining scorer has no form

    @property
    def gates(self) -> bool:
        """Whether it may rule tokens out (it has a ``gate``)."""
        return self.gate is not None


_WARM_UP_MORE = "warm the reference up further (--warmup-epochs, --warmup-min-steps, more --warmup-data)"
SCORERS: dict[str, Scorer] = {
    "excess": Scorer(lambda b, r, p, q: excess(b, r), "excess = base - reference loss"),
    "small-loss": Scorer(lambda b, r, p, q: small_loss_excess(b, r, q),
                         "excess, never keeping tokens the reference still finds hard", setting="gate_quantile",
                         gate=lambda b, r, q: f"it never keeps a token whose reference loss is above the {q:g} "
                                              f"quantile of all response tokens' reference losses",
                         gate_advice="raise --gate-quantile, or use --scorer excess"),
    "curve-positive": Scorer(lambda b, r, p, q: curve_positive(b, r), "the paper code's fixed rule", gate=curve_gate,
                             gate_advice=f"use --scorer excess, or small-loss (whose gate adapts to the losses), or "
                                         f"{_WARM_UP_MORE} so the losses pass the rule"),
    "union": Scorer(lambda b, r, p, q: excess(b, r), "excess, the union of the global and sample selections",
                    combine=np.logical_or, fallback="excess"),
    "intersection": Scorer(lambda b, r, p, q: excess(b, r), "excess, the intersection of the global and sample "
                           "selections", combine=np.logical_and, fallback="excess"),
    "prompt": Scorer(lambda b, r, p, q: prompt_gain(r, p), "how much the prompt helps the reference",
                     units="nats of prompt gain", needs_prompt_free=True,
                     gate=lambda b, r, q: "it rules out every response token without a prompt-free loss",
                     gate_advice="score the prompt-free losses again (tokenclean score --prompt-free), or use "
                                 "--scorer excess"),
    "prompt-excess": Scorer(lambda b, r, p, q: prompt_excess(b, r, p), "the mean percentile rank of excess and prompt",
                            units="mean percentile rank, in [0, 1]", nats=False, needs_prompt_free=True),
}


def prompt_free_scorers() -> list[str]:
    """The scorers that need the responses scored without their prompts."""
    return [name for name, scorer in SCORERS.items() if scorer.needs_prompt_free]
