"""Normalising SFT rows to conversations.

Every supported input becomes a ``Conversation``: a sample id plus a list of ``{"role", "content"}`` messages.
Rows are read by ``core.readers``: ``.json`` (an array of objects, one object, or JSON Lines), ``.jsonl``, ``.csv``,
``.parquet``, a directory saved with ``datasets.Dataset.save_to_disk``, or a hub dataset id (``name`` or
``name:split``).

Row formats (``DataConfig.format``, detected from the first row when ``auto``) are read by ``formats.py``:
``messages``, ``sharegpt``, ``prompt_completion``, ``alpaca``, ``dolly``, ``gpteacher``, ``fields``. A field a
reader does not use is named once in a notice and counted in ``LoadReport.unused_fields``.

Rows are named ``FILE:LINE`` (the 1-based line where the row starts) in text files (JSON Lines, a JSON array with
one row per line or more, CSV) and ``FILE: row N`` (0-based, as ``dataset[N]``) elsewhere, and in a JSON array
written on one line. A sample id comes from the row's ``id`` field when present, else it is the row's 0-based
index in the file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import formats
from ..config import option
from ..errors import DataError
from .formats import FIELD_PAIRS, ROLES, RowError, SkipRow, Spec, field_pair, kind as _kind  # noqa: F401
from .readers import _read_source, read_rows, where  # noqa: F401 (re-exported)

log = logging.getLogger("tokenclean")
# (file, unused fields) already named in a notice: a run's stages reload the same files, and the demo's world
# carries its ground truth in fields no reader uses; one notice per file and process says it
_NOTICED: set[tuple[str, str]] = set()
FORMATS = ("auto", *formats.FORMATS)


@dataclass
class DataConfig:
    """How rows are read and mapped to conversations."""

    format: str = option("auto", "row format: auto-detected from the first row, or one of "
                         + ", ".join(FORMATS[1:]), choices=list(FORMATS))
    prompt_field: str | None = option(None, "with --response-field: the two fields holding prompt and response "
                                      "(e.g. question / answer)")
    response_field: str | None = option(None, "the field holding the response (see --prompt-field)")
    skip_invalid: bool = option(False, "skip invalid rows (counted with their reason in summary.json) instead "
                                "of stopping at the first")
    columns: str | None = option(None, "other key names and role values: a JSON/YAML file or inline JSON, as a "
                                 "LLaMA-Factory dataset_info entry ({columns, tags}) or Axolotl dataset keys "
                                 "(field_messages, message_property_mappings, roles)")
    mask_history: bool = option(False, "train only the last assistant turn of each chat (the others stay as "
                                "context), as LLaMA-Factory's mask_history")


@dataclass
class Conversation:
    """One normalised SFT sample."""

    sample_id: str
    messages: list[dict[str, str]]
    row: int  # 0-based row index in the source, for error messages
    line: int | None = None  # 1-based line in a JSON Lines source


@dataclass
class LoadReport:
    """What happened to every input row: used, or skipped with a reason. ``rows == used + len(skipped)``;
    ``truncated`` counts used rows cut to ``max_seq_len`` (they keep at least one response token);
    ``unused_fields`` counts, per field the format's reader did not use, the rows that had it."""

    source: str
    rows: int = 0
    used: int = 0
    truncated: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"row", "line" (text files), "reason", "detail"}
    format: str = ""
    unused_fields: dict[str, int] = field(default_factory=dict)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    def skip(self, row: int, line: int | None, e: ValueError) -> None:
        entry = {"row": row, "reason": getattr(e, "reason", "invalid row"), "detail": str(e)}
        self.skipped.append(entry if line is None else {"row": row, "line": line, **entry})

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "used": self.used,
            "truncated": self.truncated,
            "skipped": len(self.skipped),
            "skipped_by_reason": self.skip_counts(),
            "skipped_rows": self.skipped[:1000],
            "format": self.format,
            "unused_fields": self.unused_fields,
        }


def detect_format(row: dict[str, Any], spec: Spec | None = None, at: str = "row 0") -> str:
    """The format of ``row`` (named ``at`` in messages; see ``formats.detect``); raises when none fits."""
    fmt = formats.detect(row, spec or Spec())
    if fmt is None:
        raise DataError(f"{at}: the row has fields {sorted(row)}; expected one of the formats "
                        f"{formats.expected_shapes()}, or name two fields with --prompt-field/--response-field, "
                        "or other keys with --columns")
    return fmt


def to_messages(row: dict[str, Any], fmt: str, spec: Spec, mask_history: bool = False) -> tuple[list[dict], set]:
    """Convert one raw row to a validated message list and the fields it did not use; raises ``RowError``."""
    messages, unused = formats.FORMATS[fmt].read(row, spec)
    return apply_turn_flags(messages, mask_history), unused


