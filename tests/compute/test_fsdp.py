"""FSDP (``accelerate launch --use_fsdp``): the weights are sharded over 2 gloo processes on CPU by torch's FSDP2,
and scoring, selection and training give what one process gives with the whole model.

Accelerate turns FSDP on only for accelerators (``AcceleratorState`` checks the device type before it looks at
``ACCELERATE_USE_FSDP``). On these CPU-only machines the worker lets the FSDP setting through that one check, as
Accelerate's own GPU branch does; everything after it (the wrap policy, ``fully_shard``, the sharded forward and
backward, the full-state gather) is the real FSDP2 path of torch, Accelerate and transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import write_jsonl
from tokenclean import api
from tokenclean.core.artifacts import Scores, Selection
from tokenclean.compute.scoring import length_batches
from tokenclean.core.tokens import TokenTable

CPU_FSDP = textwrap.dedent("""
    import sys
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    _init = AcceleratorState.__init__

    def _with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:  # what Accelerate does for GPUs, at its first call
            self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = _with_fsdp_on_cpu
""")

RUN_WORKER = CPU_FSDP + textwrap.dedent("""
    from tokenclean.cli import main

    sys.exit(main(sys.argv[1:]))
""")

TRAIN_WORKER = CPU_FSDP + textwrap.dedent("""
    import logging
    from tokenclean import api
    from tokenclean.core.data import DataConfig
    from tokenclean.compute.training import TrainConfig

    logging.basicConfig(level=logging.INFO)  # the library's progress notes, on stderr
    model, data, out, per_device, accumulation, lora = sys.argv[1:7]
    cfg = TrainConfig(lora=lora == "lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=int(per_device),
                      gradient_accumulation_steps=int(accumulation), max_steps=2, optimizer="sgd", learning_rate=0.5,
                      lr_scheduler="constant", lr_warmup_ratio=0.0, logging_steps=1, bf16="false")
    api.train(model, data, out, data_config=DataConfig(prompt_field="question", response_field="answer"),
              train_config=cfg, drop_empty=False, seed=0)
""")


def _fsdp_env(tmp_path) -> dict:
    """What ``accelerate launch --use_fsdp --fsdp_version 2`` with transformer-layer wrapping sets."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp_path),
            "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer"}


def _torchrun(script, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
            *map(str, args)]


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_run_matches_one_process(tmp_path, tiny_model_dir, gsm8k_rows):
    """``tokenclean run`` with the weights sharded: base and reference losses equal one process's with the whole
    models, the selection is the one those losses give, and the trained model is saved whole from process 0,
    with the reference's LoRA adapter merged and also kept."""
    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:15])
    out, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(RUN_WORKER)
    cmd = _torchrun(script, "run", "--base", tiny_model_dir, "--data", data, "--prompt-field", "question",
                    "--response-field", "answer", "--out", out, "--no-cache", "--max-seq-len", "256", "--batch-size",
                    "2", "--gradient-accumulation-steps", "1", "--lora-r", "4", "--max-steps", "2", "--batch-tokens",
                    "700", "--learning-rate", "1e-2", "--warmup-min-steps", "2",
                    # equality is checked in fp32: on a native-bf16 CPU `auto` is bf16, whose rounding differs
                    # between a sharded and a whole computation
                    "--dtype", "float32", "--bf16", "false")
    done = subprocess.run(cmd, env=_fsdp_env(scratch), check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"method": "fixed"') == 1  # one process reports
    assert "sharded over 2 processes (FSDP2)" in done.stderr  # scoring really ran sharded
    assert "FSDP: gathering the trained weights" in done.stderr  # and so did training

    pool = TokenTable.load(out / "tokens" / "pool")
    assert len(length_batches(pool.lengths, 700)) % 2 == 1  # one rank ran an idle forward to keep step
    base, ref = Scores.load(out / "scores" / "base"), Scores.load(out / "scores" / "reference")
    assert not base.meta.get("adapter_pair")  # sharded weights take no merge: two models, each sharded
    for scores, model in ((base, tiny_model_dir), (ref, out / "reference")):
        alone = api.score(model, pool, progress=False, dtype="float32")
        np.testing.assert_allclose(scores.token_loss, alone.token_loss, rtol=1e-5, atol=1e-5)
        assert np.array_equal(np.isnan(scores.token_loss), np.isnan(alone.token_loss))
    np.testing.assert_array_equal(api.select(base, ref).keep_mask, Selection.load(out / "selection").keep_mask)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["optimizer_steps"] == 2
    before, trained = _weights(tiny_model_dir), _weights(out / "model")
    assert set(trained) == set(before)  # a plain model directory: no LoRA or FSDP names
    assert max(float((trained[k] - before[k]).abs().max()) for k in before) > 1e-4
    assert (out / "reference" / "adapter" / "adapter_model.safetensors").exists()
    from tokenclean.runs.layout import LOCK_FILE

    leftovers = [p for p in out.rglob(".*") if p.name != LOCK_FILE]  # the run directory's lock file stays, unlocked
    assert not leftovers and not list(scratch.glob("tokenclean-*"))  # no temporary leftovers


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["full", "lora"])
def test_fsdp_training_equals_one_process(tmp_path, tiny_model_dir, gsm8k_rows, lora):
    """FSDP over 2 processes (2 rows x 2 accumulation steps each) takes the same SGD steps as one process (4 rows x
    2 steps) with the whole model, for full fine-tuning and for a LoRA adapter merged after the gather."""
    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:8])
    script = tmp_path / "train_worker.py"
    script.write_text(TRAIN_WORKER)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _fsdp_env(scratch)
    done = subprocess.run(_torchrun(script, tiny_model_dir, data, tmp_path / "fsdp", 2, 2, lora), env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FSDP: gathering the trained weights" in done.stderr
    one_env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    done = subprocess.run([sys.executable, *map(str, (script, tiny_model_dir, data, tmp_path / "one", 4, 2, lora))],
                          env=one_env, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    before, fsdp, one = _weights(tiny_model_dir), _weights(tmp_path / "fsdp"), _weights(tmp_path / "one")
    assert set(fsdp) == set(one) == set(before)
    moved = max(float((one[k] - before[k]).abs().max()) for k in one)
    assert moved > 1e-3  # the steps changed the weights (so equal weights are not trivially equal)
    for k in one:
        torch.testing.assert_close(fsdp[k], one[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    runs = [json.loads((tmp_path / d / "training.json").read_text()) for d in ("fsdp", "one")]
    assert runs[0]["optimizer_steps"] == runs[1]["optimizer_steps"] == 2
    assert runs[0]["trained_tokens"] == runs[1]["trained_tokens"]
    assert not (tmp_path / "fsdp.checkpoints").exists()
