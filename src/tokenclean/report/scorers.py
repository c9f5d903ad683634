"""What the report says about the scorer that made a selection (``selection.scorers``): the units of its threshold,
and whether that threshold is a line on the histogram of base loss - reference loss.

A selection's ``score_threshold`` is the lowest kept score in the scorer's own units. Only for the scorers that keep
the top of base - reference loss (``excess`` and its gated forms) does it separate kept from dropped tokens on the
report's score histogram; for the others the page says why no line is drawn.
"""

from __future__ import annotations

from .view import RunView

EXCESS_UNIT_SCORERS = ("excess", "small-loss", "curve-positive")
NO_THRESHOLD_LINE = {
    "union": "it keeps the union of the global and the per-sample selections, so no single score separates kept "
             "from dropped tokens",
    "intersection": "it keeps the intersection of the global and the per-sample selections, so no single score "
                    "separates kept from dropped tokens",
    "prompt": "its score is the prompt gain (prompt-free loss - loss, nats), not base - reference loss",
    "prompt-excess": "its score is the mean percentile rank of excess and prompt gain (in [0, 1]), not base - "
                     "reference loss",
}
THRESHOLD_UNITS = {"prompt": "nats of prompt gain", "prompt-excess": "mean percentile rank, in [0, 1]"}
GATING_SCORERS = ("small-loss", "curve-positive", "prompt", "prompt-excess")  # may gate (never keep) tokens


def threshold_line(view: RunView) -> float | None:
    """The selection's threshold when it is in base - reference loss units (``EXCESS_UNIT_SCORERS``), else None."""
    return view.threshold if view.scorer in EXCESS_UNIT_SCORERS else None


def no_threshold_line(view: RunView) -> str | None:
    """Why the selection's threshold is not drawn on the score histogram; None when it is drawn or there is none."""
    if view.threshold is None or threshold_line(view) is not None:
        return None
    why = NO_THRESHOLD_LINE.get(view.scorer, "its score is not base - reference loss")
    return f"No threshold line: scorer {view.scorer} made the selection, and {why}."


def threshold_units(scorer: str | None) -> str:
    """The units of a selection threshold made by ``scorer``."""
    return THRESHOLD_UNITS.get(scorer, "nats of base - reference loss")


def scorer_text(view: RunView) -> str | None:
    """The scorer and its setting, e.g. ``small-loss (gate quantile 0.9)``; None without a scorer."""
    scorer = view.scorer
    if scorer == "small-loss" and "gate_quantile" in (view.selection.get("config") or {}):
        return f"{scorer} (gate quantile {view.selection['config']['gate_quantile']})"
    return scorer
