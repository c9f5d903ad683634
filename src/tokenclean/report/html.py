"""The report page: one self-contained HTML file (inline CSS and JS, plots embedded as data URIs).

Each shown sample is a ``<section class="sample">`` whose tokens are ``<span class="t ...">``: prompt tokens
``p`` (muted), response tokens ``k`` (kept) or ``d`` (dropped, faded and struck through) or ``r`` (no selection),
with a background class ``c0``..``c{2*BINS}`` from a diverging colour scale of the score (``c{BINS}`` = 0) and a
tooltip with the token's losses. The page's script filters samples by text or id and sorts them; the URL fragment
keeps both (``index.html#q=apples&sort=kept:desc``).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import KIND_CODES
from .health import health_banner, health_box, health_cell
from .scorers import gates, score_units, scorer_text
from .view import RunView, SampleStats

BINS = 8  # colour steps per side of zero
NEGATIVE, NEUTRAL, POSITIVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)  # blue, white, red (RdBu)
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}  # a demo's ground-truth token kinds
KIND_STYLES = {KIND_CODES["informative"]: "2px solid #1a7f37", KIND_CODES["generic"]: "2px dotted #6e7781",
               KIND_CODES["noise"]: "2px dashed #cf222e"}
SORTS = [("index:asc", "pool order"), ("id:asc", "sample id"), ("kept:desc", "kept share, high first"),
         ("kept:asc", "kept share, low first"), ("score:desc", "mean score, high first"),
         ("score:asc", "mean score, low first"), ("len:desc", "length, long first"), ("len:asc", "length, short first")]


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> str:
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def bin_colours() -> list[str]:
    """(2 * BINS + 1,) background colours from the most negative score to the most positive."""
    return [_mix(NEUTRAL, NEGATIVE, (BINS - i) / BINS) if i < BINS else _mix(NEUTRAL, POSITIVE, (i - BINS) / BINS)
            for i in range(2 * BINS + 1)]


def score_scale(view: RunView, shown: list[int]) -> float:
    """The score that gets the strongest colour: the 95th percentile of |score| over the shown samples (a few
    large scores would otherwise leave the bulk of the tokens nearly white; the tooltip has the exact value)."""
    score = view.score
    if score is None or not shown:
        return 1.0
    values = np.abs(np.concatenate([score[view.offsets[i]:view.offsets[i + 1]] for i in shown]))
    values = values[np.isfinite(values)]  # gated tokens (-inf) take the strongest colour, not the scale
    scale = float(np.percentile(values, 95)) if len(values) else 0.0
    return scale if scale > 0 else 1.0


def score_bins(score: np.ndarray, scale: float) -> np.ndarray:
    """(n,) colour bin of each score: 0 .. 2*BINS, BINS for 0 and NaN."""
    t = np.clip(np.nan_to_num(score, nan=0.0) / scale, -1.0, 1.0)
    return np.rint(t * BINS).astype(np.int64) + BINS


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


def _score_text(x: float) -> str:
    return "gated" if np.isneginf(x) else _fmt(x, "+.3f")


def _token_html(text: str) -> str:
    """A token's text for a ``white-space: pre-wrap`` element: escaped, newlines visible as a return arrow."""
    return esc(text).replace("\n", "\u21b5\n")


