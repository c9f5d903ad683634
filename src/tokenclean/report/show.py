"""One sample in the terminal: kept tokens green, dropped red and dim, prompt grey (``tokenclean show``).

Without colour the same marks are text, in the style of ``git diff --word-diff``: ``{+kept+}``, ``[-dropped-]``,
prompt and unselected response text as is.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from .view import RunView, sample_stats

RESET = "\x1b[0m"
ANSI = {"p": "\x1b[90m", "k": "\x1b[32m", "d": "\x1b[2;31m", "r": "\x1b[36m"}  # grey, green, dim red, cyan
PLAIN = {"p": ("", ""), "k": ("{+", "+}"), "d": ("[-", "-]"), "r": ("", "")}
NAMES = {"p": "prompt", "k": "kept", "d": "dropped", "r": "response"}


def use_color(stream=None) -> bool:
    """Colour when ``stream`` (default stdout) is a terminal and ``NO_COLOR`` is not set."""
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ \
        and os.environ.get("TERM") != "dumb"


def token_classes(view: RunView, i: int) -> list[str]:
    """(n_tokens,) class of each token of sample ``i``: ``p`` prompt, ``k`` kept, ``d`` dropped, ``r`` response
    of a method without a recorded selection."""
    lo, hi = view.offsets[i], view.offsets[i + 1]
    response = view.response_mask[lo:hi]
    if view.keep_mask is None:
        return ["r" if r else "p" for r in response]
    keep = view.keep_mask[lo:hi]
    return ["p" if not r else ("k" if k else "d") for r, k in zip(response, keep)]


def _runs(classes: list[str], texts: list[str]) -> list[tuple[str, str]]:
    """Consecutive tokens of the same class joined: [(class, text), ...]."""
    runs: list[tuple[str, str]] = []
    for cls, text in zip(classes, texts):
        if runs and runs[-1][0] == cls:
            runs[-1] = (cls, runs[-1][1] + text)
        else:
            runs.append((cls, text))
    return runs


def _paint(cls: str, text: str, color: bool) -> str:
    if color:
        return f"{ANSI[cls]}{text}{RESET}"
    start, end = PLAIN[cls]
    return f"{start}{text}{end}"


def render_sample(view: RunView, i: int, texts: list[str], color: bool) -> str:
    """Sample ``i`` as terminal text: a header (id, counts, mean score), a legend, then its tokens.
    ``texts``: (n_tokens,) the decoded text of each token."""
    stats = sample_stats(view)
    classes = token_classes(view, i)
    counts = {c: classes.count(c) for c in NAMES}
    where = f"{view.root} · method {view.method}" + ("" if view.seed is None else f", seed {view.seed}")
    line = f"{len(classes)} tokens: {counts['p']} prompt, {stats.response[i]} response"
    if view.keep_mask is not None:
        share = counts["k"] / stats.response[i] if stats.response[i] else 0.0
        line += f", {counts['k']} kept ({100 * share:.0f}%), {counts['d']} dropped"
    mean = stats.mean_score[i]
    line += "" if math.isnan(mean) else f" · mean score {mean:+.3f}"
    if view.sample_round is not None:
        line += f" · self-evolving round {view.sample_round[i]}"
    shown = ("p", "r") if view.keep_mask is None else ("p", "k", "d")
    if color:
        legend = "legend: " + " · ".join(_paint(c, NAMES[c], True) for c in shown)
    else:
        legend = "legend: prompt as is, " + (", ".join(_paint(c, NAMES[c], False) for c in ("k", "d"))
                                             if view.keep_mask is not None else "response as is (no selection)")
    body = "".join(_paint(cls, text, color) for cls, text in _runs(classes, texts))
    header = f"sample {view.sample_ids[i]} (index {i} of {len(view.tokens)}) · {where}"
    return f"{header}\n{line}\n{legend}\n\n{body}\n"


def show(view: RunView, i: int, tokenizer, color: bool) -> str:
    """``render_sample`` with the tokens of sample ``i`` decoded by ``tokenizer``."""
    from .view import token_texts

    ids = np.asarray(view.input_ids[view.offsets[i]:view.offsets[i + 1]])
    return render_sample(view, i, token_texts(tokenizer, ids), color)
