"""Under torchrun (2 processes, gloo, CPU) scoring writes the same losses, and selects the same tokens, as one
process (each rank scores a strided share of the length-sorted batches, rank 0 gathers and writes), and DDP
training takes the same optimiser steps as one process with the same global batch."""

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
from tokenclean.compute.scoring import ScoreConfig

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch.distributed as dist
    from tokenclean import api
    from tokenclean.compute.scoring import ScoreConfig

    model, data, out = sys.argv[1:4]
    # No init_process_group here: scoring starts the group itself under torchrun (WORLD_SIZE > 1), as the CLI does.
    scores = api.score(model, data, out, score_config=ScoreConfig(batch_tokens=256), progress=False)
    assert dist.is_initialized() and dist.get_world_size() == 2
    # every rank holds the full, merged losses
    np.save(f"{out}.rank{dist.get_rank()}.npy", scores.token_loss)
    dist.destroy_process_group()
""")


def test_two_process_scoring_equals_one_process(tmp_path, tiny_model_dir, gsm8k_rows):
    data = write_jsonl(tmp_path / "pool.jsonl",
                       [{"prompt": r["question"], "completion": r["answer"]} for r in gsm8k_rows[:24]])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tiny_model_dir), str(data), str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    single = api.score(tiny_model_dir, data, tmp_path / "one", score_config=ScoreConfig(batch_tokens=256),
                       progress=False)
    merged = Scores.load(tmp_path / "ddp")
    assert merged.sample_ids == single.sample_ids
    np.testing.assert_array_equal(merged.offsets, single.offsets)
    np.testing.assert_allclose(merged.token_loss, single.token_loss, rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.isnan(merged.token_loss), np.isnan(single.token_loss))
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"ddp.rank{rank}.npy"), merged.token_loss)
    assert not list(tmp_path.glob(".ddp*"))  # one writer, no temporary leftovers

    # Same selection: with a reference that differs from the base, the keep-masks agree.
    ref = Scores(single.sample_ids, single.token_loss * 0.9 + 0.1, single.offsets, single.meta)
    one = api.select(single, ref)
    two = api.select(merged, ref)
    np.testing.assert_array_equal(one.keep_mask, two.keep_mask)


TRAIN_WORKER = textwrap.dedent("""
    import sys
    from tokenclean import api
    from tokenclean.core.data import DataConfig
    from tokenclean.compute.training import TrainConfig

    model, data, out, per_device, accumulation = sys.argv[1:6]
    cfg = TrainConfig(lora=False, batch_size=int(per_device), gradient_accumulation_steps=int(accumulation),
                      max_steps=2, optimizer="sgd", learning_rate=0.5, lr_scheduler="constant", lr_warmup_ratio=0.0,
                      logging_steps=1)
    api.train(model, data, out, data_config=DataConfig(prompt_field="question", response_field="answer"),
              train_config=cfg, drop_empty=False, seed=0)
