"""The report (HTML page, plots) and the terminal view of a run directory.

Most tests build run directories from the artifact classes with hand-set losses (fast, exact expectations); one
slow test reports on a real ``tokenclean compare`` directory, and one renders the page in headless Chromium.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chat_table, write_jsonl

from tokenclean import select
from tokenclean.core.artifacts import Scores, Selection
from tokenclean.cli import main
from tokenclean.runs.compare import COLUMNS, _columns, aggregate
from tokenclean.errors import TokencleanError
from tokenclean.report.page import write_report
from tokenclean.report.view import find_sample, load_run, per_sample_sum, sample_stats, token_texts
from tokenclean.report.html import BINS, score_bins
from tokenclean.report.show import show, use_color

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRS = [
    ("What is six times seven?", "The answer is 42."),
    ("Say something odd.", "<b>café ☕ & co</b>\nsecond line"),
] + [(f"Count to {i}.", " ".join(str(k) for k in range(i + 1))) for i in range(2, 8)]
META_KEYS = ("tokenizer_fingerprint", "max_seq_len", "template", "train_on_prompt", "data_fingerprint",
             "tokens_fingerprint")


def _token_index(tokenizer, tokens, sample: int, text: str) -> int:
    """Flat index of the first token of ``sample`` that decodes to ``text``."""
    lo, hi = tokens.offsets[sample], tokens.offsets[sample + 1]
    for j, t in enumerate(token_texts(tokenizer, tokens.flat_input_ids()[lo:hi])):
        if t == text:
            return lo + j
    raise AssertionError(f"no token {text!r} in sample {sample}")


def save_scores(tokens, directory, token_loss):
    Scores(tokens.sample_ids, token_loss, tokens.offsets, {k: tokens.meta[k] for k in META_KEYS}).save(directory)


def make_losses(tokenizer, tokens):
    """Seeded base/reference losses (NaN off the response), with " answer" clearly kept and " is" clearly
    dropped in sample 0."""
    n, response = len(tokens.flat_input_ids()), tokens.flat_response_mask()
    rng = np.random.default_rng(0)
    base = np.where(response, rng.uniform(1.0, 5.0, n), np.nan).astype(np.float32)
    ref = np.where(response, base - rng.normal(0.0, 0.5, n), np.nan).astype(np.float32)
    ref[_token_index(tokenizer, tokens, 0, " answer")] = base[_token_index(tokenizer, tokens, 0, " answer")] - 3.0
    ref[_token_index(tokenizer, tokens, 0, " is")] = base[_token_index(tokenizer, tokens, 0, " is")] + 3.0
    return base, ref


def _pool_with_base_scores(root, tokenizer):
    """Write a run's ``tokens/pool`` and ``scores/base`` under ``root``; returns the tokens and reference losses."""
    tokens = chat_table(tokenizer, PAIRS)
    tokens.save(root / "tokens" / "pool")
    base, ref = make_losses(tokenizer, tokens)
    save_scores(tokens, root / "scores" / "base", base)
    return tokens, ref


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_model_dir, gpt2_tokenizer):
    """A ``tokenclean run`` directory of method fixed: tokens, base/reference losses, selection, summary."""
    root = tmp_path_factory.mktemp("runs") / "fixed"
    tokens, ref = _pool_with_base_scores(root, gpt2_tokenizer)
    save_scores(tokens, root / "scores" / "reference", ref)
    sel = select(root / "scores" / "base", root / "scores" / "reference", root / "selection")
    (root / "config.yaml").write_text(f"base: {tiny_model_dir}\nmethod: fixed\n")
    summary = {"method": "fixed", "selection": {k: sel.meta[k] for k in ("response_tokens", "kept_tokens")},
               "training": {"trained_tokens": sel.meta["kept_tokens"], "train_loss": 2.5}, "heldout_loss": 2.25}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, tiny_model_dir, gpt2_tokenizer):
    """A ``tokenclean compare`` directory: methods fixed, random and full, seeds 1 and 2, with comparison.json."""
    root = tmp_path_factory.mktemp("runs") / "cmp"
    tokens, ref = _pool_with_base_scores(root, gpt2_tokenizer)
    runs = []
    for seed in (1, 2):
        seed_dir = root / f"seed-{seed}"
        save_scores(tokens, seed_dir / "scores" / "reference", ref + 0.1 * seed)
        select(root / "scores" / "base", seed_dir / "scores" / "reference", seed_dir / "fixed" / "selection")
        random = Selection(tokens.sample_ids, tokens.flat_response_mask(), tokens.offsets,  # as run_random saves
                           {**{k: tokens.meta[k] for k in META_KEYS}, "kept_tokens": 5, "score_threshold": 0.5})
        random.save(seed_dir / "random" / "selection")
        for method, loss in (("fixed", 2.0 + seed / 100), ("random", 2.2), ("full", 2.5 + seed / 100)):
            (seed_dir / method).mkdir(parents=True, exist_ok=True)
            (seed_dir / method / "summary.json").write_text(json.dumps({"method": method, "heldout_loss": loss}))
            runs.append({"method": method, "seed": seed, "metrics": {
                "kept_tokens": 10 + seed, "training_tokens": 20, "seconds": 1.5, "heldout_loss": loss,
                "gsm8k": 0.125 * seed}})
    rows = aggregate(runs, ["fixed", "random", "full"])
    comparison = {"methods": ["fixed", "random", "full"], "seeds": [1, 2], "base_heldout_loss": 3.0, "rows": rows,
                  "columns": _columns(rows, [*COLUMNS, ("gsm8k", "GSM8K", "{:.1%}")]), "runs": runs}
    (root / "comparison.json").write_text(json.dumps(comparison))
    (root / "config.yaml").write_text(f"base: {tiny_model_dir}\n")
    return root


