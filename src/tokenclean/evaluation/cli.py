"""``tokenclean eval``: benchmark a model, print a table and write the results as JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..errors import ConfigError
from ..evaluation import local_tasks
from .benchmarks import DEFAULT_TASKS, parse_limit, parse_tasks
from .harness import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, evaluate
from .results import results_table, write_results

DEFAULT_OUT = "eval_results.json"



def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on an argparse subparsers object; the parsed args carry ``func=run``."""
    from ..commands import COMMANDS  # the one-line help lives in the command table

    parser = subparsers.add_parser("eval", help=COMMANDS["eval"][0])
    eval_flags(parser)
    return parser


def eval_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``tokenclean eval``."""
    parser.description = ("Evaluate a model on MMLU, TruthfulQA MC2, HellaSwag, ARC-C, BoolQ, LogiQA, TyDi QA and "
                          "GSM8K.")
    parser.add_argument("--model", required=True, help="model directory (or hub id)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    parser.add_argument(
        "--tasks",
        help=f"comma-separated benchmarks, or mmlu_<subject> (default: all of {','.join(DEFAULT_TASKS)}; "
        "with --data-dir, those whose files are there)",
    )
    parser.add_argument("--limit", type=parse_limit, help="at most N questions per task (per MMLU subject, per TyDi "
                        "QA language); per benchmark: 100,mmlu=2 (a bare number is the default)")
    parser.add_argument("--data-dir", help="read local evaluation files (layout of shared/data/eval); offline")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results JSON (default: {DEFAULT_OUT})")
    parser.add_argument("--batch-size", help=f"batch size or 'auto' (default: {CPU_BATCH_SIZE} on a CPU, where wider "
                        f"batches only cost memory; {CUDA_BATCH_SIZE} on a GPU)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: CUDA when available)")
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto (bf16 where the device computes it "
                        "natively: CUDA, CPUs with AVX512-BF16 or AMX; fp32 elsewhere), float32, bfloat16; "
                        "log-probabilities are fp32 either way")
    parser.add_argument("--max-gen-toks", type=int, help="cap on generated tokens for GSM8K and TyDi QA")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write ``args.out``; returns the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # the harness's progress bars remain
    tasks = _tasks(args.tasks, args.data_dir)
    results = evaluate(
        args.model,
        tasks,
        limit=args.limit,
        data_dir=args.data_dir,
        batch_size=_batch_size(args.batch_size),
        device=args.device,
        tokenizer=args.tokenizer,
        max_gen_toks=args.max_gen_toks,
        dtype=args.dtype,
    )
    write_results(results, args.out)
    print(results_table({results["model"]: results}, label="model"))
    print(f"wrote {args.out}")
    return 0


def _tasks(spec: str | None, data_dir: str | None) -> list[str]:
    """The requested benchmarks; by default all, minus (with a warning) those whose local files are missing."""
    if spec is not None:
        return [b.name for b in parse_tasks(spec)]
    if data_dir is None:
        return list(DEFAULT_TASKS)
    benchmarks = parse_tasks(DEFAULT_TASKS)
    missing = [b for b in benchmarks if not local_tasks.available(b, data_dir)]
    for b in missing:
        print(f"warning: skipping {b.name}: {b.local_path} not in {data_dir}", file=sys.stderr)
    if len(missing) == len(benchmarks):
        raise ConfigError(f"no evaluation files in {data_dir}; expected e.g. {benchmarks[0].local_path}")
    return [b.name for b in benchmarks if b not in missing]


def _batch_size(text: str | None) -> int | str | None:
    if text is None or text.startswith("auto"):
        return text
    try:
        size = int(text)
    except ValueError:
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {text!r}") from None
    if size < 1:
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {text!r}")
    return size