""")


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_two_process_training_equals_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir, gsm8k_rows):
    """DDP (2 processes x 2 rows x 2 accumulation steps) and one process (4 rows x 2 steps) take the same SGD steps.

    8 samples = one global batch, so each step sees every sample in both set-ups whatever the samplers' order.
    The samples' response lengths differ, so the two ranks hold different numbers of trained tokens: a rank that
    divided its loss by its own count (instead of the count of the whole step, all ranks) would move the weights
    differently (checked by hand: the weights then differ by 5e-3, far outside the tolerance below)."""
    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:8])
    script = tmp_path / "train_worker.py"
    script.write_text(TRAIN_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [str(tiny_model_dir), str(data)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *args, str(tmp_path / "ddp"), "2", "2"]
    done = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one"), "4", "2"], env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    before, ddp, one = _weights(tiny_model_dir), _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    moved = max(float((one[k] - before[k]).abs().max()) for k in one)
    assert moved > 1e-2  # the steps changed the weights (so equal weights are not trivially equal)
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ddp_run, one_run = (json.loads((tmp_path / d / "training.json").read_text()) for d in ("ddp", "one"))
    assert ddp_run["optimizer_steps"] == one_run["optimizer_steps"] == 2
    assert ddp_run["trained_tokens"] == one_run["trained_tokens"]
    assert not list(tmp_path.glob(".ddp*")) and not list(tmp_path.glob("ddp.checkpoints"))  # one writer, cleaned up


def test_only_rank_0_writes(tmp_path, monkeypatch):
    from tokenclean.io import atomic_dir, write_json

    monkeypatch.setenv("RANK", "1")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("rank 1")
        private = tmp
    write_json(tmp_path / "j.json", {"rank": 1})
    assert not private.exists() and list(tmp_path.iterdir()) == []  # nothing written, nothing left behind
    monkeypatch.setenv("RANK", "0")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("rank 0")
    assert (tmp_path / "d" / "f").read_text() == "rank 0"


def test_each_process_gets_its_own_gpu(monkeypatch):
    from tokenclean.compute.modeling import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device(None) == resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_run_under_torchrun(tmp_path, tiny_model_dir, gsm8k_rows):
    """``tokenclean run`` under torchrun (2 processes): base and reference scored over sharded batches with one
    model, one selection, DDP training, every file written once (rank 0) and one report printed."""
    from tokenclean.core.tokens import TokenTable

    data = write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:16])
    out, scratch = tmp_path / "run", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tokenclean",
           "run", "--base", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
           "--response-field", "answer", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
           "--max-seq-len", "256", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--lora-r", "4",
           "--max-steps", "2", "--batch-tokens", "1024", "--learning-rate", "1e-2",
           "--warmup-min-steps", "2"]
    done = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"method": "fixed"') == 1  # one process reports

    summary = json.loads((out / "summary.json").read_text())
    sel = summary["selection"]
    assert sel["kept_tokens"] == int(np.floor(0.6 * sel["response_tokens"] + 0.5))
    assert summary["training"]["optimizer_steps"] == 2 and summary["training"]["trained_tokens"] == sel["kept_tokens"]
    base, ref = Scores.load(out / "scores" / "base"), Scores.load(out / "scores" / "reference")
    assert base.meta["adapter_pair"] and ref.meta["adapter_pair"]
    alone = api.score(tiny_model_dir, TokenTable.load(out / "tokens" / "pool"), progress=False)
    np.testing.assert_allclose(base.token_loss, alone.token_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(api.select(base, ref).keep_mask, Selection.load(out / "selection").keep_mask)
    from tokenclean.runs.layout import LOCK_FILE

    leftovers = [p for p in out.rglob(".*") if p.name != LOCK_FILE]  # the run directory's lock file stays, unlocked
    assert not leftovers and not list(scratch.glob("tokenclean-*"))  # no temporary leftovers


COLLECTIVES_WORKER = textwrap.dedent("""
    import json
    import sys
    import numpy as np
    import torch.distributed as dist
    from tokenclean.compute.distributed import all_ranks, distributed_world, from_rank0, gather_arrays

    rank, world = distributed_world()
    mine = [np.arange(rank * 3, dtype=np.int64) + 10 * rank, np.full(rank + 1, rank + 0.5, dtype=np.float32)]
    got = gather_arrays(mine)
    record = from_rank0({"stage": "scores/base", "done": [1, 2.5, None], "rank": rank})
    flags = (all_ranks(True), all_ranks(rank == 0))
    with open(sys.argv[1] + f".rank{rank}.json", "w") as f:
        json.dump({"got": [[a.tolist() for a in parts] for parts in got], "dtypes": [str(p[0].dtype) for p in got],
                   "record": record, "flags": flags}, f)
    dist.destroy_process_group()
""")


def test_collectives_move_arrays_and_records_without_pickle(tmp_path):
    """Uneven arrays of two dtypes gathered on every rank in rank order, rank 0's JSON record broadcast, and the
    all-ranks vote, over gloo, with every pickle entry point of the workers disabled."""
    script = tmp_path / "collectives.py"
    refuse = ("import pickle, torch.distributed.distributed_c10d as c10d\n"
              "for _name in ('dumps', 'loads', 'Pickler', 'Unpickler'):\n    setattr(pickle, _name, None)\n"
              "c10d._pickler = c10d._unpickler = None  # what torch's object collectives use\n")
    script.write_text(COLLECTIVES_WORKER.replace("rank, world = distributed_world()",
                                                 "rank, world = distributed_world()\n" + refuse))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"out.rank{rank}.json").read_text())
        assert out["got"] == [[[], [10, 11, 12]], [[0.5], [1.5, 1.5]]]
        assert out["dtypes"] == ["int64", "float32"]
        assert out["record"] == {"stage": "scores/base", "done": [1, 2.5, None], "rank": 0}
        assert out["flags"] == [True, False]
