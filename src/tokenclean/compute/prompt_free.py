"""The responses without their prompts, for the prompt-conditioned scorers (``scorers.prompt_gain``, T-SHIRT).

``prompt_free_tokens`` builds, from a ``TokenTable``, a table with one sample per *response span* (a maximal run of
response tokens within a sample): the start token (the tokenizer's BOS, when it has one) followed by the span's
tokens. Scoring that table (``scoring.score_tokens`` or ``api.score``; ``api.score_prompt_free`` does both) gives each response token's loss given only
the earlier tokens of its own span; ``map_back`` puts those losses back onto the original token positions.

What "without the prompt" means in a multi-turn sample: each assistant turn is scored alone, with every earlier
turn (user and assistant) removed, so loss(y_t | y_<t) always conditions on the current reply's own prefix only, as
in single-turn T-SHIRT. The turn header (e.g. ``<|assistant|>\\n``) is not a response token, so it goes too.

The first token of a span is predicted from the start token alone; without one (``start_token_id=None``) it has
no prompt-free loss and gets NaN (the prompt scorers then gate it: ``scorers.prompt_gain``). Prompt tokens get NaN.
Layout sample ids are ``"{sample_id}#{k}"`` for span k (0-based) of the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import MismatchError
from ..core.labels import clear_first_positions
from ..core.tokens import TokenTable, _with_counts, list_column

# The keys of the source table's metadata that still describe the prompt-free table (same tokenizer and data).
_KEPT_META = ("tokenizer_fingerprint", "max_seq_len", "template", "train_on_prompt", "data_fingerprint")


@dataclass
class PromptFreeSources:
    """Where each token of the prompt-free table comes from.

    ``source``: (prompt_free_tokens,) int64, the flat index of the token in the original table, -1 for the start
    token; ``offsets``: (n_spans + 1,) int64 of the prompt-free samples; ``sample``: (n_spans,) the original sample
    of each span; ``span``: (n_spans,) the span's index within its sample (0, 1, ...).
    """

    source: np.ndarray
    offsets: np.ndarray
    sample: np.ndarray
    span: np.ndarray

    @property
    def response_mask(self) -> np.ndarray:
        """(prompt_free_tokens,) bool: the span tokens, except a prompt-free sample's position 0."""
        return clear_first_positions(self.source >= 0, self.offsets)


def response_spans(response_mask: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops): flat index ranges ``[start, stop)`` of the maximal runs of response tokens, each within one
    sample, in order. ``response_mask``: (total_tokens,) bool; ``offsets``: (n_samples + 1,)."""
    mask = np.asarray(response_mask, bool)
    lengths = np.diff(offsets)
    first, last = np.zeros(len(mask), bool), np.zeros(len(mask), bool)
    first[offsets[:-1][lengths > 0]] = True
    last[offsets[1:][lengths > 0] - 1] = True
    before = np.concatenate([[False], mask[:-1]])
    after = np.concatenate([mask[1:], [False]])
    starts = np.flatnonzero(mask & (~before | first))
    stops = np.flatnonzero(mask & (~after | last)) + 1
    return starts, stops


def prompt_free_sources(response_mask: np.ndarray, offsets: np.ndarray, with_start: bool) -> PromptFreeSources:
    """Where the prompt-free table's tokens come from: one sample per response span, preceded by a start token when
    ``with_start``."""
    starts, stops = response_spans(response_mask, offsets)
    n_spans, width = len(starts), np.int64(1 if with_start else 0)
    span_len = stops - starts
    pf_offsets = np.concatenate([[0], np.cumsum(span_len + width)]).astype(np.int64)
    source = np.full(int(pf_offsets[-1]), -1, np.int64)
    span_of = np.repeat(np.arange(n_spans), span_len)  # (span tokens,) which span each belongs to
    within = np.arange(len(span_of)) - np.repeat(np.cumsum(span_len) - span_len, span_len)
    source[pf_offsets[:-1][span_of] + width + within] = starts[span_of] + within
    sample = np.searchsorted(offsets, starts, side="right") - 1
    first_of_sample = np.searchsorted(sample, sample, side="left")  # index of the sample's first span
    return PromptFreeSources(source, pf_offsets, sample.astype(np.int64), np.arange(n_spans) - first_of_sample)


def start_token_id(tokenizer: Any) -> int | None:
    """The token a prompt-free response is conditioned on: the tokenizer's BOS, or None when it has none."""
    return getattr(tokenizer, "bos_token_id", None)


