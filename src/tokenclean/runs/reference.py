"""The warm-up reference's stages: its warm-up set, its training, and its and the base model's losses over the pool
(functions of a ``Run``, like ``runs.stages``). Its training settings are ``runs.warmup``'s."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..compute.distributed import fsdp_requested
from ..core.artifacts import Scores
from ..core.tokens import TokenTable
from .layout import BASE_SCORES, Layout
from .run import Run
from .stages import score_inputs, score_stage, train_stage

if TYPE_CHECKING:
    from ..compute.training import TrainConfig


def warmup_split(run: Run, tables: dict[str, TokenTable]) -> TokenTable:
    """The warm-up set: the given warm-up data, else ``warmup_fraction`` of the pool: its top-rated rows by
    ``--warmup-rated-by``, or a seeded random share."""
    if "warmup" in tables:
        return tables["warmup"]
    pool, c, field = tables["pool"], run.cfg.run, run.cfg.warmup.warmup_rated_by
    n_warm = max(1, int(round(c.warmup_fraction * len(pool))))
    if field:
        from ..core.readers import _read_source
        from .warmup import top_rated

        rows, lines = _read_source(c.data)
        return pool.select(np.sort(top_rated(rows, field, pool.sample_ids, n_warm, str(c.data), lines)))
    return pool.select(np.sort(np.random.default_rng(c.seed).permutation(len(pool))[:n_warm]))


def warmup_train_config(run: Run, warmup: TokenTable) -> TrainConfig:
    """The reference's training settings (``runs.warmup.reference_train_config``): the final fine-tune's, with the
    warm-up's epochs, learning rate and minimum number of optimizer steps over ``warmup``."""
    from ..compute.distributed import launched_processes
    from .warmup import reference_train_config

    return reference_train_config(run.cfg.train, run.cfg.warmup, len(warmup), launched_processes())


def base_scores(run: Run, pool: TokenTable) -> Scores:
    """The base model's losses over the whole pool: computed once, shared by every method and seed, and taken from
    (or stored in) the score cache, so other run directories over the same base, tokenizer and data reuse them."""
    return score_stage(run, BASE_SCORES, run.base_fingerprint, run.cfg.run.base, pool, cache=True)


def reference_model(run: Run, tables: dict[str, TokenTable]) -> Path:
    """The warm-up reference: the base trained on all response tokens of the warm-up set. With ``--lora`` its
    unmerged adapter is kept as well (``Layout.adapter``), for ``base_and_reference``."""
    warmup = warmup_split(run, tables)
    return train_stage(run, run.layout.reference, run.base_fingerprint, run.cfg.run.base, warmup,
                       save_adapter=run.cfg.train.lora, train_config=warmup_train_config(run, warmup))


def reference(run: Run, tables: dict[str, TokenTable]) -> tuple[Path, Scores]:
    """The warm-up reference model and its losses over the pool."""
    ref, at = reference_model(run, tables), run.layout
    return ref, score_stage(run, at.reference_scores, run.key(at.reference), ref, tables["pool"])


def base_and_reference(run: Run, tables: dict[str, TokenTable]) -> tuple[Scores, Scores]:
    """The base model's and the warm-up reference's losses over the pool (stages ``scores/base`` and
    ``scores/reference``, the same keys and files however they are computed).

    When the reference is a LoRA adapter on the base (``--lora``, the default) and neither stage is done, one model
    is loaded instead of two: the base is scored with the adapter off, then the reference with it merged
    (``compute.score_model.score_model_pair``; cached base losses are reused); the losses equal the two-model
    path's up to float rounding. Otherwise (and under FSDP, whose sharded weights cannot take a merge) each is
    scored with its own model (the base through the score cache)."""
    c, pool = run.cfg, tables["pool"]
    ref = reference_model(run, tables)
    names = (BASE_SCORES, run.layout.reference_scores)
    models = (run.base_fingerprint, run.key(run.layout.reference))
    adapter = run.path(Layout.adapter(run.layout.reference))
    if (not adapter.is_dir() or fsdp_requested()
            or any(run.up_to_date(n, score_inputs(run, m, pool)) for n, m in zip(names, models))):
        return base_scores(run, pool), score_stage(run, names[1], models[1], ref, pool)
    from ..compute.score_model import score_model_pair

    pair: list[Scores] = []
    work = {n: score_inputs(run, m, pool) for n, m in zip(names, models)}

    def compute(i: int) -> Scores:  # both scored on first use, with one model load
        if not pair:
            pair.extend(score_model_pair(c.run.base, adapter, pool, score_config=c.score, device=c.run.device,
                                         dtype=run.scoring_dtype, trust_remote_code=c.run.trust_remote_code,
                                         cache=run.cache, work_dir=run.work_dir(run.layout.pair_scores, work)))
        return pair[i]

    scores = (score_stage(run, names[0], models[0], c.run.base, pool, compute=lambda: compute(0)),
              score_stage(run, names[1], models[1], ref, pool, compute=lambda: compute(1)))
    run.discard_work(run.layout.pair_scores)
    return scores
