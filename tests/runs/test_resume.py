"""Crash safety and determinism.

A run killed with SIGKILL during scoring, selection, training or export and started again with the same command
resumes from its last finished unit (a scoring shard, a training checkpoint, a finished stage) and ends with
byte-identical outputs; two runs of the same config and seed give bitwise-identical losses, masks and weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import chat_table, tiny_llama, write_jsonl
from safetensors.torch import load_file

from tokenclean.compute import scoring
from tokenclean.compute.scoring import ScoreConfig, length_batches, score_tokens, shard_batches

OUTPUTS = ("scores/base/token_loss.parquet", "scores/reference/token_loss.parquet", "selection/keep_mask.parquet",
           "model/model.safetensors", "export/parquet/train.parquet")


@pytest.fixture(scope="module")
def table(gpt2_tokenizer):
    return chat_table(gpt2_tokenizer, [(f"Question {i}: " + "why? " * i, f"Because {i}. " * (1 + i % 5))
                                       for i in range(10)])


def test_scoring_resumes_at_the_shard_with_bitwise_the_same_losses(tmp_path, table, monkeypatch):
    model = tiny_llama().eval()
    cfg = ScoreConfig(batch_tokens=64, shard_tokens=60)
    plan = shard_batches(length_batches(table.lengths, cfg.batch_tokens), table.lengths, cfg.shard_tokens)
    assert len(plan) >= 4
    expected = score_tokens(model, table, cfg, progress=False)

    def killed_after_shard_1(where: str) -> None:
        if where.endswith(":shard1"):
            raise KeyboardInterrupt  # stands in for SIGKILL (the CLI test below uses a real one)

    monkeypatch.setattr("tokenclean.io.crash_point", killed_after_shard_1)
    with pytest.raises(KeyboardInterrupt):
        score_tokens(model, table, cfg, progress=False, work_dir=tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").glob("*.parquet")) == ["rank0-shard00000.parquet",
                                                                           "rank0-shard00001.parquet"]
    monkeypatch.undo()
    batches = []
    original = scoring.token_losses
    monkeypatch.setattr(scoring, "token_losses", lambda *a, **k: batches.append(1) or original(*a, **k))
    resumed = score_tokens(model, table, cfg, progress=False, work_dir=tmp_path / "work")
    assert resumed.meta["resumed_shards"] == 2
    assert len(batches) == sum(len(shard) for shard in plan[2:])  # the finished shards were not scored again
    assert resumed.token_loss.tobytes() == expected.token_loss.tobytes()


def test_shards_of_other_settings_are_not_reused(tmp_path, table):
    model = tiny_llama().eval()
    score_tokens(model, table, ScoreConfig(batch_tokens=96, shard_tokens=150), progress=False,
                 work_dir=tmp_path / "work")
    other = score_tokens(model, table, ScoreConfig(batch_tokens=200, shard_tokens=150), progress=False,
                         work_dir=tmp_path / "work")
    assert other.meta["resumed_shards"] == 0
    again = score_tokens(model, table, ScoreConfig(batch_tokens=200, shard_tokens=150), progress=False,
                         work_dir=tmp_path / "work")
    assert again.meta["resumed_shards"] > 0 and again.token_loss.tobytes() == other.token_loss.tobytes()


# -- the whole command, killed with SIGKILL at every stage --------------------------------------------------------
def flags(model: Path, data: Path, out: Path) -> list[str]:
    return ["run", "--base", str(model), "--data", str(data), "--out", str(out), "--prompt-field", "question",
            "--response-field", "answer", "--max-seq-len", "256", "--batch-tokens", "512", "--shard-tokens", "1500",
            "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lora-r", "4", "--max-steps", "6",
            "--warmup-min-steps", "6",
            "--save-steps", "2", "--seed", "3", "--no-cache"]  # the score cache would skip the base's scoring


def tokenclean(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TOKENCLEAN_TEST_KILL_AT"}
    if kill_at:
        env["TOKENCLEAN_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "tokenclean", *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, gsm8k_rows) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "pool.jsonl", gsm8k_rows[:40])


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_model_dir, pool) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    proc = tokenclean(flags(tiny_model_dir, pool, out) + ["--quiet"])
    assert proc.returncode == 0, proc.stderr
    return out


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_run_killed_at_every_stage_resumes_to_identical_outputs(tmp_path, tiny_model_dir, pool, clean_run):
    out = tmp_path / "run"
    args = flags(tiny_model_dir, pool, out)

    # 1. scoring the base, after its second shard
    assert killed(tokenclean(args, "score:base:shard1"))
    assert not (out / "scores" / "base").exists()
    shards = sorted(p.name for p in (out / "checkpoints").rglob("base/*.parquet"))  # base and reference: one pass
    assert shards == ["rank0-shard00000.parquet", "rank0-shard00001.parquet"]

    # 2. selection, with its result computed but not committed
    proc = tokenclean(args, "stage:selection")
    assert killed(proc), proc.stderr
    assert "[tokens] up to date" in proc.stderr and "scoring resumed: 2 of" in proc.stderr
    assert "run/.tokenclean.lock: took over the lock left by pid " in proc.stderr  # the killed process's
    assert json.loads((out / "scores" / "base" / "stage.json").read_text())["result"]["resumed_shards"] == 2
    assert not (out / "selection").exists() and (out / "scores" / "reference" / "stage.json").exists()

    # 3. training the final model, right after its checkpoint at step 2
    proc = tokenclean(args, "train:model:step2")
    assert killed(proc), proc.stderr
    assert "[scores/reference] up to date" in proc.stderr and "[selection] running" in proc.stderr
    assert not (out / "model").exists() and (out / "checkpoints" / "model" / "checkpoint-2").is_dir()

    # 4. export, with the dataset written but not committed
    proc = tokenclean(args, "stage:export")
    assert killed(proc), proc.stderr
    training = json.loads((out / "model" / "training.json").read_text())
    assert training["resumed_from"].endswith("checkpoint-2") and training["optimizer_steps"] == 6
    assert not (out / "export").exists()

    # 5. to the end
    proc = tokenclean(args)
    assert proc.returncode == 0, proc.stderr
    assert "[model] up to date" in proc.stderr and "[export] running" in proc.stderr
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (clean_run / name).read_bytes(), name
    assert not [p for p in out.rglob(".*.tmp")]  # the killed runs' half-built directories are gone
    assert not [p for p in (out / "checkpoints").rglob("*") if p.is_file()]  # so are the finished stages' units


@pytest.mark.slow
def test_the_same_config_and_seed_give_bitwise_identical_results(tmp_path, tiny_model_dir, pool, clean_run):
    from tokenclean import RunConfig, Scores, Selection, run
    from tokenclean.cli import build_parser, run_settings_names
    from tokenclean.config import merge_settings

    args = build_parser().parse_args(flags(tiny_model_dir, pool, tmp_path / "again"))
    summary = run(RunConfig.from_flat(merge_settings(args, run_settings_names())))  # this process, another directory
    again, first = tmp_path / "again", clean_run
    for stage in ("scores/base", "scores/reference"):
        a, b = Scores.load(first / stage).token_loss, Scores.load(again / stage).token_loss
        assert a.view(np.uint32).tobytes() == b.view(np.uint32).tobytes(), stage
    assert np.array_equal(Selection.load(first / "selection").keep_mask, Selection.load(again / "selection").keep_mask)
    weights_a = load_file(first / "model" / "model.safetensors")
    weights_b = load_file(again / "model" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    recorded = json.loads((first / "summary.json").read_text())
    assert recorded["seed"] == summary["seed"] == 3
    assert set(recorded["versions"]) >= {"python", "torch", "transformers", "peft", "datasets", "numpy", "tokenclean"}
    assert recorded["versions"]["torch"] == torch.__version__


@pytest.mark.slow
def test_a_run_made_before_selections_saved_their_score_resumes_rebuilding_only_them(tmp_path, tiny_model_dir, pool,
                                                                                   clean_run):
    """A selection written without its score column (by an earlier version) is built again under the same key on
    the next run: the same mask, now with its score; no stage after it reruns."""
    import shutil

    import pyarrow.parquet as pq

    from tokenclean import Selection

    out = tmp_path / "old"
    shutil.copytree(clean_run, out)
    mask_file = out / "selection" / Selection.FILE
    pq.write_table(pq.read_table(mask_file).drop_columns(["score"]), mask_file)
    assert Selection.load(out / "selection").score is None
    proc = tokenclean(flags(tiny_model_dir, pool, out))
    assert proc.returncode == 0, proc.stderr
    assert "[selection] written by an earlier version" in proc.stderr and "[model] up to date" in proc.stderr
    assert "[export] up to date" in proc.stderr
    rebuilt, first = Selection.load(out / "selection"), Selection.load(clean_run / "selection")
    assert np.array_equal(rebuilt.keep_mask, first.keep_mask)
    assert np.array_equal(rebuilt.score, first.score, equal_nan=True)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (clean_run / name).read_bytes(), name