def render_sample(view: RunView, i: int, texts: list[str], stats: SampleStats, scale: float) -> str:
    """One ``<section class="sample">``: a header of counts and the sample's tokens."""
    lo, hi = view.offsets[i], view.offsets[i + 1]
    ids, response = view.input_ids[lo:hi], view.response_mask[lo:hi]
    keep = None if view.keep_mask is None else view.keep_mask[lo:hi]
    base = None if view.base_loss is None else view.base_loss[lo:hi]
    ref = None if view.ref_loss is None else view.ref_loss[lo:hi]
    score = view.score[lo:hi] if view.score is not None else np.full(hi - lo, np.nan)
    bins = score_bins(score, scale)
    kinds = None if view.kinds is None else view.kinds[lo:hi]
    spans = []
    for j, text in enumerate(texts):
        cls = ["t"]
        title = f"#{j} id {ids[j]}"
        if not response[j]:
            cls.append("p")
            title += " · prompt"
        else:
            cls += ["r" if keep is None else ("k" if keep[j] else "d"), f"c{bins[j]}"]
            title += (f" · base {_fmt(base[j] if base is not None else None)} · ref "
                      f"{_fmt(ref[j] if ref is not None else None)} · score {_score_text(score[j])}")
            title += "" if keep is None else (" · kept" if keep[j] else " · dropped")
        if kinds is not None and kinds[j] in KIND_NAMES:
            cls.append(f"kd{kinds[j]}")
            title += f" · {KIND_NAMES[int(kinds[j])]}"
        spans.append(f'<span class="{" ".join(cls)}" title="{esc(title)}">{_token_html(text)}</span>')
    sid = view.sample_ids[i]
    kept = "" if stats.kept is None else (f" · {stats.kept[i]} kept ({_fmt(100 * stats.kept_share[i], '.0f')}%)")
    round_ = "" if view.sample_round is None else f" · round {view.sample_round[i]}"
    header = (f"<b>{esc(sid)}</b> <span class=muted>#{i}</span> · {stats.length[i]} tokens · "
              f"{stats.response[i]} response{kept} · mean score {_fmt(stats.mean_score[i], '+.3f')}{round_}")
    data = (f'data-index="{i}" data-id="{esc(sid)}" data-len="{stats.length[i]}" '
            f'data-kept="{_data(stats.kept_share[i])}" data-score="{_data(stats.mean_score[i])}"')
    return f'<section class="sample" {data}><header>{header}</header><div class="toks">{"".join(spans)}</div></section>'


def _data(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6g}"


def summary_rows(view: RunView) -> list[tuple[str, str]]:
    """(label, value) pairs of the run's headline numbers."""
    meta, sel, summ = view.tokens.meta, view.selection, view.summary
    rows = [("method", view.method + ("" if view.seed is None else f" (seed {view.seed})")),
            ("samples", f"{meta['samples']:,} ({meta['response_tokens']:,} response tokens of {meta['tokens']:,})")]
    if "kept_tokens" in sel and sel.get("response_tokens"):
        rows.append(("kept tokens", (f"{sel['kept_tokens']:,} of {sel['response_tokens']:,} "
                                    f"({100 * sel['kept_tokens'] / sel['response_tokens']:.1f}%)")))
    if sel.get("gated_tokens") or (gates(view) and "gated_tokens" in sel):
        rows.append(("gated tokens", f"{sel['gated_tokens']:,} (ruled out by scorer {view.scorer}: never kept)"))
    config = sel.get("config") or {}
    if config:
        scorer = scorer_text(view)
        rows.append(("selection", ("" if scorer is None else f"scorer {scorer}, ")
                     + f"level {config.get('level')}, keep_ratio {config.get('keep_ratio')}"))
    if view.threshold is not None:
        rows.append(("score threshold", f"{view.threshold:+.4f} (lowest kept score, {score_units(view)})"))
    if "samples_zero_kept" in sel:
        rows.append(("samples with none kept", f"{sel['samples_zero_kept']:,}"))
    training = summ.get("training", {})
    if "trained_tokens" in training:
        rows.append(("trained tokens", f"{training['trained_tokens']:,}"))
    if training.get("train_loss") is not None:
        rows.append(("train loss", f"{training['train_loss']:.4f}"))
    if summ.get("heldout_loss") is not None:
        rows.append(("held-out loss", f"{summ['heldout_loss']:.4f}"))
    return rows


