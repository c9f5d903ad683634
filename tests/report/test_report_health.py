"""The report's score-health box and banner, and which scorer made the selection (its gated tokens, its threshold
line). Run directories are built from the artifact classes with hand-set losses, as in ``test_report.py``."""

import html
import json
import re
import shutil

import numpy as np
import pytest
from test_report import _pool_with_base_scores, save_scores

from tokenclean import SelectConfig, Selection, select
from tokenclean.report import plots
from tokenclean.report.html import score_bins, score_scale
from tokenclean.report.scorers import no_threshold_line, threshold_line
from tokenclean.report.page import write_report
from tokenclean.report.view import load_run
from tokenclean.selection.health import score_health

# The 300-row GSM8K case with a 2-step warm-up, as summary.json records it (selection.health.ScoreHealth).
WARNING = ("the selection is close to noise: the reference moved by a mean |score| of 0.0040 nats (0.3% of the base "
           "loss 1.335; healthy: >= 5%), and 50% of the response tokens (48% of the base loss; healthy: <= 10%) lie "
           "within 0.01 nats of the selection threshold 0.0002, so rounding decides whether they are kept; warm the "
           "reference up longer")
NEAR_NOISE = {
    "response_tokens": 41234, "mean_base_loss": 1.335, "mean_ref_loss": 1.316, "mean_abs_score": 0.004,
    "score_quantiles": {"q10": -0.004, "q50": 0.0009, "q90": 0.031}, "relative_move": 0.003, "noise_floor": 0.01,
    "below_floor_share": 0.62, "keep_ratio": 0.6, "threshold": 0.00017, "undecided_share": 0.5,
    "undecided_loss_share": 0.48, "split_half": 0.125, "verdict": "near noise", "warnings": [WARNING],
}


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, tiny_model_dir, gpt2_tokenizer):
    """A ``tokenclean run`` directory of method fixed (excess scorer) with a prompt-free scores stage; summary.json
    has no score health yet."""
    root = tmp_path_factory.mktemp("runs") / "fixed"
    tokens, ref = _pool_with_base_scores(root, gpt2_tokenizer)
    save_scores(tokens, root / "scores" / "reference", ref)
    prompt_free = ref + np.random.default_rng(1).uniform(0.0, 2.0, len(ref)).astype(np.float32)  # NaN stays NaN
    save_scores(tokens, root / "scores" / "prompt_free", prompt_free)
    select(root / "scores" / "base", root / "scores" / "reference", root / "selection")
    (root / "config.yaml").write_text(f"base: {tiny_model_dir}\nmethod: fixed\n")
    (root / "summary.json").write_text(json.dumps({"method": "fixed", "heldout_loss": 2.25}))
    return root


def _copy(run, to):
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("report"))
    return to


def _set_summary(run, **entries):
    path = run / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def _reselect(run, scorer: str) -> dict:
    """Select again with ``scorer``; returns the new selection.json."""
    shutil.rmtree(run / "selection")
    free = run / "scores" / "prompt_free" if scorer.startswith("prompt") else None
    select(run / "scores" / "base", run / "scores" / "reference", run / "selection", SelectConfig(scorer=scorer),
           prompt_free=free)
    return json.loads((run / "selection" / "selection.json").read_text())


def test_near_noise_run_shows_the_banner_and_the_numbers(fixed_run, tmp_path):
    run = _copy(fixed_run, tmp_path / "run")
    _set_summary(run, score_health=NEAR_NOISE)
    page = write_report(run, samples=1, plots=False).read_text(encoding="utf-8")
    banner = page.split('<div class="warn">')[1].split("</div>")[0]
    assert "<b>Score health: near noise</b>" in banner and f"<p>{html.escape(WARNING)}</p>" in banner
    assert page.index('<div class="warn">') < page.index('<table class="summary">')  # above the run's numbers
    box = page.split("<h2>Score health</h2>")[1].split("</table>")[0]
    for text in ("<td class=bad>near noise</td>", "41,234",
                 "mean |score| 0.004 nats = 0.3% of the mean base loss 1.335 nats",
                 "-0.004 / +0.0009 / +0.031 nats", "62.0% of the tokens have |score| &lt; 0.01 nats",
                 "+0.00017 nats (global top 60% by score)",
                 "50.0% of the tokens (48.0% of their base loss) lie within 0.01 nats of the threshold", "+0.125"):
        assert text in box, text


