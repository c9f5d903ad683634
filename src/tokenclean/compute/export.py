"""Export: the cleaned dataset in the layouts other trainers read unchanged, or written back in the input's format.

Pre-tokenized: exactly the columns ``input_ids``, ``attention_mask`` (all ones; padding is the collator's job) and
``labels`` (token id where trained, ``IGNORE_INDEX`` = -100 elsewhere), as Axolotl's pre-tokenized loader
requires ("columns must be exactly input_ids, attention_mask, labels") and as LLaMA-Factory's ``tokenized_path``
passes every column to its collator (a string column stops it). The sample ids, in row order, are in
``sample_ids.json`` beside the data. Written as a ``datasets`` directory (``save_to_disk``: TRL's ``SFTTrainer``,
LLaMA-Factory's ``tokenized_path``) and as one Parquet file (Axolotl: ``type:`` left empty). ``check_pretokenized``
validates a table against that schema.

Written back (``train_detail_rows``): chat rows in their own format, each assistant message with Axolotl's
``train_detail`` (character spans, ``end_offset`` inclusive, ``train`` true where tokenclean kept the tokens), read
by Axolotl's ``chat_template`` type with ``message_field_training_detail: train_detail``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..core.labels import IGNORE_INDEX, make_labels
from ..core.tokens import TokenTable, list_column, per_sample_sum, write_parquet
from ..io import atomic_write_bytes, write_json

TRAINER_COLUMNS = ("input_ids", "attention_mask", "labels")  # exactly these: see the module docstring
SAMPLE_IDS = "sample_ids.json"


def export_table(tokens: TokenTable, keep_mask: np.ndarray | None = None, drop_empty: bool = True) -> pa.Table:
    """The export as an Arrow table (see the module docstring); rows with no trained token are left out when
    ``drop_empty``."""
    ids = tokens.flat_input_ids()
    labels = make_labels(ids, tokens.flat_response_mask(), keep_mask)
    offsets = tokens.offsets
    trained = per_sample_sum(labels != IGNORE_INDEX, offsets)
    table = pa.table(
        {
            "sample_id": tokens.table.column("sample_id"),
            "input_ids": list_column(ids.astype(np.int32), offsets),
            "attention_mask": list_column(np.ones(len(ids), dtype=np.int8), offsets),
            "labels": list_column(labels, offsets),
        }
    )
    if drop_empty:
        table = table.filter(pa.array(trained > 0))
    return table


def export_dataset(
    tokens: TokenTable,
    out_dir: str | os.PathLike,
    keep_mask: np.ndarray | None = None,
    drop_empty: bool = True,
    parquet_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``out_dir`` (a ``datasets.save_to_disk`` directory; atomicity is the caller's job) and
    ``parquet_path`` (default ``<out_dir>.parquet``). Returns counts."""
    import datasets

    table = export_table(tokens, keep_mask, drop_empty)
    out_dir = Path(out_dir)
    parquet_path = Path(parquet_path) if parquet_path else out_dir.with_name(f"{out_dir.name}.parquet")
    trainer_table = table.select(list(TRAINER_COLUMNS))
    datasets.Dataset(trainer_table).save_to_disk(str(out_dir))
    write_json(out_dir / SAMPLE_IDS, table.column("sample_id").to_pylist())
    write_parquet(trainer_table, parquet_path)
    labels = table.column("labels").combine_chunks().flatten().to_numpy()
    return {
        "rows": table.num_rows,
        "rows_left_out": len(tokens) - table.num_rows,
        "trained_tokens": int((labels != IGNORE_INDEX).sum()),
        "dataset_dir": str(out_dir),
        "parquet": str(parquet_path),
    }


