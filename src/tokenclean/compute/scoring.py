"""Scoring: the loss of every response token under a model.

Output (a directory): ``token_loss.parquet`` with columns ``sample_id`` and ``token_loss`` (list<float32>, one
entry per token of the sample, ``token_loss[j]`` = loss of token ``j``, NaN where the token is not a response
token) and ``scores.json`` with the model, tokenizer, data and tokens fingerprints, ``max_seq_len``, counts and
timings.

Samples are scored in length-sorted batches under a token budget. Consecutive batches form *shards* of about
``shard_tokens`` tokens; with a work directory (``ScoreShards``) each finished shard is written there as a Parquet
part file, so a killed run started again skips the shards it finished and ends with bitwise the same losses
(the batches, and so every float operation, are the same). ``score_adapter_pair`` scores base and
reference from one PEFT model (adapter off, then merged into the weights). Under ``torch.distributed`` each rank
scores a strided share of every shard's batches and all ranks end with the full arrays (rank 0 writes; see
``score_cache``); an FSDP-sharded model (``accelerate launch --use_fsdp``) runs its forwards on all ranks in step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import option
from .distributed import all_ranks, distributed_world, gather_arrays, is_sharded
from ..errors import ConfigError, ModelError
from .losses import token_losses
from ..core.artifacts import Scores, token_position
from ..core.labels import clear_first_positions
from ..core.tokens import TokenOrigin, TokenTable

log = logging.getLogger("tokenclean")


@dataclass
class ScoreConfig:
    """How scoring batches and runs."""

    batch_tokens: int | None = option(None, "token budget per scoring batch (samples sorted by length; rows x "
                                      "longest row <= budget); default: 2048 on a CPU, 16384 on a GPU",
                                      speed_only=True)
    shard_tokens: int = option(1_000_000, "in a run, finished scoring work is saved every this many tokens, so a "
                               "killed run resumes there", speed_only=True)

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "shard_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


CPU_BATCH_TOKENS = 2048
"""Scoring's token budget per batch on a CPU. Larger batches spill their activations out of the caches: SmolLM2-135M
on a 2-core EPYC with AVX-512 scored 64 GSM8K chats in 35.0 s at 16,384 tokens a batch, 21.1 s at 4,096, 18.8 s at
2,048 and 18.6 s at 1,024 (bench/README.md, 2026-12-07); an earlier AVX2 machine showed 4,096 ~5% faster than
16,384."""
GPU_BATCH_TOKENS = 16384
"""Scoring's token budget per batch on a GPU, where wide batches keep the device busy."""


def batch_budget(cfg: ScoreConfig, model) -> int:
    """``cfg.batch_tokens``, else the default for the device ``model`` is on."""
    if cfg.batch_tokens is not None:
        return cfg.batch_tokens
    return CPU_BATCH_TOKENS if next(model.parameters()).device.type == "cpu" else GPU_BATCH_TOKENS


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


def _padded_batch(batch: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, ids_flat: np.ndarray,
                  mask_flat: np.ndarray):
    """(B, T) int64 ids, attention and bool target mask of the samples in ``batch``, right-padded."""
    width = int(lengths[batch].max())
    ids = np.zeros((len(batch), width), dtype=np.int64)
    target = np.zeros((len(batch), width), dtype=bool)
    for row, i in enumerate(batch):
        a, b = offsets[i], offsets[i + 1]
        ids[row, : b - a] = ids_flat[a:b]
        target[row, : b - a] = mask_flat[a:b]
    attention = (np.arange(width)[None, :] < lengths[batch][:, None]).astype(np.int64)
    return ids, attention, target


