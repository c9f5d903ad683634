"""What the report says about the scorer that made a selection, read from its registry entry
(``selection.scorers.SCORERS``): the units of its score and threshold, its setting, and whether one threshold line
separates kept from dropped tokens on the histogram of its score.

A selection's ``score_threshold`` is the lowest kept score, in the scorer's own units, and the histogram shows the
score the selection saved; so the line is drawn for every scorer but the combining ones (union, intersection), which
keep the union or intersection of two selections and have no single threshold.
"""

from __future__ import annotations

from ..selection.scorers import EXCESS_UNITS, SCORERS, Scorer
from .view import RunView


def scorer_of(view: RunView) -> Scorer | None:
    """The registry entry of the scorer that made the selection; None without one (or for a name this version does
    not know)."""
    return SCORERS.get(view.scorer) if view.scorer is not None else None


def threshold_line(view: RunView) -> float | None:
    """The selection's threshold, drawn on the histogram of its score; None for a combining scorer."""
    scorer = scorer_of(view)
    return None if scorer is not None and scorer.combine is not None else view.threshold


def no_threshold_line(view: RunView) -> str | None:
    """Why the selection's threshold is not drawn on the score histogram; None when it is drawn or there is none."""
    if view.threshold is None or threshold_line(view) is not None:
        return None
    return (f"No threshold line: scorer {view.scorer} made the selection ({scorer_of(view).help}), so no single "
            "score separates kept from dropped tokens.")


def score_units(view: RunView) -> str:
    """The units of the selection's score (and threshold), as the selection recorded them (``score_units``;
    selections written before it recorded them ranked by base - reference loss)."""
    return view.selection.get("score_units", EXCESS_UNITS)


def gates(view: RunView) -> bool:
    """Whether the selection's scorer may rule tokens out (never kept)."""
    scorer = scorer_of(view)
    return scorer is not None and scorer.gates


def scorer_text(view: RunView) -> str | None:
    """The scorer and its setting, e.g. ``small-loss (gate quantile 0.9)``; None without a scorer."""
    scorer, config = scorer_of(view), view.selection.get("config") or {}
    if scorer is not None and scorer.setting in config:
        return f"{view.scorer} ({scorer.setting.replace('_', ' ')} {config[scorer.setting]})"
    return view.scorer
