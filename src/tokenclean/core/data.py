"""Normalising SFT rows to conversations.

Every supported input becomes a ``Conversation``: a sample id plus a list of ``{"role", "content"}`` messages.
Rows are read by ``core.readers``: ``.json`` (an array of objects, one object, or JSON Lines), ``.jsonl``, ``.csv``,
``.parquet``, a directory saved with ``datasets.Dataset.save_to_disk``, or a hub dataset id (``name`` or
``name:split``).

Row formats (``DataConfig.format``, detected from the first row when ``auto``) are read by ``formats.py``. Nothing
a row holds is lost silently: a field that reaches no token stops the load with one line naming it and the flags
that map it (``--columns``) or drop it on purpose (``--ignore-fields``, then counted in
``LoadReport.unused_fields``); only the published bookkeeping fields of a format (``Format.metadata``) are read
without a word. Conversation trees give one conversation per thread (``LoadReport.threads``).

Rows are named ``FILE:LINE`` (the 1-based line where the row starts) in text files (JSON Lines, a JSON array with
one row per line or more, CSV) and ``FILE: row N`` (0-based, as ``dataset[N]``) elsewhere, and in a JSON array
written on one line. A sample id comes from the row's ``id`` field when present, else it is the row's 0-based
index in the file.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import formats
from ..config import option
from ..errors import DataError
from .formats import FIELD_PAIRS, ROLES, RowError, SkipRow, Spec, field_pair, kind as _kind  # noqa: F401
from .readers import _read_source, read_rows, where  # noqa: F401 (re-exported)

log = logging.getLogger("tokenclean")
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
    ignore_fields: list[str] | None = option(None, "fields to drop on purpose, spelled as the error that names them "
                                             "(e.g. category, messages[].name); any other field that reaches no "
                                             "token stops the load")
    top_ranked_branch: bool = option(False, "conversation trees (OpenAssistant): follow only the top-ranked reply at "
                                     "each branch, one thread per tree, instead of one thread per root-to-leaf path")


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
    threads: int | None = None  # conversations made from conversation trees (None: one per row)

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    def skip(self, row: int, line: int | None, e: ValueError) -> None:
        entry = {"row": row, "reason": getattr(e, "reason", "invalid row"), "detail": str(e)}
        self.skipped.append(entry if line is None else {"row": row, "line": line, **entry})

    def drop(self, conversations: list[Conversation], dropped: list[int], e: RowError) -> None:
        """Account for leaving ``conversations[k]`` out for each ``k`` of ``dropped``: a row none of whose
        conversations is left is skipped with ``e`` (``rows == used + len(skipped)`` still holds)."""
        left = {c.row for k, c in enumerate(conversations) if k not in set(dropped)}
        gone = {conversations[k].row: conversations[k].line for k in dropped if conversations[k].row not in left}
        for row, line in gone.items():
            self.skip(row, line, e)
        self.skipped.sort(key=lambda s: s["row"])
        self.used -= len(gone)
        if self.threads is not None:
            self.threads -= len(dropped)

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
            **({} if self.threads is None else {"threads": self.threads}),
        }


def detect_format(row: dict[str, Any], spec: Spec | None = None, at: str = "row 0") -> str:
    """The format of ``row`` (named ``at`` in messages; see ``formats.detect``); raises when none fits, with the
    closest known shapes and the flags that map them (``shapes.closest``)."""
    from .shapes import closest, describe

    fmt = formats.detect(row, spec or Spec())
    if fmt is None:
        raise DataError(f"{at}: unknown row shape; the row has {describe(row)}", hints=[
            "closest known shapes, with the flags that read the row as them (all shapes: README, Data formats):",
            *closest(row)])
    return fmt


def to_messages(row: dict[str, Any], fmt: str, spec: Spec, mask_history: bool = False) -> tuple[list[dict], set]:
    """Convert one raw row of a one-conversation-per-row format to a validated message list and the fields it did
    not use; raises ``RowError``."""
    ((_, messages),), unused = formats.read_row(fmt, row, spec)
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

    Invalid rows raise ``DataError`` naming the file, row (and line), expectation and how many rows are invalid,
    unless ``cfg.skip_invalid``, in which case they are skipped and recorded (with the reason) in the returned
    ``LoadReport``; ``--skip-invalid`` is suggested only when some row would be left. Rows with nothing to train on
    as text (``formats.SkipRow``: images) are always skipped and counted. A field that reaches no token stops the
    load unless ``cfg.ignore_fields`` names it (then it is counted in ``report.unused_fields``). Conversation
    trees give one conversation per thread (``core.threads``); their number is logged and is ``report.threads``.
    """
    cfg = cfg or DataConfig()
    fmt, spec = cfg.format, _spec(cfg)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}, expected one of {list(FORMATS)}")
    if fmt == "auto" and spec.prompt_field:
        fmt = "fields"
    rows, lines = _read_source(source)
    if not rows:
        raise DataError(f"{source}: contains no rows")

    def at(i: int) -> str:
        return where(source, i, lines[i] if lines else None)

    if fmt == "auto":
        first = next((i for i, row in enumerate(rows) if isinstance(row, dict)), 0)
        if isinstance(rows[first], dict):  # else every row is unparseable: reported below
            fmt = detect_format(rows[first], spec, at(first))
    if fmt == "fields" and not spec.prompt_field:
        pair = next((field_pair(r) for r in rows if isinstance(r, dict)), None) or (None, None)
        spec = Spec(**{**spec.__dict__, "prompt_field": pair[0], "response_field": pair[1]})
    unit = formats.FORMATS[fmt].unit if fmt in formats.FORMATS else "row"  # "auto": no row could be parsed
    found, errors, unused = (_read_table if unit == "table" else _read_rows)(rows, fmt, spec, cfg)
    invalid = {i: e for i, e in errors.items() if not isinstance(e, SkipRow)}
    if invalid and not cfg.skip_invalid:
        raise DataError(_invalid_rows(invalid, len(rows), bool(found), at))
    report = LoadReport(source=str(source), rows=len(rows), format=fmt,
                        threads=len(found) if unit != "row" else None)
    for i, e in sorted(errors.items()):
        report.skip(i, lines[i] if lines else None, e)
    report.used = len(rows) - len(errors)
    report.unused_fields = _unused_fields(source, fmt, unused, cfg.ignore_fields, len(rows), at)
    if not found:
        raise DataError(f"{source}: all {len(rows)} rows are invalid or skipped {report.skip_counts()}; first "
                        f"reason: {report.skipped[0]['detail']}")
    if report.threads is not None:
        trees = len({sample_id.rsplit("/", 1)[0] for _, sample_id, _ in found})
        log.info("%s: threads (training conversations): %d from %d conversation trees%s", source, report.threads,
                 trees, ", top-ranked branch only" if cfg.top_ranked_branch else "")
    conversations = [Conversation(sample_id=sid, messages=m, row=i, line=lines[i] if lines else None)
                     for i, sid, m in found]
    return conversations, report