def check_pretokenized(table: pa.Table, where: str = "export") -> None:
    """Raise ``ValueError`` unless ``table`` is what Axolotl's pre-tokenized loader and LLaMA-Factory's
    ``tokenized_path`` document: exactly ``TRAINER_COLUMNS``, integer lists of one length per row, attention all
    ones, each label -100 or its token id, and (Axolotl) at least one trained token per row."""
    if tuple(table.column_names) != TRAINER_COLUMNS:
        raise ValueError(f"{where}: columns {table.column_names}, expected exactly {list(TRAINER_COLUMNS)}")
    for name in TRAINER_COLUMNS:
        typ = table.schema.field(name).type
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)) or not pa.types.is_integer(typ.value_type):
            raise ValueError(f"{where}: column {name} is {typ}, expected a list of integers")
    ids, attn, labels = (table.column(n).to_pylist() for n in TRAINER_COLUMNS)
    for i, (x, a, y) in enumerate(zip(ids, attn, labels)):
        if not len(x) == len(a) == len(y):
            raise ValueError(f"{where}: row {i} has {len(x)} input_ids, {len(a)} attention_mask, {len(y)} labels")
        if set(a) - {1} or any(lab not in (tok, IGNORE_INDEX) for tok, lab in zip(x, y)):
            raise ValueError(f"{where}: row {i}: attention must be all 1 and each label its token id or -100")
        if all(lab == IGNORE_INDEX for lab in y):
            raise ValueError(f"{where}: row {i} has no trained token")


# ------------------------------------------------------------------------------------------ written back, per span
def train_detail(content: str, offsets: list[tuple[int, int]], keep: list[bool]) -> list[dict[str, Any]]:
    """Axolotl's ``train_detail`` for one assistant message: runs of characters of ``content`` that are trained
    (``train: true``) or not, as ``{"begin_offset", "end_offset" (inclusive), "train"}`` covering all of it.

    ``offsets``: (n_tokens,) character spans ``(begin, end)`` of the turn's tokens in ``content`` (end exclusive;
    byte-level tokens of one character share it; a gap before a token belongs to it). ``keep``: (n_tokens,) bool.
    A character is trained when every token covering it is kept; characters no token covers (cut off by
    truncation) are not. Axolotl trains a token only when it lies wholly inside a ``train: true`` span.

    >>> train_detail("Hi there", [(0, 2), (2, 8)], [True, False])
    [{'begin_offset': 0, 'end_offset': 1, 'train': True}, {'begin_offset': 2, 'end_offset': 7, 'train': False}]
    """
    n = len(content)
    flags, covered, prev = np.zeros(n, bool), np.zeros(n, bool), 0
    for (begin, end), kept in zip(offsets, keep):
        span = slice(min(begin, prev), min(end, n))
        flags[span] = np.where(covered[span], flags[span] & kept, kept)
        covered[span] = True
        prev = max(prev, min(end, n))
    edges = [0, *(np.flatnonzero(flags[1:] != flags[:-1]) + 1).tolist(), n]
    return [{"begin_offset": a, "end_offset": b - 1, "train": bool(flags[a])} for a, b in zip(edges, edges[1:])
            if b > a]


def turn_keep(messages: list[dict], ids: np.ndarray, response_mask: np.ndarray, keep: np.ndarray, tokenizer,
              template: str = "auto") -> list[tuple[list[tuple[int, int]], list[bool]]]:
    """For each response segment of one sample (one per assistant turn, in order): the character spans of its
    tokens within the turn's ``content`` and their keep decisions.

    ``ids``, ``response_mask``, ``keep``: (n_tokens,) of the sample as tokenized (maybe truncated). The segments
    are rendered and tokenized again with offsets; their ids must equal the sample's, else the tokenizer or
    template differ from the ones the tokens were made with (``ValueError``).
    """
    from ..core.render import render_segments

    positions = np.flatnonzero(response_mask)
    turns, k = [], 0
    contents = iter([m["content"] for m in messages if m["role"] == "assistant"])
    for text, is_response in render_segments(messages, tokenizer, template):
        if not is_response:
            continue
        content = next(contents)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        at = positions[k: k + len(enc["input_ids"])]
        k += len(enc["input_ids"])
        if not np.array_equal(ids[at], enc["input_ids"][: len(at)]):
            raise ValueError("the tokens were made with another tokenizer or template than the one given")
        start = text.find(content)
        spans = [(b - start, e - start) for b, e in enc["offset_mapping"]][: len(at)]
        kept = keep[at].tolist()
        inside = [j for j, (b, _) in enumerate(spans) if b < len(content)]  # the end-of-turn marker is not content
        turns.append(([spans[j] for j in inside], [kept[j] for j in inside]))
    return turns


