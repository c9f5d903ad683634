"""The Python API: one function per CLI command, same names and settings.

>>> from tokenclean import score, select, train
>>> base = score("my-base", "pool.jsonl", "runs/base")          # doctest: +SKIP
>>> ref = score("my-ref", "pool.jsonl", "runs/ref")              # doctest: +SKIP
>>> sel = select(base, ref, "runs/sel", SelectConfig(keep_ratio=0.6))  # doctest: +SKIP
>>> train("my-base", "pool.jsonl", "runs/model", selection=sel)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .core.artifacts import Scores, Selection, check_losses, check_same_tokens, keep_mask_for, token_position
from .compute.distributed import fsdp_requested, is_sharded, shard_for_inference
from .core.data import DataConfig
from .errors import ConfigError, DataError, MismatchError
from .runs import cache as score_cache
from .compute.export import export_dataset
from .io import atomic_dir, write_json
from .compute.modeling import (check_vocab, load_model, load_tokenizer, out_of_memory_as_error, path_fingerprint,
                               release_memory)
from .compute.scoring import ScoreConfig, check_model_losses, score_tokens
from .selection.scorers import nothing_kept, score_for, select_scored
from .selection.select import SelectConfig
from .core.prepare import prepare_tokens  # noqa: F401  (public: tokenclean.prepare_tokens)
from .core.tokens import TokenizeConfig, TokenLayout, TokenTable
from .compute.training import TrainConfig, train_model

log = logging.getLogger("tokenclean")

PathLike = str | os.PathLike


def _as_tokens(data: PathLike | TokenTable, tokenizer: Callable[[], Any], data_config: DataConfig | None,
               tokenize_config: TokenizeConfig | None) -> TokenTable:
    """``data`` as tokens: a ``TokenTable`` as is, a path read and tokenized (``tokenizer()`` is called only then)."""
    if isinstance(data, TokenTable):
        return data
    return prepare_tokens(data, tokenizer(), data_config, tokenize_config)[0]


def _tokenizer_for(model: Any, tokenizer: Any, trust_remote_code: bool):
    if tokenizer is not None:
        return load_tokenizer(tokenizer, trust_remote_code) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    if isinstance(model, (str, os.PathLike)):
        return load_tokenizer(model, trust_remote_code)
    raise ValueError("pass tokenizer= when model is an already loaded model")


def _model_for(model: Any, device: str | None, dtype: str, trust_remote_code: bool):
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device, dtype, trust_remote_code), path_fingerprint(model)
    return model, getattr(model, "name_or_path", "") or "in-memory"


def _sharded_if_requested(loaded: Any) -> Any:
    """``loaded`` sharded over the processes under ``accelerate launch --use_fsdp`` (see
    ``distributed.shard_for_inference``), else as it is."""
    return shard_for_inference(loaded) if fsdp_requested() and not is_sharded(loaded) else loaded


def score(
    model: Any,
    data: PathLike | TokenTable,
    out: PathLike | None = None,
    *,
    tokenizer: Any = None,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    score_config: ScoreConfig | None = None,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    cache: bool | PathLike = False,
    work_dir: PathLike | None = None,
) -> Scores:
    """Per-token loss of every response token of ``data`` under ``model`` (a path, hub id or loaded model).

    Writes ``out/token_loss.parquet`` and ``out/scores.json`` when ``out`` is given. ``cache``: True (the
    directory ``$TOKENCLEAN_CACHE`` or ``~/.cache/tokenclean``) or a directory: reuse losses computed before for
    the same model content, dtype, tokenizer and data, and store new ones (see ``tokenclean.runs.cache``); a
    model directory is not even loaded on a hit. ``meta["cache_hit"]`` says which it was. ``work_dir``: keep
    finished shards there while scoring, so a killed call started again resumes at the shard it was in (one model
    per work directory); removed once ``out`` is written.
    Under ``torch.distributed`` every rank scores a share and gets all losses; rank 0 writes. Under ``accelerate
    launch --use_fsdp`` the model is also sharded over the processes (``distributed.shard_for_inference``).
    """
    tokens = _as_tokens(data, lambda: _tokenizer_for(model, tokenizer, trust_remote_code), data_config,
                        tokenize_config)
    loaded = slot = scores = None
    if cache and score_cache.is_local_dir(model):  # keyed by the directory's files: no need to load the model
        slot = score_cache.cache_slot(cache, model, None, tokens, device, dtype)
    elif cache:
        loaded, fingerprint = _model_for(model, device, dtype, trust_remote_code)
        slot = score_cache.cache_slot(cache, model, loaded, tokens, device, dtype)
    with score_cache.entry_lock(*slot) if slot else contextlib.nullcontext():  # one process computes an entry
        if slot is not None:
            scores = score_cache.load_cached(*slot, tokens.meta)
            if scores is not None:
                log.info("scores of %s taken from the cache (%s)", scores.meta.get("model_fingerprint"),
                         scores.meta["cache_entry"])
        if scores is None:
            if loaded is None:
                loaded, fingerprint = _model_for(model, device, dtype, trust_remote_code)
            check_vocab(loaded, tokens, model)
            loaded = _sharded_if_requested(loaded)
            with out_of_memory_as_error(f"scoring with {model}", _SCORING_MEMORY_ADVICE):
                scores = score_tokens(loaded, tokens, score_config, model_fingerprint=fingerprint, progress=progress,
                                      work_dir=work_dir)
            check_model_losses(scores, tokens, model, loaded)
            if slot is not None:
                score_cache.store(*slot, scores)
    if loaded is not None:
        del loaded
        release_memory()
    if out is not None:
        score_cache.save_scores(scores, out)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return scores


def score_prompt_free(
    model: Any,
    data: PathLike | TokenTable,
    out: PathLike | None = None,
    *,
    tokenizer: Any = None,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    score_config: ScoreConfig | None = None,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    work_dir: PathLike | None = None,
) -> Scores:
    """Per-token loss of ``data``'s response tokens under ``model`` with their prompts removed: each response span
    scored after the tokenizer's BOS alone (``compute.prompt_free``), mapped back onto ``data``'s tokens.

    ``token_loss``: (total_tokens,) aligned with ``data``'s tokens, NaN at prompt tokens and, when the tokenizer
    has no BOS, at each span's first token. Score the *reference* model: ``select(..., prompt_free=)`` compares these
    with the reference's ordinary losses (scorers ``prompt`` and ``prompt-excess``). Writes ``out`` and resumes
    from ``work_dir`` as ``score`` does.
    """
    from .compute.prompt_free import map_back, prompt_free_tokens, start_token_id

    tok = _tokenizer_for(model, tokenizer, trust_remote_code)
    tokens = _as_tokens(data, lambda: tok, data_config, tokenize_config)
    start = start_token_id(tok)
    free = score(model, prompt_free_tokens(tokens, start), tokenizer=tok, score_config=score_config, device=device,
                 dtype=dtype, trust_remote_code=trust_remote_code, progress=progress, work_dir=work_dir)
    mapped = map_back(free.token_loss, tokens.flat_response_mask(), tokens.offsets, start is not None, free.offsets)
    meta = {**free.meta, **TokenLayout.of(tokens.meta).meta(), "prompt_free": {"start_token": start}}
    scores = Scores(tokens.sample_ids, mapped, tokens.offsets, meta)
    if out is not None:
        score_cache.save_scores(scores, out)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return scores


_SCORING_MEMORY_ADVICE = "lower --batch-tokens, use --dtype bfloat16, or score on a GPU (--device cuda)"
_TRAINING_MEMORY_ADVICE = ("lower --batch-size (raise --gradient-accumulation-steps to keep the global batch), "
                           "turn on --gradient-checkpointing, keep --lora on, or train on a GPU")


def score_pair(
    model: Any,
    adapter: PathLike | None,
    data: PathLike | TokenTable,
    base_out: PathLike | None = None,
    ref_out: PathLike | None = None,
    *,
    tokenizer: Any = None,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    score_config: ScoreConfig | None = None,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    cache: bool | PathLike = False,
    work_dir: PathLike | None = None,
) -> tuple[Scores, Scores]:
    """Base and reference losses with one model in memory, when the reference is a LoRA adapter on the base.

    ``model``: the base (path, hub id or loaded model), or an already loaded PEFT model when ``adapter`` is None;
    ``adapter``: the reference's PEFT adapter directory. The base is scored with the adapter off, then the
    reference with it merged into the weights (``scoring.score_adapter_pair``). With ``cache``, cached base
    losses are reused (only the reference pass runs) and new ones stored. ``work_dir``: as for ``score`` (both
    passes keep their shards there; the caller removes it). Returns ``(base scores, reference scores)``; writes
    them when outs are given.
    """
    from .compute.scoring import score_adapter_pair

    if fsdp_requested():
        raise ConfigError("score_pair merges the adapter into whole weights, which FSDP (accelerate launch "
                          "--use_fsdp) shards over the processes; score the base and the merged reference with "
                          "score() instead")
    tokens = _as_tokens(data, lambda: _tokenizer_for(model, tokenizer, trust_remote_code), data_config,
                        tokenize_config)
    loaded, base_fp = _model_for(model, device, dtype, trust_remote_code)
    loaded, ref_fp = _with_adapter(loaded, adapter, base_fp)
    slot = score_cache.cache_slot(cache, model, loaded, tokens, device, dtype, skip_adapters=True) if cache else None
    with score_cache.entry_lock(*slot) if slot else contextlib.nullcontext():  # one process computes an entry
        base = score_cache.load_cached(*slot, tokens.meta) if slot else None
        check_vocab(loaded, tokens, model)
        with out_of_memory_as_error(f"scoring with {model}", _SCORING_MEMORY_ADVICE):
            computed, ref = score_adapter_pair(loaded, tokens, score_config, base_fp, ref_fp, progress,
                                               base=base is None, work_dir=work_dir)
        for scores in (computed, ref):
            if scores is not None:
                check_model_losses(scores, tokens, model, loaded)
        ref.meta["adapter_pair"] = True
        if computed is not None:
            base = computed
            base.meta["adapter_pair"] = True
            if slot is not None:
                score_cache.store(*slot, base)
    for scores, out in ((base, base_out), (ref, ref_out)):
        if out is not None:
            score_cache.save_scores(scores, out)
    return base, ref


def _with_adapter(loaded: Any, adapter: PathLike | None, base_fp: str) -> tuple[Any, str]:
    """(the base with the reference's PEFT adapter attached, the reference's fingerprint); without ``adapter``,
    ``loaded`` already carries it."""
    if adapter is None:
        return loaded, base_fp + "+adapter"
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded, str(adapter)), f"{base_fp}+{path_fingerprint(adapter)}"


def _load_scores(s: Scores | PathLike) -> tuple[Scores, str]:
    return (s, "scores") if isinstance(s, Scores) else (Scores.load(s), str(s))


def select(
    base: Scores | PathLike,
    ref: Scores | PathLike,
    out: PathLike | None = None,
    config: SelectConfig | None = None,
    prompt_free: Scores | PathLike | None = None,
) -> Selection:
    """Keep-mask from two score outputs: the score of ``config.scorer`` (default ``excess``: base loss - reference
    loss; see ``selection.scorers``), ranked per ``config``. ``prompt_free``: the reference's losses of the same tokens
    without their prompts (``compute.prompt_free``, mapped onto these tokens), needed by the prompt scorers."""
    config = config or SelectConfig()
    (base, base_name), (ref, ref_name) = _load_scores(base), _load_scores(ref)
    free = None
    if prompt_free is not None:
        free, free_name = _load_scores(prompt_free)
        check_same_tokens(base.meta, f"base scores ({base_name})", free.meta, f"prompt-free scores ({free_name})")
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
    score = score_for(config, base.token_loss, ref.token_loss, base.offsets,
                      prompt_free_loss=None if free is None else free.token_loss)
    mask, counts = select_scored(score, base.offsets, config)
    empty = nothing_kept(config, counts, score, base.token_loss, ref.token_loss)
    if empty:  # stop here, not later in training with "all labels are masked"
        raise ConfigError(f"selection ({base_name}, {ref_name}): {empty}")
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
    selection = Selection(base.sample_ids, mask, base.offsets, meta)
    if out is not None:
        with atomic_dir(out) as tmp:
            selection.save(tmp)
    return selection


def train(
    model: Any,
    data: PathLike | TokenTable,
    out: PathLike,
    *,
    selection: Selection | PathLike | None = None,
    tokenizer: Any = None,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    train_config: TrainConfig | None = None,
    drop_empty: bool = True,
    seed: int = 0,
    device: str | None = None,
    trust_remote_code: bool = False,
    checkpoint_dir: PathLike | None = None,
    slm: tuple[np.ndarray, float] | None = None,
    save_adapter: bool = False,
) -> dict[str, Any]:
    """Token-masked SFT of ``model`` on ``data`` (kept tokens of ``selection``, else all response tokens);
    saves a merged standard model directory to ``out`` (and with ``save_adapter``, the unmerged LoRA adapter to
    ``out/adapter``, for ``score_pair``). ``slm``: (reference losses aligned with the tokens, keep ratio) for
    Rho-1's online selection. Returns counts and timings."""
    tok = _tokenizer_for(model, tokenizer, trust_remote_code)
    tokens = _as_tokens(data, lambda: tok, data_config, tokenize_config)
    keep = keep_mask_for(tokens, selection, f"data ({data})")
    # Weights stay fp32 for training; on a GPU the Trainer runs bf16 mixed precision.
    loaded, _ = _model_for(model, device, "float32", trust_remote_code)
    check_vocab(loaded, tokens, model)
    with atomic_dir(out) as tmp, out_of_memory_as_error(f"training {model}", _TRAINING_MEMORY_ADVICE):
        result = train_model(loaded, tok, tokens, tmp, train_config, keep, drop_empty, seed,
                             checkpoint_dir or Path(out).with_name(Path(out).name + ".checkpoints"), slm,
                             save_adapter)
        write_json(tmp / "training.json", result)
    del loaded
    release_memory()  # the model and its optimizer, before the next stage loads another
    log.info("trained on %d tokens of %d samples in %d steps (%.1fs); model saved to %s", result["trained_tokens"],
             result["samples"], result["optimizer_steps"], result["seconds"], out)
    return result


