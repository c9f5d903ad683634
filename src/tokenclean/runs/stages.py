"""The stages of a run: functions of a ``Run`` (``runs.run``) over the stage engine (``runs.store``) at the paths of
``runs.layout``. Each records its settings and result and is skipped when already done; each calls ``core``,
``compute`` and ``selection`` directly. The warm-up reference's stages are in ``runs.reference``.

Each method of ``runs.methods`` is a short function over these: tokens -> reference -> scores -> selection ->
model -> export, and the held-out loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import stage_settings
from ..core.artifacts import Scores, Selection
from ..core.tokens import TokenOrigin, TokenTable
from .layout import EXPORT_PARQUET, TOKENS, Layout
from .run import Run

if TYPE_CHECKING:
    from ..compute.training import TrainConfig
    from ..selection.select import SelectConfig

__all__ = ["Run", "export_stage", "heldout_stage", "mask_stage", "prompt_free_stage", "score_inputs", "score_stage",
           "select_stage", "tokens_stage", "train_stage"]


def tokens_stage(run: Run) -> dict[str, TokenTable]:
    """Tokenize the pool, the warm-up data and the held-out data. Stage ``tokens`` with one directory each: ``pool``
    (what methods train on), ``warmup`` (if given), ``eval`` (``--eval-data``, or a fixed ``--eval-fraction`` of the
    pool, which is then removed from ``pool``)."""
    from ..core.fingerprints import path_fingerprint
    from ..core.prepare import prepare_tokens

    c = run.cfg
    inputs = {"data": path_fingerprint(c.run.data), "tokenizer": run.tokenizer_key,
              "warmup_data": c.run.warmup_data and path_fingerprint(c.run.warmup_data),
              "eval_data": c.run.eval_data and path_fingerprint(c.run.eval_data),
              "eval_fraction": 0.0 if c.run.eval_data else c.run.eval_fraction,
              "data_config": asdict(c.data), "tokenize_config": asdict(c.tokenize)}

    def build(tmp: Path) -> dict[str, Any]:
        pool, report = prepare_tokens(c.run.data, run.tokenizer, c.pool_data(), c.tokenize)
        result: dict[str, Any] = {"load": report.to_dict()}
        tables = {"pool": pool}
        for name, source in (("warmup", c.run.warmup_data), ("eval", c.run.eval_data)):
            if source:
                tables[name], rep = prepare_tokens(source, run.tokenizer, c.data, c.tokenize)
                result[f"{name}_load"] = rep.to_dict()
        if inputs["eval_fraction"]:
            # A fixed split (seed 0), the same for every method and seed, so held-out losses are comparable.
            perm = np.random.default_rng(0).permutation(len(pool))
            n_eval = max(1, int(round(inputs["eval_fraction"] * len(pool))))
            tables["eval"] = pool.select(np.sort(perm[:n_eval]))
            tables["pool"] = pool.select(np.sort(perm[n_eval:]))
            result["load"]["heldout"] = n_eval  # used rows held out of the pool
        for name, table in tables.items():
            table.save(tmp / name)
            result[name] = table_counts(table.meta)
        return result

    run.stage(TOKENS, inputs, build)
    return {d.name: TokenTable.load(d) for d in sorted(run.path(TOKENS).iterdir()) if d.is_dir()}


def table_counts(meta: dict[str, Any]) -> dict[str, Any]:
    """A token table's counts, as stage results and summaries record them."""
    return {k: meta[k] for k in ("samples", "tokens", "response_tokens", "truncated_samples", "no_response")}


def train_stage(run: Run, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                keep: tuple[str, np.ndarray] | None = None, slm: tuple[str, np.ndarray] | None = None,
                save_adapter: bool = False, train_config: TrainConfig | None = None) -> Path:
    """Train ``model_path`` on ``tokens``: the kept tokens of ``keep`` = (key, mask), Rho-1 online selection with
    ``slm`` = (key, reference losses), else all response tokens. ``save_adapter``: keep the unmerged LoRA adapter
    too (``Layout.adapter``). ``train_config``: other settings than the run's (the warm-up's)."""
    from ..compute.finetune import finetune
    from ..compute.training import OnlineSelection

    c = run.cfg
    train_config = train_config or c.train
    inputs = {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"], "keep": keep and keep[0],
              "slm": slm and [slm[0], c.select.keep_ratio], "train_config": stage_settings(train_config),
              "drop_empty": c.select.drop_empty, "seed": c.run.seed}
    run.stage(name, inputs, lambda tmp: finetune(
        str(model_path), run.tokenizer, tokens, tmp, train_config=train_config, keep_mask=keep[1] if keep else None,
        drop_empty=c.select.drop_empty, seed=c.run.seed, device=c.run.device,
        trust_remote_code=c.run.trust_remote_code, checkpoint_dir=run.work_dir(name, inputs),
        slm=OnlineSelection(slm[1], c.select.keep_ratio) if slm else None, save_adapter=save_adapter))
    return run.path(name)


