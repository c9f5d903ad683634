"""Reading SFT rows from files and normalising them to conversations.

Every supported input becomes a ``Conversation``: a sample id plus a list of ``{"role", "content"}`` messages.
Supported sources: ``.json`` (an array of objects, or JSON Lines), ``.jsonl``, ``.parquet``, a directory saved
with ``datasets.Dataset.save_to_disk``, or a hub dataset id (``name`` or ``name:split``).

Supported row formats (``DataConfig.format``, detected from the first row when ``auto``):

- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, multi-turn;
- ``prompt_completion``: ``{"prompt": str, "completion": str}``;
- ``alpaca``: ``{"instruction": str, "input": str (optional), "output": str}``;
- ``fields``: any two fields named by ``prompt_field`` / ``response_field``; detected without them for the common
  pairs in ``FIELD_PAIRS`` (GSM8K's ``question``/``answer``, ``query``/``response``).

A sample id comes from the row's ``id`` field when present, else it is the row's 0-based index in the file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import option
from ..errors import DataError

ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "messages", "prompt_completion", "alpaca", "fields")
FIELD_PAIRS = (("question", "answer"), ("query", "response"))  # (prompt, response) fields ``auto`` recognises


@dataclass
class DataConfig:
    """How rows are read and mapped to conversations."""

    format: str = option("auto", "row format: auto-detected from the first row, or messages, prompt_completion, "
                         "alpaca, fields", choices=list(FORMATS))
    prompt_field: str | None = option(None, "with --response-field: the two fields holding prompt and response "
                                      "(e.g. question / answer)")
    response_field: str | None = option(None, "the field holding the response (see --prompt-field)")
    skip_invalid: bool = option(False, "skip invalid rows (counted with their reason in summary.json) instead "
                                "of stopping at the first")


@dataclass
class Conversation:
    """One normalised SFT sample."""

    sample_id: str
    messages: list[dict[str, str]]
    row: int  # 0-based row index in the source, for error messages
    line: int | None = None  # 1-based line in a JSON Lines source


class RowError(ValueError):
    """Why one row is invalid. ``reason`` is a short fixed phrase (the key under which ``--skip-invalid`` counts
    the row, e.g. ``missing field``); the message says what was found and what was expected."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class LoadReport:
    """What happened to every input row: used, or skipped with a reason. ``rows == used + len(skipped)``;
    ``truncated`` counts used rows cut to ``max_seq_len`` (they keep at least one response token)."""

    source: str
    rows: int = 0
    used: int = 0
    truncated: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"row", "line" (JSON Lines), "reason", "detail"}

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
        }


def where(source: str | os.PathLike, row: int, line: int | None) -> str:
    """How messages point at a row: ``FILE:LINE`` in a JSON Lines file, else ``FILE: row N`` (0-based)."""
    return f"{source}:{line}" if line is not None else f"{source}: row {row}"