def compute_token_losses(model, tokens: TokenTable, cfg: ScoreConfig | None = None, progress: bool = True,
                         passes: tuple = (None,), shards: ScoreShards | None = None) -> list[np.ndarray]:
    """Per-token losses of ``tokens``, one flat float32 array per entry of ``passes``, each aligned with
    ``tokens.flat_input_ids()`` and NaN where the token is not a response token (and at position 0).

    ``passes``: for each output, ``None`` (the model as it is) or a function returning a context manager under
    which the model is scored (e.g. PEFT's ``model.disable_adapter`` for the base under a LoRA reference). All
    passes run batch by batch, so the data is padded and moved to the device once.

    Under ``torch.distributed`` (``torchrun``, ``accelerate launch``) each rank scores every world-size-th batch
    of each shard of the length-sorted list and the results are gathered, so every rank returns the full arrays,
    equal to what one process computes. An FSDP-sharded model runs the same number of forwards on every rank.

    ``shards``: keep finished shards there and reuse those a killed call left (see ``ScoreShards``).
    """
    cfg = cfg or ScoreConfig()
    flat = _FlatTokens(tokens.offsets, tokens.lengths, tokens.flat_input_ids(), tokens.flat_response_mask())
    lengths = flat.lengths
    rank, world = distributed_world()
    # FSDP gathers each layer's weights from all ranks during a forward, so every rank must run as many forwards,
    # and take the same resume decisions, as every other.
    lockstep = world > 1 and is_sharded(model)
    shards_all = shard_batches(length_batches(lengths, batch_budget(cfg, model)), lengths, cfg.shard_tokens)
    plan = [shard[rank::world] for shard in shards_all]  # this rank's strided share of every shard
    where, found = [], [[] for _ in passes]  # flat positions and their losses, batch by batch
    was_training = model.training
    model.eval()
    total = int(sum(_shard_tokens(lengths, shard) for shard in plan))
    bar = tqdm(total=total, unit="tok", desc="scoring", disable=not progress or rank != 0, dynamic_ncols=True)
    if shards is not None:
        shards.open(_shards_key(model, tokens, cfg, len(passes), rank, world), len(plan))
    for s, shard in enumerate(plan):
        finished = shards is not None and shards.has(s, rank)
        if lockstep:
            finished = all_ranks(finished)
        if finished:
            done = shards.load(s, rank, len(passes))
            where.append(done[0])
            for k in range(len(passes)):
                found[k].append(done[1][k])
            bar.update(_shard_tokens(lengths, shard))
            continue
        first = len(where)
        _score_shard(model, flat, shard, passes, where, found, bar)
        if lockstep:  # a rank with one batch fewer in this shard joins the others' last forward
            for _ in range(-(-len(shards_all[s]) // world) - len(shard)):
                _idle_forward(model, next(model.parameters()).device, passes)
        if shards is not None:
            shards.save(s, rank, where[first:], [f[first:] for f in found])
    bar.close()
    if shards is not None and shards.reused:
        log.info("scoring resumed: %d of %d shards reused from %s", shards.reused, len(plan), shards.dir)
    model.train(was_training)
    return _flat_losses(where, found, world, len(flat.input_ids))


@dataclass
class _FlatTokens:
    """A token table's flat arrays, read once per scoring call."""

    offsets: np.ndarray  # (n_samples + 1,)
    lengths: np.ndarray  # (n_samples,)
    input_ids: np.ndarray  # (total_tokens,)
    response_mask: np.ndarray  # (total_tokens,) bool


def _shard_tokens(lengths: np.ndarray, shard: list[np.ndarray]) -> int:
    return int(sum(int(lengths[b].sum()) for b in shard))


def _score_shard(model, flat: _FlatTokens, shard: list[np.ndarray], passes: tuple, where: list[np.ndarray],
                 found: list[list[np.ndarray]], bar) -> None:
    """Score every batch of ``shard`` under each of ``passes``, appending the flat positions of the losses to
    ``where`` and the losses (N,) fp32 to ``found[k]``, batch by batch."""
    device = next(model.parameters()).device
    offsets, lengths = flat.offsets, flat.lengths
    for batch in shard:
        ids, attention, target = _padded_batch(batch, offsets, lengths, flat.input_ids, flat.response_mask)
        ids_t, att_t, tgt_t = (torch.from_numpy(a).to(device) for a in (ids, attention, target))
        for k, scope in enumerate(passes):
            with scope() if scope is not None else contextlib.nullcontext():
                found[k].append(token_losses(model, ids_t, att_t, tgt_t).cpu().numpy())
        # Target positions in row-major order are exactly the order of the losses.
        rows, cols = np.nonzero(target[:, 1:])
        where.append(offsets[batch[rows]] + cols + 1)
        bar.update(int(lengths[batch].sum()))


def _flat_losses(where: list[np.ndarray], found: list[list[np.ndarray]], world: int, total_tokens: int
                 ) -> list[np.ndarray]:
    """One (total_tokens,) float32 array per pass, NaN where nothing was scored; under ``torch.distributed``
    every rank's positions and losses are gathered first."""
    where_all = np.concatenate(where) if where else np.zeros(0, np.int64)
    found_all = [np.concatenate(f) if f else np.zeros(0, np.float32) for f in found]
    if world > 1:  # every rank ends with every rank's positions and losses
        where_all, *found_all = (np.concatenate(parts) for parts in gather_arrays([where_all, *found_all]))
    outs = []
    for values in found_all:
        out = np.full(total_tokens, np.nan, dtype=np.float32)
        out[where_all] = values
        outs.append(out)
    return outs


def _idle_forward(model, device: torch.device, passes: tuple) -> None:
    """One forward per pass on a 2-token dummy row, results discarded: a rank's part in the others' forward."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    target = torch.tensor([[False, True]], device=device)
    for scope in passes:
        with scope() if scope is not None else contextlib.nullcontext():
            token_losses(model, ids, torch.ones_like(ids), target)


def compute_token_loss(model, tokens: TokenTable, cfg: ScoreConfig | None = None, progress: bool = True) -> np.ndarray:
    """Per-token losses of ``tokens`` under ``model``: flat float32 array aligned with ``tokens.flat_input_ids()``,
    NaN where the token is not a response token (and at position 0)."""
    return compute_token_losses(model, tokens, cfg, progress)[0]


def _scores(tokens: TokenTable, losses: np.ndarray, seconds: float, model_fingerprint: str, model) -> Scores:
    from .hardware import compute_facts

    scored = ~np.isnan(losses)
    param = next(model.parameters())
    meta = {
        "model_fingerprint": model_fingerprint,
        **TokenOrigin.of(tokens.meta).meta(),
        "samples": len(tokens),
        "tokens": int(len(losses)),
        "scored_tokens": int(scored.sum()),
        "mean_token_loss": float(losses[scored].mean()) if scored.any() else None,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(len(losses) / seconds, 1) if seconds > 0 else None,
        "compute": compute_facts(param.device, param.dtype),  # the hardware and dtype these losses came from
    }
    return Scores(tokens.sample_ids, losses, tokens.offsets, meta)


def score_tokens(model, tokens: TokenTable, cfg: ScoreConfig | None = None, model_fingerprint: str = "",
                 progress: bool = True, work_dir: str | os.PathLike | None = None) -> Scores:
    """Score every response token of ``tokens`` with ``model`` and return the losses with their metadata.

    ``work_dir``: keep finished shards there, so a killed call started again resumes (see ``ScoreShards``);
    ``meta["resumed_shards"]`` then says how many were reused.
    """
    start = time.perf_counter()
    shards = ScoreShards(work_dir) if work_dir is not None else None
    losses = compute_token_losses(model, tokens, cfg, progress, shards=shards)[0]
    return _with_resumed(_scores(tokens, losses, time.perf_counter() - start, model_fingerprint, model), shards)


def _with_resumed(scores: Scores, shards: ScoreShards | None) -> Scores:
    if shards is not None:
        scores.meta["resumed_shards"] = shards.reused
    return scores


def score_adapter_pair(model, tokens: TokenTable, cfg: ScoreConfig | None = None, base_fingerprint: str = "",
                       ref_fingerprint: str = "", progress: bool = True, base: bool = True,
                       work_dir: str | os.PathLike | None = None) -> tuple[Scores | None, Scores]:
    """Base and reference losses from one PEFT model in memory (one model load instead of two): the base with
    the adapter disabled, then the reference with the adapter merged into the weights, so the reference pass
    costs what the merged model's does (no per-token adapter matmuls; measured in ``bench/bench_cache_pair.py``).
    The adapter is unmerged afterwards (the base weights come back up to float rounding). ``base=False`` skips
    the base (e.g. cached). ``work_dir``: keep each pass's finished shards in ``base/`` and ``reference/`` there
    (see ``score_tokens``). Returns ``(base scores or None, reference scores)``."""
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("score_adapter_pair needs a PEFT model (the base with the reference's LoRA adapter)")
    base_shards, ref_shards = (None, None) if work_dir is None else \
        (ScoreShards(Path(work_dir) / "base"), ScoreShards(Path(work_dir) / "reference"))
    base_scores = None
    if base:  # first, while the base weights are exactly the base's
        start = time.perf_counter()
        with model.disable_adapter():
            losses = compute_token_losses(model, tokens, cfg, progress, shards=base_shards)[0]
        base_scores = _with_resumed(_scores(tokens, losses, time.perf_counter() - start, base_fingerprint, model),
                                    base_shards)
    start = time.perf_counter()
    model.merge_adapter()
    try:
        losses = compute_token_losses(model, tokens, cfg, progress, shards=ref_shards)[0]
    finally:
        model.unmerge_adapter()
    return base_scores, _with_resumed(_scores(tokens, losses, time.perf_counter() - start, ref_fingerprint, model),
                                      ref_shards)


def shard_batches(batches: list[np.ndarray], lengths: np.ndarray, shard_tokens: int) -> list[list[np.ndarray]]:
    """Consecutive batches grouped into shards of at least ``shard_tokens`` tokens (the last may be smaller)."""
    shards: list[list[np.ndarray]] = [[]]
    size = 0
    for batch in batches:
        if size >= shard_tokens:
            shards.append([])
            size = 0
        shards[-1].append(batch)
        size += int(lengths[batch].sum())
    return shards if shards[0] else []


def _shards_key(model, tokens: TokenTable, cfg: ScoreConfig, n_passes: int, rank: int, world: int) -> str:
    """What decides a shard's content besides the model's weights (the work directory belongs to one model)."""
    param = next(model.parameters())
    what = {"tokens": tokens.meta.get("tokens_fingerprint"), "batch_tokens": batch_budget(cfg, model),
            "shard_tokens": cfg.shard_tokens, "passes": n_passes, "world": world,
            "model": getattr(model, "name_or_path", ""), "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(param.dtype), "device": param.device.type}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


class ScoreShards:
    """Finished shards of one scoring pass, kept in a work directory while it runs.

    Shard ``s`` of rank ``r`` is ``rank<r>-shard<s>.parquet`` with columns ``position`` (int64, flat token index)
    and ``loss_<k>`` (float32, one per pass), written atomically once the shard is done. ``shards.json`` records
    the key of the settings the shards were made with; shards of other settings are discarded. The caller removes
    the directory when the scores are saved.
    """

    def __init__(self, work_dir: str | os.PathLike):
        self.dir = Path(work_dir)
        self.reused = 0

    def open(self, key: str, n_shards: int) -> None:
        from ..io import read_json, write_json

        manifest = self.dir / "shards.json"
        if manifest.exists() and read_json(manifest).get("key") != key:
            log.info("discarding scoring shards of other settings in %s", self.dir)
            for old in self.dir.glob("rank*-shard*.parquet"):
                old.unlink()
        write_json(manifest, {"key": key, "shards": n_shards})

    def _path(self, index: int, rank: int) -> Path:
        return self.dir / f"rank{rank}-shard{index:05d}.parquet"

    def has(self, index: int, rank: int) -> bool:
        """Whether shard ``index`` of ``rank`` was finished before."""
        return self._path(index, rank).exists()

    def load(self, index: int, rank: int, n_passes: int) -> tuple[np.ndarray, list[np.ndarray]]:
        import pyarrow.parquet as pq

        table = pq.read_table(self._path(index, rank))
        self.reused += 1
        return (table.column("position").to_numpy(),
                [table.column(f"loss_{k}").to_numpy() for k in range(n_passes)])

    def save(self, index: int, rank: int, where: list[np.ndarray], found: list[list[np.ndarray]]) -> None:
        import pyarrow as pa

        from ..io import crash_point
        from ..core.tokens import write_parquet

        columns = {"position": np.concatenate(where) if where else np.zeros(0, np.int64)}
        for k, parts in enumerate(found):
            columns[f"loss_{k}"] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        write_parquet(pa.table(columns), self._path(index, rank))
        crash_point(f"score:{self.dir.name}:shard{index}")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def check_model_losses(scores: Scores, tokens: TokenTable, model: Any, loaded: Any) -> None:
    """A model whose loss is NaN or infinite at a response token (corrupt weights, or overflow in half precision)
    would make that token silently vanish from selection: refuse it."""
    expected = clear_first_positions(tokens.flat_response_mask().copy(), tokens.offsets)  # position 0: no loss
    bad = np.flatnonzero(expected & ~np.isfinite(scores.token_loss))
    if len(bad):
        dtype = str(next(loaded.parameters()).dtype).replace("torch.", "")
        raise ModelError(f"{model}: the loss is {scores.token_loss[bad[0]]} at {token_position(scores, bad[0])} "
                         f"({len(bad)} response tokens in all), expected finite losses; the weights may be corrupt, "
                         f"or {dtype} overflows (try --dtype float32)")
