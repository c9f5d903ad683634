"""Benchmark evaluation with lm-evaluation-harness: the paper's suite (MMLU 5-shot; TruthfulQA MC2, HellaSwag,
ARC-C, BoolQ, LogiQA 0-shot; TyDi QA GoldP 1-shot F1) plus GSM8K, offline from local files or from the hub.

    >>> from tokenclean.evaluation import evaluate, results_table
    >>> results = evaluate("runs/fixed/model", ["boolq", "mmlu"], data_dir="../shared/data/eval", limit=20)  # doctest: +SKIP
    >>> print(results_table({"fixed": results}))  # doctest: +SKIP

The harness is an optional extra (``pip install 'tokenclean[eval]'``), imported only when ``evaluate`` runs.
"""

from .benchmarks import BENCHMARKS, DEFAULT_TASKS, Benchmark
from .harness import evaluate
from .results import benchmark_columns, benchmark_stderrs, read_results, results_table, write_results

__all__ = [
    "BENCHMARKS",
    "DEFAULT_TASKS",
    "Benchmark",
    "benchmark_columns",
    "benchmark_stderrs",
    "evaluate",
    "read_results",
    "results_table",
    "write_results",
]
