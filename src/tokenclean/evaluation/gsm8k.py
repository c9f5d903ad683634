"""GSM8K scoring: exact match of the final number.

Reference answers end with ``#### N``. A generation's answer is the number after its first ``####`` if it wrote
one (the format GSM8K fine-tuning teaches), otherwise the last number it wrote (the harness's "flexible-extract").
Numbers compare by value after removing thousands separators and a ``$``: ``1,000`` == ``1000`` and ``18.00`` == ``18``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_MARKED = re.compile(rf"####\s*({_NUMBER})")
_ANY = re.compile(_NUMBER)


def extract_answer(text: str) -> str | None:
    """The final number of a solution or generation, as written (``None`` when it has no number).

        >>> extract_answer("She makes 9 * 2 = $18 a day.\\n#### 18")
        '18'
        >>> extract_answer("so the answer is 1,250.")
        '1,250'
    """
    marked = _MARKED.search(text)
    if marked:
        return marked.group(1)
    numbers = _ANY.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(answer: str) -> str | None:
    """The ``N`` of a reference solution's ``#### N`` (``None`` when it has none)."""
    marked = _MARKED.search(answer)
    return marked.group(1) if marked else None


def same_number(a: str | None, b: str | None) -> bool:
    """Whether two extracted numbers are equal in value (``None`` equals nothing)."""
    if a is None or b is None:
        return False
    return _value(a) is not None and _value(a) == _value(b)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Harness hook: ``{"exact_match": 1.0}`` when the generation's final number equals the reference's."""
    gold = reference_answer(doc["answer"])
    assert gold is not None, f"GSM8K reference without '#### N': {doc['answer'][-80:]!r}"
    return {"exact_match": float(same_number(extract_answer(results[0]), gold))}


def _value(number: str) -> Decimal | None:
    try:
        return Decimal(number.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None
