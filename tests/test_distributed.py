"""Scoring under torchrun (2 processes, gloo, CPU) writes the same losses, and selects the same tokens, as one
process: each rank scores a strided share of the length-sorted batches, rank 0 gathers and writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import write_jsonl
from tokenclean import api
from tokenclean.artifacts import Scores
from tokenclean.scoring import ScoreConfig

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch.distributed as dist
    from tokenclean import api
    from tokenclean.scoring import ScoreConfig

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
