"""Reading raw rows from files, saved ``datasets`` directories and hub datasets, with every bad row named.

Sources: ``.json`` (an array of objects, one object, or JSON Lines), ``.jsonl``, ``.csv``, ``.parquet``, a directory
saved with ``datasets.Dataset.save_to_disk``, or a hub dataset id (``name`` or ``name:split``). Rows are named
``FILE:LINE`` (the 1-based line where the row starts) in text files (JSON Lines, a JSON array with one row per line
or more, CSV) and ``FILE: row N`` (0-based, as ``dataset[N]``) elsewhere, and in a JSON array written on one line.
``core.data`` turns the rows into conversations.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import formats
from .formats import kind as _kind
from .spec import RowError, Spec

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


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