def apply_turn_flags(messages: list[dict], mask_history: bool = False) -> list[dict]:
    """Honour per-turn train flags exactly, or refuse the row.

    ``mask_history`` marks every assistant turn but the last not to train. Turns after the last trained assistant
    turn are dropped: no trained token sees them (the model is causal), so this changes no loss. An untrained
    assistant turn before a trained one stays as context outside the response mask (``render.render_segments``).
    """
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise RowError("no assistant turn", "the chat has no assistant turn, expected at least one response to "
                       "train on")
    if mask_history:
        messages = [dict(m, train=False) if k in assistant[:-1] else m for k, m in enumerate(messages)]
    trained = [k for k in assistant if messages[k].get("train", True)]
    if not trained:
        raise RowError("no trained turn", f"all {len(assistant)} assistant turn(s) are marked not to train, "
                       "expected at least one response to train on")
    return messages[: trained[-1] + 1]


def load_conversations(
    source: str | os.PathLike, cfg: DataConfig | None = None
) -> tuple[list[Conversation], LoadReport]:
    """Read ``source`` and normalise every row.

    Invalid rows raise ``DataError`` naming the file, row (and line) and expectation, unless ``cfg.skip_invalid``,
    in which case they are skipped and recorded (with the reason) in the returned ``LoadReport``. Rows with nothing
    to train on as text (``formats.SkipRow``: images) are always skipped and counted. Fields the format's reader
    does not use are named in a logged notice (once per file and process) and counted in
    ``report.unused_fields``.
    """
    cfg = cfg or DataConfig()
    fmt, spec = cfg.format, _spec(cfg)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}, expected one of {list(FORMATS)}")
    if fmt == "auto" and spec.prompt_field:
        fmt = "fields"
    rows, lines = _read_source(source)
    report = LoadReport(source=str(source), rows=len(rows))
    if not rows:
        raise DataError(f"{source}: contains no rows")
    if fmt == "auto":
        first = next((i for i, row in enumerate(rows) if isinstance(row, dict)), 0)
        if isinstance(rows[first], dict):  # else every row is unparseable: reported below
            fmt = detect_format(rows[first], spec, where(source, first, lines[first] if lines else None))
    if fmt == "fields" and not spec.prompt_field:
        pair = next((field_pair(r) for r in rows if isinstance(r, dict)), None) or (None, None)
        spec = Spec(**{**spec.__dict__, "prompt_field": pair[0], "response_field": pair[1]})
    report.format = fmt
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    unused: Counter = Counter()
    for i, row in enumerate(rows):
        line = lines[i] if lines else None
        try:
            if isinstance(row, RowError):
                raise row
            messages, row_unused = to_messages(row, fmt, spec, cfg.mask_history)
            sample_id = _sample_id(row, i)
            if sample_id in seen:
                raise RowError("duplicate id", f"duplicate id {sample_id!r} (first seen at row {seen[sample_id]}), "
                               "expected unique ids")
        except RowError as e:
            if not (cfg.skip_invalid or isinstance(e, SkipRow)):
                raise DataError(f"{where(source, i, line)}: {e} (use --skip-invalid to skip such rows)") from None
            report.skip(i, line, e)
            continue
        unused.update(row_unused)
        seen[sample_id] = i
        conversations.append(Conversation(sample_id=sample_id, messages=messages, row=i, line=line))
    report.used = len(conversations)
    report.unused_fields = dict(sorted(unused.items()))
    notice = ", ".join(f"{k} ({n} rows)" for k, n in sorted(unused.items()))
    if unused and (str(source), notice) not in _NOTICED:
        _NOTICED.add((str(source), notice))
        log.warning("%s: notice: the %s reader does not use these fields, which reach no token: %s", source, fmt,
                    notice)
    if not conversations:
        raise DataError(f"{source}: all {len(rows)} rows are invalid or skipped {report.skip_counts()}; first "
                        f"reason: {report.skipped[0]['detail']}")
    return conversations, report


def _spec(cfg: DataConfig) -> Spec:
    if (cfg.prompt_field is None) != (cfg.response_field is None):
        raise DataError("--prompt-field and --response-field must be given together")
    try:
        spec = formats.load_spec(cfg.columns) if cfg.columns else Spec()
    except (OSError, ValueError) as e:
        raise DataError(f"--columns: {e}") from None
    return Spec(**{**spec.__dict__, "prompt_field": cfg.prompt_field, "response_field": cfg.response_field})


def _sample_id(row: dict, index: int) -> str:
    if "id" not in row:
        return str(index)
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError("wrong type", f"field 'id' must be a string or integer, got {_kind(value)}")
    return str(value)
