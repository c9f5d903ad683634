"""Labels and the position-0 rule, defined once.

Position 0: the first token of a sample has nothing before it, so nothing predicts it: it is never a response
token, never scored (its loss is NaN) and never trained (its label is ignored). ``clear_position_0`` (a row or a
batch) and ``clear_first_positions`` (flat arrays with offsets) are the only places that apply the rule; the loss
functions' shift (position ``j - 1`` predicts token ``j``) then never asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE_INDEX = -100


def clear_position_0(mask: Any) -> Any:
    """Set position 0 to False in place and return ``mask``: one row (a list or a 1-D array, (T,)) or a batch
    (a 2-D numpy array or torch tensor, (B, T))."""
    if isinstance(mask, list):
        mask[:1] = [False] * len(mask[:1])
    elif mask.ndim == 1:
        mask[:1] = False
    else:
        mask[:, :1] = False
    return mask


def first_positions(offsets: np.ndarray) -> np.ndarray:
    """Flat index of position 0 of every non-empty sample; ``offsets``: (n_samples + 1,)."""
    offsets = np.asarray(offsets)
    return offsets[:-1][np.diff(offsets) > 0]


def clear_first_positions(flat_mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``clear_position_0`` of every sample of a flat (total_tokens,) mask, in place; returns it."""
    flat_mask[first_positions(offsets)] = False
    return flat_mask


def make_labels(input_ids: np.ndarray, response_mask: np.ndarray, keep_mask: np.ndarray | None = None) -> np.ndarray:
    """Labels for training: ``input_ids`` where the token is a response token (and kept), else ``IGNORE_INDEX``.

    All arguments have the same shape; the result is int64 of that shape.
    """
    trained = response_mask if keep_mask is None else (response_mask & keep_mask)
    return np.where(trained, input_ids, IGNORE_INDEX).astype(np.int64)


def trained_token_count(labels: Any) -> int:
    """Tokens one sample's ``labels`` (T,) trains on: labels other than ``IGNORE_INDEX``, position 0 excluded."""
    return int(np.count_nonzero(clear_position_0(np.asarray(labels) != IGNORE_INDEX)))
