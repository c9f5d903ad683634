"""On-disk artifacts of the stages: token losses (``Scores``) and keep masks with the score they ranked by
(``Selection``).

Both are a Parquet file keyed by ``sample_id`` with list columns aligned with the token table, plus a JSON file of
metadata (fingerprints, counts). ``check_same_tokens`` refuses to combine artifacts that were made from
different data, tokenizer, template or ``max_seq_len``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, MismatchError
from ..io import read_json, write_json
from .tokens import TokenOrigin, TokenTable, list_column, per_sample_sum, write_parquet

ADAPTER_DIR = "adapter"  # in a trained model's directory: its unmerged LoRA adapter (PEFT format), when kept
# Ground-truth kinds of a pool's tokens, as a demo writes them (one int8 per token, column ``kind``; ``runs.layout``
# names the file), and the kind of a token that is not a response token.
KIND_CODES = {"informative": 0, "generic": 1, "noise": 2}
NOT_RESPONSE = -1

def check_same_tokens(a: dict[str, Any], a_name: str, b: dict[str, Any], b_name: str) -> None:
    """Raise ``MismatchError`` naming the first difference between two artifacts' token origins (``TokenOrigin``)."""
    key = TokenOrigin.of(a).first_difference(TokenOrigin.of(b))
    if key is not None:
        raise MismatchError(
            f"{a_name} and {b_name} were made with a different {TokenOrigin.WHAT[key]} ({key}: {a[key]!r} vs "
            f"{b[key]!r}); score, select and train with the same data, tokenizer and --max-seq-len"
        )


def _read_list_file(path: Path, column: str, what: str) -> tuple[list[str], np.ndarray, np.ndarray, pa.Table]:
    """(sample ids, the flat values of list column ``column``, its (n + 1,) offsets from 0, the whole table)."""
    if not path.exists():
        raise MismatchError(f"{path.parent}: not a {what} directory (no {path.name})")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)}); make the {what} again") from None
    if column not in table.column_names or "sample_id" not in table.column_names:
        raise DataError(f"{path}: columns {table.column_names}, expected 'sample_id' and '{column}'")
    values, offsets = _flat(table, column)
    return table.column("sample_id").to_pylist(), values, offsets, table