def score_inputs(run: Run, model_key: str, tokens: TokenTable, dtype: str | None = None) -> dict[str, Any]:
    """The inputs of a scoring stage: the model's key, the tokens, and the dtype as resolved on this machine
    ("auto" means bf16 on one CPU and fp32 on another)."""
    return {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"], "dtype": run.resolved_dtype(dtype)}


def score_stage(run: Run, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                cache: bool = False, compute: Callable[[], Scores] | None = None, dtype: str | None = None) -> Scores:
    """Token losses of ``tokens`` under ``model_path``, through the score cache when ``cache`` (and the run's
    ``--cache``). ``compute`` replaces scoring ``model_path`` alone (e.g. scores from an adapter pair); ``dtype``
    replaces ``--dtype`` (``--eval-dtype`` for measurements)."""
    from ..compute.score_cache import save_scores
    from ..compute.score_model import score_model

    c = run.cfg
    inputs = score_inputs(run, model_key, tokens, dtype)
    dtype = dtype or run.scoring_dtype
    compute = compute or (lambda: score_model(
        str(model_path), tokens, score_config=c.score, device=c.run.device, dtype=dtype,
        trust_remote_code=c.run.trust_remote_code, cache=cache and run.cache, work_dir=run.work_dir(name, inputs)))

    def build(tmp: Path) -> dict[str, Any]:
        scores = compute()
        save_scores(scores, tmp)
        return scores.meta

    run.stage(name, inputs, build)
    return Scores.load(run.path(name))


def prompt_free_stage(run: Run, name: str, model_key: str, model_path: str | Path, tokens: TokenTable) -> Scores:
    """The losses of ``tokens``' response tokens under ``model_path`` with their prompts removed
    (``compute.prompt_free``), mapped back onto ``tokens`` (NaN at prompt tokens and a span's first token when the
    tokenizer has no BOS): what the prompt scorers compare with the reference's ordinary losses."""
    from ..compute.prompt_free import start_token_id
    from ..compute.score_model import score_model_prompt_free

    c = run.cfg

    def compute() -> Scores:
        return score_model_prompt_free(str(model_path), tokens, run.tokenizer, score_config=c.score,
                                       device=c.run.device, dtype=run.scoring_dtype,
                                       trust_remote_code=c.run.trust_remote_code)

    key = f"{model_key}:prompt-free:{start_token_id(run.tokenizer)}"
    return score_stage(run, name, key, model_path, tokens, compute=compute)


def select_stage(run: Run, name: str, base: Scores, ref: Scores, inputs: dict[str, Any],
                 config: SelectConfig | None = None, prompt_free: Scores | None = None) -> Selection:
    """Select from two ``Scores`` (``inputs`` identifies them: their stage keys; a prompt scorer's ``prompt_free``
    scores too); the selection saves the score it ranked by."""
    from ..selection.from_scores import select_scores

    config = config or run.cfg.select

    def build(tmp: Path) -> dict[str, Any]:
        selection = select_scores(base, ref, config, prompt_free)
        selection.save(tmp)
        return selection.meta

    run.stage(name, {**inputs, "select_config": asdict(config)}, build, complete=Selection.has_score)
    return Selection.load(run.path(name))


def mask_stage(run: Run, name: str, tokens: TokenTable, inputs: dict[str, Any],
               make: Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> Selection:
    """Save the keep-mask and the score it ranked by, ``make() -> (mask, score, counts)`` over ``tokens``, as a
    ``Selection`` stage, for methods whose mask does not come from ``select_stage`` (random, self-evolving's union
    of rounds)."""
    def build(tmp: Path) -> dict[str, Any]:
        mask, score, counts = make()
        Selection(tokens.sample_ids, mask, tokens.offsets, {**TokenOrigin.of(tokens.meta).meta(), **counts},
                  score).save(tmp)
        return counts

    run.stage(name, {**inputs, "tokens": tokens.meta["tokens_fingerprint"]}, build, complete=Selection.has_score)
    return Selection.load(run.path(name))


def export_stage(run: Run, name: str, tokens: TokenTable, keep: tuple[str, np.ndarray] | None) -> dict[str, Any]:
    """Export ``tokens`` with ``keep`` = (key, mask), or all response tokens."""
    from ..compute.export import export_dataset

    drop_empty = run.cfg.select.drop_empty
    inputs = {"tokens": tokens.meta["tokens_fingerprint"], "keep": keep and keep[0], "drop_empty": drop_empty}
    return run.stage(name, inputs, lambda tmp: export_dataset(tokens, tmp, keep[1] if keep else None, drop_empty,
                                                              parquet_path=tmp / EXPORT_PARQUET))


def heldout_stage(run: Run, model_stage: str, tables: dict[str, TokenTable]) -> float | None:
    """Mean loss of the held-out response tokens under the model of stage ``model_stage``, with its weights in
    ``--eval-dtype`` (None without held-out data). The mean divides by the number of held-out response tokens."""
    if "eval" not in tables:
        return None
    name = Layout.next_to(model_stage, "heldout")
    return score_stage(run, name, run.key(model_stage), run.path(model_stage), tables["eval"],
                       dtype=run.cfg.run.eval_dtype).meta["mean_token_loss"]
