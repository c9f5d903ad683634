"""TyDi QA GoldP: reading the released files and SQuAD-style F1.

The gold-passage task gives a passage that contains the answer; the model writes the answer span. A prediction
scores the best F1 over the reference answers (SQuAD v1.1 definition: token overlap after normalisation). The
benchmark value averages F1 within each language, then across languages, so that the large languages do not
dominate: ``macro_f1``.

The released files (``tydiqa-goldp-v1.1-dev.json``, ``-train.json``) use the SQuAD layout
``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text"}]}]}]}]}``; the language
is the prefix of each question id (``english-...``).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError

DEV_FILE = "tydiqa-goldp-v1.1-dev.json"
TRAIN_FILE = "tydiqa-goldp-v1.1-train.json"  # optional: the source of 1-shot examples when present
LANGUAGE_CODES = {
    "arabic": "ar",
    "bengali": "bn",
    "english": "en",
    "finnish": "fi",
    "indonesian": "id",
    "japanese": "ja",
    "korean": "ko",
    "russian": "ru",
    "swahili": "sw",
    "telugu": "te",
    "thai": "th",
}


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop ASCII punctuation and the articles a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, reference: str) -> float:
    """Token-overlap F1 between normalised prediction and reference (0 when they share no token).

        >>> f1_score("the Eiffel Tower", "Eiffel tower in Paris")
        0.6666666666666666
    """
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    overlap = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def best_f1(prediction: str, references: Sequence[str]) -> float:
    """F1 against the closest of several reference answers."""
    return max(f1_score(prediction, reference) for reference in references)


def macro_f1(f1_by_language: Mapping[str, Iterable[float]]) -> float:
    """Mean over languages of the mean F1 within each language.

        >>> macro_f1({"english": [1.0, 0.0], "finnish": [1.0]})
        0.75
    """
    means = [sum(values) / len(values) for values in map(list, f1_by_language.values()) if values]
    assert means, "no TyDi QA predictions to average"
    return sum(means) / len(means)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Harness hook for one question: best F1 and exact match of the generated answer."""
    prediction = results[0].strip()
    references = doc["answers"]
    return {
        "f1": best_f1(prediction, references),
        "exact_match": max(exact_match(prediction, reference) for reference in references),
    }


def read_goldp(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """A SQuAD-layout GoldP file to rows ``{"id", "language", "context", "question", "answers"}`` per language."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    articles = content.get("data") if isinstance(content, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{path}: expected SQuAD-layout JSON with a top-level 'data' list of articles")
    rows = defaultdict(list)
    for paragraph in (paragraph for article in articles for paragraph in article.get("paragraphs", [])):
        for qa in paragraph.get("qas", []):
            try:
                row = _goldp_row(paragraph, qa)
            except KeyError as e:
                raise DataError(f"{path}: question {qa.get('id')!r}: missing field {e}") from None
            if not row["answers"]:
                raise DataError(f"{path}: question {row['id']!r} has no reference answer")
            rows[row["language"]].append(row)
    if not rows:
        raise DataError(f"{path}: no questions found")
    return dict(sorted(rows.items()))


def language_code(language: str) -> str:
    """``english`` -> ``en`` (the harness's task suffixes); unknown names are kept as they are."""
    return LANGUAGE_CODES.get(language, language)


def _goldp_row(paragraph: dict[str, Any], qa: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": qa["id"],
        "language": str(qa["id"]).split("-", 1)[0],
        "context": paragraph["context"],
        "question": qa["question"],
        "answers": [answer["text"] for answer in qa["answers"]],
    }
