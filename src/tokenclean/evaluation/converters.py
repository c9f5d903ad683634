"""Readers for the local evaluation files whose layout the harness cannot load directly.

Each reader turns one file into a list of rows (plain dicts) with the structure that the matching task YAML in
``tasks/`` expects, checking it as it goes: every multiple-choice row has its choices and a gold index within
range. ARC, BoolQ and GSM8K files are JSONL the harness reads as they are; they need no reader.

    >>> rows = read_logiqa("../shared/data/eval/logiqa_test.txt")  # doctest: +SKIP
    >>> sorted(rows[0])
    ['context', 'gold', 'options', 'question']
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError

Row = dict[str, Any]

LETTERS = "ABCD"
HELLASWAG_LINES = 6  # "label: context", gold index, four endings
LOGIQA_LINES = 8  # blank, answer letter, context, question, four options
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def read_truthfulqa(path: str | os.PathLike) -> list[Row]:
    """TruthfulQA's ``[{"question", "mc1_targets": {answer: 0/1}, "mc2_targets": {...}}]`` to the hub's rows.

    Each answer dict becomes ``{"choices": [answers], "labels": [0/1]}`` in file order. MC2 needs at least one
    true and one false answer per question.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(items).__name__}")
    rows = []
    for i, item in enumerate(items):
        row = {"question": _field(item, "question", path, i)}
        for key in ("mc1_targets", "mc2_targets"):
            targets = _field(item, key, path, i)
            labels = [int(v) for v in targets.values()]
            if set(labels) != {0, 1}:
                raise DataError(f"{path}: item {i}: {key} needs true (1) and false (0) answers, got labels {labels}")
            row[key] = {"choices": list(targets), "labels": labels}
        rows.append(row)
    return rows


def read_hellaswag(path: str | os.PathLike) -> list[Row]:
    """HellaSwag's text layout (optionally bz2) to ``{"query", "choices": [4 endings], "gold"}`` rows.

    Six lines per item: ``activity label: context``, the gold index, then the four endings. Whitespace is
    tidied as the harness's HellaSwag preprocessing does.
    """
    path = Path(path)
    lines = _read_lines(path)
    if len(lines) % HELLASWAG_LINES:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of {HELLASWAG_LINES} (context, gold, 4 endings)")
    rows = []
    for start in range(0, len(lines), HELLASWAG_LINES):
        context, gold, *endings = lines[start : start + HELLASWAG_LINES]
        rows.append(
            {
                "query": _tidy(context),
                "choices": [_tidy(ending) for ending in endings],
                "gold": _gold_index(gold, len(endings), path, start + 2),
            }
        )
    return rows


def read_logiqa(path: str | os.PathLike) -> list[Row]:
    """LogiQA's text layout to ``{"context", "question", "options": [4], "gold"}`` rows.

    Eight lines per item: blank, answer letter (a-d), context, question, options ``A.`` to ``D.``. A few options
    in the released file lost their ``X.`` prefix or have ``X`` / ``X?`` instead; the letter is removed only when
    it is the expected one, so no option text is lost.
    """
    path = Path(path)
    lines = _read_lines(path)
    if len(lines) % LOGIQA_LINES:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of {LOGIQA_LINES} (blank, answer, context, question, 4 options)")
    rows = []
    for start in range(0, len(lines), LOGIQA_LINES):
        blank, answer, context, question, *options = lines[start : start + LOGIQA_LINES]
        if blank.strip() or answer.strip().upper() not in LETTERS:
            raise DataError(f"{path}: line {start + 1}: expected a blank line then an answer letter a-d, got {blank!r}, {answer!r}")
        rows.append(
            {
                "context": context.strip(),
                "question": question.strip(),
                "options": [_strip_letter(option, letter) for option, letter in zip(options, LETTERS, strict=True)],
                "gold": LETTERS.index(answer.strip().upper()),
            }
        )
    return rows


def read_mmlu(path: str | os.PathLike, subject: str) -> list[Row]:
    """One MMLU CSV (header ``question,choice0..choice3,answer``) to ``{"question", "subject", "choices", "answer"}``.

    Read with ``csv`` rather than a dataframe so that choices such as ``4``, ``None`` or ``NA`` stay strings.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != MMLU_HEADER:
            raise DataError(f"{path}: expected header {','.join(MMLU_HEADER)}, got {header}")
        rows = []
        for line, record in enumerate(reader, start=2):
            if len(record) != len(MMLU_HEADER):
                raise DataError(f"{path}: row {line}: expected {len(MMLU_HEADER)} fields, got {len(record)}")
            question, *choices, answer = record
            answer = _gold_index(answer, len(choices), path, line)
            rows.append({"question": question, "subject": subject, "choices": choices, "answer": answer})
    return rows


def write_jsonl(rows: list[Row], path: str | os.PathLike) -> Path:
    """Write rows as JSONL (the harness reads them with ``dataset_path: json``) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _read_lines(path: Path) -> list[str]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and not lines[-1].strip():  # the trailing newline (or its absence) is not an item line
        lines.pop()
    return lines


def _field(item: Any, key: str, path: Path, index: int) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise DataError(f"{path}: item {index}: missing field {key!r}")
    return item[key]


def _gold_index(text: str, n_choices: int, path: Path, line: int) -> int:
    try:
        gold = int(text.strip())
    except ValueError:
        raise DataError(f"{path}: line {line}: gold index must be an integer, got {text!r}") from None
    if not 0 <= gold < n_choices:
        raise DataError(f"{path}: line {line}: gold index {gold} is outside 0..{n_choices - 1}")
    return gold


def _strip_letter(option: str, letter: str) -> str:
    return re.sub(rf"^{letter}[.?\s]\s*", "", option.strip())


def _tidy(text: str) -> str:
    """The harness's HellaSwag text clean-up: drop WikiHow ``[header]`` markers and double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")