def export(
    data: PathLike | TokenTable,
    out: PathLike,
    *,
    tokenizer: Any = None,
    selection: Selection | PathLike | None = None,
    data_config: DataConfig | None = None,
    tokenize_config: TokenizeConfig | None = None,
    drop_empty: bool = True,
    trust_remote_code: bool = False,
    write_back: PathLike | None = None,
) -> dict[str, Any]:
    """Write the cleaned dataset to ``out`` (``save_to_disk``) and ``out.parquet``; see ``tokenclean.compute.export``.

    ``write_back``: also write ``data`` (a ``messages`` or ShareGPT chat file) to this JSON Lines file in its own
    format, each assistant message with Axolotl ``train_detail`` character spans of the kept tokens
    (``compute.export.write_back``); every used row is written, one with no kept token too (all spans untrained).
    """
    if write_back is not None and isinstance(data, TokenTable):
        raise ConfigError("write_back rewrites the data file's rows: pass the data as a path, not as tokens")
    tok = None if isinstance(data, TokenTable) else _tokenizer_for(None, tokenizer, trust_remote_code)
    tokens = _as_tokens(data, lambda: tok, data_config, tokenize_config)
    keep = keep_mask_for(tokens, selection, f"data ({data})")
    # written first: a format that cannot carry spans is refused before anything is written
    written_back = None if write_back is None else _write_back(data, write_back, tokens, keep, tok, data_config)
    parquet = Path(out).with_name(f"{Path(out).name}.parquet")  # not with_suffix: "runs/v1.5" keeps its ".5"
    with atomic_dir(out) as tmp:
        result = export_dataset(tokens, tmp, keep, drop_empty, parquet_path=parquet)
    result["dataset_dir"] = str(out)
    log.info("exported %d rows (%d trained tokens) to %s and %s", result["rows"], result["trained_tokens"],
             result["dataset_dir"], result["parquet"])
    if written_back is not None:
        result["write_back"] = written_back
    return result


def _write_back(data: PathLike, path: PathLike, tokens: TokenTable, keep: np.ndarray | None, tokenizer: Any,
                data_config: DataConfig | None) -> dict[str, Any]:
    """``compute.export.write_back``, its refusals (a format without per-turn text) as a ``ConfigError``."""
    from .compute.export import write_back

    try:
        counts = write_back(data, path, tokens, keep, tokenizer, data_config)
    except ValueError as e:  # train_detail_rows: the format cannot carry spans
        raise ConfigError(f"--write-back {path}: {data}: {e}") from None
    log.info("wrote %d rows of %s back with train_detail spans to %s (%d assistant turns, %d not carried: their "
             "text is not the message's own string)", counts["rows"], data, path, counts["turns"],
             counts["turns_not_carried"])
    return counts
