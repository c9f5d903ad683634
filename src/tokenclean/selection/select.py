"""Selection: which response tokens to keep, as a pure function of arrays (no I/O).

``score = loss_base - loss_ref`` per token; higher = the warm-up taught it more = more informative = kept.
Arrays are flat over all tokens of all samples; ``offsets`` (n_samples + 1,) delimit samples; NaN scores mark
tokens that are not candidates (prompt tokens, position 0).

Levels:
- ``global``: the top ``round(keep_ratio * N)`` of all N candidates (exact, O(N), no sort: the streamed
  threshold of ``core.threshold``, also used out of core by ``selection.stream``);
- ``sample``: the top ``round(keep_ratio * n_i)`` of each sample's n_i candidates;
- ``threshold``: every candidate with score > ``threshold``.
``round`` is round-half-up. Ties are broken deterministically: the earlier token (in sample order, then position)
is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import option
from ..core.threshold import kept_count, refuse_infinite, round_half_up, select_top, top_k_mask  # noqa: F401
from ..core.tokens import per_sample_sum
from ..errors import ConfigError
from .scorers import SCORERS

LEVELS = ("global", "sample", "threshold")


@dataclass
class SelectConfig:
    """What to keep."""

    keep_ratio: float = option(0.6, "share of response tokens kept, in (0, 1]")
    level: str = option("global", "global: rank all tokens of the dataset; sample: rank within each sample (RHO); "
                        "threshold: keep score > --threshold", choices=list(LEVELS))
    threshold: float = option(0.0, "with --level threshold: keep tokens whose score is above this")
    min_kept_per_sample: int = option(0, "top every sample up to at least this many kept tokens, by score")
    drop_empty: bool = option(True, "leave samples with no kept token out of training and export")
    scorer: str = option("excess", "what ranks tokens (see tokenclean.selection.scorers): " + "; ".join(
                         f"{name}: {s.help}" for name, s in SCORERS.items()), choices=list(SCORERS))
    gate_quantile: float = option(0.9, "with --scorer small-loss: never keep a token whose reference loss is above "
                                  "this quantile of all response tokens' reference losses, in (0, 1]")

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"unknown selection level {self.level!r}, expected one of {list(LEVELS)}")
        if not (0.0 < self.keep_ratio <= 1.0):
            raise ConfigError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.min_kept_per_sample < 0:
            raise ConfigError(f"min_kept_per_sample must be >= 0, got {self.min_kept_per_sample}")
        if self.scorer not in SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}, expected one of {list(SCORERS)}")
        if not (0.0 < self.gate_quantile <= 1.0):
            raise ConfigError(f"gate_quantile must be in (0, 1], got {self.gate_quantile}")
        if SCORERS[self.scorer].combine is not None and self.level != "global":
            raise ConfigError(f"scorer {self.scorer!r} combines the global and the sample selection itself; "
                              f"leave level at 'global', got {self.level!r}")


def sample_ranks(values: np.ndarray, sample_of: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each candidate within its sample: by value descending, then earlier position."""
    order = np.lexsort((np.arange(len(values)), -values, sample_of))
    ranks = np.empty(len(values), dtype=np.int64)
    sorted_samples = sample_of[order]
    starts = np.flatnonzero(np.r_[True, sorted_samples[1:] != sorted_samples[:-1]]) if len(order) else np.array([], int)
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks[order] = np.arange(len(order)) - first
    return ranks


def select_tokens(score: np.ndarray, offsets: np.ndarray, cfg: SelectConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Keep-mask over all tokens (False at non-candidates) and its counts.

    ``score``: (total_tokens,) float, NaN = not a candidate. ``offsets``: (n_samples + 1,) int.
    Counts: ``response_tokens``, ``kept_tokens``, ``dropped_tokens``, ``kept_share`` (kept / response tokens),
    ``samples``, ``samples_with_response``, ``samples_zero_kept`` (samples with candidates but none kept),
    ``score_threshold`` (lowest kept score).
    """
    locate = _locator(offsets)
    if cfg.level == "global":  # the streamed threshold over the array, read in chunks
        mask, threshold = select_top(score, cfg.keep_ratio, locate=locate)
        if not cfg.min_kept_per_sample:
            return mask, selection_counts(per_sample_sum(~np.isnan(score), offsets), per_sample_sum(mask, offsets),
                                          threshold.value)
    refuse_infinite(score, locate)
    cand = np.flatnonzero(~np.isnan(score))
    values = score[cand]
    sample_of = np.searchsorted(offsets, cand, side="right") - 1
    n_samples = len(offsets) - 1
    per_sample = np.bincount(sample_of, minlength=n_samples)
    ranks = None
    if cfg.level == "global":
        keep = mask[cand]
    elif cfg.level == "sample":
        ranks = sample_ranks(values, sample_of)
        keep = ranks < kept_count(cfg.keep_ratio, per_sample)[sample_of]
    else:
        keep = values > cfg.threshold
    if cfg.min_kept_per_sample:
        ranks = sample_ranks(values, sample_of) if ranks is None else ranks
        keep |= ranks < cfg.min_kept_per_sample
    mask = np.zeros(len(score), dtype=bool)
    mask[cand[keep]] = True
    kept_per_sample = np.bincount(sample_of[keep], minlength=n_samples)
    threshold = float(values[keep].min()) if keep.any() else None
    return mask, selection_counts(per_sample, kept_per_sample, threshold)


def _locator(offsets: np.ndarray):
    """Names a flat token index by its sample and position, for error messages."""
    def locate(flat: int) -> str:
        sample = int(np.searchsorted(offsets, flat, side="right") - 1)
        return f"sample {sample}, token {flat - offsets[sample]}"
    return locate


def selection_counts(per_sample: np.ndarray, kept_per_sample: np.ndarray, threshold: float | None
                     ) -> dict[str, Any]:
    """The counts every selection reports, from (n_samples,) candidates and kept tokens per sample and the
    lowest kept score: ``response_tokens``, ``kept_tokens``, ``dropped_tokens``, ``kept_share`` (kept / response
    tokens), ``samples``, ``samples_with_response``, ``samples_zero_kept`` (samples with candidates but none kept),
    ``score_threshold``."""
    n, kept = int(per_sample.sum()), int(kept_per_sample.sum())
    return {
        "response_tokens": n,
        "kept_tokens": kept,
        "dropped_tokens": n - kept,
        "kept_share": kept / n if n else 0.0,
        "samples": len(per_sample),
        "samples_with_response": int((per_sample > 0).sum()),
        "samples_zero_kept": int(((per_sample > 0) & (kept_per_sample == 0)).sum()),
        "score_threshold": threshold,
    }