def comparison_table(comparison: dict[str, Any], current: str) -> str:
    """The comparison as an HTML table: methods as rows; every metric of the rows a column (mean ± std)."""
    from ..runs.compare import COLUMNS, _columns

    rows = comparison.get("rows", [])
    columns = comparison.get("columns") or _columns(rows, COLUMNS)  # written by compare since the demo's columns
    multi = len(comparison.get("seeds", [])) > 1
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns)
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            cell = fmt.format(r["mean"][key]) if key in r["mean"] else ""
            if cell and multi and key in r["std"]:
                cell += " ± " + fmt.format(r["std"][key])
            cells.append(f"<td>{esc(cell)}</td>")
        mark = ' class="current"' if r["method"] == current else ""
        body.append(f"<tr{mark}><th>{esc(r['method'])}</th>{''.join(cells)}</tr>")
    seeds = ", ".join(map(str, comparison.get("seeds", [])))
    note = ""
    if comparison.get("base_heldout_loss") is not None:
        note = f"<p class=muted>Base model held-out loss (before any fine-tuning): {comparison['base_heldout_loss']:.4f}."
    return (f"<h2>Comparison <span class=muted>(seeds {esc(seeds)}; mean ± std over seeds)</span></h2>"
            f'<table class="cmp"><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{note}")


def rounds_table(rounds: list[dict[str, Any]]) -> str:
    keys = [("kept_share", "kept share", ".3f"), ("trained_tokens", "trained tokens", ","),
            ("train_loss", "train loss", ".4f"), ("heldout_loss", "held-out loss", ".4f"),
            ("score_threshold", "score threshold", "+.4f")]
    keys = [k for k in keys if any(r.get(k[0]) is not None for r in rounds)]
    health = any("score_health" in r for r in rounds)
    head = "".join(f"<th>{h}</th>" for _, h, _ in keys) + ("<th>score health</th>" if health else "")
    body = "".join(f"<tr><th>{r['round']}</th>" + "".join(
        f"<td>{_fmt(r.get(k), f) if r.get(k) is not None else ''}</td>" for k, _, f in keys)
        + (f"<td>{esc(health_cell(r))}</td>" if health else "") + "</tr>" for r in rounds)
    return f'<h2>Self-evolving rounds</h2><table class="cmp"><thead><tr><th>round</th>{head}</tr></thead>' \
           f"<tbody>{body}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}' \
           f"</figcaption></figure>"


def legend(view: RunView, scale: float) -> str:
    colours = bin_colours()
    bar = "".join(f'<span class="t c{i}">&nbsp;&nbsp;</span>' for i in range(len(colours)))
    parts = [(f"score ({esc(score_units(view))}): <span class=muted>{-scale:+.2f}</span> {bar} "
             f"<span class=muted>{scale:+.2f}</span> (ranked first: red)"),
             '<span class="t p">prompt</span>']
    if view.keep_mask is not None:
        parts += [f'<span class="t k c{2 * BINS - 2}">kept</span>', f'<span class="t d c{2 * BINS - 2}">dropped</span>']
    else:
        parts.append('<span class="t r">response (no selection recorded)</span>')
    if view.kinds is not None:
        parts += [f'<span class="t kd{k}">{name}</span>' for k, name in KIND_NAMES.items()]
    return '<p class="legend">' + " · ".join(parts) + "</p>"


def render_page(view: RunView, stats: SampleStats, texts: dict[int, list[str]],
                figures: list[tuple[Path, str]]) -> str:
    """The whole page. ``texts``: pool index -> token texts of each shown sample (in pool order);
    ``figures``: (PNG path, caption) pairs."""
    shown = sorted(texts)
    scale = score_scale(view, shown)
    total = len(view.tokens)
    title = f"tokenclean report: {view.root.name or view.root}"
    parts = [f"<h1>{esc(title)}</h1>",
             f"<p class=muted>{esc(view.root.resolve())} · method {esc(view.method)}"
             + ("" if view.seed is None else f" · seed {view.seed}") + "</p>"]
    if view.conclusion:
        parts.append('<div class="conclusion">' + "".join(f"<p>{esc(c)}</p>" for c in view.conclusion) + "</div>")
    parts.append(health_banner(view))
    parts.append('<table class="summary">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                                     for k, v in summary_rows(view)) + "</table>")
    parts.append(health_box(view))
    if view.comparison:
        parts.append(comparison_table(view.comparison, view.method))
    if view.rounds:
        parts.append(rounds_table(view.rounds))
    if figures:
        parts.append('<h2>Plots</h2><div class="figs">' + "".join(_figure(p, c) for p, c in figures) + "</div>")
    if view.notes:
        parts.append("<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in view.notes) + "</ul>")
    options = "".join(f'<option value="{v}">{esc(label)}</option>' for v, label in SORTS)
    parts += [
        "<h2>Samples</h2>",
        (f'<p id="shown">Showing {len(shown):,} of {total:,} samples (the first {len(shown):,} in pool order; '
        "<code>tokenclean report --samples N</code> shows more). Hover a token for its losses.</p>"),
        legend(view, scale),
        ('<div class="controls"><input id="q" type="search" placeholder="filter by text or sample id" size="40"> '
        f'<label>sort <select id="sort">{options}</select></label> <span id="count">(filter and sort need '
        "JavaScript)</span></div>"),
        '<div id="samples">' + "".join(render_sample(view, i, texts[i], stats, scale) for i in shown) + "</div>",
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_css()}</style></head>'
            f'<body>{"".join(parts)}<script>{SCRIPT}</script></body></html>\n')


def _css() -> str:
    colours = "".join(f".c{i}{{background:{c}}}" for i, c in enumerate(bin_colours()))
    dark = ",".join(f".c{i}" for i in range(2 * BINS + 1) if abs(i - BINS) > BINS // 2)
    colours += f"{dark}{{color:#fff}}"  # light text on the strongest colours
    kinds = "".join(f".kd{k}{{border-bottom:{s}}}" for k, s in KIND_STYLES.items())
    return CSS + colours + kinds


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#1f2328}
h1{font-size:1.5em;margin-bottom:.1em}h2{font-size:1.15em;margin-top:1.6em}
.muted{color:#6e7781;font-weight:normal}
.conclusion{border-left:4px solid #0969da;background:#ddf4ff;padding:0 1em;margin:1em 0;font-size:1.05em}
.conclusion p{margin:.5em 0}
table{border-collapse:collapse}th,td{padding:.2em .7em;border-bottom:1px solid #d0d7de;text-align:left}
table.cmp td{text-align:right;font-variant-numeric:tabular-nums}tr.current{background:#fff8c5}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figure img{max-width:100%}
figcaption{color:#6e7781;font-size:.9em}
.controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #d0d7de;z-index:1}
.sample{border:1px solid #d0d7de;border-radius:6px;margin:.8em 0;overflow:hidden}
.sample header{background:#f6f8fa;padding:.3em .7em;border-bottom:1px solid #d0d7de;font-size:.9em}
.toks{white-space:pre-wrap;word-break:break-word;font:13px/1.7 ui-monospace,monospace;padding:.5em .7em}
.t{border-radius:2px}.t:empty{display:inline-block;width:.3em;height:1em;vertical-align:middle}
.p{color:#8c959f}.d{opacity:.45;text-decoration:line-through}.r{color:#1f2328}
.legend .t{padding:0 .25em;font:13px ui-monospace,monospace}
.warn{border-left:4px solid #bf8700;background:#fff8c5;padding:0 1em;margin:1em 0}.warn p{margin:.5em 0}
td.ok{color:#1a7f37;font-weight:600}td.bad{color:#9a6700;font-weight:600}
"""

SCRIPT = """
(() => {
  const box = document.getElementById('samples'), q = document.getElementById('q');
  const sort = document.getElementById('sort'), count = document.getElementById('count');
  const items = Array.from(box.querySelectorAll('.sample'));
  const text = new Map(items.map(e => [e, (e.dataset.id + '\\n' + e.querySelector('.toks').textContent
                                            .replace(/\\u21b5/g, '')).toLowerCase()]));
  const num = (e, key) => e.dataset[key] === '' ? NaN : Number(e.dataset[key]);
  function byId(a, b) {  // numerically when both ids are numbers
    const x = Number(a.dataset.id), y = Number(b.dataset.id);
    return Number.isNaN(x) || Number.isNaN(y) ? a.dataset.id.localeCompare(b.dataset.id) : x - y;
  }
  function apply() {
    const needle = q.value.trim().toLowerCase();
    const [key, dir] = sort.value.split(':'), sign = dir === 'desc' ? -1 : 1;
    items.sort((a, b) => {
      if (key === 'id') return sign * byId(a, b);
      const x = num(a, key), y = num(b, key), nx = Number.isNaN(x), ny = Number.isNaN(y);
      return nx || ny ? nx - ny : sign * (x - y);  // missing values last either way
    });
    let n = 0;
    for (const e of items) {
      e.hidden = needle !== '' && !text.get(e).includes(needle);
      n += !e.hidden;
      box.appendChild(e);
    }
    count.textContent = `${n} of ${items.length} shown samples match`;
    try { history.replaceState(null, '', '#' + new URLSearchParams({q: q.value, sort: sort.value})); } catch (e) {}
  }
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('q')) q.value = hash.get('q');
  if (hash.has('sort') && Array.from(sort.options).some(o => o.value === hash.get('sort'))) sort.value = hash.get('sort');
  q.addEventListener('input', apply);
  sort.addEventListener('change', apply);
  apply();
})();
"""
