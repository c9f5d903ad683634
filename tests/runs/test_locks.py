"""Concurrent processes: one at a time in a run directory, one computing a score cache entry, and locks left by
killed processes taken over. Every test here runs a second, real process."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_jsonl

from tokenclean.cli import main
from tokenclean.lock import Lock

HOLD = """
import sys, time
from pathlib import Path
from tokenclean.lock import Lock
lock = Lock(sys.argv[1])
assert lock.acquire(wait=False) is None
print("held", flush=True)
time.sleep(float(sys.argv[2]))
if len(sys.argv) > 3:  # put a finished cache entry in place before letting go
    import shutil
    shutil.copytree(sys.argv[3], sys.argv[4])
lock.release()
"""


def holder(path: Path, seconds: float, *copy: Path) -> subprocess.Popen:
    """A second process holding the lock ``path`` for ``seconds`` (then copying ``copy[0]`` to ``copy[1]``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds), *map(str, copy)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    path = tmp_path / "x.lock"
    proc = holder(path, 60)
    name = Lock(path).acquire(wait=False)
    assert name.startswith(f"pid {proc.pid} on host {socket.gethostname()} since ") and name.endswith(" UTC")
    proc.kill()  # SIGKILL: no chance to clean up; the lock file still names it
    proc.wait()
    assert path.read_text().startswith(f"pid {proc.pid} ")
    lock = Lock(path)
    with caplog.at_level(logging.WARNING, logger="tokenclean"):
        assert lock.acquire(wait=False) is None
    assert f"took over the lock left by pid {proc.pid} on host" in caplog.text
    assert path.read_text().startswith(f"pid {os.getpid()} ")
    assert Lock(path).acquire(wait=False) is None  # re-entrant within one process
    Lock(path).release()
    lock.release()
    assert path.read_text() == ""  # released: names nobody


def test_a_waiting_process_says_whom_it_waits_for(tmp_path, caplog):
    path = tmp_path / "y.lock"
    proc = holder(path, 1.5)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="tokenclean"):
        assert Lock(path).acquire(wait=True, on_wait="which is busy") is None
    assert time.perf_counter() - start > 0.5 and proc.wait() == 0
    assert f"waiting for pid {proc.pid} on host" in caplog.text and "which is busy" in caplog.text
    assert "took over" not in caplog.text  # released properly: nothing to take over
    Lock(path).release()


def test_a_second_run_in_a_busy_run_directory_stops_in_one_line(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    proc = holder(out / ".tokenclean.lock", 60)
    try:
        data = write_jsonl(tmp_path / "d.jsonl", [{"question": "1 + 1?", "answer": "2"}])
        code = main(["run", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert err[0].startswith(f"tokenclean run: error: {out}: in use by another tokenclean process (pid "
                                 f"{proc.pid} on host {socket.gethostname()} since ")
        assert sorted(p.name for p in out.iterdir()) == [".tokenclean.lock"]  # nothing written, nothing mixed
    finally:
        proc.kill()
        proc.wait()


def test_a_cache_entry_being_computed_elsewhere_is_waited_for_not_computed_again(tmp_path, tiny_model_dir,
                                                                                 gpt2_tokenizer, caplog):
    from conftest import chat_table

    from tokenclean import api
    from tokenclean.compute.score_model import _cache_slot

    tokens = chat_table(gpt2_tokenizer, [("What is 2 + 2?", "It is 4."), ("Name a colour.", "Teal.")])
    root, finished = tmp_path / "cache", tmp_path / "finished"
    expected = api.score(str(tiny_model_dir), tokens, finished, progress=False)  # what the other process makes
    _, key = _cache_slot(root, str(tiny_model_dir), None, tokens, None, "auto")
    (root / "locks").mkdir(parents=True)
    proc = holder(root / "locks" / f"{key}.lock", 1.5, finished, root / "scores" / key)
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        scores = api.score(str(tiny_model_dir), tokens, cache=root, progress=False)
    assert proc.wait() == 0
    assert f"waiting for pid {proc.pid} on host" in caplog.text and "computing the same token losses" in caplog.text
    assert scores.meta["cache_hit"] is True  # found what the other process stored, instead of scoring again
    assert scores.token_loss.tobytes() == expected.token_loss.tobytes()


FAST = ["--prompt-field", "question", "--response-field", "answer", "--max-seq-len", "128", "--batch-size", "8",
        "--gradient-accumulation-steps", "1", "--lora-r", "4", "--max-steps", "2", "--warmup-min-steps", "2",
        "--batch-tokens", "4096"]


@pytest.mark.slow
def test_two_real_runs_on_one_run_directory_never_mix_their_files(tmp_path, tiny_model_dir, gsm8k_rows):
    out, data = tmp_path / "run", write_jsonl(tmp_path / "pool.jsonl", gsm8k_rows[:40])
    args = [sys.executable, "-m", "tokenclean", "run", "--base", str(tiny_model_dir), "--data", str(data),
            "--out", str(out), *FAST, "--no-cache"]
    # the first trains long enough (150 steps, ~15 s) to still hold the directory once the second has started up
    first = subprocess.Popen(args + ["--keep-ratio", "0.6", "--max-steps", "150"], stderr=subprocess.PIPE, text=True)
    lock = out / ".tokenclean.lock"
    for _ in range(600):  # until the first process holds the directory
        if lock.exists() and lock.read_text().startswith(f"pid {first.pid} "):
            break
        time.sleep(0.1)
    # other settings with --overwrite: without the lock it would recompute the selection under the first's feet
    second = subprocess.run(args + ["--keep-ratio", "0.3", "--overwrite"], capture_output=True, text=True)
    assert second.returncode == 2 and first.poll() is None, second.stderr
    err = second.stderr.strip().splitlines()
    assert err[-1].startswith(f"tokenclean run: error: {out}: in use by another tokenclean process (pid {first.pid} ")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    summary = json.loads((out / "summary.json").read_text())
    selection = json.loads((out / "selection" / "stage.json").read_text())
    assert selection["inputs"]["select_config"]["keep_ratio"] == 0.6
    assert summary["selection"]["kept_tokens"] == selection["result"]["kept_tokens"]
    assert "keep_ratio: 0.6" in (out / "config.yaml").read_text() and not list(out.glob("config.*.yaml"))
    assert not list(out.rglob(".*.tmp")) and lock.read_text() == ""
