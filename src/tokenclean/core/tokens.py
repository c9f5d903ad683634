"""The token contract: a sample renders to ``input_ids`` + ``response_mask``; labels are derived in one place.

Rendering (``core.render``): the conversation's text is cut into segments that are response text or not, and each
segment is tokenized on its own, so the response mask is exact by construction.

Alignment. ``response_mask[j]`` is True when token ``j`` is a response token the model should learn to predict
(from positions ``< j``). Position 0 is never a response token, since nothing predicts it (``core.labels``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import option
from .labels import IGNORE_INDEX, clear_position_0, make_labels  # noqa: F401 (re-exported)
from .render import (GENERATION_CHECK_ROWS, GENERATION_TAG, check_generation_mask,  # noqa: F401 (re-exported)
                     render_segments)
from .data import Conversation
from .fingerprints import tokenizer_fingerprint
from ..errors import DataError
from ..io import atomic_write_bytes, read_json, write_json

log = logging.getLogger("tokenclean")

TEMPLATES = ("auto", "chat", "default")


@dataclass
class TokenizeConfig:
    """How conversations become tokens."""

    max_seq_len: int = option(2048, "truncate samples to this many tokens (the end is cut off)")
    template: str = option("auto", "auto: the tokenizer's chat template when it has one, else the default "
                           "<|user|>/<|assistant|> template; chat: require the chat template", choices=list(TEMPLATES))
    train_on_prompt: bool = option(False, "treat prompt tokens as response tokens too (scored, selected, trained)")

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.max_seq_len < 2:
            raise ConfigError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"unknown template {self.template!r}, expected one of {list(TEMPLATES)}")


@dataclass(frozen=True)
class TokenOrigin:
    """What decides which token sits at which position. Tokens, scores and selections carry it in their metadata
    (these keys); two artifacts line up token by token only when their origins agree. None: not recorded."""

    tokenizer_fingerprint: str | None = None
    max_seq_len: int | None = None
    template: str | None = None
    train_on_prompt: bool | None = None
    data_fingerprint: str | None = None
    tokens_fingerprint: str | None = None

    # each key's name in an error message, in the order a mismatch is explained
    WHAT: ClassVar[dict[str, str]] = {"tokenizer_fingerprint": "tokenizer", "max_seq_len": "max_seq_len",
                                      "template": "template", "train_on_prompt": "train_on_prompt",
                                      "data_fingerprint": "data", "tokens_fingerprint": "tokenized data"}

    @classmethod
    def of(cls, meta: dict[str, Any]) -> TokenOrigin:
        """The origin recorded in an artifact's metadata."""
        return cls(**{k: meta[k] for k in cls.WHAT if k in meta})

    def meta(self) -> dict[str, Any]:
        """The recorded keys, to write into another artifact's metadata."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def first_difference(self, other: TokenOrigin) -> str | None:
        """The first key both record with different values, or None."""
        mine, theirs = asdict(self), asdict(other)
        return next((k for k in self.WHAT if None not in (mine[k], theirs[k]) and mine[k] != theirs[k]), None)


@dataclass
class TokenTable:
    """Tokenized samples as an Arrow table plus metadata.

    Columns: ``sample_id`` (string), ``input_ids`` (list<int32>), ``response_mask`` (list<bool>).
    ``meta`` holds ``tokenizer_fingerprint``, ``max_seq_len``, ``template``, ``data_fingerprint``,
    ``tokens_fingerprint`` and counts (``samples``, ``tokens``, ``response_tokens``, ``truncated_samples`` with their
    ``truncated_rows``, ``no_response``).
    """

    table: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)

    FILE = "tokens.parquet"
    META = "tokens.json"

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def sample_ids(self) -> list[str]:
        return self.table.column("sample_id").to_pylist()

    @property
    def offsets(self) -> np.ndarray:
        """(n_samples + 1,) int64: sample i's tokens are ``flat[offsets[i]:offsets[i+1]]``."""
        return _list_offsets(self.table.column("input_ids"))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def flat_input_ids(self) -> np.ndarray:
        """(total_tokens,) int32, samples concatenated in table order."""
        return _list_values(self.table.column("input_ids")).astype(np.int32, copy=False)

    def flat_response_mask(self) -> np.ndarray:
        """(total_tokens,) bool."""
        return _list_values(self.table.column("response_mask")).astype(bool, copy=False)

    def select(self, indices: np.ndarray | list[int]) -> TokenTable:
        """A new table with the given rows (same metadata, fingerprint and counts recomputed)."""
        indices = np.asarray(indices, dtype=np.int64)
        sub = self.table.take(pa.array(indices))
        meta = {k: v for k, v in self.meta.items() if k not in _COUNT_KEYS}
        if "truncated_samples" in self.meta:
            rows = np.flatnonzero(np.isin(indices, self.truncated_rows()))
            meta.update(truncated_samples=len(rows), truncated_rows=rows.tolist())
        return TokenTable(sub, _with_counts(sub, meta))

    def truncated_rows(self) -> np.ndarray:
        """Row indices of the samples cut to ``max_seq_len``. A table saved before they were recorded gives the
        rows of exactly ``max_seq_len`` tokens (every cut sample has that length) when it has any cut sample."""
        if "truncated_rows" in self.meta:
            return np.asarray(self.meta["truncated_rows"], dtype=np.int64)
        if not self.meta.get("truncated_samples"):
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.lengths == self.meta["max_seq_len"])

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_parquet(self.table, directory / self.FILE)
        write_json(directory / self.META, self.meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TokenTable:
        directory = Path(directory)
        return cls(pq.read_table(directory / cls.FILE), read_json(directory / cls.META))


_COUNT_KEYS = ("samples", "tokens", "response_tokens", "truncated_samples", "truncated_rows", "no_response",
               "tokens_fingerprint")


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _list_offsets(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _list_values(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False)


def list_column(flat: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    """Build a list column from a flat array and (n + 1,) offsets."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))


def tokenize(
    conversations: list[Conversation],
    tokenizer,
    cfg: TokenizeConfig | None = None,
    data_fingerprint: str = "",
) -> TokenTable:
    """Tokenize conversations segment by segment (see the module docstring) and truncate to ``max_seq_len``."""
    cfg = cfg or TokenizeConfig()
    rendered = [_render_row(c, tokenizer, cfg.template) for c in conversations]
    texts = [text for segs in rendered for text, _ in segs]
    # One batched call: the fast tokenizer parallelises it. add_special_tokens=False because the template text
    # already contains BOS/EOS where they belong.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids_col, mask_col = [], []
    k = 0
    check = _generation_check_rows(tokenizer, cfg)
    checked = mismatches = 0
    for row, segs in enumerate(rendered):
        ids: list[int] = []
        mask: list[bool] = []
        for _, is_response in segs:
            seg_ids = encoded[k]
            k += 1
            ids.extend(seg_ids)
            mask.extend([is_response or cfg.train_on_prompt] * len(seg_ids))
        clear_position_0(mask)
        if row < check:
            c = conversations[row]
            problem = check_generation_mask(c.messages, tokenizer, ids, mask)
            checked += problem is not None
            if problem and not mismatches:
                log.warning("row %s: %s; the mask is the rendered assistant turns (the text after the generation "
                            "prompt, as generated at inference); fix the template's {%% generation %%} blocks if "
                            "they are meant to agree, or use --template default", c.sample_id, problem)
            mismatches += bool(problem)
        ids_col.append(ids[: cfg.max_seq_len])
        mask_col.append(mask[: cfg.max_seq_len])
    full_lengths = _full_lengths(rendered, encoded)
    table = pa.table(
        {
            "sample_id": pa.array([c.sample_id for c in conversations], pa.string()),
            "input_ids": pa.array(ids_col, pa.list_(pa.int32())),
            "response_mask": pa.array(mask_col, pa.list_(pa.bool_())),
        }
    )
    meta = {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "max_seq_len": cfg.max_seq_len,
        "template": cfg.template,
        "train_on_prompt": cfg.train_on_prompt,
        "data_fingerprint": data_fingerprint,
        "truncated_samples": int(sum(n > cfg.max_seq_len for n in full_lengths)),
        "truncated_rows": [i for i, n in enumerate(full_lengths) if n > cfg.max_seq_len],
    }
    if check:
        meta.update(generation_mask_checked=checked, generation_mask_mismatches=mismatches)
    return TokenTable(table, _with_counts(table, meta))


def _render_row(c: Conversation, tokenizer, template: str) -> list[tuple[str, bool]]:
    try:
        return render_segments(c.messages, tokenizer, template)
    except DataError as e:
        raise DataError(f"row {c.sample_id}: {e}") from None


def _generation_check_rows(tokenizer, cfg: TokenizeConfig) -> int:
    """How many leading rows to check against the template's ``{% generation %}`` mask (0: no such template)."""
    chat_template = getattr(tokenizer, "chat_template", None)
    uses_chat = cfg.template == "chat" or (cfg.template == "auto" and chat_template)
    if not uses_chat or cfg.train_on_prompt or not isinstance(chat_template, str):
        return 0
    return GENERATION_CHECK_ROWS if GENERATION_TAG.search(chat_template) else 0


def _full_lengths(rendered: list[list[tuple[str, bool]]], encoded: list[list[int]]) -> list[int]:
    lengths, k = [], 0
    for segs in rendered:
        lengths.append(sum(len(encoded[k + j]) for j in range(len(segs))))
        k += len(segs)
    return lengths


def _with_counts(table: pa.Table, meta: dict[str, Any]) -> dict[str, Any]:
    offsets = _list_offsets(table.column("input_ids"))
    ids = _list_values(table.column("input_ids")).astype(np.int32, copy=False)
    mask = _list_values(table.column("response_mask")).astype(bool, copy=False)
    per_sample = per_sample_sum(mask, offsets)
    h = hashlib.sha256()
    h.update(offsets.tobytes())
    h.update(ids.tobytes())
    h.update(np.packbits(mask).tobytes())
    h.update("\x00".join(table.column("sample_id").to_pylist()).encode())
    return {
        **meta,
        "samples": table.num_rows,
        "tokens": int(len(ids)),
        "response_tokens": int(mask.sum()),
        "no_response": int((per_sample == 0).sum()),
        "tokens_fingerprint": h.hexdigest()[:16],
    }


def per_sample_sum(values: np.ndarray, offsets: np.ndarray, block_tokens: int = 1 << 20) -> np.ndarray:
    """(n_samples,) sum of a flat (total_tokens,) array over each sample ``[offsets[i]:offsets[i+1]]``: e.g. the
    number of response or kept tokens per sample from a flat mask. Empty samples, trailing ones too, get 0. int64
    for bool and integer values, float64 for floats.

    Summed a block of whole samples (about ``block_tokens`` tokens) at a time: ``reduceat`` with a wider dtype
    casts its whole input first (8 bytes a token; 0.8 GB and up to 1.4 s of page faults for 10^8 tokens)."""
    dtype = np.float64 if np.issubdtype(values.dtype, np.floating) else np.int64
    sums = np.zeros(len(offsets) - 1, dtype)
    filled = np.diff(offsets) > 0  # reduceat sums from one start to the next: give it the non-empty samples only
    starts = np.asarray(offsets[:-1])[filled]
    out, i = np.empty(len(starts), dtype), 0
    while i < len(starts):
        j = max(int(np.searchsorted(starts, starts[i] + block_tokens)), i + 1)
        end = starts[j] if j < len(starts) else offsets[-1]
        out[i:j] = np.add.reduceat(values[starts[i]:end], starts[i:j] - starts[i], dtype=dtype)
        i = j
    sums[filled] = out
    return sums
