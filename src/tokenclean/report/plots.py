"""The report's plots, as PNG files: loss scatter, score histogram, kept share per sample, self-evolving rounds.

matplotlib (the ``[report]`` extra) is imported here only, and only its object-oriented API is used (``Figure``
with the Agg canvas), so drawing never changes the pyplot backend of the calling program. A plot whose inputs the
run does not have is skipped, with the reason noted on the page and in the log.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TokencleanError
from ..io import atomic_write_bytes
from ..selection.scorers import EXCESS_UNITS
from .scorers import no_threshold_line, score_units, threshold_line
from .view import RunView, SampleStats

MAX_POINTS = 50_000  # scatter points drawn at most (a seeded random subset of the tokens)
KEPT, DROPPED, NEUTRAL = "#b2182b", "#8c959f", "#0969da"
PLOTS = ("losses.png", "scores.png", "kept_per_sample.png", "rounds.png")


def _figure(width: float = 5.2, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TokencleanError("plots need matplotlib: pip install 'tokenclean[report]' (or pass --no-plots)") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_losses(base: np.ndarray, ref: np.ndarray, keep: np.ndarray | None, path: Path,
                max_points: int = MAX_POINTS, seed: int = 0) -> Path:
    """Scatter of base loss (x) against reference loss (y) per response token, kept tokens highlighted; the
    y = x line separates tokens the warm-up made easier (below) from harder ones. Inputs (total_tokens,); tokens
    with a NaN loss are left out; at most ``max_points`` tokens drawn (a seeded random subset)."""
    idx = np.flatnonzero(~np.isnan(base) & ~np.isnan(ref))
    n = len(idx)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    fig = _figure()
    ax = fig.add_subplot()
    groups = [(np.ones(len(idx), bool), NEUTRAL, "response tokens")] if keep is None else [
        (~keep[idx], DROPPED, "dropped"), (keep[idx], KEPT, "kept")]
    for mask, colour, label in groups:
        ax.scatter(base[idx][mask], ref[idx][mask], s=3, alpha=0.4, lw=0, color=colour, rasterized=True,
                   label=f"{label} ({int(mask.sum()):,})")
    lo = float(min(base[idx].min(), ref[idx].min())) if len(idx) else 0.0
    hi = float(max(base[idx].max(), ref[idx].max())) if len(idx) else 1.0
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="y = x")
    ax.set(xlabel="base loss (nats)", ylabel="reference loss (nats)",
           title="per-token loss" + (f" ({len(idx):,} of {n:,} tokens)" if len(idx) < n else ""))
    ax.legend(loc="upper left", markerscale=4, fontsize=8)
    return _save(fig, path)


def plot_score_histogram(score: np.ndarray, keep: np.ndarray | None, threshold: float | None, path: Path,
                         units: str = EXCESS_UNITS) -> Path:
    """Histogram of the selection's score (in ``units``) over response tokens ((total_tokens,); NaN and gated
    tokens, -inf, left out), split into kept and dropped when ``keep`` is given, with the selection threshold
    marked."""
    scored = np.isfinite(score)
    fig = _figure()
    ax = fig.add_subplot()
    values = score[scored]
    bins = np.histogram_bin_edges(values, bins=80) if len(values) else 10
    if keep is None:
        ax.hist(values, bins=bins, color=NEUTRAL)
    else:
        ax.hist([score[scored & ~keep], score[scored & keep]], bins=bins, stacked=True, color=[DROPPED, KEPT],
                label=["dropped", "kept"])
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:+.3g}")
    ax.set(xlabel=f"score ({units})", ylabel="tokens", title="token scores")
    if keep is not None or threshold is not None:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_kept_per_sample(kept_share: np.ndarray, path: Path) -> Path:
    """Histogram of the kept share of each sample with response tokens ((n_samples,), NaN left out)."""
    share = kept_share[~np.isnan(kept_share)]
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(share, bins=np.linspace(0, 1, 21), color=KEPT)
    ax.set(xlabel="kept share of the sample's response tokens", ylabel="samples",
           title=f"kept share per sample\n{int((share == 0).sum()):,} of {len(share):,} samples with none kept")
    return _save(fig, path)


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> Path:
    """Self-evolving trajectory: kept share, held-out loss and train loss per round (round.json records)."""
    fig = _figure(10.5, 3.2)
    axes = fig.subplots(1, 3)
    for ax, (key, label) in zip(axes, (("kept_share", "kept share"), ("heldout_loss", "held-out loss"),
                                       ("train_loss", "train loss"))):
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color=KEPT)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color=DROPPED)
        ax.set(xlabel="round", title=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def remove_plots(out: Path) -> None:
    """Remove the plots an earlier report (of another method, say) left in ``out``."""
    for name in PLOTS:
        (out / name).unlink(missing_ok=True)


def write_plots(view: RunView, stats: SampleStats, out: Path) -> list[tuple[Path, str]]:
    """Draw every plot the run has inputs for into ``out`` (and no other); returns (PNG path, caption) pairs."""
    remove_plots(out)
    figures: list[tuple[Path, str]] = []
    if view.base_loss is None or view.ref_loss is None:
        view.note("no loss scatter: the run has no base or reference losses")
    else:
        figures.append((plot_losses(view.base_loss, view.ref_loss, view.keep_mask, out / "losses.png"),
                        "Base vs reference loss per token; below the line the warm-up lowered the loss."))
    if view.score is None:
        view.note("no score histogram: the run saved no selection score")
    else:
        line = threshold_line(view)
        caption = "Scores of the response tokens" + (" and the selection threshold." if line is not None else ".")
        figures.append((plot_score_histogram(view.score, view.keep_mask, line, out / "scores.png", score_units(view)),
                        caption + (f" {no_threshold_line(view)}" if no_threshold_line(view) else "")))
    if view.keep_mask is None:
        view.note(f"no kept-per-sample plot: method {view.method} records no token selection")
    else:
        figures.append((plot_kept_per_sample(stats.kept_share, out / "kept_per_sample.png"),
                        "Share of each sample's response tokens that is kept."))
    if view.rounds:
        figures.append((plot_rounds(view.rounds, out / "rounds.png"), "Self-evolving rounds."))
    return figures