def test_healthy_run_shows_the_box_without_a_banner(fixed_run, tmp_path):
    run = _copy(fixed_run, tmp_path / "run")
    view = load_run(run)
    health = score_health(view.score, view.base_loss, view.ref_loss, view.response_mask, view.offsets).to_dict()
    assert health["verdict"] == "healthy"  # the fixture's reference moved by ~0.4 nats on ~3-nat losses
    _set_summary(run, score_health=health)
    page = write_report(run, samples=1, plots=False).read_text(encoding="utf-8")
    assert 'class="warn"' not in page and "<td class=ok>healthy</td>" in page
    assert f"{health['relative_move']:.1%} of the mean base loss" in page
    assert "too few samples" in page  # 8 samples: no split-half agreement (None)


def test_run_without_score_health_or_scorer_renders(fixed_run, tmp_path):
    """A run written before score health and scorers: no box, no banner, the excess threshold line as before."""
    run = _copy(fixed_run, tmp_path / "run")
    meta_path = run / "selection" / "selection.json"
    meta = json.loads(meta_path.read_text())
    del meta["gated_tokens"], meta["config"]["scorer"], meta["config"]["gate_quantile"]
    meta_path.write_text(json.dumps(meta))
    page = write_report(run, samples=1).read_text(encoding="utf-8")
    assert "Score health" not in page and 'class="warn"' not in page and "gated tokens" not in page
    view = load_run(run)
    assert view.scorer == "excess" and threshold_line(view) == meta["score_threshold"]
    assert "and the selection threshold." in page and "No threshold line" not in page


def test_small_loss_selection_shows_its_scorer_and_gated_tokens(fixed_run, tmp_path, monkeypatch):
    run = _copy(fixed_run, tmp_path / "run")
    meta = _reselect(run, "small-loss")
    assert meta["gated_tokens"] > 0
    drawn = []
    histogram = plots.plot_score_histogram
    monkeypatch.setattr(plots, "plot_score_histogram",
                        lambda score, keep, threshold, *rest: drawn.append(threshold) or histogram(score, keep,
                                                                                                   threshold, *rest))
    page = write_report(run, samples=1).read_text(encoding="utf-8")
    assert (f"<tr><th>gated tokens</th><td>{meta['gated_tokens']:,} (ruled out by scorer small-loss: never kept)"
            "</td></tr>") in page
    assert "<td>scorer small-loss (gate quantile 0.9), level global, keep_ratio 0.6</td>" in page
    assert drawn == [meta["score_threshold"]]  # in excess units: the line is drawn
    assert f"{meta['score_threshold']:+.4f} (lowest kept score, nats of base - reference loss)" in page


def test_prompt_excess_selection_draws_its_threshold_on_its_own_score(fixed_run, tmp_path, monkeypatch):
    """The histogram shows the score the selection saved (a rank in [0, 1]), so its threshold is a line on it."""
    run = _copy(fixed_run, tmp_path / "run")
    meta = _reselect(run, "prompt-excess")
    drawn = []
    histogram = plots.plot_score_histogram
    monkeypatch.setattr(plots, "plot_score_histogram",
                        lambda score, keep, threshold, *rest: drawn.append((threshold, rest[-1])) or
                        histogram(score, keep, threshold, *rest))
    page = write_report(run, samples=1).read_text(encoding="utf-8")
    view = load_run(run)
    assert view.scorer == "prompt-excess" and threshold_line(view) == meta["score_threshold"]
    assert drawn == [(meta["score_threshold"], "mean percentile rank, in [0, 1]")] and "No threshold line" not in page
    assert f"{meta['score_threshold']:+.4f} (lowest kept score, mean percentile rank, in [0, 1])" in page
    assert "<td>scorer prompt-excess, level global" in page
    assert "score (mean percentile rank, in [0, 1]):" in page  # the colour legend