def spans(page: str, cls: str) -> list[str]:
    """The texts of the token spans of class ``t <cls>`` (HTML-escaped as written)."""
    return re.findall(rf'<span class="t {cls}\b[^"]*" title="[^"]*">([^<]*)</span>', page)


def assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path
    assert matplotlib.image.imread(path).ndim == 3


def test_report_of_a_single_run(single_run, gpt2_tokenizer):
    page_path = write_report(single_run, samples=3)
    assert page_path == single_run / "report" / "index.html"
    page = page_path.read_text(encoding="utf-8")
    view = load_run(single_run)
    assert page.count('<section class="sample"') == 3
    assert f"Showing 3 of {len(PAIRS)} samples" in page
    # every shown token is marked by what the artifacts say: prompt, kept, dropped
    n = view.offsets[3]
    keep, response = view.keep_mask[:n], view.tokens.flat_response_mask()[:n]
    assert len(spans(page, "k")) == int(keep.sum()) > 0
    assert len(spans(page, "d")) == int((response & ~keep).sum()) > 0
    assert len(spans(page, "p")) == int((~response).sum())
    assert " answer" in spans(page, "k") and " is" in spans(page, "d")
    assert re.search(r'class="t k c\d+" title="#\d+ id \d+ · base [\d.]+ · ref [\d.]+ · score \+3\.000 · kept">'
                     r" answer<", page)
    # the summary numbers
    sel = json.loads((single_run / "selection" / "selection.json").read_text())
    assert f"{sel['kept_tokens']:,} of {sel['response_tokens']:,}" in page
    assert f"{sel['score_threshold']:+.4f}" in page and "samples with none kept" in page
    assert "2.2500" in page and "Comparison" not in page  # held-out loss; no comparison in a single run
    # plots, embedded and beside the page
    for name in ("losses", "scores", "kept_per_sample"):
        assert_png(single_run / "report" / f"{name}.png")
    assert page.count("data:image/png;base64,") == 3
    assert "<script src" not in page and "<link" not in page  # self-contained


def test_html_escapes_text_and_keeps_multibyte_characters(single_run):
    page = write_report(single_run, samples=2, plots=False).read_text(encoding="utf-8")
    text = re.sub(r"<span[^>]*>|</span>", "", page)  # the samples' text without the token spans
    assert "&lt;b&gt;café ☕ &amp; co&lt;/b&gt;\u21b5\nsecond line" in text  # escaped; newlines visible
    assert "<b>caf" not in page and "\ufffd" not in page  # ☕ is split over byte-level tokens and rejoined
    assert "plots not drawn (--no-plots)" in page and "data:image/png" not in page


