"""The Python API: one function per CLI command, same names and settings.

>>> from tokenclean import score, select, train
>>> base = score("my-base", "pool.jsonl", "runs/base")          # doctest: +SKIP
>>> ref = score("my-ref", "pool.jsonl", "runs/ref")              # doctest: +SKIP
>>> sel = select(base, ref, "runs/sel", SelectConfig(keep_ratio=0.6))  # doctest: +SKIP
>>> train("my-base", "pool.jsonl", "runs/model", selection=sel)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .compute.export import export_dataset
from .compute.finetune import finetune
from .compute.hardware import scoring_dtype
from .compute.modeling import load_tokenizer
from .compute.score_cache import save_scores
from .compute.score_model import score_model, score_model_pair, score_model_prompt_free
from .compute.scoring import ScoreConfig
from .compute.training import TrainConfig
from .core.artifacts import Scores, Selection, keep_mask_for
from .core.data import DataConfig
from .core.prepare import prepare_tokens  # noqa: F401  (public: tokenclean.prepare_tokens)
from .core.tokens import TokenizeConfig, TokenTable
from .errors import ConfigError
from .io import atomic_dir
from .selection.from_scores import select_scores
from .selection.select import SelectConfig

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
    the same model content, dtype, tokenizer and data, and store new ones (see ``tokenclean.compute.score_cache``); a
    model directory is not even loaded on a hit. ``meta["cache_hit"]`` says which it was. ``work_dir``: keep
    finished shards there while scoring, so a killed call started again resumes at the shard it was in (one model
    per work directory); removed once ``out`` is written. ``dtype``: the weights' dtype; ``auto`` is float32 on
    every device (``compute.hardware.scoring_dtype``: bf16 would move the selection), ``bfloat16`` for speed.
    Under ``torch.distributed`` every rank scores a share and gets all losses; rank 0 writes. Under ``accelerate
    launch --use_fsdp`` the model is also sharded over the processes (``distributed.shard_for_inference``).
    """
    tokens = _as_tokens(data, lambda: _tokenizer_for(model, tokenizer, trust_remote_code), data_config,
                        tokenize_config)
    scores = score_model(model, tokens, score_config=score_config, device=device, dtype=scoring_dtype(dtype),
                         trust_remote_code=trust_remote_code, progress=progress, cache=cache, work_dir=work_dir)
    _save(scores, out, work_dir)
    return scores


def _save(scores: Scores, out: PathLike | None, work_dir: PathLike | None) -> None:
    """Write ``scores`` to ``out`` (when given), then drop the finished shards of ``work_dir``."""
    if out is not None:
        save_scores(scores, out)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


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
    tok = _tokenizer_for(model, tokenizer, trust_remote_code)
    tokens = _as_tokens(data, lambda: tok, data_config, tokenize_config)
    scores = score_model_prompt_free(model, tokens, tok, score_config=score_config, device=device,
                                     dtype=scoring_dtype(dtype), trust_remote_code=trust_remote_code,
                                     progress=progress, work_dir=work_dir)
    _save(scores, out, work_dir)
    return scores


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
    tokens = _as_tokens(data, lambda: _tokenizer_for(model, tokenizer, trust_remote_code), data_config,
                        tokenize_config)
    base, ref = score_model_pair(model, adapter, tokens, score_config=score_config, device=device,
                                 dtype=scoring_dtype(dtype), trust_remote_code=trust_remote_code, progress=progress,
                                 cache=cache, work_dir=work_dir)
    for scores, out in ((base, base_out), (ref, ref_out)):
        if out is not None:
            save_scores(scores, out)
    return base, ref


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
    (base, base_name), (ref, ref_name) = _load_scores(base), _load_scores(ref)
    free, free_name = _load_scores(prompt_free) if prompt_free is not None else (None, "")
    selection = select_scores(base, ref, config, free, (base_name, ref_name, free_name))
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
    return finetune(model, tok, tokens, out, train_config=train_config, keep_mask=keep, drop_empty=drop_empty,
                    seed=seed, device=device, trust_remote_code=trust_remote_code, checkpoint_dir=checkpoint_dir,
                    slm=slm, save_adapter=save_adapter)


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
