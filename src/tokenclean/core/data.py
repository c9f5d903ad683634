"""Reading SFT rows from files and normalising them to conversations.

Every supported input becomes a ``Conversation``: a sample id plus a list of ``{"role", "content"}`` messages.
Supported sources: ``.json`` (an array of objects, one object, or JSON Lines), ``.jsonl``, ``.csv``, ``.parquet``,
a directory saved with ``datasets.Dataset.save_to_disk``, or a hub dataset id (``name`` or ``name:split``).

Row formats (``DataConfig.format``, detected from the first row when ``auto``) are read by ``formats.py``:
``messages``, ``sharegpt``, ``prompt_completion``, ``alpaca``, ``dolly``, ``gpteacher``, ``fields``. A field a
reader does not use is named once in a notice and counted in ``LoadReport.unused_fields``.

Rows are named ``FILE:LINE`` (the 1-based line where the row starts) in text files (JSON Lines, a JSON array with
one row per line or more, CSV) and ``FILE: row N`` (0-based, as ``dataset[N]``) elsewhere, and in a JSON array
written on one line. A sample id comes from the row's ``id`` field when present, else it is the row's 0-based
index in the file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import formats
from ..config import option
from ..errors import DataError
from .formats import FIELD_PAIRS, ROLES, RowError, SkipRow, Spec, field_pair, kind as _kind  # noqa: F401

log = logging.getLogger("tokenclean")
FORMATS = ("auto", *formats.FORMATS)
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


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


def where(source: str | os.PathLike, row: int, line: int | None) -> str:
    """How messages point at a row: ``FILE:LINE`` in a text file, else ``FILE: row N`` (0-based, ``dataset[N]``)."""
    return f"{source}:{line}" if line is not None else f"{source}: row {row}"


def read_rows(source: str | os.PathLike, strict: bool = True) -> list[dict[str, Any]]:
    """Read raw rows (dicts) from a file, a saved ``datasets`` directory or a hub dataset id; with ``strict``
    False an unparseable row is a ``RowError`` in its place instead of an error.

    JSON is parsed here rather than with ``datasets.load_dataset("json")`` so that a malformed line is reported
    with its file and line number instead of a pyarrow traceback.
    """
    rows, lines = _read_source(source)
    for i, row in enumerate(rows):
        if strict and isinstance(row, RowError):
            raise DataError(f"{where(source, i, lines[i] if lines else None)}: {row}")
    return rows


def _read_source(source: str | os.PathLike) -> tuple[list[dict[str, Any] | RowError], list[int] | None]:
    """Rows of ``source`` (a ``RowError`` in place of a line or element that is not a JSON object) and, for
    text files, each row's 1-based starting line (None where rows share a line)."""
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
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist(), None
            except Exception as e:  # pyarrow raises several types for a corrupt file
                raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        raise DataError(f"{path}: unsupported file type '{suffix}', expected .json, .jsonl, .csv or .parquet")
    if _looks_like_path(str(source)):
        raise DataError(f"{source}: no such file or directory")
    return _read_hub(str(source)), None


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith((".json", ".jsonl", ".csv", ".parquet")) or s.count("/") > 1


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
        return _read_json_array(path, raw)
    if raw.lstrip().startswith(b"{") and b"\n" in raw.strip():
        one = _one_object(path, raw)
        if one is not None:
            return one
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