def test_token_texts_rejoin_characters_split_over_tokens(gpt2_tokenizer):
    ids = gpt2_tokenizer("a ☕ b", add_special_tokens=False)["input_ids"]
    texts = token_texts(gpt2_tokenizer, np.asarray(ids))
    assert len(texts) == len(ids) > 3 and "".join(texts) == "a ☕ b"
    assert "" in texts and all("\ufffd" not in t for t in texts)


def test_comparison_table_and_method_choice(compare_run):
    page = write_report(compare_run, samples=2, plots=False).read_text(encoding="utf-8")
    assert "method fixed · seed 1" in page  # defaults: fixed, the first seed
    rows = json.loads((compare_run / "comparison.json").read_text())["rows"]
    fixed = next(r for r in rows if r["method"] == "fixed")
    for key, fmt in (("kept_tokens", "{:.0f}"), ("heldout_loss", "{:.4f}"), ("gsm8k", "{:.1%}")):
        assert f"<td>{fmt.format(fixed['mean'][key])} ± {fmt.format(fixed['std'][key])}</td>" in page
    assert "<th>GSM8K</th>" in page and "<th>held-out loss</th>" in page
    assert "<th>score threshold</th>" in page
    assert '<tr class="current"><th>fixed</th>' in page
    # the other seed and method
    view = load_run(compare_run, method="full", seed=2)
    assert view.method_dir == compare_run / "seed-2" / "full" and view.keep_mask is None
    assert view.ref_loss is not None and view.score is None  # the seed's reference losses are read; full ranked by
    # no score, so its tokens are not coloured by one
    page = write_report(compare_run, method="full", seed=2, samples=2).read_text(encoding="utf-8")
    assert not spans(page, "k") and not spans(page, "d") and spans(page, "r")
    assert "records no token selection" in page and not (compare_run / "report" / "kept_per_sample.png").exists()
    # random's threshold is over its own random scores, not base - reference: not shown
    page = write_report(compare_run, method="random", samples=2, plots=False).read_text(encoding="utf-8")
    assert spans(page, "k") and "<th>score threshold</th>" not in page


def test_demo_conclusion_and_token_kinds(single_run, tmp_path, caplog):
    run = tmp_path / "demo"
    shutil.copytree(single_run, run, ignore=shutil.ignore_patterns("report"))
    conclusion = ["Cleaning <kept> the informative tokens.", "Noise & co dropped."]  # the demo's sentences
    (run / "demo.json").write_text(json.dumps({"conclusion": conclusion}))
    view = load_run(run)
    response = view.tokens.flat_response_mask()
    kinds = np.where(response, np.arange(len(response)) % 3, -1).astype(np.int8)
    offsets = view.offsets
    column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(kinds, pa.int8()))
    pq.write_table(pa.table({"sample_id": view.tokens.sample_ids[::-1], "kind": column.take(
        pa.array(np.arange(len(view.tokens))[::-1]))}), run / "tokens" / "pool_kinds.parquet")  # other row order
    page = write_report(run, samples=2, plots=False).read_text(encoding="utf-8")
    assert ('<div class="conclusion"><p>Cleaning &lt;kept&gt; the informative tokens.</p><p>Noise &amp; co dropped.'
            '</p></div>') in page
    shown = kinds[:offsets[2]]
    samples = page.split('<div id="samples">')[1]
    assert len(re.findall(r'class="t [^"]*\bkd2\b', samples)) == int((shown == 2).sum()) > 0
    assert "informative" in page and "noise" in page
    # kinds not aligned with the tokens: left out with a warning, the page still builds
    pq.write_table(pa.table({"sample_id": view.tokens.sample_ids, "kind": pa.array(
        [[0]] * len(view.tokens), pa.list_(pa.int8()))}), run / "tokens" / "pool_kinds.parquet")
    page = write_report(run, samples=2, plots=False).read_text(encoding="utf-8")
    assert "kd0" not in page.split("</style>")[1] and "not aligned" in caplog.text


