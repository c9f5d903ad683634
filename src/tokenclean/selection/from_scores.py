"""From per-token losses to a keep-mask: a scorer's score (``score_for``), its selection at the configured level,
keep ratio and minimum per sample (``select_scored``), both (``select_for``), and a ``Selection`` artifact from two
``Scores`` artifacts (``select_scores``), checked to cover the same tokens and refused, with why and what to change,
when it keeps no token (``nothing_kept``). No I/O: ``api.select`` reads and writes, the run stages
(``runs.stages``) save through the stage engine."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from ..core.artifacts import Scores, Selection, check_losses, check_same_tokens, token_position
from ..core.tokens import TokenOrigin, per_sample_sum
from ..errors import ConfigError, DataError, MismatchError
from .scorers import SCORERS
from .select import SelectConfig, select_tokens, selection_counts

log = logging.getLogger("tokenclean")


def select_scores(base: Scores, ref: Scores, config: SelectConfig | None = None, prompt_free: Scores | None = None,
                  names: tuple[str, str, str] = ("scores", "scores", "scores")) -> Selection:
    """The keep-mask of ``config`` (scorer and selection; default ``excess``, global, keep ratio 0.6) from the base
    and reference losses of the same tokens, with the score it ranked by (``Selection.score``); ``prompt_free``: the reference's prompt-free losses of those tokens,
    for the prompt scorers. ``names``: what to call base, ref and prompt_free in errors (e.g. their directories)."""
    config = config or SelectConfig()
    base_name, ref_name, free_name = names
    if prompt_free is not None:
        check_same_tokens(base.meta, f"base scores ({base_name})", prompt_free.meta,
                          f"prompt-free scores ({free_name})")
    check_same_tokens(base.meta, f"base scores ({base_name})", ref.meta, f"reference scores ({ref_name})")
    if base.sample_ids != ref.sample_ids or not np.array_equal(base.offsets, ref.offsets):
        raise MismatchError(f"{base_name} and {ref_name} cover different samples; score the same data with both")
    differ = np.flatnonzero(np.isnan(base.token_loss) != np.isnan(ref.token_loss))
    if len(differ):
        name = base_name if np.isnan(base.token_loss[differ[0]]) else ref_name
        raise DataError(f"{name}: token_loss is NaN at {token_position(base, differ[0])}, a token the other scores "
                        "file scored, expected a finite loss at every response token; score again")
    check_losses(base, base_name)
    check_losses(ref, ref_name)
    score = score_for(config, base.token_loss, ref.token_loss, base.offsets,
                      prompt_free_loss=None if prompt_free is None else prompt_free.token_loss)
    mask, counts = select_scored(score, base.offsets, config)
    empty = nothing_kept(config, counts, score, base.token_loss, ref.token_loss)
    if empty:  # stop here, not later in training with "all labels are masked"
        raise ConfigError(f"selection ({base_name}, {ref_name}): {empty}")
    meta = {
        **TokenOrigin.of(base.meta).meta(),
        "base_model_fingerprint": base.meta.get("model_fingerprint"),
        "ref_model_fingerprint": ref.meta.get("model_fingerprint"),
        "config": asdict(config),
        "score_units": SCORERS[config.scorer].units,
        **counts,
    }
    log.info("selection (%s, %s, keep_ratio %.2f): kept %d of %d response tokens (%.4f); %d samples with none kept",
             config.scorer, config.level, config.keep_ratio, counts["kept_tokens"], counts["response_tokens"],
             counts["kept_share"], counts["samples_zero_kept"])
    return Selection(base.sample_ids, mask, base.offsets, meta, score)


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
    return scorer.score(base, ref, pf, config.gate_quantile)


def select_scored(score: np.ndarray, offsets: np.ndarray, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Keep-mask ((total_tokens,) bool) of a scorer's ``score`` at ``config``'s level, keep ratio and min-kept
    rules, never keeping a gated (-inf) token; and its counts (``mask_counts``).

    Gated tokens go to ``select_tokens`` as the lowest finite value, so they count as candidates but rank last,
    and are removed from its mask afterwards. A combining scorer (union, intersection) selects at level ``global``
    and at level ``sample`` and combines the two masks.
    """
    gated = np.isneginf(score)
    work = np.where(gated, np.finfo(score.dtype).min, score) if gated.any() else score
    scorer = SCORERS[config.scorer]
    if scorer.combine is None:
        mask = select_tokens(work, offsets, config)[0]
    else:  # each level ranks the same score; the fallback names it where a combining scorer cannot stand
        by_level = [select_tokens(work, offsets, dataclasses.replace(config, scorer=scorer.fallback, level=level))[0]
                    for level in ("global", "sample")]
        mask = scorer.combine(*by_level)
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
    """Why a selection with ``counts`` (``mask_counts``) of ``score`` keeps no response token, and what to change
    (a gating scorer's reasons are on its registry entry: ``Scorer.gate``, ``Scorer.gate_advice``); None when it
    keeps some, or there is none to keep. ``base_loss``, ``ref_loss``: (total_tokens,) as scored."""
    n = counts["response_tokens"]
    if counts["kept_tokens"] or not n:
        return None
    scorer = SCORERS[config.scorer]
    if scorer.gate is not None and counts.get("gated_tokens") == n:
        why = f"--scorer {config.scorer} ruled out every one ({scorer.gate(base_loss, ref_loss, config.gate_quantile)})"
        advice = scorer.gate_advice
    elif config.level == "threshold":
        finite = score[np.isfinite(score)]
        best = f"the highest score is {finite.max():.4g}" if len(finite) else "no token has a finite score"
        why, advice = f"no token scores above --threshold {config.threshold:g} ({best})", \
            "lower --threshold, or use --level global with a --keep-ratio"
    else:
        why, advice = f"--keep-ratio {config.keep_ratio:g} of them rounds to 0 tokens", "raise --keep-ratio"
    return f"the selection keeps 0 of {n:,} response tokens, so there is nothing to train on: {why}; {advice}"