def test_token_colours_are_the_saved_score_under_a_prompt_scorer(fixed_run, tmp_path):
    """Under a scorer other than excess the page colours (and labels) every response token by the score the
    selection ranked it by, as saved beside the mask, not by base - reference loss."""
    run = _copy(fixed_run, tmp_path / "run")
    _reselect(run, "prompt")
    saved = Selection.load(run / "selection").score
    view = load_run(run)
    scored = np.isfinite(saved)
    assert np.array_equal(view.score, saved, equal_nan=True)
    assert not np.allclose(saved[scored], (view.base_loss - view.ref_loss)[scored])  # not the excess score
    page = write_report(run, samples=2, plots=False).read_text(encoding="utf-8")
    n = view.offsets[2]
    tokens = re.findall(r'<span class="t ([^"]*)" title="([^"]*)">', page.split('<div id="samples">')[1])
    assert len(tokens) == n
    bins = score_bins(saved[:n], score_scale(view, [0, 1]))
    for j, (classes, title) in enumerate(tokens):
        if view.response_mask[j]:
            label = "gated" if np.isneginf(saved[j]) else f"{saved[j]:+.3f}" if scored[j] else "–"
            assert f"c{bins[j]}" in classes.split() and f"score {label}" in html.unescape(title), j


def test_union_names_why_no_line_and_random_needs_no_reason(fixed_run, tmp_path):
    run = _copy(fixed_run, tmp_path / "run")
    _reselect(run, "union")
    assert "(excess, the union of the global and sample selections), so no single score" in \
        no_threshold_line(load_run(run))
    page = write_report(run, samples=1, plots=False).read_text(encoding="utf-8")
    assert "gated tokens" not in page  # union gates nothing: no row


def test_self_evolving_rounds_show_their_score_health(fixed_run, tmp_path):
    run = _copy(fixed_run, tmp_path / "run")
    shutil.rmtree(run / "selection")
    healthy = {**NEAR_NOISE, "verdict": "healthy", "relative_move": 0.08, "warnings": []}
    records = [{"round": 0, "trained_tokens": 10}, {"round": 1, "trained_tokens": 8, "score_health": NEAR_NOISE},
               {"round": 2, "trained_tokens": 8, "score_health": healthy}]
    for record in records:
        (run / "rounds" / str(record["round"])).mkdir(parents=True)
        (run / "rounds" / str(record["round"]) / "round.json").write_text(json.dumps(record))
    _set_summary(run, method="self-evolving", rounds=records, score_health=NEAR_NOISE)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("fixed", "self-evolving"))
    page = write_report(run, samples=1, plots=False).read_text(encoding="utf-8")
    assert "<b>Score health: near noise</b> <span class=muted>(round 1's reference)</span>" in page
    assert "<h2>Score health <span class=muted>(round 1's reference)</span></h2>" in page
    rounds = page.split("<h2>Self-evolving rounds</h2>")[1].split("</table>")[0]
    assert "<th>score health</th>" in rounds
    assert "<td>near noise (0.3% move)</td>" in rounds and "<td>healthy (8.0% move)</td>" in rounds


def test_compare_shows_the_chosen_seed_and_methods_health(fixed_run, tmp_path):
    """Each method and seed of a compare directory shows its own summary's score health; full has none."""
    root = tmp_path / "cmp"
    shutil.copytree(fixed_run / "tokens", root / "tokens")
    shutil.copytree(fixed_run / "scores" / "base", root / "scores" / "base")
    shutil.copy(fixed_run / "config.yaml", root / "config.yaml")
    for seed, health in ((1, NEAR_NOISE), (2, {**NEAR_NOISE, "verdict": "healthy", "warnings": []})):
        shutil.copytree(fixed_run / "scores" / "reference", root / f"seed-{seed}" / "scores" / "reference")
        shutil.copytree(fixed_run / "selection", root / f"seed-{seed}" / "fixed" / "selection")
        (root / f"seed-{seed}" / "fixed" / "summary.json").write_text(json.dumps({"method": "fixed",
                                                                                "score_health": health}))
        (root / f"seed-{seed}" / "full").mkdir()
        (root / f"seed-{seed}" / "full" / "summary.json").write_text(json.dumps({"method": "full"}))
    page = write_report(root, seed=1, samples=1, plots=False).read_text(encoding="utf-8")
    assert "method fixed · seed 1" in page and "<b>Score health: near noise</b>" in page
    page = write_report(root, seed=2, samples=1, plots=False).read_text(encoding="utf-8")
    assert 'class="warn"' not in page and "<td class=ok>healthy</td>" in page
    page = write_report(root, method="full", seed=1, samples=1, plots=False).read_text(encoding="utf-8")
    assert "Score health" not in page
