"""A ``Selection`` from two ``Scores`` artifacts: check they cover the same tokens, run the scorer and the selection
(``scorers.select_for``) and record what made the mask. No I/O: ``api.select`` reads and writes, the run stages
(``runs.stages``) save through the stage engine."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from ..core.artifacts import Scores, Selection, check_losses, check_same_tokens, token_position
from ..core.tokens import TokenLayout
from ..errors import DataError, MismatchError
from .scorers import select_for
from .select import SelectConfig

log = logging.getLogger("tokenclean")


def select_scores(base: Scores, ref: Scores, config: SelectConfig | None = None, prompt_free: Scores | None = None,
                  names: tuple[str, str, str] = ("scores", "scores", "scores")) -> Selection:
    """The keep-mask of ``config`` (scorer and selection; default ``excess``, global, keep ratio 0.6) from the base
    and reference losses of the same tokens; ``prompt_free``: the reference's prompt-free losses of those tokens,
    for the prompt scorers. ``names``: what to call base, ref and prompt_free in errors (e.g. their directories)."""
    config = config or SelectConfig()
    base_name, ref_name, free_name = names
    if prompt_free is not None:
        check_same_tokens(base.meta, f"base scores ({base_name})", prompt_free.meta,
                          f"prompt-free scores ({free_name})")
    check_same_tokens(base.meta, f"base scores ({base_name})", ref.meta, f"reference scores ({ref_name})")
    if base.sample_ids != ref.sample_ids or not np.array_equal(base.offsets, ref.offsets):
        raise MismatchError(f"{base_name} and {ref_name} cover different samples; score the same data with both")
    differ = np.flatnonzero(np.isnan(base.token_loss) != np.isnan(ref.token_loss))
    if len(differ):
        name = base_name if np.isnan(base.token_loss[differ[0]]) else ref_name
        raise DataError(f"{name}: token_loss is NaN at {token_position(base, differ[0])}, a token the other scores "
                        "file scored, expected a finite loss at every response token; score again")
    check_losses(base, base_name)
    check_losses(ref, ref_name)
    mask, counts = select_for(config, base.token_loss, ref.token_loss, base.offsets,
                              prompt_free_loss=None if prompt_free is None else prompt_free.token_loss)
    meta = {
        **TokenLayout.of(base.meta).meta(),
        "base_model_fingerprint": base.meta.get("model_fingerprint"),
        "ref_model_fingerprint": ref.meta.get("model_fingerprint"),
        "config": asdict(config),
        **counts,
    }
    log.info("selection (%s, %s, keep_ratio %.2f): kept %d of %d response tokens (%.4f); %d samples with none kept",
             config.scorer, config.level, config.keep_ratio, counts["kept_tokens"], counts["response_tokens"],
             counts["kept_share"], counts["samples_zero_kept"])
    return Selection(base.sample_ids, mask, base.offsets, meta)