def prompt_free_tokens(tokens: TokenTable, start_token: int | None) -> TokenTable:
    """The responses of ``tokens`` without their prompts (see the module docstring), as a ``TokenTable`` whose
    ``response_mask`` marks the tokens to score. ``meta["prompt_free"]`` records the start token and the source
    table's fingerprint."""
    sources = prompt_free_sources(tokens.flat_response_mask(), tokens.offsets, start_token is not None)
    flat_ids = tokens.flat_input_ids()
    ids = np.where(sources.source >= 0, flat_ids[np.maximum(sources.source, 0)], start_token or 0).astype(np.int32)
    source_ids = tokens.sample_ids
    table = pa.table({
        "sample_id": pa.array([f"{source_ids[s]}#{k}" for s, k in zip(sources.sample, sources.span)], pa.string()),
        "input_ids": list_column(ids, sources.offsets),
        "response_mask": list_column(sources.response_mask, sources.offsets),
    })
    meta = {k: tokens.meta[k] for k in _KEPT_META if k in tokens.meta}
    meta["truncated_samples"] = 0
    meta["prompt_free"] = {"start_token_id": start_token,
                           "source_tokens_fingerprint": tokens.meta.get("tokens_fingerprint")}
    return TokenTable(table, _with_counts(table, meta))


def map_back(prompt_free_loss: np.ndarray, response_mask: np.ndarray, offsets: np.ndarray, with_start: bool,
             prompt_free_offsets: np.ndarray | None = None) -> np.ndarray:
    """Losses of the prompt-free table put back onto the original tokens: (total_tokens,) float32, NaN at prompt
    tokens and wherever the prompt-free table has no loss.

    ``prompt_free_loss``: (prompt_free_tokens,) as scored; ``response_mask``, ``offsets``: of the original table;
    ``with_start``: whether the table was built with a start token. ``prompt_free_offsets`` (e.g. ``Scores.offsets``
    of the prompt-free scores), when given, must match these sources: a check that the losses belong to this table.
    """
    sources = prompt_free_sources(response_mask, offsets, with_start)
    if len(prompt_free_loss) != len(sources.source) or (
            prompt_free_offsets is not None and not np.array_equal(prompt_free_offsets, sources.offsets)):
        raise MismatchError(f"the prompt-free losses ({len(prompt_free_loss)} tokens) were not made from these "
                            f"tokens' responses ({len(sources.source)} prompt-free tokens, start token "
                            f"{'on' if with_start else 'off'}); build the table with prompt_free_tokens and score it")
    out = np.full(len(response_mask), np.nan, np.float32)
    scored = sources.response_mask  # a prompt-free sample's position 0 has no loss, whatever the array holds there
    out[sources.source[scored]] = prompt_free_loss[scored]
    return out


def map_back_scores(prompt_free_offsets: np.ndarray, prompt_free_loss: np.ndarray, tokens: TokenTable) -> np.ndarray:
    """``map_back`` of saved prompt-free scores (``Scores.offsets``, ``Scores.token_loss``) onto ``tokens``, the
    start token's presence read from the offsets (with one, every prompt-free sample is one token longer).
    (total_tokens,) float32."""
    mask, offsets = tokens.flat_response_mask(), tokens.offsets
    for with_start in (True, False):
        if np.array_equal(prompt_free_sources(mask, offsets, with_start).offsets, prompt_free_offsets):
            return map_back(prompt_free_loss, mask, offsets, with_start)
    raise MismatchError(f"the prompt-free scores ({len(prompt_free_offsets) - 1} samples, {len(prompt_free_loss)} "
                        "tokens) were not made from these tokens' responses; build the table with "
                        "prompt_free_tokens and score it")
