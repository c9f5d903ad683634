"""Self-evolving cleaning, the baselines, online SLM, compare, and resume after an interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_llama, write_jsonl
from tokenclean.runs.compare import compare
from tokenclean.compute.losses import slm_loss_sum
from tokenclean.runs.methods import chunks, random_keep_mask
from tokenclean.runs.pipeline import RunConfig, run_pipeline
from tokenclean.core.tokens import IGNORE_INDEX

SETTINGS = {"prompt_field": "question", "response_field": "answer", "max_seq_len": 256, "batch_size": 8,
            "gradient_accumulation_steps": 1, "lora_r": 8, "max_steps": 2, "batch_tokens": 4096,
            "warmup_min_steps": 2}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, gsm8k_rows):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pool.jsonl", gsm8k_rows[:90])


def config(base, data, out, **kw) -> RunConfig:
    return RunConfig.from_flat({"base": str(base), "data": str(data), "out": str(out), **SETTINGS, **kw})


def count_scoring(monkeypatch):
    """Record (model path, tokens scored) of every scoring pass."""
    import tokenclean.compute.score_model as score_model

    calls = []
    original = score_model.score_tokens

    def counting(model, tokens, *args, **kwargs):
        calls.append((kwargs.get("model_fingerprint"), tokens.meta["tokens"]))
        return original(model, tokens, *args, **kwargs)

    monkeypatch.setattr(score_model, "score_tokens", counting)
    return calls


@pytest.mark.slow
def test_self_evolving_two_rounds(tmp_path, tiny_model_dir, pool, monkeypatch):
    from tokenclean.compute.modeling import source_fingerprint

    calls = count_scoring(monkeypatch)
    summary = run_pipeline(config(tiny_model_dir, pool, tmp_path / "se", method="self-evolving", rounds=2))
    out = tmp_path / "se"
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    weights = [load_file(out / f"rounds/{t}/model/model.safetensors") for t in range(3)]
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[0][q], weights[1][q]) and not torch.equal(weights[1][q], weights[2][q])
    # the base scored every pool token exactly once; each round's model scored its chunk once
    base_fp = source_fingerprint(tiny_model_dir)
    pool_tokens = summary["pool"]["tokens"]
    assert [n for fp, n in calls if fp == base_fp] == [pool_tokens]
    round_tokens = [n for fp, n in calls if fp != base_fp]
    assert len(round_tokens) == 2 and sum(round_tokens) < pool_tokens
    for t in (1, 2):
        sel = json.loads((out / f"rounds/{t}/selection/selection.json").read_text())
        assert sel["kept_tokens"] == int(np.floor(0.6 * sel["response_tokens"] + 0.5))
        assert (out / f"rounds/{t}/round.json").exists()


def test_chunks_cover_the_pool():
    parts = chunks(11, 3, seed=0, contiguous=False)
    assert sorted(np.concatenate(parts).tolist()) == list(range(11)) and [len(p) for p in parts] == [4, 4, 3]
    assert [p.tolist() for p in chunks(5, 2, seed=0, contiguous=True)] == [[0, 1, 2], [3, 4]]
    assert not np.array_equal(chunks(50, 2, 0, False)[0], chunks(50, 2, 1, False)[0])


@pytest.mark.slow
def test_random_keeps_as_many_as_fixed_and_rho_keeps_the_ratio_per_sample(tmp_path, tiny_model_dir, pool):
    fixed = run_pipeline(config(tiny_model_dir, pool, tmp_path / "fixed", method="fixed"))
    random = run_pipeline(config(tiny_model_dir, pool, tmp_path / "random", method="random"))
    assert random["selection"]["kept_tokens"] == fixed["selection"]["kept_tokens"]
    assert random["training"]["trained_tokens"] == fixed["training"]["trained_tokens"]
    run_pipeline(config(tiny_model_dir, pool, tmp_path / "rho", method="rho"))
    from tokenclean.core.artifacts import Selection
    from tokenclean.core.tokens import TokenTable

    sel = Selection.load(tmp_path / "rho" / "selection")
    tokens = TokenTable.load(tmp_path / "rho" / "tokens" / "pool")
    response = np.add.reduceat(tokens.flat_response_mask().astype(int), tokens.offsets[:-1])
    assert np.array_equal(sel.kept_per_sample(), np.floor(0.6 * response + 0.5).astype(int))


def test_random_mask_is_seeded_and_exact(gpt2_tokenizer):
    from tokenclean.core.data import Conversation
    from tokenclean.core.tokens import tokenize

    convs = [Conversation(str(i), [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c " * i}], i)
             for i in range(1, 9)]
    tokens = tokenize(convs, gpt2_tokenizer)
    a, score, counts = random_keep_mask(tokens, 0.3, seed=1)
    b, _, _ = random_keep_mask(tokens, 0.3, seed=1)
    c, _, _ = random_keep_mask(tokens, 0.3, seed=2)
    n = tokens.meta["response_tokens"]
    assert a.sum() == counts["kept_tokens"] == int(np.floor(0.3 * n + 0.5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not (a & ~tokens.flat_response_mask()).any()
    assert np.isnan(score[~tokens.flat_response_mask()]).all() and score[a].min() >= score[~a & (score >= 0)].max()


def test_slm_selects_the_top_excess_loss_tokens_and_trains_only_them():
    model = tiny_llama(seed=3)
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (2, 10))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    ref_loss = torch.rand(2, 10) * 12
    # direct computation: current losses from full logits, excess = current - ref, top 40% of the 14 tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    current = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (2, 9): loss of tokens 1..9
    target = labels[:, 1:] != IGNORE_INDEX
    excess = (current - ref_loss[:, 1:])[target]
    k = int(np.floor(0.4 * target.sum().item() + 0.5))
    expected_positions = torch.zeros_like(target)
    flat = torch.zeros(target.sum().item(), dtype=torch.bool)
    flat[torch.argsort(excess, descending=True, stable=True)[:k]] = True
    expected_positions[target] = flat
    captured = {}

    def keep_grad(module, inputs, out):
        out.retain_grad()
        captured["h"] = out

    hook = model.model.norm.register_forward_hook(keep_grad)
    loss_sum, n = slm_loss_sum(model, ids, torch.ones_like(ids), labels, ref_loss, 0.4)
    loss_sum.backward()
    hook.remove()
    assert n == k
    torch.testing.assert_close(loss_sum.detach(), current[expected_positions].sum(), rtol=1e-4, atol=1e-4)
    # position j-1 predicts token j: only positions predicting a selected token get gradient
    has_grad = captured["h"].grad.abs().sum(-1)[:, :-1] > 0
    assert torch.equal(has_grad, expected_positions)


@pytest.mark.slow
def test_compare_writes_one_row_per_method_and_shares_the_reference(tmp_path, tiny_model_dir, pool, caplog):
    import logging

    cfg = config(tiny_model_dir, pool, tmp_path / "cmp", rounds=1, eval_fraction=0.2)
    methods = ["full", "random", "rho", "slm", "fixed", "self-evolving"]
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        result = compare(cfg, methods)
    assert [r["method"] for r in result["rows"]] == methods
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(f"| {m} |" in md for m in methods) and "held-out loss" in md
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert all(r["mean"]["heldout_loss"] > 0 for r in data["rows"])
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("[seed-0/reference] running") == 1
    assert messages.count("[scores/base] running") == 1
    # the held-out split is never trained on
    assert json.loads((tmp_path / "cmp" / "tokens" / "stage.json").read_text())["result"]["eval"]["samples"] == 18


@pytest.mark.slow
def test_compare_adds_a_row_per_scorer_sharing_the_reference(tmp_path, tiny_model_dir, pool, caplog):
    import logging

    from tokenclean.core.artifacts import Scores, Selection
    from tokenclean.report.view import load_run
    from tokenclean.runs.layout import Layout, methods_run
    from tokenclean.runs.methods import METHODS
    from tokenclean.selection.from_scores import select_for

    out = tmp_path / "cmp"
    cfg = config(tiny_model_dir, pool, out, eval_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        result = compare(cfg, ["fixed"], scorers=["excess", "small-loss"])
    assert [r["method"] for r in result["rows"]] == ["fixed", "fixed[small-loss]"]
    assert [r["scorer"] for r in result["runs"]] == ["excess", "small-loss"]
    ran = [r.getMessage()[1:-len("] running")] for r in caplog.records if r.getMessage().endswith("] running")]
    # one reference, trained and scored once; one final model per row
    assert [s for s in ran if s.endswith(("reference", "model"))] == [
        "seed-0/reference", "seed-0/scores/reference", "seed-0/fixed/model", "seed-0/fixed[small-loss]/model"]
    assert ran.count("scores/base") == 1
    seed_dir = out / "seed-0"
    plain, small = (json.loads((seed_dir / m / "selection" / "selection.json").read_text())
                    for m in ("fixed", "fixed[small-loss]"))
    assert plain["config"]["scorer"] == "excess" and small["config"]["scorer"] == "small-loss"
    assert plain["gated_tokens"] == 0 < small["gated_tokens"]
    base, ref = Scores.load(out / "scores" / "base"), Scores.load(seed_dir / "scores" / "reference")
    expected, _ = select_for(cfg.select.__class__(scorer="small-loss"), base.token_loss, ref.token_loss, base.offsets)
    assert np.array_equal(Selection.load(seed_dir / "fixed[small-loss]" / "selection").keep_mask, expected)
    assert "| fixed[small-loss] |" in (out / "comparison.md").read_text()
    # the report finds the row's run
    assert methods_run(Layout(out), 0, set(METHODS)) == ["fixed", "fixed[small-loss]"]
    view = load_run(out, "fixed[small-loss]", 0)
    assert view.selection["config"]["scorer"] == "small-loss" and view.keep_mask.sum() == small["kept_tokens"]
    # run again: every stage of both rows is reused
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        compare(cfg, ["fixed"], scorers=["excess", "small-loss"])
    assert not [r for r in caplog.records if r.getMessage().endswith("] running")]


@pytest.mark.slow
def test_self_evolving_selects_with_the_scorer_of_its_row(tmp_path, tiny_model_dir, pool):
    out = tmp_path / "cmp"
    result = compare(config(tiny_model_dir, pool, out, eval_fraction=0.2, rounds=1), ["self-evolving"],
                     scorers=["small-loss"])
    assert [r["method"] for r in result["rows"]] == ["self-evolving", "self-evolving[small-loss]"]
    for name, scorer in (("self-evolving", "excess"), ("self-evolving[small-loss]", "small-loss")):
        selection = json.loads((out / "seed-0" / name / "rounds/1/selection/selection.json").read_text())
        assert selection["config"]["scorer"] == scorer and (selection["gated_tokens"] > 0) == (scorer != "excess")


def test_compare_plans_scorer_rows_for_the_methods_that_use_a_scorer(caplog):
    import logging

    from tokenclean.errors import ConfigError
    from tokenclean.runs.compare import plan_rows
    from tokenclean.selection.select import SelectConfig

    methods = ["full", "fixed", "rho", "slm", "self-evolving"]
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        plan = plan_rows(methods, SelectConfig(), ["small-loss", "excess", "union", "prompt", "small-loss"])
    assert [(name, method, c and c.scorer) for name, method, c in plan] == [
        ("full", "full", None),
        ("fixed", "fixed", None), ("fixed[small-loss]", "fixed", "small-loss"), ("fixed[union]", "fixed", "union"),
        ("fixed[prompt]", "fixed", "prompt"),
        ("rho", "rho", None), ("rho[small-loss]", "rho", "small-loss"), ("rho[prompt]", "rho", "prompt"),
        ("slm", "slm", None),
        ("self-evolving", "self-evolving", None), ("self-evolving[small-loss]", "self-evolving", "small-loss"),
        ("self-evolving[union]", "self-evolving", "union")]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "rho[union] left out" in messages and "self-evolving[prompt] left out" in messages
    assert plan[2][2].keep_ratio == 0.6 and plan[2][2].gate_quantile == 0.9  # the run's other settings stay
    with pytest.raises(ConfigError, match="unknown scorer"):
        plan_rows(["fixed"], SelectConfig(), ["smallloss"])
    with pytest.raises(ConfigError, match="union"):  # checked before anything runs
        plan_rows(["fixed"], SelectConfig(level="sample"), ["union"])


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "tokenclean", "run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


@pytest.mark.slow
def test_interrupted_runs_resume_to_the_same_weights(tmp_path, tiny_model_dir, pool, monkeypatch):
    flags = ["--base", str(tiny_model_dir), "--data", str(pool), "--prompt-field", "question", "--response-field",
             "answer", "--max-seq-len", "256", "--batch-size", "4", "--gradient-accumulation-steps", "1",
             "--lora-r", "8", "--max-steps", "8", "--save-steps", "2", "--warmup-min-steps", "8",
             "--batch-tokens", "4096", "--quiet"]
    assert _run_cli([*flags, "--out", str(tmp_path / "clean")]).wait() == 0
    expected = load_file(tmp_path / "clean" / "model" / "model.safetensors")

    # 1. interrupted between stages: training the final model fails once, then the command is run again
    import tokenclean.compute.finetune as finetune

    original = finetune.train_model
    monkeypatch.setattr(finetune, "train_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
                        if "model" in str(a[3]) and "reference" not in str(a[3]) else original(*a, **k))
    cfg_args = dict(SETTINGS, batch_size=4, max_steps=8, save_steps=2, warmup_min_steps=8)
    cfg = RunConfig.from_flat({"base": str(tiny_model_dir), "data": str(pool), "out": str(tmp_path / "between"),
                               **cfg_args})
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(cfg)
    assert (tmp_path / "between" / "selection" / "stage.json").exists()
    assert not (tmp_path / "between" / "model").exists()
    monkeypatch.setattr(finetune, "train_model", original)
    run_pipeline(cfg)
    for k, v in load_file(tmp_path / "between" / "model" / "model.safetensors").items():
        assert torch.equal(v, expected[k]), k

    # 2. killed (SIGKILL) during training of the final model, after a checkpoint, then run again
    out = tmp_path / "killed"
    proc = _run_cli([*flags, "--out", str(out)])
    ckpt = out / "checkpoints" / "model"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    assert list(ckpt.glob("checkpoint-*")), "training never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model" / "stage.json").exists()
    assert _run_cli([*flags, "--out", str(out)]).wait() == 0
    for k, v in load_file(out / "model" / "model.safetensors").items():
        assert torch.equal(v, expected[k]), k


@pytest.mark.slow
def test_compare_adds_benchmark_columns_and_their_average(tmp_path, tiny_model_dir, pool, caplog):
    import logging

    from conftest import SHARED
    from tokenclean.cli import main

    out = tmp_path / "bench"
    argv = ["compare", "--methods", "full", "random", "--base", str(tiny_model_dir), "--data", str(pool),
            "--out", str(out), "--eval-fraction", "0.2", "--eval-tasks", "arc_challenge,boolq",
            "--eval-data-dir", str(SHARED / "eval"), "--eval-limit", "2,boolq=3", "--quiet"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    assert main(argv) == 0
    md = (out / "comparison.md").read_text()
    header = md.splitlines()[2]
    assert "ARC-C" in header and "BoolQ" in header and "avg" in header
    data = json.loads((out / "comparison.json").read_text())
    for run in data["runs"]:
        m = run["metrics"]
        assert 0.0 <= m["boolq"] <= 1.0 and 0.0 <= m["arc_challenge"] <= 1.0
        assert m["average"] == pytest.approx((m["boolq"] + m["arc_challenge"]) / 2)
        results = json.loads((out / f"seed-0/{run['method']}/benchmarks/results.json").read_text())
        assert results["limit"] == {"default": 2, "boolq": 3}
        assert {task: r["n"] for task, r in results["tasks"].items()} == {"arc_challenge": 2, "boolq": 3}
        assert all(r["stderr"] is not None for r in results["tasks"].values())
    # a second run evaluates nothing again
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        assert main(argv) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "[seed-0/full/benchmarks] up to date, skipped" in messages
    assert not any(m.endswith("benchmarks] running") for m in messages)


def test_compare_command_passes_the_scorers(tmp_path, monkeypatch):
    import tokenclean.runs.compare as compare_module
    from tokenclean.cli import main

    seen = {}

    def fake_compare(cfg, methods, seeds=None, scorers=None, **kw):
        seen.update(methods=methods, scorers=scorers, scorer=cfg.select.scorer)
        (tmp_path / "cmp" / "comparison.md").write_text("| method |\n")

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    (tmp_path / "cmp").mkdir()
    argv = ["compare", "--methods", "fixed", "rho", "--scorers", "excess", "small-loss", "--scorer", "curve-positive",
            "--base", "b", "--data", "d", "--out", str(tmp_path / "cmp"), "--quiet"]
    assert main(argv) == 0
    assert seen == {"methods": ["fixed", "rho"], "scorers": ["excess", "small-loss"], "scorer": "curve-positive"}


@pytest.mark.slow
def test_compare_ablation_rows_run_under_their_own_settings(tmp_path, tiny_model_dir, pool, gsm8k_rows, caplog):
    """An ablation row changes a setting every method of a seed shares (here the warm-up data): it runs in its own
    directory with its own reference, and its row joins the same table."""
    import logging

    from tokenclean.runs.compare import Ablation

    warmup = write_jsonl(tmp_path / "warmup.jsonl", gsm8k_rows[200:230])
    out = tmp_path / "cmp"
    cfg = config(tiny_model_dir, pool, out, eval_fraction=0.2, warmup_data=str(warmup))
    noisy = Ablation("fixed[pool-warmup]", "fixed", {"warmup_data": None, "warmup_fraction": 0.3}, "pool warm-up")
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        result = compare(cfg, ["fixed"], ablations=[noisy])
    assert [r["method"] for r in result["rows"]] == ["fixed", "fixed[pool-warmup]"]
    assert result["ablations"] == [{"name": "fixed[pool-warmup]", "method": "fixed",
                                    "overrides": {"warmup_data": None, "warmup_fraction": 0.3}, "note": "pool warm-up"}]
    ablation = out / "ablations" / "fixed[pool-warmup]"
    plain_ref = json.loads((out / "seed-0" / "reference" / "stage.json").read_text())
    ablation_ref = json.loads((ablation / "seed-0" / "reference" / "stage.json").read_text())
    # clean warm-up: the 30 given rows; ablation: 30% of the pool's 72 rows (the held-out 18 are not in the pool)
    assert plain_ref["result"]["samples"] == 30 and ablation_ref["result"]["samples"] == round(0.3 * 72)
    assert plain_ref["key"] != ablation_ref["key"]
    assert str(warmup) in (out / "config.yaml").read_text()
    assert str(warmup) not in (ablation / "config.yaml").read_text()
    # both rows are measured on the same held-out split; the base's pool losses come from the score cache
    assert all(r["mean"]["heldout_loss"] > 0 for r in result["rows"])
    ran = [r.getMessage() for r in caplog.records if r.getMessage().endswith("] running")]
    assert sum(m.startswith("[seed-0/reference]") for m in ran) == 2
    # a second call reuses every stage of both rows
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        again = compare(cfg, ["fixed"], ablations=[noisy])
    assert not [r for r in caplog.records if r.getMessage().endswith("] running")]
    assert again["rows"] == result["rows"]


@pytest.mark.parametrize("ablation, message", [
    (("fixed", "fixed", {}), "must be unique among the rows"),
    (("a/b", "fixed", {}), "a plain directory name"),
    (("..", "fixed", {}), "a plain directory name"),
    (("x", "nope", {}), "unknown method 'nope'"),
    (("x", "fixed", {"warmup_dat": None}), r"unknown setting\(s\) \['warmup_dat'\]"),
])  # fmt: skip
def test_compare_refuses_bad_ablations_before_running(tmp_path, tiny_model_dir, pool, ablation, message):
    from tokenclean.errors import ConfigError
    from tokenclean.runs.compare import Ablation

    with pytest.raises(ConfigError, match=message):
        compare(config(tiny_model_dir, pool, tmp_path / "cmp", eval_fraction=0.2), ["fixed"],
                ablations=[Ablation(*ablation)])
    assert not (tmp_path / "cmp" / "seed-0").exists()


def test_parse_ablation_reads_the_flag():
    from tokenclean.errors import ConfigError
    from tokenclean.runs.compare import parse_ablation

    a = parse_ablation("fixed[short]=fixed,warmup-min-steps=0,warmup_epochs=0.1,warmup_data=null")
    assert (a.name, a.method) == ("fixed[short]", "fixed")
    assert a.overrides == {"warmup_min_steps": 0, "warmup_epochs": 0.1, "warmup_data": None}
    assert parse_ablation("plain=full").overrides == {}
    for bad in ("fixed", "=fixed", "x=fixed,warmup_data", "x=fixed,=3"):
        with pytest.raises(ConfigError, match="--ablation"):
            parse_ablation(bad)