def read_rows(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Read raw rows (dicts) from a file, a saved ``datasets`` directory or a hub dataset id.

    JSON is parsed here rather than with ``datasets.load_dataset("json")`` so that a malformed line is reported
    with its file and line number instead of a pyarrow traceback.
    """
    rows, lines = _read_source(source)
    for i, row in enumerate(rows):
        if isinstance(row, RowError):
            raise DataError(f"{where(source, i, lines[i] if lines else None)}: {row}")
    return rows


def _read_source(source: str | os.PathLike) -> tuple[list[dict[str, Any] | RowError], list[int] | None]:
    """Rows of ``source`` (a ``RowError`` in place of a line or element that is not a JSON object) and, for
    JSON Lines files, each row's 1-based line number."""
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise DataError(f"{path}: a DatasetDict without a 'train' split; splits are {list(ds)}")
                ds = ds["train"]
            return ds.to_list(), None
        raise DataError(f"{path}: is a directory, expected a .json/.jsonl/.parquet file or a saved datasets directory")
    if path.exists():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return _read_json(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist(), None
            except Exception as e:  # pyarrow raises several types for a corrupt file
                raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        raise DataError(f"{path}: unsupported file type '{suffix}', expected .json, .jsonl or .parquet")
    if _looks_like_path(str(source)):
        raise DataError(f"{source}: no such file or directory")
    return _read_hub(str(source)), None


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith((".json", ".jsonl", ".parquet")) or s.count("/") > 1


def _read_hub(name: str) -> list[dict[str, Any]]:
    import datasets

    repo, _, split = name.partition(":")
    try:
        return datasets.load_dataset(repo, split=split or "train").to_list()
    except Exception as e:  # the hub client raises many types; the user needs one line
        raise DataError(f"{name}: not a local file and could not be loaded as a hub dataset ({e})") from None


def _read_json(path: Path) -> tuple[list[dict[str, Any] | RowError], list[int] | None]:
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark), expected UTF-8; "
                        "save the file as UTF-8")
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is legal and common
        raw = raw[3:]
    if not raw.strip():
        raise DataError(f"{path}: the file is empty, expected JSON rows")
    if raw.lstrip().startswith(b"["):
        return _read_json_array(path, raw), None
    rows, lines = [], []
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which JSON allows in strings.
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            rows.append(_parse_line(line))
            lines.append(lineno)
    return rows, lines


def _parse_line(line: bytes) -> dict[str, Any] | RowError:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowError("invalid UTF-8", f"invalid UTF-8 bytes at byte {e.start} of the line, expected UTF-8 text")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return RowError("malformed JSON", f"malformed JSON ({e.msg}, column {e.colno}), expected one JSON object "
                        "per line")
    if not isinstance(row, dict):
        return RowError("not an object", f"expected a JSON object, got {_kind(row)}")
    return row


def _read_json_array(path: Path, raw: bytes) -> list[dict[str, Any] | RowError]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 bytes at offset {e.start}, expected UTF-8 text") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}), expected an array of objects") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of objects or one object per line, got {_kind(rows)}")
    return [row if isinstance(row, dict) else RowError("not an object", f"expected a JSON object, got {_kind(row)}")
            for row in rows]


def detect_format(row: dict[str, Any], prompt_field: str | None = None, index: int = 0) -> str:
    """The format of ``row`` (row ``index`` of its file; see the module docstring); raises when none fits."""
    if prompt_field:
        return "fields"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if field_pair(row):
        return "fields"
    raise DataError(
        f"row {index} has fields {sorted(row)}; expected 'messages', 'prompt'+'completion', 'instruction'+'output', "
        + ", ".join(f"'{a}'+'{b}'" for a, b in FIELD_PAIRS) + ", or name two fields with --prompt-field/--response-field"
    )


def field_pair(row: dict[str, Any]) -> tuple[str, str] | None:
    """The first of ``FIELD_PAIRS`` that ``row`` has, else None."""
    return next((pair for pair in FIELD_PAIRS if pair[0] in row and pair[1] in row), None)


