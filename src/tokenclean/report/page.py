"""``tokenclean report``'s output: one run's page, ``<run>/report/index.html``, and its plots beside it, from the
view of the run (``report.view``) rendered by ``report.html`` and ``report.plots``.

>>> write_report("runs/cmp", samples=100)                    # doctest: +SKIP
PosixPath('runs/cmp/report/index.html')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import TokencleanError
from ..io import atomic_write_text
from .html import render_page
from .view import DEFAULT_SAMPLES, load_run, load_view_tokenizer, sample_stats, token_texts


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, method: str | None = None,
                 seed: int | None = None, samples: int = DEFAULT_SAMPLES, tokenizer: str | os.PathLike | None = None,
                 plots: bool = True) -> Path:
    """Write ``out`` (default ``<run_dir>/report``)``/index.html``, one self-contained page, and the plots as PNG
    beside it. Shows the first ``samples`` samples of the pool. Returns the path of the page."""
    if samples < 0:
        raise TokencleanError(f"--samples must be >= 0, got {samples}")
    view = load_run(run_dir, method, seed)
    tok = load_view_tokenizer(view, tokenizer)
    out = Path(out) if out is not None else view.layout.report
    stats = sample_stats(view)
    figures = []
    if plots:
        from .plots import write_plots

        figures = write_plots(view, stats, out)
    else:
        from .plots import remove_plots

        remove_plots(out)
        view.note("plots not drawn (--no-plots)")
    shown = np.arange(min(samples, len(view.tokens)))
    ids, offsets = view.input_ids, view.offsets
    texts = {int(i): token_texts(tok, ids[offsets[i]:offsets[i + 1]]) for i in shown}
    page = out / "index.html"
    atomic_write_text(page, render_page(view, stats, texts, figures))
    return page