def train_detail_rows(rows: list[dict], conversations: list, tokens: TokenTable, keep_mask: np.ndarray, tokenizer,
                      fmt: str, spec=None, template: str = "auto") -> tuple[list[dict], dict[str, int]]:
    """The used rows of a chat file (``messages`` or ``sharegpt`` format), in file order, each assistant message
    with ``train_detail`` spans of the tokens tokenclean kept (see ``train_detail``). ``rows``: the file's raw
    rows; ``conversations``: what ``load_conversations`` made of them; ``keep_mask``: (total_tokens,) bool aligned
    with ``tokens``. Returns the rows and counts (``rows``, ``turns``, ``turns_not_carried``: assistant turns whose
    text is not the message's own string, e.g. tool calls or content parts, left without spans)."""
    import copy

    from ..core.formats import Spec, chat

    if fmt not in ("messages", "sharegpt"):
        raise ValueError(f"the {fmt} format cannot carry per-span keep decisions; use the pre-tokenized export")
    spec = spec or Spec()
    key = spec.col("messages", "messages" if fmt == "messages" else "conversations")
    by_id = {c.sample_id: c for c in conversations}
    ids, mask, offsets = tokens.flat_input_ids(), tokens.flat_response_mask(), tokens.offsets
    out, counts = [], {"rows": 0, "turns": 0, "turns_not_carried": 0}
    for i, sample_id in enumerate(tokens.sample_ids):
        c, (a, b) = by_id[sample_id], (offsets[i], offsets[i + 1])
        row = copy.deepcopy(rows[c.row])
        source = row[key]
        roles = [m["role"] for m in chat(source, key, spec)[0]]
        turns = turn_keep(c.messages, ids[a:b], mask[a:b], keep_mask[a:b], tokenizer, template)
        assistant = [k for k, role in enumerate(roles) if role == "assistant"][: len(turns)]
        own = [m["content"] for m in c.messages if m["role"] == "assistant"]
        for k, (spans, kept), text in zip(assistant, turns, own):
            counts["turns"] += 1
            content = source[k].get(spec.content_key or ("content" if "content" in source[k] else "value"))
            if content != text:
                counts["turns_not_carried"] += 1
                continue
            source[k]["train_detail"] = train_detail(text, spans, kept)
        out.append(row)
        counts["rows"] += 1
    return out, counts


def write_back(source: str | os.PathLike, out_path: str | os.PathLike, tokens: TokenTable,
               keep_mask: np.ndarray | None, tokenizer, data_config=None) -> dict[str, Any]:
    """Write the used rows of chat file ``source`` to ``out_path`` (JSON Lines) in their own format, each assistant
    message with ``train_detail`` spans of the kept tokens (see ``train_detail_rows``); ``keep_mask`` None keeps
    every response token. ``tokens`` must come from ``source`` with ``tokenizer`` and ``data_config``. Returns
    the counts and the path. Axolotl reads the file with ``type: chat_template``, ``message_field_training_detail:
    train_detail`` (and ``field_messages: conversations`` plus ``message_property_mappings`` for ShareGPT)."""
    from ..core.data import DataConfig, load_conversations
    from ..core.readers import read_rows
    from ..core.spec import Spec, load_spec

    cfg = data_config or DataConfig()
    conversations, report = load_conversations(source, cfg)
    keep = np.ones(len(tokens.flat_input_ids()), bool) if keep_mask is None else keep_mask
    spec = load_spec(cfg.columns) if cfg.columns else Spec()
    rows, counts = train_detail_rows(read_rows(source, strict=False), conversations, tokens, keep, tokenizer,
                                     report.format, spec, tokens.meta.get("template", "auto"))
    atomic_write_bytes(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return {**counts, "path": str(out_path)}