def to_messages(row: dict[str, Any], fmt: str, prompt_field: str | None, response_field: str | None) -> list[dict]:
    """Convert one raw row to a validated message list; raises ``RowError`` with the reason."""
    if fmt == "messages":
        if "messages" not in row:
            raise RowError("missing field", f"missing field 'messages' (row has {sorted(row)})")
        messages = row["messages"]
        if not isinstance(messages, list):
            raise RowError("wrong type", f"'messages' must be a list of {{role, content}} objects, "
                           f"got {_kind(messages)}")
        out = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict):
                raise RowError("wrong type", f"messages[{k}] must be an object with 'role' and 'content', "
                               f"got {_kind(m)}")
            for name in ("role", "content"):
                if name not in m:
                    raise RowError("missing field", f"messages[{k}] has no '{name}' (it has {sorted(m)})")
            if m["role"] not in ROLES:
                raise RowError("unknown role", f"messages[{k}] has unknown role {m['role']!r}, expected one of "
                               f"{list(ROLES)}")
            _check_text(m["content"], f"messages[{k}].content")
            out.append({"role": m["role"], "content": m["content"]})
    elif fmt == "prompt_completion":
        out = [_msg("user", row, "prompt"), _msg("assistant", row, "completion")]
    elif fmt == "alpaca":
        instruction = _field(row, "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowError("wrong type", f"field 'input' must be a string, got {_kind(extra)}")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        out = [{"role": "user", "content": prompt}, _msg("assistant", row, "output")]
    elif fmt == "fields":
        out = [_msg("user", row, prompt_field), _msg("assistant", row, response_field)]
    else:
        raise AssertionError(fmt)
    if not any(m["role"] == "assistant" for m in out):
        raise RowError("no assistant turn", "the chat has no assistant turn, expected at least one response to "
                       "train on")
    return out


def _msg(role: str, row: dict, name: str | None) -> dict[str, str]:
    return {"role": role, "content": _field(row, name)}


def _field(row: dict, name: str | None) -> str:
    if name not in row:
        raise RowError("missing field", f"missing field '{name}' (row has {sorted(row)})")
    value = row[name]
    _check_text(value, f"field '{name}'")
    return value


def _check_text(value: Any, what: str) -> None:
    if value is None:
        raise RowError("null", f"{what} is null, expected a string")
    if not isinstance(value, str):
        raise RowError("wrong type", f"{what} must be a string, got {_kind(value)}")
    if not value.strip():
        raise RowError("empty text", f"{what} is empty or whitespace only, expected text")


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def load_conversations(
    source: str | os.PathLike, cfg: DataConfig | None = None
) -> tuple[list[Conversation], LoadReport]:
    """Read ``source`` and normalise every row.

    Invalid rows raise ``DataError`` naming the file, row (and line) and expectation, unless ``cfg.skip_invalid``,
    in which case they are skipped and recorded (with the reason) in the returned ``LoadReport``.
    """
    cfg = cfg or DataConfig()
    fmt, prompt_field, response_field = cfg.format, cfg.prompt_field, cfg.response_field
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}, expected one of {list(FORMATS)}")
    if (prompt_field is None) != (response_field is None):
        raise DataError("--prompt-field and --response-field must be given together")
    if prompt_field and fmt == "auto":
        fmt = "fields"
    rows, lines = _read_source(source)
    report = LoadReport(source=str(source), rows=len(rows))
    if not rows:
        raise DataError(f"{source}: contains no rows")
    if fmt == "auto":
        first = next((i for i, row in enumerate(rows) if isinstance(row, dict)), 0)
        if isinstance(rows[first], dict):  # else every row is unparseable: reported below
            try:
                fmt = detect_format(rows[first], prompt_field, first)
            except DataError as e:
                raise DataError(f"{source}: {e}") from None
            if fmt == "fields" and not prompt_field:
                prompt_field, response_field = field_pair(rows[first])
    conversations: list[Conversation] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        line = lines[i] if lines else None
        try:
            if isinstance(row, RowError):
                raise row
            messages = to_messages(row, fmt, prompt_field, response_field)
            sample_id = _sample_id(row, i)
            if sample_id in seen:
                raise RowError("duplicate id", f"duplicate id {sample_id!r} (first seen at row {seen[sample_id]}), "
                               "expected unique ids")
        except RowError as e:
            if not cfg.skip_invalid:
                raise DataError(f"{where(source, i, line)}: {e} (use --skip-invalid to skip such rows)") from None
            report.skip(i, line, e)
            continue
        seen[sample_id] = i
        conversations.append(Conversation(sample_id=sample_id, messages=messages, row=i, line=line))
    report.used = len(conversations)
    if not conversations:
        raise DataError(f"{source}: all {len(rows)} rows are invalid; first reason: {report.skipped[0]['detail']}")
    return conversations, report


def _sample_id(row: dict, index: int) -> str:
    if "id" not in row:
        return str(index)
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError("wrong type", f"field 'id' must be a string or integer, got {_kind(value)}")
    return str(value)
