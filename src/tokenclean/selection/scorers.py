"""Token scorers: what ranks the response tokens, as pure functions of per-token loss arrays (no I/O, no torch).

A scorer turns per-token losses into a score; selection keeps the top of it at the configured level (``global``,
``sample``, ``threshold``), keep ratio and ``min_kept_per_sample`` (``select_scored``, which calls
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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.tokens import per_sample_sum
from ..errors import ConfigError, MismatchError
from .select import SCORERS as SCORER_NAMES
from .select import SelectConfig, select_tokens
from .select import selection_counts

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


def curve_gate(base_loss: np.ndarray, ref_loss: np.ndarray, config: SelectConfig) -> str:
    """What ``curve-positive``'s rule ruled out, counted over the candidates (for the error when it is all)."""
    both = ~np.isnan(base_loss) & ~np.isnan(ref_loss)
    base, ref = base_loss[both].astype(np.float64), ref_loss[both].astype(np.float64)
    high, flat = int((ref >= CURVE_MAX_REF).sum()), int((base <= CURVE_SLOPE * ref + CURVE_MARGIN).sum())
    return (f"its fixed rule keeps a token only when loss_base > {CURVE_SLOPE:g}·loss_ref + {CURVE_MARGIN:g} and "
            f"loss_ref < {CURVE_MAX_REF:g} nats: {high:,} tokens have a reference loss of {CURVE_MAX_REF:g} nats or "
            f"more, {flat:,} too little excess")


@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its score function and how its keep-mask is made; for a scorer that gates tokens,
    what its gate rules out (``gate``: (base, ref, config) -> text) and what to change when it rules out all
    (``gate_advice``)."""

    score: Callable[[np.ndarray, np.ndarray, np.ndarray | None, SelectConfig], np.ndarray]  # (base, ref, pf, cfg)
    needs_prompt_free: bool = False
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (global mask, sample mask) -> mask
    gate: Callable[[np.ndarray, np.ndarray, SelectConfig], str] | None = None
    gate_advice: str = ""


_WARM_UP_MORE = "warm the reference up further (--warmup-epochs, --warmup-min-steps, more --warmup-data)"
SCORERS: dict[str, Scorer] = {
    "excess": Scorer(lambda b, r, p, c: excess(b, r)),
    "small-loss": Scorer(lambda b, r, p, c: small_loss_excess(b, r, c.gate_quantile),
                         gate=lambda b, r, c: f"it never keeps a token whose reference loss is above the "
                                              f"{c.gate_quantile:g} quantile of all response tokens' reference losses",
                         gate_advice="raise --gate-quantile, or use --scorer excess"),
    "curve-positive": Scorer(lambda b, r, p, c: curve_positive(b, r), gate=curve_gate,
                             gate_advice=f"use --scorer excess, or small-loss (whose gate adapts to the losses), or "
                                         f"{_WARM_UP_MORE} so the losses pass the rule"),
    "union": Scorer(lambda b, r, p, c: excess(b, r), combine=np.logical_or),
    "intersection": Scorer(lambda b, r, p, c: excess(b, r), combine=np.logical_and),
    "prompt": Scorer(lambda b, r, p, c: prompt_gain(r, p), needs_prompt_free=True,
                     gate=lambda b, r, c: "it rules out every response token without a prompt-free loss",
                     gate_advice="score the prompt-free losses again (tokenclean score --prompt-free), or use "
                                 "--scorer excess"),
    "prompt-excess": Scorer(lambda b, r, p, c: prompt_excess(b, r, p), needs_prompt_free=True),
}
assert tuple(SCORERS) == SCORER_NAMES, "selection.SCORERS must list the scorers registered here"


def score_for(config: SelectConfig, base_loss: np.ndarray, ref_loss: np.ndarray, offsets: np.ndarray,
              response_mask: np.ndarray | None = None, prompt_free_loss: np.ndarray | None = None) -> np.ndarray:
    """The score of ``config.scorer``: (total_tokens,) float, NaN at non-candidates, -inf at gated tokens.

    ``base_loss``, ``ref_loss``: (total_tokens,) float, NaN where not scored. Candidates are the tokens where both
    are finite (and ``response_mask``, (total_tokens,) bool, when given). ``prompt_free_loss``: the reference's
    losses without the prompt, mapped onto these tokens (``prompt_free.map_back``); needed by the prompt scorers.
    """
    n = int(offsets[-1]) if len(offsets) else 0
    arrays = {"base_loss": base_loss, "ref_loss": ref_loss, "response_mask": response_mask,
              "prompt_free_loss": prompt_free_loss}
    for name, values in arrays.items():
        if values is not None and len(values) != n:
            raise MismatchError(f"{name} has {len(values)} entries but the offsets cover {n} tokens")
    scorer = SCORERS[config.scorer]
    if scorer.needs_prompt_free and prompt_free_loss is None:
        raise ConfigError(f"scorer {config.scorer!r} needs the reference's prompt-free losses (see "
                          "tokenclean.compute.prompt_free); score the responses without their prompts first")
    candidate = ~np.isnan(base_loss) & ~np.isnan(ref_loss)
    if response_mask is not None:
        candidate &= response_mask.astype(bool)
    base, ref = np.where(candidate, base_loss, np.nan), np.where(candidate, ref_loss, np.nan)
    pf = None if prompt_free_loss is None else np.where(candidate, prompt_free_loss, np.nan)
    return scorer.score(base, ref, pf, config)


def select_scored(score: np.ndarray, offsets: np.ndarray, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Keep-mask ((total_tokens,) bool) of a scorer's ``score`` at ``config``'s level, keep ratio and min-kept
    rules, never keeping a gated (-inf) token; and its counts (``mask_counts``).

    Gated tokens go to ``select_tokens`` as the lowest finite value, so they count as candidates but rank last,
    and are removed from its mask afterwards. A combining scorer (union, intersection) selects at level ``global``
    and at level ``sample`` and combines the two masks.
    """
    gated = np.isneginf(score)
    work = np.where(gated, np.finfo(score.dtype).min, score) if gated.any() else score
    combine = SCORERS[config.scorer].combine
    if combine is None:
        mask = select_tokens(work, offsets, config)[0]
    else:
        by_level = [select_tokens(work, offsets, dataclasses.replace(config, scorer="excess", level=level))[0]
                    for level in ("global", "sample")]
        mask = combine(*by_level)
    mask &= ~gated
    return mask, mask_counts(score, offsets, mask)


