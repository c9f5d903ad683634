"""The benchmark suite: each benchmark's harness tasks, protocol and how their numbers become one value.

The paper's Table 1 (Pang et al., 2025) reports TruthfulQA MC2, TyDi QA GoldP (1-shot F1), LogiQA, MMLU (5-shot),
HellaSwag, ARC-Challenge and BoolQ (0-shot accuracy), averaged unweighted; we add GSM8K (5-shot exact match of
the final number). A single MMLU subject can be asked for as ``mmlu_<subject>`` (e.g. ``mmlu_anatomy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..evaluation import tydiqa


@dataclass(frozen=True)
class Benchmark:
    """One column of the comparison table."""

    name: str
    metric: str
    """Name of the reported value: ``acc``, ``mc2``, ``f1`` or ``exact_match``, always in [0, 1]."""
    harness_metric: str
    """Metric the harness tasks report (``acc`` for TruthfulQA MC2, whose ``acc`` is the MC2 score)."""
    num_fewshot: int
    hub_task: str
    """Harness task, group or tag run when no local data directory is given."""
    local_path: str
    """File or folder under the data directory that the local tasks read; absent means the benchmark is unavailable."""
    hub_filter: str = "none"
    """Harness filter whose value is reported for the hub task (GSM8K: the last number of the generation)."""
    pooled: bool = False
    """How sub-tasks combine: True = weighted by questions (MMLU subjects, as the harness does); False = unweighted
    mean (TyDi QA: F1 is averaged within each language, then across languages)."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("truthfulqa_mc2", "mc2", "acc", 0, "truthfulqa_mc2", "truthfulqa_mc_task.json"),
        Benchmark("tydiqa", "f1", "f1", 1, "tydiqa_goldp", tydiqa.DEV_FILE),
        Benchmark("logiqa", "acc", "acc", 0, "logiqa", "logiqa_test.txt"),
        Benchmark("mmlu", "acc", "acc", 5, "mmlu", "mmlu/test", pooled=True),
        Benchmark("hellaswag", "acc", "acc", 0, "hellaswag", "hellaswag_val_full.txt.bz2"),
        Benchmark("arc_challenge", "acc", "acc", 0, "arc_challenge", "arc_challenge.jsonl"),
        Benchmark("boolq", "acc", "acc", 0, "boolq", "boolq.jsonl"),
        Benchmark("gsm8k", "exact_match", "exact_match", 5, "gsm8k", "gsm8k_test.jsonl", hub_filter="flexible-extract"),
    )
}
"""All benchmarks, in the column order of the paper's Table 1 (GSM8K last)."""

DEFAULT_TASKS: tuple[str, ...] = tuple(BENCHMARKS)
MMLU_SUBJECT_PREFIX = "mmlu_"


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; ``mmlu_<subject>`` gives one MMLU subject with MMLU's protocol."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    if name.startswith(MMLU_SUBJECT_PREFIX) and len(name) > len(MMLU_SUBJECT_PREFIX):
        subject = name.removeprefix(MMLU_SUBJECT_PREFIX)
        return Benchmark(name, "acc", "acc", 5, name, f"mmlu/test/{subject}_test.csv", pooled=True)
    raise ConfigError(f"unknown evaluation task {name!r}; choose from {', '.join(BENCHMARKS)} or mmlu_<subject>")


def parse_tasks(tasks: str | Sequence[str]) -> list[Benchmark]:
    """Benchmarks from a comma-separated string or a list of names, duplicates removed, order kept."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not names:
        raise ConfigError("no evaluation task given; choose from " + ", ".join(BENCHMARKS))
    return [get_benchmark(name) for name in names]


def combine(benchmark: Benchmark, values: Sequence[float], sizes: Sequence[int]) -> float:
    """One value from the sub-task values (one per MMLU subject or TyDi QA language; a single task passes through)."""
    assert values and len(values) == len(sizes), "one size per sub-task value"
    if benchmark.pooled:
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
    return sum(values) / len(values)
