"""Cleaning methods and baselines: short functions over the same stages, registered by name.

| method | what is trained on |
|---|---|
| ``fixed`` | the base, on the pool's top ``keep_ratio`` tokens by base loss - warm-up reference loss (global) |
| ``self-evolving`` | chunk 0 with all tokens, then chunk t cleaned with the current model as reference, round by round |
| ``full`` | the base, on all response tokens |
| ``random`` | the base, on a uniformly random ``keep_ratio`` of response tokens (exactly as many as ``fixed``) |
| ``rho`` | the base, on the top ``keep_ratio`` of each sample's tokens by the fixed-model score |
| ``slm`` | Rho-1 online: each micro-batch's top ``keep_ratio`` tokens by current loss - reference loss |
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.artifacts import Scores, Selection
from ..selection.health import score_health
from ..selection.scorers import SCORERS
from ..selection.select import SelectConfig, select_tokens
from ..core.tokens import TokenTable
from ..errors import ConfigError
from ..io import write_json
from .layout import BASE_SCORES, TOKENS
from .reference import base_and_reference, base_scores, reference, warmup_train_config
from .run import Run
from .stages import (export_stage, heldout_stage, mask_stage, prompt_free_stage, score_stage, select_stage,
                     table_counts, tokens_stage, train_stage)
from .summary import MethodSummary

log = logging.getLogger("tokenclean")


MethodFn = Callable[[Run], MethodSummary]


@dataclass(frozen=True)
class Method:
    """A registered method: the function that runs it (returning its summary, written to ``summary.json``) and every
    rule about what it reads of the run's selection settings; ``run``, ``compare`` and the report read these."""

    run: MethodFn
    uses_scorer: bool = False  # its keep-mask comes from --scorer (compare adds a METHOD[SCORER] row per --scorers)
    prompt_free: bool = True  # it scores the pool without the prompts when a scorer needs it (self-evolving's
    # rounds do not)
    level: str | None = None  # the selection level it always ranks at (rho: sample); None: --level

    def ranks_by(self, scorer: str) -> str:
        """The scorer it ranks by under ``--scorer scorer``: at level sample a combining scorer (union,
        intersection) has no form of its own, and its registered ``fallback`` ranks instead."""
        s = SCORERS[scorer]
        return s.fallback if s.combine is not None and self.level == "sample" else scorer

    def selects_with(self, config: SelectConfig) -> SelectConfig:
        """The selection settings it ranks with under the run's ``config``."""
        if self.level is None:
            return config
        return dataclasses.replace(config, level=self.level, scorer=self.ranks_by(config.scorer))

    def check(self, name: str, scorer: str) -> None:
        """Refuse a scorer this method cannot use."""
        if SCORERS[scorer].needs_prompt_free and not self.prompt_free:
            raise ConfigError(f"scorer {scorer!r} needs the responses scored without their prompts, which {name} "
                              "does not compute; use it with --method fixed (or another scorer)")


# name -> the method. A new method is one function here, decorated with ``@method("name", ...)``, plus its test;
# ``run``, ``compare`` and the report find it.
METHODS: dict[str, Method] = {}


