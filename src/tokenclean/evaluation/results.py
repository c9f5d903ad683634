"""Evaluation results on disk and as comparison tables (the paper's Table 1: methods as rows, tasks as columns).

    >>> rows = {"full": {"mmlu": 0.5687, "boolq": 0.7498}, "cleaned": {"mmlu": 0.5618, "boolq": 0.7733}}
    >>> print(results_table(rows))
    | method | MMLU | BoolQ | avg |
    |---|---|---|---|
    | full | 56.87 | 74.98 | 65.92 |
    | cleaned | 56.18 | 77.33 | 66.75 |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .benchmarks import BENCHMARKS
from ..io import read_json, write_json

AVERAGE = "average"
COLUMN_TITLES = {
    "truthfulqa_mc2": "TruthfulQA",
    "tydiqa": "TydiQA",
    "logiqa": "LogiQA",
    "mmlu": "MMLU",
    "hellaswag": "HellaSwag",
    "arc_challenge": "ARC-C",
    "boolq": "BoolQ",
    "gsm8k": "GSM8K",
    AVERAGE: "avg",
}


def write_results(results: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the dict returned by ``evaluate`` as JSON, atomically."""
    write_json(path, dict(results))


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by ``write_results``."""
    results = read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise DataError(f"{path}: not a tokenclean evaluation results file (no 'tasks' mapping)")
    return results


def benchmark_columns(results: Mapping[str, Any]) -> dict[str, float]:
    """``{task: value, ..., "average": mean}`` from ``evaluate``'s results, values in [0, 1].

        >>> benchmark_columns({"tasks": {"boolq": {"metric": "acc", "value": 0.75, "n": 4}}, "average": 0.75})
        {'boolq': 0.75, 'average': 0.75}
    """
    columns = {task: float(result["value"]) for task, result in results["tasks"].items()}
    columns[AVERAGE] = float(results.get(AVERAGE, _mean(columns.values())))
    return columns


def benchmark_stderrs(results: Mapping[str, Any]) -> dict[str, float]:
    """``{task: standard error, ..., "average": its standard error}`` from ``evaluate``'s results, for the tasks
    that have one (results written before standard errors were recorded have none).

        >>> benchmark_stderrs({"tasks": {"boolq": {"value": 0.75, "stderr": 0.02}}, "average_stderr": 0.02})
        {'boolq': 0.02, 'average': 0.02}
    """
    stderrs = {task: float(r["stderr"]) for task, r in results["tasks"].items() if r.get("stderr") is not None}
    if results.get("average_stderr") is not None:
        stderrs[AVERAGE] = float(results["average_stderr"])
    return stderrs


def results_table(rows: Mapping[str, Mapping[str, Any]], *, label: str = "method") -> str:
    """A markdown table: one row per method/model, one column per task and the unweighted average, in percent.

    ``rows`` maps a row name to ``evaluate``'s results or to task columns (``benchmark_columns`` or a plain
    ``{task: value}``). Tasks follow the paper's column order, other tasks after them; a task a row lacks
    shows as ``-``; a row without an ``average`` gets the mean of its own tasks. A value whose standard error
    ``evaluate`` recorded shows it: ``56.87 ± 1.20``.
    """
    columns = {name: _columns(row) for name, row in rows.items()}
    errors = {name: benchmark_stderrs(row) if "tasks" in row else {} for name, row in rows.items()}
    tasks = _ordered_tasks(task for row in columns.values() for task in row if task != AVERAGE)
    header = [label, *(COLUMN_TITLES.get(task, task) for task in tasks), COLUMN_TITLES[AVERAGE]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in columns.items():
        cells = [_percent(row.get(task), errors[name].get(task)) for task in (*tasks, AVERAGE)]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _columns(row: Mapping[str, Any]) -> dict[str, float]:
    if "tasks" in row:
        return benchmark_columns(row)
    columns = {task: float(value) for task, value in row.items()}
    if AVERAGE not in columns and columns:
        columns[AVERAGE] = _mean(columns.values())
    return columns


def _ordered_tasks(tasks: Any) -> list[str]:
    seen = list(dict.fromkeys(tasks))
    known = [task for task in BENCHMARKS if task in seen]
    return known + [task for task in seen if task not in BENCHMARKS]


def _percent(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + ("" if stderr is None else f" ± {100 * stderr:.2f}")


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
