"""A cache of token losses, so no run computes the same losses twice.

An entry is a ``Scores`` directory at ``<root>/scores/<key>`` (its lock: ``<root>/locks/<key>.lock``): ``key``
hashes what decides the losses (the model's content, its dtype and device type, the tokenizer, the data and its
tokenization). ``root`` is ``$TOKENCLEAN_CACHE`` or ``~/.cache/tokenclean``. Entries are written atomically (built under a temporary name, then renamed), so a
crashed run never leaves a half-written entry behind. While a process looks an entry up and, on a miss, computes
and stores it, it holds the entry's lock (``entry_lock``): a second process wanting the same losses waits for it,
saying for whom, and then finds them stored instead of computing them again.

Under ``torch.distributed`` only rank 0 writes (cache entries and ``out`` directories); the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.artifacts import Scores
from ..core.tokens import TokenOrigin
from ..io import atomic_dir, disk_full_as_error
from ..lock import Lock
from .distributed import all_ranks, barrier, distributed_world


def cache_root(cache: bool | str | os.PathLike) -> Path:
    """The cache directory: ``cache`` itself when it is a path, else ``$TOKENCLEAN_CACHE`` or
    ``~/.cache/tokenclean``."""
    if not isinstance(cache, bool):
        return Path(cache)
    return Path(os.environ.get("TOKENCLEAN_CACHE") or Path.home() / ".cache" / "tokenclean")


def model_fingerprint(model, skip_adapters: bool = False) -> str:
    """sha256 of a loaded model's config and parameters (names, dtypes, shapes, bytes); with ``skip_adapters``,
    LoRA parameters are left out (the base under a PEFT adapter). Seconds per GB of weights."""
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    h.update((config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else "").encode())
    for name, tensor in sorted(model.state_dict().items()):
        if skip_adapters and "lora_" in name:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        t = tensor.detach().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).cpu().numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def scores_key(model_fingerprint: str, tokens_meta: dict[str, Any], dtype: Any, device_type: str) -> str:
    """Cache key of one model's losses over one token table. ``dtype``: the weights' torch dtype; ``device_type``:
    ``cpu``, ``cuda``, ... (kernels differ, so losses may differ in the last bits)."""
    what = {"model": model_fingerprint, "dtype": str(dtype), "device": device_type,
            **asdict(TokenOrigin.of(tokens_meta))}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def load_cached(root: Path, key: str, tokens_meta: dict[str, Any]) -> Scores | None:
    """The cached scores for ``key`` (``meta["cache_hit"]`` True, ``meta["cache_entry"]`` its directory), or None.
    An entry whose token fingerprint disagrees is ignored. Under ``torch.distributed`` it is a hit only when every
    rank finds the entry, so all ranks either score together or not at all."""
    path = root / "scores" / key
    scores = None
    if (path / Scores.META).exists() and (path / Scores.FILE).exists():
        scores = Scores.load(path)
        if scores.meta.get("tokens_fingerprint") != tokens_meta.get("tokens_fingerprint"):
            scores = None
    if not all_ranks(scores is not None):
        return None
    scores.meta.update(cache_hit=True, cache_entry=str(path))
    return scores


@contextmanager
def entry_lock(root: Path, key: str) -> Iterator[None]:
    """Hold the lock of entry ``key`` for the block (look it up, and on a miss compute and ``store`` it); when
    another process holds it, wait, after one line naming that process. Rank 0 only: it alone writes entries."""
    if distributed_world()[0] != 0:
        yield
        return
    with disk_full_as_error(root):
        (root / "locks").mkdir(parents=True, exist_ok=True)
    lock = Lock(root / "locks" / f"{key}.lock")
    lock.acquire(wait=True, on_wait=f"which is computing the same token losses for the score cache "
                                    f"({root / 'scores' / key})")
    try:
        yield
    finally:
        lock.release()


def store(root: Path, key: str, scores: Scores) -> None:
    """Write freshly computed ``scores`` to the cache (rank 0 only; see ``save_scores``) and mark them
    ``meta["cache_hit"]`` False."""
    save_scores(scores, root / "scores" / key)
    scores.meta.update(cache_hit=False, cache_entry=str(root / "scores" / key))


def save_scores(scores: Scores, out: str | os.PathLike) -> None:
    """Write ``scores`` to ``out`` atomically; under ``torch.distributed`` rank 0 writes and every rank waits."""
    if distributed_world()[0] == 0:
        with atomic_dir(out) as tmp:
            scores.save(tmp)
    barrier()
