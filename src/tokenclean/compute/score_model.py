"""Scoring a model over a token table, end to end: load the model (or take its losses from the score cache), check
that the tokens fit its vocabulary, score, check the losses, and store new ones in the cache.

``api.score`` / ``api.score_prompt_free`` / ``api.score_pair`` (which also read data files and write outputs) and the
run stages (``runs.stages``) call these. ``model`` is a model source (a directory, hub id or GGUF source) or an
already loaded model; ``tokens`` a ``TokenTable``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from ..core.artifacts import Scores
from ..core.fingerprints import path_fingerprint
from ..core.tokens import TokenOrigin, TokenTable
from ..errors import ConfigError
from . import score_cache
from .distributed import fsdp_requested, is_sharded, shard_for_inference
from .modeling import (check_vocab, load_model, out_of_memory_as_error, release_memory, resolve_device,
                       resolve_dtype, source_fingerprint)
from .scoring import ScoreConfig, check_model_losses, score_tokens

log = logging.getLogger("tokenclean")

PathLike = str | os.PathLike
SCORING_MEMORY_ADVICE = "lower --batch-tokens, use --dtype bfloat16, or score on a GPU (--device cuda)"


def model_and_fingerprint(model: Any, device: str | None, dtype: str, trust_remote_code: bool) -> tuple[Any, str]:
    """(the loaded model, its fingerprint): a model source is loaded and fingerprinted by its files
    (``source_fingerprint``); a loaded model is taken as it is, named by its ``name_or_path``."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device, dtype, trust_remote_code), source_fingerprint(model)
    return model, getattr(model, "name_or_path", "") or "in-memory"


def _is_local_dir(model: Any) -> bool:
    """Whether ``model`` names a model directory on disk (keyed by its files, not its loaded parameters)."""
    return isinstance(model, (str, os.PathLike)) and Path(model).is_dir()


def _cache_slot(cache: bool | str | os.PathLike, model: Any, loaded: Any, tokens: Any, device: str | None,
                dtype: str, skip_adapters: bool = False) -> tuple[Path, str]:
    """(cache root, key) of ``model``'s losses over ``tokens``. A model directory is identified by its files'
    hash and the dtype and device it would be loaded with; anything else (a hub id, a loaded model) by the
    ``loaded`` model's parameters (``skip_adapters``: leave LoRA parameters out: the base under an adapter)."""
    if _is_local_dir(model):
        dev = resolve_device(device)
        fingerprint, weights_dtype, device_type = source_fingerprint(model), resolve_dtype(dtype, dev), dev.type
    else:
        param = next(loaded.parameters())
        fingerprint = score_cache.model_fingerprint(loaded, skip_adapters)
        weights_dtype, device_type = param.dtype, param.device.type
    key = score_cache.scores_key(fingerprint, tokens.meta, weights_dtype, device_type)
    return score_cache.cache_root(cache), key


def _sharded_if_requested(loaded: Any) -> Any:
    """``loaded`` sharded over the processes under ``accelerate launch --use_fsdp`` (see
    ``distributed.shard_for_inference``), else as it is."""
    return shard_for_inference(loaded) if fsdp_requested() and not is_sharded(loaded) else loaded


