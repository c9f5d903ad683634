"""Issue 14: every scorer on the demo world, measured against ground-truth token kinds and by the model it trains.

For each warm-up (the world's clean warm-up set, and a random 20% of the noisy pool as in the demo's
``fixed[noisy-warmup]`` row) and each seed, ``compare`` runs fixed-model cleaning once per scorer (``--scorers``
rows ``fixed[<scorer>]``, sharing the base, the reference and its scores) plus full SFT as the yardstick, and the
demo's measures (``demo.metrics.DemoMetrics``) grade each: the selection's share kept/dropped of each token kind,
the mean warm-up score of each kind, the held-out loss on informative tokens, greedy accuracy and repeated wrong
answers. Everything goes through the tool's run directories and score cache: run the same command again to resume.

    python experiments/scorer_study.py --out /work/studies/scorers --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tokenclean.demo.metrics import DEMO_COLUMNS, DemoMetrics
from tokenclean.demo.run import DemoConfig, demo_setup, profile_of
from tokenclean.runs.compare import compare
from tokenclean.runs.config import RunConfig
from tokenclean.runs.stages import Run, tokens_stage
from tokenclean.selection.scorers import SCORERS

KEYS = ("garbled_dropped", "wrong_answer_dropped", "generic_dropped", "informative_kept", "precision",
        "score_garbled", "score_informative", "informative_loss", "accuracy", "wrong_answer_reproduced")
HEADS = ("garbled dropped", "wrong answers dropped", "generic dropped", "informative kept", "kept that are "
         "informative", "garbled score", "informative score", "informative-token loss", "accuracy",
         "wrong answers repeated")


def study(out: Path, seeds: list[int], scorers: list[str]) -> dict[str, dict]:
    cfg = DemoConfig(out=str(out), methods=["full", "fixed"], ablations=False)
    inputs, run_cfg = demo_setup(cfg)
    results = {}
    for warmup in ("clean", "noisy"):
        flat = {**run_cfg.flat(), "out": str(out / f"run-{warmup}-warmup")}
        if warmup == "noisy":
            flat["warmup_data"] = None  # the demo's ablation: warmup_fraction (20%) of the noisy pool
        c = RunConfig.from_flat(flat)
        root = Run(c)
        tables = tokens_stage(root)
        measure = DemoMetrics(root, tables, inputs, profile_of(cfg).max_new_tokens)
        results[warmup] = compare(c, ["full", "fixed"], seeds, extra_metrics=measure, extra_columns=DEMO_COLUMNS,
                                  scorers=scorers)
    return results


def table(results: dict[str, dict]) -> str:
    lines = ["| warm-up | row | " + " | ".join(HEADS) + " |", "|---|---|" + "---:|" * len(HEADS)]
    for warmup, result in results.items():
        for row in result["rows"]:
            cells = []
            for k in KEYS:
                if k not in row["mean"]:
                    cells.append("")
                    continue
                fmt = "{:.3f}" if k.startswith("score") or k.endswith("loss") else "{:.1%}"
                cells.append(f"{fmt.format(row['mean'][k])} ± {fmt.format(row['std'][k])}")
            lines.append(f"| {warmup} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scorers", nargs="+", default=list(SCORERS))
    args = p.parse_args()
    start = time.time()
    results = study(args.out, args.seeds, args.scorers)
    text = table(results) + f"\n\nseeds {args.seeds}; wall time {time.time() - start:.0f} s\n"
    (args.out / "scorer_study.md").write_text(text, encoding="utf-8")
    (args.out / "scorer_study.json").write_text(json.dumps(results, default=str), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