def test_show_marks_kept_and_dropped_tokens(single_run, capsys):
    assert main(["show", str(single_run), "--sample", "0"]) == 0  # captured stdout is not a terminal: plain
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert "sample 0 (index 0 of 8)" in out and "What is six times seven?" in out
    assert "answer+}[- is" in out and "legend:" in out  # " answer" kept, " is" dropped (runs joined)
    assert main(["show", str(single_run), "--sample", "0", "--color"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[32m" in out and "\x1b[2;31m" in out and "\x1b[90m" in out and "{+" not in out
    stats = sample_stats(load_run(single_run))
    assert f"{stats.kept[0]} kept" in out


def test_show_finds_a_sample_by_id_before_index(compare_run, gpt2_tokenizer):
    view = load_run(compare_run)
    view.tokens.table = view.tokens.table.set_column(0, "sample_id", pa.array(["7", "x", "2", "3", "4", "5", "6",
                                                                                "0"]))
    assert find_sample(view, "7") == 0 and find_sample(view, "x") == 1 and find_sample(view, 1) == 1
    assert find_sample(view, "-1") == 7
    with pytest.raises(TokencleanError, match=r"no sample '99'; give a sample id or an index in 0\.\.7"):
        find_sample(view, "99")
    text = show(view, 1, gpt2_tokenizer, color=False)
    assert text.startswith("sample x (index 1 of 8)")


def test_use_color_follows_the_terminal_and_no_color(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


def test_errors_name_the_path(tmp_path, single_run, compare_run, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "not a tokenclean run directory" in err
    assert main(["show", str(tmp_path / "missing"), "--sample", "0"]) == 2
    assert f"{tmp_path / 'missing'}: no such directory" in capsys.readouterr().err
    with pytest.raises(TokencleanError, match=r"seed-1: no method 'slm'; methods here: fixed, random, full"):
        load_run(compare_run, method="slm")
    with pytest.raises(TokencleanError, match=r"no seed 3; seeds here: 1, 2"):
        load_run(compare_run, seed=3)
    with pytest.raises(TokencleanError, match="a single run of method 'fixed'"):
        load_run(single_run, method="full")


def test_score_bins_and_per_sample_sums():
    bins = score_bins(np.array([np.nan, 0.0, -5.0, 5.0, 0.5], np.float32), scale=1.0)
    assert bins.tolist() == [BINS, BINS, 0, 2 * BINS, BINS + BINS // 2]
    offsets = np.array([0, 2, 2, 5])  # the middle sample is empty
    assert per_sample_sum(np.array([1, 2, 3, 4, 5]), offsets).tolist() == [3, 0, 12]


def test_headless_chromium_renders_filter_and_table(single_run):
    """The page's script runs in a real browser: the URL fragment filters the samples; the tables render."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium); the page is not rendered in a browser")
    page = write_report(single_run, samples=4, plots=False)
    url = page.resolve().as_uri() + "#q=six+times"
    proc = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=False)
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-2000:]
    assert "1 of 4 shown samples match" in dom  # written by the script after filtering
    assert dom.count('<section class="sample"') == 4 and dom.count("hidden=") == 3
    assert "<th>samples with none kept</th>" in dom
    assert "What is six times seven?" in re.sub(r"<span[^>]*>|</span>", "", dom)


@pytest.mark.slow
def test_report_on_a_real_compare_directory(tmp_path, tiny_model_dir, gsm8k_rows):
    """Every method of a real ``tokenclean compare``: the view reads the layout the pipeline writes."""
    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:16])
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "fixed", "self-evolving", "--rounds", "1", "--base", str(tiny_model_dir),
                 "--data", str(data), "--out", str(out), "--prompt-field", "question", "--response-field", "answer",
                 "--max-seq-len", "128", "--batch-size", "8", "--lora-r", "4", "--max-steps", "1", "--warmup-min-steps", "1",
                 "--quiet"]) == 0
    for method in ("fixed", "self-evolving"):
        view = load_run(out, method=method)
        summary = json.loads((out / "seed-0" / method / "summary.json").read_text())
        assert int(view.keep_mask.sum()) == summary["selection"]["kept_tokens"]  # the mask that was trained on
        page = write_report(out, method=method, samples=5).read_text(encoding="utf-8")
        assert page.count('<section class="sample"') == 5 and "<th>held-out loss</th>" in page
        assert summary["score_health"]["verdict"] in page and "<h2>Score health" in page  # runs record it
    assert [r["round"] for r in view.rounds] == [0, 1] and set(np.unique(view.sample_round)) == {0, 1}
    assert_png(out / "report" / "rounds.png")