Found = list[tuple[int, str, list[dict]]]  # (row, sample id, messages) of each conversation
Unused = dict[str, tuple[int, int]]  # field -> (rows that have it, the first such row)


def _read_rows(rows: list, fmt: str, spec: Spec, cfg: DataConfig) -> tuple[Found, dict[int, RowError], Unused]:
    """Every row of a format with one row per conversation (or per tree): its conversations, or why not."""
    found: Found = []
    errors: dict[int, RowError] = {}
    unused: Unused = {}
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        try:
            if isinstance(row, RowError):
                raise row
            threads, row_unused = formats.read_row(fmt, row, spec, cfg.top_ranked_branch)
            base = _sample_id(row, i)
            mine = [(i, f"{base}/{t}" if t else base, apply_turn_flags(m, cfg.mask_history)) for t, m in threads]
            for _, sample_id, _ in mine:
                if sample_id in seen:
                    raise RowError("duplicate id", f"duplicate id {sample_id!r} (first seen at row {seen[sample_id]})"
                                   ", expected unique ids")
        except RowError as e:
            errors[i] = e
            continue
        seen.update({sample_id: i for _, sample_id, _ in mine})
        found += mine
        _count(unused, row_unused, i)
    return found, errors, unused


def _read_table(rows: list, fmt: str, spec: Spec, cfg: DataConfig) -> tuple[Found, dict[int, RowError], Unused]:
    """The threads of a file whose rows are the messages of conversation trees (``threads.table_threads``)."""
    from .threads import table_threads

    table = table_threads(rows, spec, cfg.top_ranked_branch)
    found: Found = []
    errors = dict(table.skipped)
    for path, messages in zip(table.threads, table.messages):
        sample_id = f"{rows[path[0]]['message_id']}/{rows[path[-1]]['message_id']}"
        try:
            found.append((path[-1], sample_id, apply_turn_flags(messages, cfg.mask_history)))
        except RowError as e:
            errors.setdefault(path[-1], e)
    unused: Unused = {}
    for i, keys in sorted(table.unused.items()):
        _count(unused, keys, i)
    return found, errors, unused


def _count(unused: Unused, fields: set[str], row: int) -> None:
    for name in fields:
        n, first = unused.get(name, (0, row))
        unused[name] = (n + 1, first)


def _invalid_rows(invalid: dict[int, RowError], n_rows: int, any_left: bool, at: Callable[[int], str]) -> str:
    """The error for invalid rows without ``--skip-invalid``: the first one, how many there are, and
    ``--skip-invalid`` only when it would leave a row to train on."""
    first = min(invalid)
    message = f"{at(first)}: {invalid[first]}"
    if not any_left:
        return message + (f" (all {n_rows} rows are invalid or have nothing to train on; fix the data or its "
                          "mapping)" if n_rows > 1 else "")
    return message + (f" ({len(invalid)} of {n_rows} rows are invalid; fix them, or use --skip-invalid to skip "
                      "such rows)")


def _unused_fields(source: Any, fmt: str, unused: Unused, ignore: list[str] | None, n_rows: int,
                   at: Callable[[int], str]) -> dict[str, int]:
    """The rows having each field that reaches no token, all of them named in ``ignore`` (``--ignore-fields``);
    raises ``DataError`` naming any other such field, where it first is, and the flags that map or drop it."""
    ignore = set(ignore or ())
    for name in sorted(ignore - set(unused)):
        log.warning("%s: --ignore-fields %s: no row has a field %r that reaches no token", source, name, name)
    left = sorted(f for f in unused if f not in ignore)
    if left:
        shown = ", ".join(f"'{f}' ({unused[f][0]} of {n_rows} rows)" for f in left[:6])
        more = f" and {len(left) - 6} more" if len(left) > 6 else ""
        top = next((f for f in left if "[" not in f and "." not in f), None)
        one = len(left) == 1
        mapping = (f"map {'it' if one else 'them'} with --columns FIELD=KEY (e.g. system={top} puts it in the "
                   "system prompt) or " if top else "")
        raise DataError(f"{at(min(unused[f][1] for f in left))}: field{'' if one else 's'} {shown}{more} "
                        f"reach{'es' if one else ''} no token in the {fmt} format; {mapping}drop "
                        f"{'it' if one else 'them'} on purpose with --ignore-fields {' '.join(left)}")
    return {f: unused[f][0] for f in sorted(unused)}


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
