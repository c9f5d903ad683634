"""Rows to tokens: read a data source, render and tokenize it, and account for every row (``prepare_tokens``)."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import DataError
from .fingerprints import path_fingerprint
from .data import DataConfig, LoadReport, RowError, load_conversations
from .readers import where
from .tokens import TokenizeConfig, TokenTable, per_sample_sum, tokenize

log = logging.getLogger("tokenclean")

PathLike = str | os.PathLike


def prepare_tokens(
    data: PathLike,
    tokenizer,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
) -> tuple[TokenTable, LoadReport]:
    """Read ``data``, render and tokenize it; log what happened to every row.

    A row whose response is cut off entirely by truncation to ``max_seq_len`` has nothing to train on: it is
    skipped and counted in the report (reason ``response cut off by truncation``), with one warning giving the
    count and the first such row; only when no row is left is it an error. ``report.truncated`` counts the used
    rows that were cut but keep some response.
    """
    data_config = data_config or DataConfig()
    conversations, report = load_conversations(data, data_config)
    tokens = tokenize(conversations, tokenizer, tokenize_config, data_fingerprint=path_fingerprint(data))
    tokens = _without_cut_off_responses(data, tokens, conversations, report)
    m = tokens.meta
    report.truncated = m["truncated_samples"]
    log.info("%s: %d rows, %d used, %d skipped %s; %d tokens (%d response); %d truncated to %d tokens", data,
             report.rows, report.used, len(report.skipped), report.skip_counts() or "", m["tokens"],
             m["response_tokens"], m["truncated_samples"], m["max_seq_len"])
    return tokens, report


def _without_cut_off_responses(data: PathLike, tokens: TokenTable, conversations: list,
                               report: LoadReport) -> TokenTable:
    """``tokens`` without the samples whose every response token was cut off by truncation, each skipped and
    counted in ``report`` (see ``prepare_tokens``)."""
    empty = np.flatnonzero(per_sample_sum(tokens.flat_response_mask(), tokens.offsets) == 0)
    if not len(empty):
        return tokens
    max_seq_len = tokens.meta["max_seq_len"]
    if len(empty) == len(tokens):
        raise DataError(f"{data}: no row has a response token within max_seq_len {max_seq_len} (the prompts fill "
                        "it); raise --max-seq-len or shorten the prompts")
    e = RowError("response cut off by truncation",
                 f"no response token is left after truncation to max_seq_len {max_seq_len} (the prompt fills it), "
                 "expected a response to train on; raise --max-seq-len or shorten the prompt")
    report.drop(conversations, empty.tolist(), e)
    first = conversations[empty[0]]
    log.warning("%s: %d row%s skipped: no response token is left after truncation to max_seq_len %d (first: %s); "
                "raise --max-seq-len to train on them", data, len(empty), "s" if len(empty) > 1 else "",
                max_seq_len, where(data, first.row, first.line))
    return tokens.select(np.setdiff1d(np.arange(len(tokens)), empty))  # every one of them was cut