def _one_object(path: Path, raw: bytes) -> tuple[list[dict[str, Any]], list[int]] | None:
    """A file holding one (pretty-printed) JSON object: one row, or an error when the object wraps the rows (as
    ``{"data": [...]}``). None when the text is not one object (JSON Lines, read line by line)."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict):
        return None
    lists = [k for k, v in row.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(row) == 1 and lists and formats.detect(row, Spec()) is None:
        raise DataError(f"{path}: the file is one JSON object whose field '{lists[0]}' holds {len(row[lists[0]])} "
                        "objects; expected the rows themselves: a JSON array of objects or one object per line")
    return [row], [raw[: len(raw) - len(raw.lstrip())].count(b"\n") + 1]


def _read_json_array(path: Path, raw: bytes) -> tuple[list[dict[str, Any] | RowError], list[int] | None]:
    """Rows of a JSON array and the line where each starts (None when two rows share a line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 bytes at offset {e.start}, expected UTF-8 text") from None
    try:
        rows, starts = _array_elements(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}), expected an array of objects") from None
    lines, line, pos = [], 1, 0
    for start in starts:
        line += text.count("\n", pos, start)
        lines.append(line)
        pos = start
    rows = [row if isinstance(row, dict) else RowError("not an object", f"expected a JSON object, got {_kind(row)}")
            for row in rows]
    return rows, lines if len(set(lines)) == len(lines) else None


def _array_elements(text: str) -> tuple[list[Any], list[int]]:
    """The elements of the JSON array ``text`` and the character offset where each starts (``json.loads`` does
    not give positions; ``raw_decode`` parses one element at a time with the same parser)."""
    decoder, skip = json.JSONDecoder(), _WHITESPACE.match
    pos = skip(text, 0).end() + 1  # after "["
    rows, starts = [], []
    while True:
        pos = skip(text, pos).end()
        if not rows and text.startswith("]", pos):
            break
        starts.append(pos)
        row, pos = decoder.raw_decode(text, pos)
        rows.append(row)
        pos = skip(text, pos).end()
        if text.startswith(",", pos):
            pos += 1
            continue
        if not text.startswith("]", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        break
    if skip(text, pos + 1).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, pos + 1)
    return rows, starts


def _read_csv(path: Path) -> tuple[list[dict[str, Any] | RowError], list[int]]:
    """Rows of a CSV file with a header line (every value a string) and the line where each starts."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 bytes at offset {e.start}, expected UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, lines, end = [], [], 1
    try:
        for row in reader:
            lines.append(end + 1)
            end = reader.line_num
            extra = row.pop(None, None)  # values beyond the header's columns
            rows.append(row if extra is None else RowError(
                "wrong number of values", f"{len(reader.fieldnames) + len(extra)} values, expected "
                f"{len(reader.fieldnames)} (the header's columns)"))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if not reader.fieldnames:
        raise DataError(f"{path}: the file is empty, expected a header line and rows")
    return rows, lines


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
    assistant turn before a trained one must stay as context outside the response mask; that is done when the
    tokenizer layer honours ``"train": False`` (``tokens.HONOURS_TRAIN_FLAG``), else the row is refused.
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
    messages = messages[: trained[-1] + 1]
    untrained = [k for k in assistant if k < trained[-1] and not messages[k].get("train", True)]
    if untrained and not _train_flag_honoured():
        raise RowError("untrained turn before a trained one",
                       f"assistant turn {assistant.index(untrained[0]) + 1} of {len(assistant)} is marked not to "
                       "train but a later one is trained; keeping it as context outside the response mask is not "
                       "supported by this version, expected flags only on trailing turns (or none)")
    return messages


def _train_flag_honoured() -> bool:
    from . import tokens  # tokens imports this module: look it up when needed

    return bool(getattr(tokens, "HONOURS_TRAIN_FLAG", False))


def load_conversations(
    source: str | os.PathLike, cfg: DataConfig | None = None
) -> tuple[list[Conversation], LoadReport]:
    """Read ``source`` and normalise every row.

    Invalid rows raise ``DataError`` naming the file, row (and line) and expectation, unless ``cfg.skip_invalid``,
    in which case they are skipped and recorded (with the reason) in the returned ``LoadReport``. Rows with nothing
    to train on as text (``formats.SkipRow``: images) are always skipped and counted. Fields the format's reader
    does not use are named once in a logged notice and counted in ``report.unused_fields``.
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
    if unused:
        log.warning("%s: notice: the %s reader does not use these fields, which reach no token: %s", source, fmt,
                    ", ".join(f"{k} ({n} rows)" for k, n in sorted(unused.items())))
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