def method(name: str, **rules: Any) -> Callable[[MethodFn], MethodFn]:
    """Register the decorated function as method ``name``, with ``rules`` (the fields of ``Method``)."""
    def register(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(fn, **rules)
        return fn

    return register


def check_method(name: str, select: SelectConfig) -> None:
    """Refuse an unknown method, or a scorer the method cannot use, before anything runs."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}, expected one of {sorted(METHODS)}")
    METHODS[name].check(name, select.scorer)


def _finish(run: Run, tables: dict[str, TokenTable], model_stage: str, keep: tuple[str, np.ndarray] | None,
            selection: dict[str, Any] | None) -> MethodSummary:
    """Export, held-out loss and the summary shared by every method."""
    export = export_stage(run, run.layout.export, tables["pool"], keep)
    training = run.result(model_stage)
    pool = tables["pool"].meta
    return {
        "data": run.result(TOKENS)["load"],
        "pool": table_counts(pool),
        "selection": selection or {"response_tokens": pool["response_tokens"],
                                   "kept_tokens": training["trained_tokens"]},
        "training": {k: training[k] for k in ("samples", "samples_left_out", "trained_tokens", "optimizer_steps",
                                              "train_loss")},
        "export": {k: export[k] for k in ("rows", "rows_left_out", "trained_tokens")},
        "heldout_loss": heldout_stage(run, model_stage, tables),
        "model_stage": model_stage,
        "model_dir": str(run.path(model_stage)),
        "export_dir": str(run.path(run.layout.export)),
    }


def _selection_counts(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("response_tokens", "kept_tokens", "dropped_tokens", "kept_share", "samples_zero_kept", "score_threshold",
            "gated_tokens", "score_health")
    return {k: meta[k] for k in keys if k in meta}


def _fixed_like(run: Run, config: SelectConfig) -> dict[str, Any]:
    tables = tokens_stage(run)
    base, ref = base_and_reference(run, tables)
    at = run.layout
    inputs = {"base": run.key(BASE_SCORES), "ref": run.key(at.reference_scores)}
    free = None
    if SCORERS[config.scorer].needs_prompt_free:
        free = prompt_free_stage(run, at.prompt_free_scores, run.key(at.reference), run.path(at.reference),
                                     tables["pool"])
        inputs["prompt_free"] = run.key(at.prompt_free_scores)
    selection = select_stage(run, at.selection, base, ref, inputs, config, prompt_free=free)
    keep = (run.key(at.selection), selection.keep_mask)
    train_stage(run, at.model, run.base_fingerprint, run.cfg.run.base, tables["pool"], keep=keep)
    summary = _finish(run, tables, at.model, keep, _selection_counts(selection.meta))
    health = score_health_of(selection, base, ref, tables["pool"])
    return summary if health is None else {**summary, "score_health": health}


def score_health_of(selection: Selection, base: Scores, ref: Scores, tokens: TokenTable, where: str = ""
                    ) -> dict[str, Any] | None:
    """``selection.health.score_health`` of the score ``selection`` ranked ``tokens`` by, as a dict (None when its
    scorer's score is not in nats: ``Scorer.nats``); each warning is logged (``where``: which reference, e.g.
    "round 2")."""
    config = selection.meta["config"]
    if not SCORERS[config["scorer"]].nats:
        return None
    h = score_health(selection.score, base.token_loss, ref.token_loss, tokens.flat_response_mask(), tokens.offsets,
                     config["keep_ratio"])
    for line in h.warnings:
        log.warning("score health%s: %s", f" ({where})" if where else "", line)
    return h.to_dict()


@method("fixed", uses_scorer=True)
def run_fixed(run: Run) -> MethodSummary:
    """Fixed-model cleaning: warm-up reference -> score the pool with base and reference -> select (``--level``,
    global by default) -> train the base on the kept tokens -> export."""
    return _fixed_like(run, run.cfg.select)


@method("rho", uses_scorer=True, level="sample")
def run_rho(run: Run) -> MethodSummary:
    """The paper's RHO baseline: the fixed-model score ranked within each sample (``Method.selects_with``)."""
    return _fixed_like(run, METHODS["rho"].selects_with(run.cfg.select))


@method("full")
def run_full(run: Run) -> MethodSummary:
    """Standard SFT on all response tokens."""
    tables = tokens_stage(run)
    train_stage(run, run.layout.model, run.base_fingerprint, run.cfg.run.base, tables["pool"])
    return _finish(run, tables, run.layout.model, None, None)


def random_keep_mask(tokens: TokenTable, keep_ratio: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A uniformly random ``keep_ratio`` of response tokens: exactly ``round(keep_ratio x N)`` of the N response
    tokens, like global selection (it is global selection over random scores). Returns (keep-mask, the random
    scores it ranked by, uniform in [0, 1) and NaN at prompt tokens, counts), each mask and score (total_tokens,)."""
    rng = np.random.default_rng(seed)
    score = np.where(tokens.flat_response_mask(), rng.random(tokens.meta["tokens"]), np.nan)
    mask, counts = select_tokens(score, tokens.offsets, SelectConfig(keep_ratio=keep_ratio))
    return mask, score, {**counts, "score_units": "a uniform random draw in [0, 1)"}


@method("random")
def run_random(run: Run) -> MethodSummary:
    """Random token selection with the same count as fixed-model cleaning keeps."""
    tables = tokens_stage(run)
    keep_ratio, seed = run.cfg.select.keep_ratio, run.cfg.run.seed
    at = run.layout
    selection = mask_stage(run, at.selection, tables["pool"], {"random": [keep_ratio, seed]},
                               lambda: random_keep_mask(tables["pool"], keep_ratio, seed))
    keep = (run.key(at.selection), selection.keep_mask)
    train_stage(run, at.model, run.base_fingerprint, run.cfg.run.base, tables["pool"], keep=keep)
    return _finish(run, tables, at.model, keep, _selection_counts(selection.meta))


@method("slm")
def run_slm(run: Run) -> MethodSummary:
    """Rho-1's Selective Language Modeling, online: reference losses precomputed once; at every step the
    micro-batch's top ``keep_ratio`` response tokens by excess loss (current - reference) are trained on."""
    tables = tokens_stage(run)
    _, ref = reference(run, tables)
    slm = (run.key(run.layout.reference_scores), ref.token_loss)
    train_stage(run, run.layout.model, run.base_fingerprint, run.cfg.run.base, tables["pool"], slm=slm)
    summary = _finish(run, tables, run.layout.model, None, None)
    summary["selection"] = {"response_tokens": tables["pool"].meta["response_tokens"],
                            "kept_tokens": summary["training"]["trained_tokens"], "online": True}
    return summary


def chunks(n: int, parts: int, seed: int, contiguous: bool) -> list[np.ndarray]:
    """Split sample indices 0..n-1 into ``parts`` near-equal chunks: shuffled with ``seed`` or in file order.
    Each chunk's indices are sorted."""
    order = np.arange(n) if contiguous else np.random.default_rng(seed).permutation(n)
    return [np.sort(c) for c in np.array_split(order, parts)]


def _take(scores: Scores, idx: np.ndarray, tokens: TokenTable) -> Scores:
    """The rows ``idx`` of pool-wide ``scores``, as scores of ``tokens`` (the same rows as a table)."""
    parts = [scores.token_loss[scores.offsets[i]:scores.offsets[i + 1]] for i in idx]
    values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    meta = {**scores.meta, "tokens_fingerprint": tokens.meta["tokens_fingerprint"]}
    return Scores([scores.sample_ids[i] for i in idx], values, tokens.offsets, meta)


@method("self-evolving", uses_scorer=True, prompt_free=False)
def run_self_evolving(run: Run) -> MethodSummary:
    """Self-evolving cleaning: theta_1 = base + SFT on chunk 0 (all tokens); for t = 1..T, score chunk t with the
    base (losses computed once for the whole pool) and theta_t, keep the top ``keep_ratio`` within the chunk, and
    continue training theta_t on the cleaned chunk -> theta_{t+1}. Every round is kept in ``rounds/<t>/``."""
    c, at = run.cfg, run.layout
    tables = tokens_stage(run)
    pool = tables["pool"]
    base = base_scores(run, pool)
    parts = chunks(len(pool), c.run.rounds + 1, c.run.seed, c.run.contiguous)
    keep = np.zeros(pool.meta["tokens"], dtype=bool)
    score = np.full(pool.meta["tokens"], np.nan, np.float32)  # each round's score; none in round 0
    keep_key = [run.key(BASE_SCORES)]
    model_stage = at.round_stage(0, "model")
    first = pool.select(parts[0])  # theta_1 is the first reference: trained with the warm-up's settings
    train_stage(run, model_stage, run.base_fingerprint, c.run.base, first,
                train_config=warmup_train_config(run, first))
    _place(keep, pool, parts[0], pool.select(parts[0]).flat_response_mask())
    trajectory = [_round_record(run, 0, model_stage, None, tables)]
    for t in range(1, c.run.rounds + 1):
        chunk = pool.select(parts[t])
        scores, select = at.round_stage(t, "scores"), at.round_stage(t, "selection")
        ref = score_stage(run, scores, run.key(model_stage), run.path(model_stage), chunk)
        inputs = {"base": run.key(BASE_SCORES), "ref": run.key(scores), "chunk": chunk.meta["tokens_fingerprint"]}
        chunk_base = _take(base, parts[t], chunk)
        selection = select_stage(run, select, chunk_base, ref, inputs)
        health = score_health_of(selection, chunk_base, ref, chunk, where=f"round {t}")
        previous, model_stage = model_stage, at.round_stage(t, "model")
        train_stage(run, model_stage, run.key(previous), run.path(previous), chunk,
                        keep=(run.key(select), selection.keep_mask))
        _place(keep, pool, parts[t], selection.keep_mask)
        _place(score, pool, parts[t], selection.score)
        keep_key.append(run.key(select))
        trajectory.append(_round_record(run, t, model_stage, {**selection.meta, "score_health": health}, tables))
    response = pool.meta["response_tokens"]
    counts = {"response_tokens": response, "kept_tokens": int(keep.sum()),
              "kept_share": float(keep.sum() / response) if response else 0.0}
    units = SCORERS[c.select.scorer].units  # each round's score, by its own reference
    union = mask_stage(run, at.selection, pool, {"rounds": keep_key},
                           lambda: (keep, score, {**counts, "score_units": units}))
    summary = _finish(run, tables, model_stage, (run.key(at.selection), union.keep_mask), counts)
    summary["rounds"] = trajectory
    healths = [r["score_health"] for r in trajectory if r.get("score_health")]
    if healths:  # the first round that is not healthy, else round 1 (the first reference's)
        summary["score_health"] = next((h for h in healths if h["verdict"] != "healthy"), healths[0])
    summary["training"]["trained_tokens"] = sum(r["trained_tokens"] for r in trajectory)  # over all rounds
    summary["training"]["optimizer_steps"] = sum(
        run.result(at.round_stage(r["round"], "model"))["optimizer_steps"] for r in trajectory)
    return summary


def _place(values: np.ndarray, pool: TokenTable, idx: np.ndarray, chunk_values: np.ndarray) -> None:
    """Write a chunk's per-token values (a keep-mask, a score; aligned with ``pool.select(idx)``) into the
    pool-wide ``values`` (total_tokens,)."""
    offsets, pos = pool.offsets, 0
    for i in idx:
        n = offsets[i + 1] - offsets[i]
        values[offsets[i]:offsets[i + 1]] = chunk_values[pos:pos + n]
        pos += n


def _round_record(run: Run, t: int, model_stage: str, selection: dict[str, Any] | None,
                  tables: dict[str, TokenTable]) -> dict[str, Any]:
    training = run.result(model_stage)
    record = {"round": t, "model_dir": str(run.path(model_stage)), "trained_tokens": training["trained_tokens"],
              "train_loss": training["train_loss"], "heldout_loss": heldout_stage(run, model_stage, tables)}
    if selection:
        record.update(_selection_counts(selection))
    write_json(run.layout.round_record(t), record)
    return record
