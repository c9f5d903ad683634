"""The benchmark suite: each benchmark's harness tasks, protocol and how their numbers become one value.

The paper's Table 1 (Pang et al., 2025) reports TruthfulQA MC2, TyDi QA GoldP (1-shot F1), LogiQA, MMLU (5-shot),
HellaSwag, ARC-Challenge and BoolQ (0-shot accuracy), averaged unweighted; we add GSM8K (5-shot exact match of
the final number). A single MMLU subject can be asked for as ``mmlu_<subject>`` (e.g. ``mmlu_anatomy``).
"""

from __future__ import annotations

import math
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


def combine_stderr(benchmark: Benchmark, stderrs: Sequence[float | None], sizes: Sequence[int]) -> float | None:
    """The standard error of ``combine``'s value from the sub-tasks' standard errors, the sub-tasks being
    independent samples: sqrt(sum(w_i^2 se_i^2)) with ``combine``'s weights w_i (n_i / N pooled, 1 / k otherwise).
    ``None`` when any sub-task has none.

        >>> round(combine_stderr(BENCHMARKS["mmlu"], [0.1, 0.1], [1, 3]), 4)  # sqrt(0.25^2 + 0.75^2) * 0.1
        0.0791
    """
    assert len(stderrs) == len(sizes), "one size per sub-task standard error"
    weights = [n / sum(sizes) for n in sizes] if benchmark.pooled else None
    return _weighted_stderr(stderrs, weights)


def average_stderr(stderrs: Sequence[float | None]) -> float | None:
    """The standard error of the unweighted mean of independent estimates: sqrt(sum(se_i^2)) / k; ``None`` when
    any has none.

        >>> average_stderr([0.03, 0.04])
        0.025
    """
    return _weighted_stderr(stderrs, None)


def _weighted_stderr(stderrs: Sequence[float | None], weights: Sequence[float] | None) -> float | None:
    """sqrt(sum(w_i^2 se_i^2)) for independent estimates (``weights`` None: 1 / k each); ``None`` when any
    estimate has no standard error."""
    if not stderrs or any(se is None for se in stderrs):
        return None
    weights = weights or [1 / len(stderrs)] * len(stderrs)
    return math.sqrt(sum((w * se) ** 2 for w, se in zip(weights, stderrs, strict=True)))


Limit = int | dict[str, int] | None
"""Questions per harness task: ``None`` (all), one number for every benchmark, or numbers per benchmark name with
an optional ``"default"`` for the others (absent: all questions), e.g. ``{"default": 100, "mmlu": 2}``."""
DEFAULT_LIMIT_KEY = "default"


def parse_limit(text: str) -> Limit:
    """A ``--limit`` value: ``"100"``, or per benchmark ``"100,mmlu=2,gsm8k=50"`` (a bare number is the default).

        >>> parse_limit("100,mmlu=2")
        {'default': 100, 'mmlu': 2}
    """
    limits: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, number = part.rpartition("=")
        name = name.strip() or DEFAULT_LIMIT_KEY
        if name in limits:
            raise ConfigError(f"limit {text!r}: {name} is given twice")
        try:
            limits[name] = int(number)
        except ValueError:
            raise ConfigError(f"limit {text!r}: expected N or BENCHMARK=N, comma-separated, got {part!r}") from None
    if not limits:
        raise ConfigError("empty limit; expected N or BENCHMARK=N, comma-separated")
    return limits[DEFAULT_LIMIT_KEY] if list(limits) == [DEFAULT_LIMIT_KEY] else limits


def limits_for(benchmarks: Sequence[Benchmark], limit: Limit) -> dict[str, int | None]:
    """Each benchmark's question limit. Refuses a non-positive limit and one for a benchmark not evaluated."""
    if limit is None or isinstance(limit, int):
        values = dict.fromkeys((b.name for b in benchmarks), limit)
    else:
        names = {b.name for b in benchmarks}
        stray = sorted(set(limit) - names - {DEFAULT_LIMIT_KEY})
        if stray:
            raise ConfigError(f"limit given for {', '.join(stray)}, which is not evaluated here "
                              f"(tasks: {', '.join(sorted(names))})")
        values = {b.name: limit.get(b.name, limit.get(DEFAULT_LIMIT_KEY)) for b in benchmarks}
    bad = {name: n for name, n in values.items() if n is not None and n < 1}
    if bad:
        raise ConfigError(f"limit must be a positive number of questions per task, got {bad}")
    return values
