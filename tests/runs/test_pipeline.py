"""The fixed-model pipeline end to end through the CLI, resume, and refusals of mismatched artifacts."""

import json
import logging
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest

from conftest import write_jsonl
from tokenclean.cli import main

FAST = ["--max-seq-len", "256", "--batch-size", "8", "--gradient-accumulation-steps", "1", "--lora-r", "8",
        "--max-steps", "3", "--batch-tokens", "4096", "--warmup-min-steps", "3"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, gsm8k_rows):
    return write_jsonl(tmp_path_factory.mktemp("data") / "gsm8k.jsonl", gsm8k_rows[:200])


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, tiny_model_dir, pool):
    out = tmp_path_factory.mktemp("runs") / "fixed"
    config = out.parent / "run.yaml"
    config.write_text(f"base: {tiny_model_dir}\nprompt_field: question\nresponse_field: answer\nkeep_ratio: 0.6\n")
    assert main(["run", "--config", str(config), "--data", str(pool), "--out", str(out), "--quiet", *FAST]) == 0
    return out, config


@pytest.mark.slow
def test_fixed_pipeline_outputs(fixed_run):
    from transformers import AutoModelForCausalLM

    out, _ = fixed_run
    summary = json.loads((out / "summary.json").read_text())
    sel = summary["selection"]
    assert sel["kept_tokens"] == int(np.floor(0.6 * sel["response_tokens"] + 0.5))
    assert abs(sel["kept_share"] - 0.6) < 1 / sel["response_tokens"]
    assert summary["data"]["rows"] == 200 and summary["data"]["used"] == 200
    ds = datasets.load_from_disk(str(out / "export"))
    assert set(ds.column_names) >= {"input_ids", "attention_mask", "labels"}
    trained = sum(int((np.asarray(lab) != -100).sum()) for lab in ds["labels"])
    assert trained == sel["kept_tokens"] == summary["training"]["trained_tokens"]
    assert (out / "export" / "parquet" / "train.parquet").exists()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.model_type == "llama"
    assert (out / "config.yaml").exists() and "keep_ratio: 0.6" in (out / "config.yaml").read_text()
    # the reference was trained on a 20% warm-up split of the pool, all response tokens
    ref = json.loads((out / "reference" / "training.json").read_text())
    assert ref["samples"] == 40


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_a_change_recomputes_only_its_dependants(fixed_run, pool, caplog):
    out, config = fixed_run
    model_file = out / "model" / "model.safetensors"
    mtime = model_file.stat().st_mtime_ns
    args = ["run", "--config", str(config), "--data", str(pool), "--out", str(out), *FAST]
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        assert main(args) == 0
    skipped = [r.getMessage() for r in caplog.records if "up to date" in r.getMessage()]
    assert len(skipped) == 7 and model_file.stat().st_mtime_ns == mtime
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        assert main(args + ["--keep-ratio", "0.5"]) == 2  # another run's directory: refused, nothing recomputed
        assert main(args + ["--keep-ratio", "0.5", "--overwrite"]) == 0
    ran = {r.getMessage().split("]")[0][1:] for r in caplog.records if r.getMessage().endswith("running")}
    assert ran == {"selection", "model", "export"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"]["kept_tokens"] == int(np.floor(0.5 * summary["selection"]["response_tokens"] + 0.5))


@pytest.mark.slow
def test_a_selection_that_keeps_nothing_stops_at_the_selection_stage(fixed_run, pool, tmp_path, capsys):
    out, config = fixed_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # its finished stages are reused; only the selection runs again
    shutil.rmtree(copy / "model")
    args = ["run", "--config", str(config), "--data", str(pool), "--out", str(copy), *FAST, "--overwrite"]
    assert main(args + ["--scorer", "curve-positive"]) == 2  # a random tiny model: every loss is above 5 nats
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tokenclean run: error: selection (") and "the selection keeps 0 of " in err
    assert "--scorer curve-positive ruled out every one" in err and "use --scorer excess" in err
    assert not (copy / "model").exists()  # stopped before training, not in it with "all labels are masked"


@pytest.mark.slow
def test_selection_from_other_tokenization_is_refused(fixed_run, pool, tiny_model_dir, tmp_path, capsys):
    out, _ = fixed_run
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(pool), "--prompt-field", "question",
                 "--response-field", "answer", "--selection", str(out / "selection"), "--out", str(tmp_path / "m"),
                 "--max-seq-len", "128", "--skip-invalid"])  # at 128 tokens one prompt leaves no room
    err = capsys.readouterr().err
    assert code == 2 and "different max_seq_len" in err and ("256 vs 128" in err or "128 vs 256" in err)
    assert not (tmp_path / "m").exists()


