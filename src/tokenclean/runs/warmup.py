"""The reference model's warm-up: its own training settings, and a warm-up set chosen by the rows' ratings.

The reference must move away from the base far enough for ``loss_base - loss_ref`` to rank tokens (see
``selection.health``). With the final fine-tune's settings a small warm-up set gives almost no update: 54 rows at
the paper's global batch of 48 are 2 optimizer steps. ``reference_train_config`` derives the reference's
``TrainConfig`` from the final one and guarantees ``warmup_min_steps`` optimizer steps, first by shrinking the
gradient accumulation (Adam's step size does not grow with the batch, so more, smaller steps move the weights
further for the same compute), then by more passes over the set. The default minimum comes from the warm-up-length
study in ``experiments/README.md``.

The paper warms its reference up on a curated, LLM-rated set; ``top_rated`` picks the pool's best-rated rows by a
numeric field they carry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import option
from ..core.data import RowError, _sample_id
from ..core.readers import where
from ..errors import ConfigError, DataError
from ..compute.training import TrainConfig


@dataclass
class WarmupConfig:
    """Warm-up of the reference model (separate from the final fine-tune's settings)."""

    warmup_epochs: float = option(1.0, "passes over the warm-up set when training the reference")
    warmup_min_steps: int = option(50, "train the reference for at least this many optimizer steps (smaller "
                                   "gradient accumulation first, then more passes); 0: no minimum")
    warmup_learning_rate: float | None = option(None, "the reference's peak learning rate (default: "
                                                "--learning-rate)")
    warmup_rated_by: str | None = option(None, "warm up on the pool's top-rated rows by this numeric field of "
                                         "the rows (highest first; --warmup-fraction of the pool) instead of a "
                                         "random share")

    def __post_init__(self) -> None:
        if self.warmup_epochs <= 0:
            raise ConfigError(f"warmup_epochs must be > 0, got {self.warmup_epochs}")
        if self.warmup_min_steps < 0:
            raise ConfigError(f"warmup_min_steps must be >= 0, got {self.warmup_min_steps}")
        if self.warmup_learning_rate is not None and self.warmup_learning_rate <= 0:
            raise ConfigError(f"warmup_learning_rate must be > 0, got {self.warmup_learning_rate}")


def steps_per_epoch(samples: int, batch_size: int, gradient_accumulation_steps: int, processes: int = 1) -> int:
    """Optimizer steps of one pass over ``samples`` as ``transformers.Trainer`` counts them: micro-batches per
    process rounded up, then steps rounded up (a last, partial accumulation still steps)."""
    micro_batches = math.ceil(math.ceil(samples / processes) / batch_size)
    return max(1, math.ceil(micro_batches / gradient_accumulation_steps))


def reference_train_config(final: TrainConfig, warmup: WarmupConfig, warmup_samples: int,
                           processes: int = 1) -> TrainConfig:
    """The reference's ``TrainConfig``: ``final``'s adapter, optimizer and schedule, with the warm-up's epochs and
    learning rate, and at least ``warmup.warmup_min_steps`` optimizer steps over ``warmup_samples`` samples.

    ``final.max_steps`` belongs to the final fine-tune and is not inherited. To reach the minimum, the gradient
    accumulation is lowered (never the micro-batch, which is sized to memory) until ``warmup_epochs`` passes give
    enough steps; if even an accumulation of 1 does not, ``max_steps`` is set to the minimum and the Trainer makes
    as many passes as that takes.

    >>> ref = reference_train_config(TrainConfig(), WarmupConfig(warmup_min_steps=50), 54)
    >>> ref.gradient_accumulation_steps, ref.max_steps   # 54 rows: 14 micro-batches of 4; 2 steps at accumulation 12
    (1, 50)
    """
    accumulation = final.gradient_accumulation_steps

    def steps(acc: int) -> int:
        return math.ceil(warmup.warmup_epochs * steps_per_epoch(warmup_samples, final.batch_size, acc, processes))

    while accumulation > 1 and steps(accumulation) < warmup.warmup_min_steps:
        accumulation -= 1
    max_steps = warmup.warmup_min_steps if steps(accumulation) < warmup.warmup_min_steps else -1
    return dataclasses.replace(final, epochs=warmup.warmup_epochs, max_steps=max_steps,
                               gradient_accumulation_steps=accumulation,
                               learning_rate=warmup.warmup_learning_rate or final.learning_rate)


def top_rated(rows: Sequence[Any], field: str, sample_ids: Sequence[str], count: int, source: str,
              lines: Sequence[int] | None = None) -> np.ndarray:
    """Positions in ``sample_ids`` of the ``count`` samples whose source row has the highest ``field``.

    ``rows``: the raw rows of ``source`` as read (``data.read_rows``; a row's extra fields do not survive into
    ``Conversation`` or ``TokenTable``); ``sample_ids``: the candidates (e.g. the pool's, so held-out rows are never
    picked), matched to rows the way ``data.load_conversations`` names them (``id`` field, else row index);
    ``lines``: 1-based line numbers of a JSON Lines source, for messages. Ties go to the earlier row. Every
    candidate's row must carry ``field`` as a finite number (bool is not one): else a ``DataError`` naming the file,
    row and expectation. Returns sorted (count,) int64 positions.
    """
    if count < 1:
        raise ConfigError(f"the warm-up needs at least one row, got a count of {count}")
    row_of = {}
    for i, row in enumerate(rows):
        try:
            row_of[_sample_id(row, i)] = i
        except (RowError, TypeError):
            continue  # an invalid row is never a candidate: load_conversations skipped or refused it
    ratings = np.empty(len(sample_ids), np.float64)
    for pos, sid in enumerate(sample_ids):
        i = row_of.get(sid)
        if i is None:
            raise DataError(f"{source}: no row has the sample id {sid!r}; rate the rows of the file the pool was read "
                            "from")
        ratings[pos] = _rating(rows[i], field, where(source, i, lines[i] if lines else None))
    rows_index = np.array([row_of[s] for s in sample_ids], np.int64)
    order = np.lexsort((rows_index, -ratings))  # highest rating first, then the earlier row
    return np.sort(order[:min(count, len(order))]).astype(np.int64)


def _rating(row: Mapping[str, Any], field: str, at: str) -> float:
    if field not in row:
        raise DataError(f"{at}: no field {field!r} to rate the row by (--warmup-rated-by), expected a number; "
                        f"the row has {sorted(row)}")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{at}: field {field!r} is {value!r}, expected a finite number to rate the row by "
                        "(--warmup-rated-by)")
    return float(value)
