"""The report's score-health box and warning banner: does the run's reference differ enough from the base for its
scores to rank anything? (``selection.health``, written to summary.json as ``score_health`` and, for self-evolving
runs, to each round's round.json.) Runs written before score health existed have none: nothing is shown.

Losses and scores are in nats; shares are of the scored response tokens (response tokens with a finite base and
reference loss) unless a row says otherwise.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .view import RunView

HEALTHY = "healthy"


def _num(x: Any, spec: str) -> str:
    """``x`` formatted with ``spec``; an en dash when missing or not finite (a run without scores writes NaN)."""
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else format(x, spec)


def health_rows(health: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of one ``ScoreHealth`` dict; rows whose numbers the dict lacks are left out."""
    h, rows = health, [("verdict", str(health.get("verdict", "–")))]
    if "response_tokens" in h:
        rows.append(("scored response tokens", f"{h['response_tokens']:,}"))
    if "mean_abs_score" in h and "relative_move" in h:
        rows.append(("reference move", f"mean |score| {_num(h['mean_abs_score'], '.4g')} nats = "
                                       f"{_num(h['relative_move'], '.1%')} of the mean base loss "
                                       f"{_num(h.get('mean_base_loss'), '.4g')} nats"))
    q = h.get("score_quantiles") or {}
    if q:
        rows.append(("score quantiles 10 / 50 / 90%",
                     " / ".join(_num(q.get(k), "+.4g") for k in ("q10", "q50", "q90")) + " nats"))
    floor = _num(h.get("noise_floor"), ".4g")
    if "below_floor_share" in h:
        rows.append(("below the noise floor", f"{_num(h['below_floor_share'], '.1%')} of the tokens have |score| < "
                                              f"{floor} nats"))
    if "threshold" in h:
        ratio = f" (global top {_num(h.get('keep_ratio'), '.0%')} by score)" if "keep_ratio" in h else ""
        rows.append(("selection threshold", f"{_num(h['threshold'], '+.4g')} nats{ratio}"))
    if "undecided_share" in h:
        rows.append(("undecided", f"{_num(h['undecided_share'], '.1%')} of the tokens "
                                  f"({_num(h.get('undecided_loss_share'), '.1%')} of their base loss) lie within "
                                  f"{floor} nats of the threshold"))
    if "split_half" in h:
        value = ("– (too few samples with scored tokens in both halves)" if h["split_half"] is None else
                 _num(h["split_half"], "+.3f"))
        rows.append(("split-half agreement", f"{value}; Spearman rho of each sample's mean score, odd vs even "
                                             "tokens"))
    return rows


def health_round(view: RunView) -> int | None:
    """Self-evolving: the round whose score health summary.json reports (the first that is not healthy, else
    round 1); None for other methods."""
    health = view.score_health
    return next((r.get("round") for r in view.rounds if health is not None and r.get("score_health") == health),
                None)


def _where(view: RunView) -> str:
    t = health_round(view)
    return "" if t is None else f" <span class=muted>(round {t}'s reference)</span>"


def health_banner(view: RunView) -> str:
    """An amber banner with each warning, when the verdict is not healthy; "" otherwise or without score health."""
    health = view.score_health
    if health is None or health.get("verdict") == HEALTHY:
        return ""
    warnings = "".join(f"<p>{html.escape(str(w))}</p>" for w in health.get("warnings") or [])
    return (f'<div class="warn"><p><b>Score health: {html.escape(str(health.get("verdict")))}</b>{_where(view)}'
            f"</p>{warnings}</div>")


def health_box(view: RunView) -> str:
    """The "Score health" section: the verdict and its numbers; "" without score health."""
    health = view.score_health
    if health is None:
        return ""
    verdict = "ok" if health.get("verdict") == HEALTHY else "bad"
    cells = "".join(f'<tr><th>{html.escape(k)}</th><td{" class=" + verdict if k == "verdict" else ""}>'
                    f"{html.escape(v)}</td></tr>" for k, v in health_rows(health))
    return (f"<h2>Score health{_where(view)}</h2>"
            "<p class=muted>Whether the reference moved far enough from the base for the selection's score to rank "
            "tokens beyond rounding noise.</p>"
            f'<table class="summary health">{cells}</table>')


def health_cell(record: dict[str, Any]) -> str:
    """One self-evolving round's score health for the rounds table, e.g. ``near noise (0.6% move)``."""
    health = record.get("score_health")
    if not isinstance(health, dict):
        return ""
    return f"{health.get('verdict', '–')} ({_num(health.get('relative_move'), '.1%')} move)"
