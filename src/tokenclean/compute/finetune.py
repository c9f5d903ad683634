"""One fine-tune, from a model source to a model directory: load the weights in fp32, check the tokens fit the
vocabulary, train on the kept tokens (``training.train_model``) into a directory built atomically, and record the
counts in ``training.json`` beside the weights. ``api.train`` and the run stages call it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.tokens import TokenTable
from ..io import atomic_dir, write_json
from .modeling import check_vocab, out_of_memory_as_error, release_memory
from .score_model import model_and_fingerprint
from .training import OnlineSelection, TrainConfig, train_model

log = logging.getLogger("tokenclean")

TRAINING_MEMORY_ADVICE = ("lower --micro-batch-size (the same samples per step, in smaller passes), turn on "
                          "--gradient-checkpointing, keep --lora on, or train on a GPU")


def finetune(model: Any, tokenizer: Any, tokens: TokenTable, out: str | os.PathLike, *,
             train_config: TrainConfig | None = None, keep_mask: np.ndarray | None = None, drop_empty: bool = True,
             seed: int = 0, device: str | None = None, trust_remote_code: bool = False,
             checkpoint_dir: str | os.PathLike | None = None, slm: OnlineSelection | None = None,
             save_adapter: bool = False) -> dict[str, Any]:
    """Token-masked SFT of ``model`` (a source or a loaded model) on ``tokens``: the tokens of ``keep_mask``
    ((total_tokens,) bool), else all response tokens; ``slm``: Rho-1's online selection instead
    (``training.OnlineSelection``). Writes ``out`` (a merged model directory, ``training.json``; ``adapter/`` with ``save_adapter``).
    Checkpoints go to ``checkpoint_dir`` (default ``<out>.checkpoints``). Returns counts and timings."""
    # Weights stay fp32 for training; on a GPU the Trainer runs bf16 mixed precision.
    loaded, _ = model_and_fingerprint(model, device, "float32", trust_remote_code)
    check_vocab(loaded, tokens, model)
    with atomic_dir(out) as tmp, out_of_memory_as_error(f"training {model}", TRAINING_MEMORY_ADVICE):
        result = train_model(loaded, tokenizer, tokens, tmp, train_config, keep_mask, drop_empty, seed,
                             checkpoint_dir or Path(out).with_name(Path(out).name + ".checkpoints"), slm,
                             save_adapter)
        write_json(tmp / "training.json", result)
    del loaded
    release_memory()  # the model and its optimizer, before the next stage loads another
    log.info("trained on %d tokens of %d samples in %d steps (%.1fs); model saved to %s", result["trained_tokens"],
             result["samples"], result["optimizer_steps"], result["seconds"], out)
    return result
