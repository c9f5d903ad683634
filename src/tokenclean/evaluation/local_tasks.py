"""Harness task configs that read local files (the layouts of ``shared/data/eval``), without the network.

The task definitions are the YAML files in ``tasks/`` (harness task schema). Here they get their data files:
converted rows are written as JSONL into a work directory (never next to the user's data), and the harness
reads them with ``dataset_path: json``. Everything is checked here, before any model is loaded.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError
from ..evaluation import converters, gsm8k, tydiqa
from .benchmarks import MMLU_SUBJECT_PREFIX, Benchmark

TaskConfig = dict[str, Any]


def available(benchmark: Benchmark, data_dir: str | Path) -> bool:
    """Whether ``data_dir`` holds the benchmark's local file (or folder)."""
    return (Path(data_dir) / benchmark.local_path).exists()


def task_configs(benchmark: Benchmark, data_dir: str | Path, work_dir: str | Path) -> list[TaskConfig]:
    """Harness task configs for one benchmark, reading ``data_dir`` and writing converted files to ``work_dir``.

    One config per sub-task: an MMLU subject or a TyDi QA language; one config for the other benchmarks. The
    benchmark's few-shot count is applied to the built tasks (``harness._load_tasks``), as for hub tasks.
    """
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    if not available(benchmark, data_dir):
        raise DataError(f"{benchmark.name}: {data_dir / benchmark.local_path} not found")
    if benchmark.name.startswith(MMLU_SUBJECT_PREFIX):
        subject = benchmark.name.removeprefix(MMLU_SUBJECT_PREFIX)
        return [_mmlu_subject(data_dir, work_dir, subject)]
    return _BUILDERS[benchmark.name](data_dir, work_dir)


def _arc_challenge(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    return [_config("arc_challenge", work_dir, test=data_dir / "arc_challenge.jsonl")]


def _boolq(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    return [_config("boolq", work_dir, test=data_dir / "boolq.jsonl")]


def _hellaswag(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    rows = converters.read_hellaswag(data_dir / "hellaswag_val_full.txt.bz2")
    return [_config("hellaswag", work_dir, test=converters.write_jsonl(rows, work_dir / "hellaswag.jsonl"))]


def _logiqa(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    rows = converters.read_logiqa(data_dir / "logiqa_test.txt")
    return [_config("logiqa", work_dir, test=converters.write_jsonl(rows, work_dir / "logiqa.jsonl"))]


def _truthfulqa_mc2(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    rows = converters.read_truthfulqa(data_dir / "truthfulqa_mc_task.json")
    return [_config("truthfulqa_mc2", work_dir, test=converters.write_jsonl(rows, work_dir / "truthfulqa.jsonl"))]


def _gsm8k(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    path = data_dir / "gsm8k_test.jsonl"
    _check_gsm8k(path)
    return [_config("gsm8k", work_dir, test=path)]


def _mmlu(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    subjects = sorted(p.name.removesuffix("_test.csv") for p in (data_dir / "mmlu" / "test").glob("*_test.csv"))
    if not subjects:
        raise DataError(f"mmlu: no <subject>_test.csv files in {data_dir / 'mmlu' / 'test'}")
    return [_mmlu_subject(data_dir, work_dir, subject) for subject in subjects]


def _mmlu_subject(data_dir: Path, work_dir: Path, subject: str) -> TaskConfig:
    files = {}
    for split in ("test", "dev"):  # dev holds the five few-shot examples
        source = data_dir / "mmlu" / split / f"{subject}_{split}.csv"
        if not source.exists():
            raise DataError(f"mmlu: {source} not found (each subject needs a test and a dev file)")
        rows = converters.read_mmlu(source, subject)
        files[split] = converters.write_jsonl(rows, work_dir / "mmlu" / f"{subject}_{split}.jsonl")
    config = _config("mmlu", work_dir, **files)
    config["task"] = f"{MMLU_SUBJECT_PREFIX}{subject}"
    config["description"] = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return config


def _tydiqa(data_dir: Path, work_dir: Path) -> list[TaskConfig]:
    dev = tydiqa.read_goldp(data_dir / tydiqa.DEV_FILE)
    train_path = data_dir / tydiqa.TRAIN_FILE
    train = tydiqa.read_goldp(train_path) if train_path.exists() else {}
    configs = []
    for language, rows in dev.items():
        files = {"test": converters.write_jsonl(rows, work_dir / "tydiqa" / f"{language}_dev.jsonl")}
        if train.get(language):  # 1-shot examples from the same language's train questions, as the paper's code
            files["train"] = converters.write_jsonl(train[language], work_dir / "tydiqa" / f"{language}_train.jsonl")
        config = _config("tydiqa", work_dir, **files)
        config["task"] = f"tydiqa_{tydiqa.language_code(language)}"
        if "train" in files:
            config["fewshot_split"] = "train"
        configs.append(config)
    return configs


_BUILDERS: dict[str, Callable[[Path, Path], list[TaskConfig]]] = {
    "truthfulqa_mc2": _truthfulqa_mc2,
    "tydiqa": _tydiqa,
    "logiqa": _logiqa,
    "mmlu": _mmlu,
    "hellaswag": _hellaswag,
    "arc_challenge": _arc_challenge,
    "boolq": _boolq,
    "gsm8k": _gsm8k,
}


def _config(template: str, work_dir: Path, **data_files: Path) -> TaskConfig:
    """The packaged task YAML ``template`` reading ``data_files`` (split name -> path)."""
    config = load_task_yaml(template)
    config["dataset_kwargs"] = {
        "data_files": {split: str(path) for split, path in data_files.items()},
        # keep the datasets library's arrow cache inside the work directory, which is removed after the run
        "cache_dir": str(work_dir / "datasets_cache"),
    }
    return config


def load_task_yaml(name: str) -> TaskConfig:
    """A task definition from ``tasks/<name>.yaml``; ``!function a.b.f`` resolves to the importable ``a.b.f``."""
    text = (resources.files("tokenclean.evaluation") / "tasks" / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=_TaskLoader)  # noqa: S506 - our own loader: SafeLoader plus !function


class _TaskLoader(yaml.SafeLoader):
    pass


def _import_function(loader: yaml.SafeLoader, node: yaml.Node) -> Callable:
    module, _, name = loader.construct_scalar(node).rpartition(".")
    return getattr(importlib.import_module(module), name)


_TaskLoader.add_constructor("!function", _import_function)


def _check_gsm8k(path: Path) -> None:
    """Every GSM8K row needs a question and an answer ending in ``#### N``."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}: line {line_no}: not valid JSON") from None
            if "question" not in row or gsm8k.reference_answer(row.get("answer", "")) is None:
                raise DataError(f"{path}: line {line_no}: expected 'question' and an 'answer' ending in '#### N'")