def select_for(config: SelectConfig, base_loss: np.ndarray, ref_loss: np.ndarray, offsets: np.ndarray,
               response_mask: np.ndarray | None = None, prompt_free_loss: np.ndarray | None = None,
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """``select_scored(score_for(...))``: the keep-mask and counts of ``config`` (scorer and selection) from losses."""
    score = score_for(config, base_loss, ref_loss, offsets, response_mask, prompt_free_loss)
    return select_scored(score, offsets, config)


def mask_counts(score: np.ndarray, offsets: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The counts ``select_tokens`` reports, for any keep-mask of ``score``, plus ``gated_tokens``.

    ``response_tokens``: non-NaN scores (gated ones included); ``kept_share`` = kept / response tokens;
    ``samples_zero_kept``: samples with candidates but none kept; ``score_threshold``: the lowest kept score.
    """
    threshold = float(score[mask].min()) if mask.any() else None
    counts = selection_counts(per_sample_sum(~np.isnan(score), offsets), per_sample_sum(mask, offsets), threshold)
    return {**counts, "gated_tokens": int(np.isneginf(score).sum())}


def nothing_kept(config: SelectConfig, counts: dict[str, Any], score: np.ndarray, base_loss: np.ndarray,
                 ref_loss: np.ndarray) -> str | None:
    """Why a selection with ``counts`` (``mask_counts``) of ``score`` keeps no response token, and what to change;
    None when it keeps some, or there is none to keep. ``base_loss``, ``ref_loss``: (total_tokens,) as scored."""
    n = counts["response_tokens"]
    if counts["kept_tokens"] or not n:
        return None
    scorer = SCORERS[config.scorer]
    if scorer.gate is not None and counts.get("gated_tokens") == n:
        why = f"--scorer {config.scorer} ruled out every one ({scorer.gate(base_loss, ref_loss, config)})"
        advice = scorer.gate_advice
    elif config.level == "threshold":
        finite = score[np.isfinite(score)]
        best = f"the highest score is {finite.max():.4g}" if len(finite) else "no token has a finite score"
        why, advice = f"no token scores above --threshold {config.threshold:g} ({best})", \
            "lower --threshold, or use --level global with a --keep-ratio"
    else:
        why, advice = f"--keep-ratio {config.keep_ratio:g} of them rounds to 0 tokens", "raise --keep-ratio"
    return (f"the selection keeps 0 of {n:,} response tokens, so there is nothing to train on: {why}; {advice}")