def score_model(model: Any, tokens: TokenTable, *, score_config: ScoreConfig | None = None, device: str | None = None,
                dtype: str = "auto", trust_remote_code: bool = False, progress: bool = True,
                cache: bool | PathLike = False, work_dir: PathLike | None = None) -> Scores:
    """Per-token loss of every response token of ``tokens`` under ``model``; see ``api.score`` for ``cache`` and
    ``work_dir``. A model directory is not even loaded on a cache hit (``meta["cache_hit"]``). While it looks an
    entry up and, on a miss, computes and stores it, it holds the entry's lock (``score_cache.entry_lock``), so two
    processes never compute the same losses; the model it loaded is freed before it returns (``release_memory``)."""
    loaded = slot = scores = None
    if cache and _is_local_dir(model):  # keyed by the directory's files: no need to load the model
        slot = _cache_slot(cache, model, None, tokens, device, dtype)
    elif cache:
        loaded, fingerprint = model_and_fingerprint(model, device, dtype, trust_remote_code)
        slot = _cache_slot(cache, model, loaded, tokens, device, dtype)
    with score_cache.entry_lock(*slot) if slot else contextlib.nullcontext():  # one process computes an entry
        if slot is not None:
            scores = score_cache.load_cached(*slot, tokens.meta)
            if scores is not None:
                log.info("scores of %s taken from the cache (%s)", scores.meta.get("model_fingerprint"),
                         scores.meta["cache_entry"])
        if scores is None:
            if loaded is None:
                loaded, fingerprint = model_and_fingerprint(model, device, dtype, trust_remote_code)
            check_vocab(loaded, tokens, model)
            loaded = _sharded_if_requested(loaded)
            with out_of_memory_as_error(f"scoring with {model}", SCORING_MEMORY_ADVICE):
                scores = score_tokens(loaded, tokens, score_config, model_fingerprint=fingerprint, progress=progress,
                                      work_dir=work_dir)
            check_model_losses(scores, tokens, model, loaded)
            if slot is not None:
                score_cache.store(*slot, scores)
    if loaded is not None:
        del loaded
        release_memory()  # before the next stage loads another model
    return scores


def score_model_prompt_free(model: Any, tokens: TokenTable, tokenizer: Any, *,
                            score_config: ScoreConfig | None = None, device: str | None = None, dtype: str = "auto",
                            trust_remote_code: bool = False, progress: bool = True,
                            work_dir: PathLike | None = None) -> Scores:
    """Per-token loss of ``tokens``' response tokens under ``model`` with their prompts removed (each response span
    after ``tokenizer``'s BOS alone, ``compute.prompt_free``), mapped back onto ``tokens``: ``token_loss``
    (total_tokens,), NaN at prompt tokens and, when the tokenizer has no BOS, at each span's first token."""
    from .prompt_free import map_back, prompt_free_tokens, start_token_id

    start = start_token_id(tokenizer)
    free = score_model(model, prompt_free_tokens(tokens, start), score_config=score_config, device=device,
                       dtype=dtype, trust_remote_code=trust_remote_code, progress=progress, work_dir=work_dir)
    mapped = map_back(free.token_loss, tokens.flat_response_mask(), tokens.offsets, start is not None, free.offsets)
    meta = {**free.meta, **TokenOrigin.of(tokens.meta).meta(), "prompt_free": {"start_token": start}}
    return Scores(tokens.sample_ids, mapped, tokens.offsets, meta)


def score_model_pair(model: Any, adapter: PathLike | None, tokens: TokenTable, *,
                     score_config: ScoreConfig | None = None, device: str | None = None, dtype: str = "auto",
                     trust_remote_code: bool = False, progress: bool = True, cache: bool | PathLike = False,
                     work_dir: PathLike | None = None) -> tuple[Scores, Scores]:
    """(base scores, reference scores) with one model in memory, the reference being a LoRA ``adapter`` on the
    base; see ``api.score_pair``."""
    from .scoring import score_adapter_pair

    if fsdp_requested():
        raise ConfigError("score_pair merges the adapter into whole weights, which FSDP (accelerate launch "
                          "--use_fsdp) shards over the processes; score the base and the merged reference with "
                          "score() instead")
    loaded, base_fp = model_and_fingerprint(model, device, dtype, trust_remote_code)
    loaded, ref_fp = _with_adapter(loaded, adapter, base_fp)
    slot = _cache_slot(cache, model, loaded, tokens, device, dtype, skip_adapters=True) if cache else None
    with score_cache.entry_lock(*slot) if slot else contextlib.nullcontext():  # one process computes an entry
        base = score_cache.load_cached(*slot, tokens.meta) if slot else None
        check_vocab(loaded, tokens, model)
        with out_of_memory_as_error(f"scoring with {model}", SCORING_MEMORY_ADVICE):
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
    return base, ref


def _with_adapter(loaded: Any, adapter: PathLike | None, base_fp: str) -> tuple[Any, str]:
    """(the base with the reference's PEFT adapter attached, the reference's fingerprint); without ``adapter``,
    ``loaded`` already carries it."""
    if adapter is None:
        return loaded, base_fp + "+adapter"
    from peft import PeftModel

    return PeftModel.from_pretrained(loaded, str(adapter)), f"{base_fp}+{path_fingerprint(adapter)}"
