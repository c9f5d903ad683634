"""The token contract: a sample renders to ``input_ids`` + ``response_mask``; labels are derived in one place.

Rendering. With a tokenizer that has a chat template, the conversation is rendered with it; otherwise with the
default template (the paper's format, from open-instruct)::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...

The rendered text is cut into segments that are either response text (each assistant turn's content plus its
end-of-turn marker) or not, and each segment is tokenized on its own. So the response mask is exact by
construction: no token spans a boundary, and no boundary is ever found by re-tokenizing a prefix. This is also
what the model sees at inference, where the prompt is tokenized up to the generation prompt and the response is
generated token by token.

Alignment. ``response_mask[j]`` is True when token ``j`` is a response token the model should learn to predict
(from positions ``< j``). Position 0 is never a response token, since nothing predicts it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import option
from .data import Conversation
from ..errors import DataError
from ..io import atomic_write_bytes, read_json, write_json

IGNORE_INDEX = -100
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
class TokenLayout:
    """What decides which token sits at which position. Tokens, scores and selections carry it in their metadata
    (these keys); two artifacts line up token by token only when their layouts agree. None: not recorded."""

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
    def of(cls, meta: dict[str, Any]) -> TokenLayout:
        """The layout recorded in an artifact's metadata."""
        return cls(**{k: meta[k] for k in cls.WHAT if k in meta})

    def meta(self) -> dict[str, Any]:
        """The recorded keys, to write into another artifact's metadata."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def first_difference(self, other: TokenLayout) -> str | None:
        """The first key both record with different values, or None."""
        mine, theirs = asdict(self), asdict(other)
        return next((k for k in self.WHAT if None not in (mine[k], theirs[k]) and mine[k] != theirs[k]), None)


def render_segments(messages: list[dict[str, str]], tokenizer, template: str = "auto") -> list[tuple[str, bool]]:
    """Render a conversation to ``[(text, is_response), ...]`` whose concatenation is the full text."""
    if template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None)):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("template 'chat' requested but the tokenizer has no chat template")
        return _chat_template_segments(messages, tokenizer)
    return _default_segments(messages, tokenizer)


def _default_segments(messages: list[dict[str, str]], tokenizer) -> list[tuple[str, bool]]:
    eos = tokenizer.eos_token or ""
    segments: list[tuple[str, bool]] = []
    prompt = tokenizer.bos_token or ""
    for m in messages:
        if m["role"] == "assistant":
            segments.append((prompt + "<|assistant|>\n", False))
            segments.append((m["content"] + eos, True))
            prompt = "\n"
        else:
            prompt += f"<|{m['role']}|>\n{m['content']}\n"
    return segments


def _chat_template_segments(messages: list[dict[str, str]], tokenizer) -> list[tuple[str, bool]]:
    def render(msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(messages, False)
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        upto = render(messages[: i + 1], False)
        if not full.startswith(upto) or not full.startswith(render(messages[:i], True)) or start < pos:
            raise DataError(
                "the tokenizer's chat template does not render conversations prefix by prefix, so response "
                "tokens cannot be located exactly; use --template default"
            )
        segments.append((full[pos:start], False))
        segments.append((full[start : len(upto)], True))
        pos = len(upto)
    segments.append((full[pos:], False))
    return [s for s in segments if s[0]]


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
    from ..compute.modeling import tokenizer_fingerprint

    cfg = cfg or TokenizeConfig()
    rendered = [render_segments(c.messages, tokenizer, cfg.template) for c in conversations]
    texts = [text for segs in rendered for text, _ in segs]
    # One batched call: the fast tokenizer parallelises it. add_special_tokens=False because the template text
    # already contains BOS/EOS where they belong.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids_col, mask_col = [], []
    k = 0
    for segs in rendered:
        ids: list[int] = []
        mask: list[bool] = []
        for _, is_response in segs:
            seg_ids = encoded[k]
            k += 1
            ids.extend(seg_ids)
            mask.extend([is_response or cfg.train_on_prompt] * len(seg_ids))
        if mask:
            mask[0] = False
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
    return TokenTable(table, _with_counts(table, meta))


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


def make_labels(input_ids: np.ndarray, response_mask: np.ndarray, keep_mask: np.ndarray | None = None) -> np.ndarray:
    """Labels for training: ``input_ids`` where the token is a response token (and kept), else ``IGNORE_INDEX``.

    All arguments have the same shape; the result is int64 of that shape.
    """
    trained = response_mask if keep_mask is None else (response_mask & keep_mask)
    return np.where(trained, input_ids, IGNORE_INDEX).astype(np.int64)


def per_sample_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n_samples,) sum of a flat (total_tokens,) array over each sample ``[offsets[i]:offsets[i+1]]``: e.g. the
    number of response or kept tokens per sample from a flat mask. Empty samples, trailing ones too, get 0. int64
    for bool and integer values, float64 for floats."""
    dtype = np.float64 if np.issubdtype(values.dtype, np.floating) else np.int64
    sums = np.zeros(len(offsets) - 1, dtype)
    filled = np.diff(offsets) > 0  # reduceat sums from one start to the next: give it the non-empty samples only
    if filled.any():
        sums[filled] = np.add.reduceat(values, offsets[:-1][filled], dtype=dtype)
    return sums