def test_stage_commands_mirror_the_pipeline(tmp_path, tiny_model_dir, gsm8k_rows, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:20])
    common = ["--data", str(data), "--prompt-field", "question", "--response-field", "answer", "--quiet"]
    assert main(["score", "--model", str(tiny_model_dir), "--out", str(tmp_path / "base"), *common]) == 0
    assert main(["train", "--model", str(tiny_model_dir), "--out", str(tmp_path / "ref"), "--max-steps", "1",
                 "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lora-r", "4", *common]) == 0
    assert main(["score", "--model", str(tmp_path / "ref"), "--out", str(tmp_path / "refs"), *common]) == 0
    assert main(["select", "--base", str(tmp_path / "base"), "--ref", str(tmp_path / "refs"),
                 "--out", str(tmp_path / "sel"), "--level", "sample", "--keep-ratio", "0.5", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "--tokenizer", str(tiny_model_dir), "--selection", str(tmp_path / "sel"),
                 "--out", str(tmp_path / "export"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert result["trained_tokens"] == selection["kept_tokens"]
    assert datasets.load_from_disk(str(tmp_path / "export")).num_rows == result["rows"]


def test_cli_reports_bad_input_in_one_line(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q", "answer": \n')
    proc = subprocess.run([sys.executable, "-m", "tokenclean", "score", "--model", str(tiny_model_dir), "--data",
                           str(bad), "--prompt-field", "question", "--response-field", "answer", "--out",
                           str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"tokenclean score: error: {bad}:2: malformed JSON")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tokenclean", "select", "--base", str(tmp_path), "--ref",
                           str(tmp_path), "--out", str(tmp_path / "x"), "--keep-ratio", "1.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "keep_ratio must be in (0, 1]" in proc.stderr


def test_help_explains_every_command():
    for cmd in ([], ["run"], ["score"], ["select"], ["train"], ["export"]):
        proc = subprocess.run([sys.executable, "-m", "tokenclean", *cmd, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: tokenclean" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "tokenclean", "run", "--help"], capture_output=True, text=True)
    for flag in ("--base", "--data", "--out", "--keep-ratio", "--level", "--max-seq-len", "--seed", "--config",
                 "--warmup-data", "--warmup-fraction"):
        assert flag in proc.stdout


@pytest.mark.slow
def test_run_scores_base_and_lora_reference_with_one_model_and_reuses_cached_base_losses(
        tmp_path, monkeypatch, tiny_model_dir, gsm8k_rows):
    """The warm-up reference is a LoRA adapter (the default), so the base's and the reference's losses come from
    one loaded model (adapter off, then on) and equal what each model scored on its own gives. A second run
    directory over the same base, tokenizer and data takes the base losses from the score cache."""
    from tokenclean import api
    from tokenclean.compute import score_model
    from tokenclean.core.artifacts import Scores
    from tokenclean.core.tokens import TokenTable

    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:16])
    loads = []
    load_model = score_model.load_model
    monkeypatch.setattr(score_model, "load_model", lambda path, *a, **k: loads.append(str(path)) or load_model(path, *a, **k))
    args = ["run", "--base", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
            "--response-field", "answer", "--cache-dir", str(tmp_path / "cache"), "--learning-rate", "1e-2",
            "--quiet", *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    # base for the reference's training, base (+ adapter) for both scores, base for the final training; the
    # merged reference model is never loaded
    assert loads == [str(tiny_model_dir)] * 3
    a = tmp_path / "a"
    results = {name: json.loads((a / "scores" / name / "stage.json").read_text())["result"]
               for name in ("base", "reference")}
    assert results["base"]["adapter_pair"] and results["reference"]["adapter_pair"]
    assert results["base"]["cache_hit"] is False and (a / "reference" / "adapter" / "adapter_config.json").exists()

    pool = TokenTable.load(a / "tokens" / "pool")
    base, ref = Scores.load(a / "scores" / "base"), Scores.load(a / "scores" / "reference")
    alone_base = api.score(str(tiny_model_dir), pool, progress=False)
    alone_ref = api.score(str(a / "reference"), pool, progress=False)  # the merged reference, on its own
    np.testing.assert_allclose(base.token_loss, alone_base.token_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref.token_loss, alone_ref.token_loss, rtol=1e-4, atol=1e-4)
    assert np.nanmax(np.abs(ref.token_loss - base.token_loss)) > 0.05  # the reference is not the base

    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    b = tmp_path / "b"
    assert json.loads((b / "scores" / "base" / "stage.json").read_text())["result"]["cache_hit"] is True
    np.testing.assert_array_equal(Scores.load(b / "scores" / "base").token_loss, base.token_loss)
    np.testing.assert_allclose(Scores.load(b / "scores" / "reference").token_loss, ref.token_loss, rtol=1e-5,
                               atol=1e-5)  # same seed, same reference
