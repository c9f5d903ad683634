"""On-disk artifacts of the stages: token losses (``Scores``) and keep masks (``Selection``).

Both are a Parquet file keyed by ``sample_id`` with one list column aligned with the token table, plus a JSON
file of metadata (fingerprints, counts). ``check_same_tokens`` refuses to combine artifacts that were made from
different data, tokenizer, template or ``max_seq_len``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import MismatchError
from .io import read_json, write_json
from .tokens import list_column, write_parquet

# What decides the token layout, in the order a mismatch is explained.
_TOKEN_KEYS = (
    ("tokenizer_fingerprint", "tokenizer"),
    ("max_seq_len", "max_seq_len"),
    ("template", "template"),
    ("train_on_prompt", "train_on_prompt"),
    ("data_fingerprint", "data"),
    ("tokens_fingerprint", "tokenized data"),
)


def check_same_tokens(a: dict[str, Any], a_name: str, b: dict[str, Any], b_name: str) -> None:
    """Raise ``MismatchError`` naming the first difference between two artifacts' token metadata."""
    for key, what in _TOKEN_KEYS:
        if key in a and key in b and a[key] != b[key]:
            raise MismatchError(
                f"{a_name} and {b_name} were made with a different {what} ({key}: {a[key]!r} vs {b[key]!r}); "
                "score, select and train with the same data, tokenizer and --max-seq-len"
            )


def _read_list_file(path: Path, column: str, what: str):
    if not path.exists():
        raise MismatchError(f"{path.parent}: not a {what} directory (no {path.name})")
    table = pq.read_table(path)
    col = table.column(column).combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False)
    return table.column("sample_id").to_pylist(), values, offsets - offsets[0]


@dataclass
class Scores:
    """Token losses of one model over one token table."""

    sample_ids: list[str]
    token_loss: np.ndarray  # (total_tokens,) float32, NaN at non-response tokens
    offsets: np.ndarray  # (n_samples + 1,)
    meta: dict[str, Any]

    FILE = "token_loss.parquet"
    META = "scores.json"

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        table = pa.table({"sample_id": pa.array(self.sample_ids, pa.string()),
                          "token_loss": list_column(self.token_loss, self.offsets)})
        write_parquet(table, directory / self.FILE)
        write_json(directory / self.META, self.meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Scores:
        directory = Path(directory)
        ids, values, offsets = _read_list_file(directory / cls.FILE, "token_loss", "score")
        return cls(ids, values.astype(np.float32), offsets, read_json(directory / cls.META))


@dataclass
class Selection:
    """A keep-mask over one token table, with its counts and settings."""

    sample_ids: list[str]
    keep_mask: np.ndarray  # (total_tokens,) bool
    offsets: np.ndarray  # (n_samples + 1,)
    meta: dict[str, Any]

    FILE = "keep_mask.parquet"
    META = "selection.json"

    def kept_per_sample(self) -> np.ndarray:
        """(n_samples,) number of kept tokens per sample."""
        return np.add.reduceat(self.keep_mask.astype(np.int64), self.offsets[:-1]) * (np.diff(self.offsets) > 0)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        table = pa.table({"sample_id": pa.array(self.sample_ids, pa.string()),
                          "keep_mask": list_column(self.keep_mask, self.offsets)})
        write_parquet(table, directory / self.FILE)
        write_json(directory / self.META, self.meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Selection:
        directory = Path(directory)
        ids, values, offsets = _read_list_file(directory / cls.FILE, "keep_mask", "selection")
        return cls(ids, values.astype(bool), offsets, read_json(directory / cls.META))