def _flat(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, (n + 1,) offsets from 0) of a list column."""
    col = table.column(column).combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    return col.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]


class _TokenArtifact:
    """A flat per-token array keyed by sample, saved as ``FILE`` (``sample_id`` + list column ``COLUMN``) and
    ``META`` (JSON)."""

    FILE = META = COLUMN = ""
    DTYPE: type = np.float32

    def __init__(self, sample_ids: list[str], values: np.ndarray, offsets: np.ndarray, meta: dict[str, Any]):
        self.sample_ids, self.offsets, self.meta = sample_ids, offsets, meta
        setattr(self, self.COLUMN, values)

    def columns(self) -> dict[str, pa.Array]:
        """The list columns written beside ``sample_id``."""
        return {self.COLUMN: list_column(getattr(self, self.COLUMN), self.offsets)}

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        table = pa.table({"sample_id": pa.array(self.sample_ids, pa.string()), **self.columns()})
        write_parquet(table, directory / self.FILE)
        write_json(directory / self.META, self.meta)

    @classmethod
    def load(cls, directory: str | os.PathLike):
        directory = Path(directory)
        ids, values, offsets, table = _read_list_file(directory / cls.FILE, cls.COLUMN, cls.__name__.lower())
        try:
            meta = read_json(directory / cls.META)
        except (OSError, ValueError) as e:
            raise DataError(f"{directory / cls.META}: not readable JSON ({_first_line(e)}), expected the "
                            f"{cls.__name__.lower()} metadata; make it again") from None
        artifact = cls(ids, values.astype(cls.DTYPE), offsets, meta)
        artifact.read_extra(table)
        return artifact

    def read_extra(self, table: pa.Table) -> None:
        """Read the columns beyond ``COLUMN`` (none here)."""


class Scores(_TokenArtifact):
    """Token losses of one model over one token table: ``token_loss`` (total_tokens,) float32, NaN at non-response
    tokens; ``offsets`` (n_samples + 1,)."""

    FILE, META, COLUMN, DTYPE = "token_loss.parquet", "scores.json", "token_loss", np.float32
    token_loss: np.ndarray


class Selection(_TokenArtifact):
    """A keep-mask over one token table: ``keep_mask`` (total_tokens,) bool, with its counts and settings, and
    ``score`` (total_tokens,) float, the score it ranked the tokens by (its scorer's units: ``meta["config"]``; NaN
    at tokens that were no candidate, -inf at tokens a scorer gated), in column ``score`` beside the mask. ``score``
    is None for a selection that ranked by no score, or one written before the score was saved."""

    FILE, META, COLUMN, DTYPE = "keep_mask.parquet", "selection.json", "keep_mask", bool
    keep_mask: np.ndarray

    def __init__(self, sample_ids: list[str], keep_mask: np.ndarray, offsets: np.ndarray, meta: dict[str, Any],
                 score: np.ndarray | None = None):
        super().__init__(sample_ids, keep_mask, offsets, meta)
        assert score is None or len(score) == len(keep_mask), "the score and the mask cover the same tokens"
        self.score = score

    def columns(self) -> dict[str, pa.Array]:
        extra = {} if self.score is None else {"score": list_column(self.score, self.offsets)}
        return {**super().columns(), **extra}

    def read_extra(self, table: pa.Table) -> None:
        if "score" in table.column_names:
            self.score = _flat(table, "score")[0]

    @classmethod
    def has_score(cls, directory: str | os.PathLike) -> bool:
        """Whether the selection saved in ``directory`` holds its score (selections written before the score was
        saved hold the mask alone)."""
        return "score" in pq.read_schema(Path(directory) / cls.FILE).names

    def kept_per_sample(self) -> np.ndarray:
        """(n_samples,) number of kept tokens per sample."""
        return per_sample_sum(self.keep_mask, self.offsets)


def token_position(artifact: _TokenArtifact, flat_index: int) -> str:
    """Where flat token ``flat_index`` is, for messages: ``sample 'ID' (row I), token J``."""
    sample = int(np.searchsorted(artifact.offsets, flat_index, side="right") - 1)
    return f"sample {artifact.sample_ids[sample]!r} (row {sample}), token {int(flat_index - artifact.offsets[sample])}"


def check_losses(scores: Scores, name: str) -> None:
    """Refuse token losses that are infinite, or NaN at tokens the scoring recorded as scored (a file edited or
    corrupted after it was written): either would silently change which tokens are ranked."""
    loss = scores.token_loss
    inf = np.flatnonzero(np.isinf(loss))
    if len(inf):
        raise DataError(f"{name}: token_loss is {loss[inf[0]]} at {token_position(scores, inf[0])} ({len(inf)} in "
                        "all), expected finite losses; score again")
    scored, finite = scores.meta.get("scored_tokens"), int(np.count_nonzero(~np.isnan(loss)))
    describes_these = scores.meta.get("tokens") == len(loss)  # not a subset of the scored samples
    if scored is not None and describes_these and finite != scored:
        raise DataError(f"{name}: {finite} finite losses but {scored} scored tokens recorded in {Scores.META}; "
                        "expected a finite loss at every scored token (NaN where none was scored); score again")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def keep_mask_for(tokens: TokenTable, selection: Selection | str | os.PathLike | None, what: str) -> np.ndarray | None:
    """The selection's keep-mask after checking it was made for exactly these tokens."""
    if selection is None:
        return None
    name = "selection"
    if not isinstance(selection, Selection):
        name, selection = str(selection), Selection.load(selection)
    check_same_tokens(selection.meta, f"selection ({name})", tokens.meta, what)
    if selection.sample_ids != tokens.sample_ids or not np.array_equal(selection.offsets, tokens.offsets):
        raise MismatchError(f"selection ({name}) covers different samples than {what}; select on the same data")
    return selection.keep_mask
