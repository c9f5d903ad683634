"""``--eval-dtype``: models are measured (held-out loss) in their own dtype setting, apart from ``--dtype``."""

import json
import shutil

import pytest

from conftest import write_jsonl
from tokenclean.api import score
from tokenclean.errors import ConfigError
from tokenclean.runs.config import RunConfig
from tokenclean.runs.stages import Run, heldout_stage, tokens_stage


def make_run(tmp_path, base, data, **kw) -> Run:
    return Run(RunConfig.from_flat({"base": str(base), "data": str(data), "out": str(tmp_path), "max_seq_len": 192,
                                    "prompt_field": "question", "response_field": "answer", "eval_fraction": 0.25,
                                    "dtype": "bfloat16", **kw}))


@pytest.fixture
def pool(tmp_path, gsm8k_rows):
    return write_jsonl(tmp_path / "pool.jsonl", [{**r, "id": f"r{i}"} for i, r in enumerate(gsm8k_rows[:16])])


def test_the_heldout_loss_is_measured_in_eval_dtype_not_the_scoring_dtype(tmp_path, tiny_model_dir, pool):
    losses = {}
    for eval_dtype in ("float32", "bfloat16"):
        run = make_run(tmp_path / eval_dtype, tiny_model_dir, pool, eval_dtype=eval_dtype)
        tables = tokens_stage(run)
        run.stage("model", {"model": "tiny"}, lambda tmp: {"copied": bool(shutil.copytree(tiny_model_dir, tmp,
                                                                                           dirs_exist_ok=True))})
        losses[eval_dtype] = heldout_stage(run, "model", tables)
        stage = json.loads((run.path("heldout") / "stage.json").read_text())
        assert stage["inputs"]["dtype"] == eval_dtype  # and so part of the stage's key
        assert run.resolved_dtype() == "bfloat16"  # scoring keeps --dtype
    fp32 = score(str(tiny_model_dir), tables["eval"], dtype="float32").meta["mean_token_loss"]
    assert losses["float32"] == pytest.approx(fp32, abs=1e-6)
    assert losses["bfloat16"] != pytest.approx(fp32, abs=1e-6)  # bf16 weights move it: why fp32 is the default


def test_a_bad_eval_dtype_is_refused_before_anything_runs(tmp_path, tiny_model_dir, pool):
    with pytest.raises(ConfigError, match="unknown dtype 'half-ish'"):
        make_run(tmp_path, tiny_model_dir, pool, eval_dtype="half-ish")
