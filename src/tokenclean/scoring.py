"""Scoring: the loss of every response token under a model.

Output (a directory): ``token_loss.parquet`` with columns ``sample_id`` and ``token_loss`` (list<float32>, one
entry per token of the sample, ``token_loss[j]`` = loss of token ``j``, NaN where the token is not a response
token) and ``scores.json`` with the model, tokenizer, data and tokens fingerprints, ``max_seq_len``, counts and
timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import option
from .errors import ConfigError
from .losses import token_losses
from .artifacts import Scores
from .tokens import TokenTable


@dataclass
class ScoreConfig:
    """How scoring batches and runs."""

    batch_tokens: int = option(16384, "token budget per scoring batch (samples sorted by length; rows x longest "
                               "row <= budget)")

    def __post_init__(self) -> None:
        if self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be >= 1, got {self.batch_tokens}")


def length_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group sample indices into batches: longest first, each batch's rows x longest row <= ``batch_tokens``
    (a sample longer than the budget gets a batch of its own). Returns index arrays."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, batch_tokens // longest)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def compute_token_loss(model, tokens: TokenTable, cfg: ScoreConfig | None = None, progress: bool = True) -> np.ndarray:
    """Per-token losses of ``tokens`` under ``model``: flat float32 array aligned with ``tokens.flat_input_ids()``,
    NaN where the token is not a response token (and at position 0)."""
    cfg = cfg or ScoreConfig()
    device = next(model.parameters()).device
    offsets, lengths = tokens.offsets, tokens.lengths
    ids_flat, mask_flat = tokens.flat_input_ids(), tokens.flat_response_mask()
    out = np.full(len(ids_flat), np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    bar = tqdm(total=int(lengths.sum()), unit="tok", desc="scoring", disable=not progress, dynamic_ncols=True)
    for batch in length_batches(lengths, cfg.batch_tokens):
        width = int(lengths[batch].max())
        ids = np.zeros((len(batch), width), dtype=np.int64)
        target = np.zeros((len(batch), width), dtype=bool)
        for row, i in enumerate(batch):
            a, b = offsets[i], offsets[i + 1]
            ids[row, : b - a] = ids_flat[a:b]
            target[row, : b - a] = mask_flat[a:b]
        attention = (np.arange(width)[None, :] < lengths[batch][:, None]).astype(np.int64)
        losses = token_losses(
            model, torch.from_numpy(ids).to(device), torch.from_numpy(attention).to(device),
            torch.from_numpy(target).to(device),
        ).cpu().numpy()
        # Scatter back: target positions in row-major order are exactly the order of `losses`.
        rows, cols = np.nonzero(target[:, 1:])
        out[offsets[batch[rows]] + cols + 1] = losses
        bar.update(int(lengths[batch].sum()))
    bar.close()
    model.train(was_training)
    return out


def score_tokens(model, tokens: TokenTable, cfg: ScoreConfig | None = None, model_fingerprint: str = "",
                 progress: bool = True) -> Scores:
    """Score every response token of ``tokens`` with ``model`` and return the losses with their metadata."""
    start = time.perf_counter()
    losses = compute_token_loss(model, tokens, cfg, progress)
    seconds = time.perf_counter() - start
    scored = ~np.isnan(losses)
    meta = {
        "model_fingerprint": model_fingerprint,
        **{k: tokens.meta[k] for k in ("tokenizer_fingerprint", "max_seq_len", "template", "data_fingerprint",
                                        "tokens_fingerprint")},
        "samples": len(tokens),
        "tokens": int(len(losses)),
        "scored_tokens": int(scored.sum()),
        "mean_token_loss": float(losses[scored].mean()) if scored.any() else None,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(len(losses) / seconds, 1) if seconds > 0 else None,
    }
    return Scores(tokens.sample_ids, losses, tokens.offsets, meta)
