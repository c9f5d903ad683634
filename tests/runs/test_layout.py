"""The paths of a run directory: the names below are the on-disk format that runs written before keep resuming
with, so they are spelled out literally here."""

from pathlib import Path

from tokenclean.runs.layout import (BASE_SCORES, HELDOUT_BASE, TOKENS, Layout, StageName, methods_run, parse_stage,
                                    round_dirs, seeds_run)


def test_single_run_stage_names(tmp_path):
    at = Layout(tmp_path)
    assert (TOKENS, BASE_SCORES, HELDOUT_BASE) == ("tokens", "scores/base", "heldout-base")
    assert (at.reference, at.reference_scores, at.pair_scores) == ("reference", "scores/reference", "scores/pair")
    assert (at.selection, at.model, at.export) == ("selection", "model", "export")
    assert at.round_stage(2, "model") == "rounds/2/model"
    assert at.summary == tmp_path / "summary.json" and at.round_record(1) == tmp_path / "rounds/1/round.json"
    assert at.tokens() == tmp_path / "tokens/pool" and at.kinds == tmp_path / "tokens/pool_kinds.parquet"
    assert at.checkpoints(at.model) == "checkpoints/model"


def test_compare_variant_stage_names(tmp_path):
    at = Layout.variant_of(tmp_path, 3, "fixed")
    assert (at.reference, at.reference_scores) == ("seed-3/reference", "seed-3/scores/reference")
    assert (at.selection, at.model, at.export) == ("seed-3/fixed/selection", "seed-3/fixed/model", "seed-3/fixed/export")
    assert at.summary == tmp_path / "seed-3/fixed/summary.json"
    assert Layout.next_to("seed-3/self-evolving/rounds/2/model", "heldout") == "seed-3/self-evolving/rounds/2/heldout"
    assert Layout.next_to(at.model, "benchmarks") == "seed-3/fixed/benchmarks"
    assert (at.comparison, at.comparison_md) == (tmp_path / "comparison.json", tmp_path / "comparison.md")


def test_seeds_methods_and_rounds_are_found(tmp_path: Path):
    for d in ("seed-0/fixed/selection", "seed-0/full/model", "seed-0/other", "seed-2/rho", "seed-x"):
        (tmp_path / d).mkdir(parents=True)
    top = Layout(tmp_path)
    assert sorted(seeds_run(top)) == [0, 2]
    assert methods_run(top, 0, {"fixed", "full", "rho"}) == ["fixed", "full"]
    evolving = Layout.variant_of(tmp_path, 0, "self-evolving")
    for t in (10, 2, 0):
        (tmp_path / evolving.round(t)).mkdir(parents=True)
    assert [t for t, _ in round_dirs(evolving)] == [0, 2, 10]


def test_stage_names_parse_back_into_their_parts(tmp_path):
    at = Layout.variant_of(tmp_path, 3, "fixed[small-loss]")
    single = Layout(tmp_path)
    assert parse_stage(at.selection) == StageName("selection", 3, "fixed[small-loss]")
    assert parse_stage(at.reference_scores) == StageName("scores/reference", 3)
    assert parse_stage(at.reference) == StageName("reference", 3)
    assert parse_stage(at.round_stage(2, "model")) == StageName("model", 3, "fixed[small-loss]", 2)
    assert parse_stage(single.round_stage(10, "scores")) == StageName("scores", round=10)
    assert parse_stage(BASE_SCORES) == StageName("scores/base") and parse_stage(HELDOUT_BASE).name == HELDOUT_BASE
    assert parse_stage(Layout.next_to(at.model, "heldout")) == StageName("heldout", 3, "fixed[small-loss]")
    assert Layout.adapter(at.reference) == "seed-3/reference/adapter"
    assert at.config_kept("20261206-1200") == tmp_path / "config.20261206-1200.yaml"
