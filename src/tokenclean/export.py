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

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .io import write_json
from .tokens import IGNORE_INDEX, TokenTable, list_column, make_labels, write_parquet

TRAINER_COLUMNS = ("input_ids", "attention_mask", "labels")  # exactly these: see the module docstring
SAMPLE_IDS = "sample_ids.json"


def export_table(tokens: TokenTable, keep_mask: np.ndarray | None = None, drop_empty: bool = True) -> pa.Table:
    """The export as an Arrow table (see the module docstring); rows with no trained token are left out when
    ``drop_empty``."""
    ids = tokens.flat_input_ids()
    labels = make_labels(ids, tokens.flat_response_mask(), keep_mask)
    offsets = tokens.offsets
    trained = np.add.reduceat((labels != IGNORE_INDEX).astype(np.int64), offsets[:-1]) * (np.diff(offsets) > 0)
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
