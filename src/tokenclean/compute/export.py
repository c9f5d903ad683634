"""Export: the cleaned dataset in the layouts other trainers read unchanged.

Columns: ``input_ids``, ``attention_mask`` (all ones; padding is the collator's job), ``labels`` (token id where
trained, ``IGNORE_INDEX`` = -100 elsewhere), plus ``sample_id``. Written as a ``datasets`` directory
(``save_to_disk``: TRL's ``SFTTrainer``, LLaMA-Factory's ``tokenized_path``) and as one Parquet file (Axolotl's
pre-tokenized datasets, or anything that reads Parquet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..core.tokens import IGNORE_INDEX, TokenTable, list_column, make_labels, per_sample_sum, write_parquet


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
    datasets.Dataset(table).save_to_disk(str(out_dir))
    write_parquet(table, parquet_path)
    labels = table.column("labels").combine_chunks().flatten().to_numpy()
    return {
        "rows": table.num_rows,
        "rows_left_out": len(tokens) - table.num_rows,
        "trained_tokens": int((labels != IGNORE_INDEX).sum()),
        "dataset_dir": str(out_dir),
        "parquet": str(parquet_path),
    }
