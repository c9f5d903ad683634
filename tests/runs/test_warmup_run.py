"""The warm-up settings, the top-rated warm-up set, score health and the prompt scorers, through a real run."""

import json

import numpy as np
import pytest

from conftest import write_jsonl
from tokenclean.core.artifacts import Scores, Selection
from tokenclean.core.tokens import TokenTable
from tokenclean.errors import ConfigError
from tokenclean.runs.pipeline import RunConfig, run_pipeline
from tokenclean.runs.reference import warmup_split, warmup_train_config
from tokenclean.runs.run import Run
from tokenclean.runs.stages import tokens_stage

SETTINGS = {"prompt_field": "question", "response_field": "answer", "max_seq_len": 192, "batch_size": 4,
            "gradient_accumulation_steps": 4, "lora_r": 4, "max_steps": 1, "batch_tokens": 4096}


@pytest.fixture(scope="module")
def rated_pool(tmp_path_factory, gsm8k_rows):
    rows = [{**r, "id": f"r{i}", "rating": float((i * 7) % 40)} for i, r in enumerate(gsm8k_rows[:40])]
    return write_jsonl(tmp_path_factory.mktemp("rated") / "pool.jsonl", rows), rows


def config(base, data, out, **kw) -> RunConfig:
    return RunConfig.from_flat({"base": str(base), "data": str(data), "out": str(out), **SETTINGS, **kw})


def test_the_warm_up_split_takes_the_top_rated_rows(tmp_path, tiny_model_dir, rated_pool):
    data, rows = rated_pool
    run = Run(config(tiny_model_dir, data, tmp_path / "r", warmup_rated_by="rating", warmup_fraction=0.25))
    tables = tokens_stage(run)
    warm = warmup_split(run, tables)
    best = sorted(rows, key=lambda r: -r["rating"])[:10]
    assert sorted(warm.sample_ids) == sorted(r["id"] for r in best)
    # the reference gets its own settings: 10 rows at 4 x 4 is 1 step a pass; accumulation 1, then 50 steps
    ref = warmup_train_config(run, warm)
    assert (ref.gradient_accumulation_steps, ref.max_steps, ref.batch_size) == (1, 50, 4)
    assert run.cfg.train.max_steps == 1  # the final fine-tune keeps its own


def test_warmup_rated_by_with_warmup_data_is_refused(tmp_path, tiny_model_dir, rated_pool):
    with pytest.raises(ConfigError, match="warmup-rated-by"):
        Run(config(tiny_model_dir, rated_pool[0], tmp_path / "r", warmup_rated_by="rating",
                   warmup_data=str(rated_pool[0])))


@pytest.mark.slow
def test_fixed_run_trains_the_reference_for_the_minimum_steps_and_reports_score_health(tmp_path, tiny_model_dir,
                                                                                        rated_pool):
    out = tmp_path / "fixed"
    summary = run_pipeline(config(tiny_model_dir, rated_pool[0], out, warmup_min_steps=6, ignore_fields=["rating"]))
    reference = json.loads((out / "reference" / "stage.json").read_text())
    assert reference["result"]["optimizer_steps"] == 6 and reference["inputs"]["train_config"]["max_steps"] == 6
    assert summary["training"]["optimizer_steps"] == 1
    health = json.loads((out / "summary.json").read_text())["score_health"]
    assert health["verdict"] in ("healthy", "near noise") and 0 <= health["relative_move"]
    assert health == summary["score_health"] and health["response_tokens"] == summary["pool"]["response_tokens"]
    from tokenclean.compute.hardware import auto_dtype
    from tokenclean.compute.modeling import source_fingerprint

    assert summary["compute"]["dtype"] == str(auto_dtype("cpu")).removeprefix("torch.")  # what auto chose here
    assert summary["compute"]["native_bf16"] == (summary["compute"]["dtype"] == "bfloat16")
    assert summary["base_model"]["fingerprint"] == source_fingerprint(tiny_model_dir)


@pytest.mark.slow
def test_prompt_scorer_scores_the_responses_without_their_prompts(tmp_path, tiny_model_dir, rated_pool):
    out = tmp_path / "prompt"
    run_pipeline(config(tiny_model_dir, rated_pool[0], out, scorer="prompt-excess", warmup_min_steps=2,
                        ignore_fields=["rating"]))
    pool = TokenTable.load(out / "tokens" / "pool")
    free = Scores.load(out / "scores" / "prompt_free")
    response = pool.flat_response_mask()
    assert free.sample_ids == pool.sample_ids and np.array_equal(free.offsets, pool.offsets)
    assert np.isnan(free.token_loss[~response]).all()
    assert np.isfinite(free.token_loss[response]).mean() > 0.9  # GPT-2 has a BOS: every response token scored
    selection = Selection.load(out / "selection")
    assert selection.meta["config"]["scorer"] == "prompt-excess"
    assert selection.keep_mask.sum() == int(np.floor(0.6 * response.sum() + 0.5))


def test_self_evolving_with_a_prompt_scorer_is_refused_before_anything_runs(tmp_path, tiny_model_dir, rated_pool):
    with pytest.raises(ConfigError, match="which self-evolving does not compute"):
        run_pipeline(config(tiny_model_dir, rated_pool[0], tmp_path / "se", method="self-evolving", scorer="prompt"))
    assert not (tmp_path / "se").exists()
