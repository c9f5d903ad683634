"""Token-masked SFT on ``transformers.Trainer``: labels are ``IGNORE_INDEX`` everywhere except kept response tokens.

The loss of an optimiser step is the mean over the kept tokens of the whole step: each micro-batch contributes
``sum of its kept-token losses / kept tokens in the step`` (counted by the Trainer over all accumulated
micro-batches and, under DDP, all processes). A step with no kept token contributes zero, never NaN.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..config import option
from .distributed import fsdp_requested, launched_processes
from ..errors import ConfigError
from .adapters import adapter_sums_in_fp32, with_lora
from .checkpoints import crash_after_save, last_complete_checkpoint
from .hardware import resolve_bf16
from .losses import kept_token_loss_sum, slm_loss_sum
from ..core.threshold import kept_count
from ..core.artifacts import ADAPTER_DIR
from ..core.labels import IGNORE_INDEX, make_labels, trained_token_count
from ..core.tokens import TokenTable

log = logging.getLogger("tokenclean")


@dataclass
class TrainConfig:
    """Fine-tuning settings (defaults: the paper's)."""

    lora: bool = option(True, "train a LoRA adapter and merge it at the end (--no-lora: full fine-tuning)")
    lora_r: int = option(64, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    lora_target_modules: list[str] = option(["all-linear"], "modules that get adapters; all-linear = every "
                                            "attention and MLP projection")
    optimizer: str = option("adamw_torch", "optimizer (any transformers optim name, e.g. adamw_torch, sgd)")
    learning_rate: float = option(1e-4, "peak learning rate")
    lr_scheduler: str = option("linear", "learning-rate schedule (any transformers scheduler name)")
    lr_warmup_ratio: float = option(0.03, "share of steps spent warming up the learning rate (linearly from 0)",
                                    renamed_from="warmup_ratio")
    weight_decay: float = option(0.0, "AdamW weight decay")
    epochs: float = option(1.0, "passes over the training data")
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: run --epochs)")
    batch_size: int = option(4, "samples per device per accumulation step (the paper's 4), passed through the model "
                             "in micro-batches of --micro-batch-size")
    micro_batch_size: int | None = option(None, "samples per forward/backward pass, dividing --batch-size "
                                          "(default: 1 for LoRA on a CPU, the whole --batch-size otherwise). "
                                          "Changes speed and memory only: an optimiser step trains the same samples "
                                          "with the same loss (Rho-1's online selection always uses --batch-size, "
                                          "as it selects within it)", speed_only=True)
    gradient_accumulation_steps: int = option(12, "accumulation steps per optimiser step (global batch = batch "
                                              "size x this x processes; the paper uses 48)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    save_steps: int = option(500, "checkpoint every this many steps so an interrupted run resumes (not under "
                             "FSDP: see train_model)")
    logging_steps: int = option(10, "log the loss every this many steps")
    bf16: str = option("auto", "bf16 autocast while training (fp32 weights and optimiser state): auto = where the "
                       "device computes bf16 natively (GPU, CPU with AVX512-BF16/AMX), true, false",
                       choices=["auto", "true", "false"])

    def __post_init__(self) -> None:
        for name in ("lora_r", "batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and (self.micro_batch_size < 1
                                                  or self.batch_size % self.micro_batch_size):
            raise ConfigError(f"micro_batch_size must divide batch_size ({self.batch_size}), got "
                              f"{self.micro_batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.lr_warmup_ratio < 1:
            raise ConfigError(f"lr_warmup_ratio must be in [0, 1), got {self.lr_warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.epochs <= 0 and self.max_steps < 1:
            raise ConfigError("epochs must be > 0 (or max_steps >= 1)")
        self.bf16 = str(self.bf16).lower()  # YAML may give a boolean
        if self.bf16 not in ("auto", "true", "false"):
            raise ConfigError(f"bf16 must be auto, true or false, got {self.bf16!r}")


class OnlineSelection(NamedTuple):
    """Rho-1's selective language modeling: each micro-batch trains on its top ``keep_ratio`` response tokens by
    current loss - ``ref_loss`` ((total_tokens,) float32: the reference's losses aligned with the tokens, NaN where
    not scored)."""

    ref_loss: np.ndarray
    keep_ratio: float


def training_examples(tokens: TokenTable, keep_mask: np.ndarray | None = None, drop_empty: bool = True,
                      ref_loss: np.ndarray | None = None):
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels`` (lists of int) and, for SLM, ``ref_loss``.

    ``keep_mask``: (total_tokens,) bool aligned with ``tokens``; None trains on all response tokens.
    ``ref_loss``: (total_tokens,) float32 reference losses (NaN where not scored), for online selection.
    Samples with no trained token are left out when ``drop_empty`` (they contribute no loss).
    Returns the dataset and the number of samples left out.
    """
    import datasets

    ids = tokens.flat_input_ids()
    labels = make_labels(ids, tokens.flat_response_mask(), keep_mask)
    offsets = tokens.offsets
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    if ref_loss is not None:
        rows["ref_loss"] = []
        ref_loss = np.nan_to_num(ref_loss, nan=0.0)
    left_out = 0
    for i in range(len(tokens)):
        a, b = offsets[i], offsets[i + 1]
        lab = labels[a:b]
        if drop_empty and not trained_token_count(lab):
            left_out += 1
            continue
        rows["input_ids"].append(ids[a:b].tolist())
        rows["labels"].append(lab.tolist())
        if ref_loss is not None:
            rows["ref_loss"].append(ref_loss[a:b].tolist())
    return datasets.Dataset.from_dict(rows), left_out


class PadCollator:
    """Pads ``input_ids`` (with ``pad_id``) and ``labels`` (with ``IGNORE_INDEX``) to the longest row, builds the
    attention mask. Written here rather than using ``DataCollatorForSeq2Seq`` because that one needs a tokenizer
    with a pad token, and we must not change the user's tokenizer (GPT-2 has none)."""

    def __init__(self, pad_id: int, multiple_of: int = 8):
        self.pad_id, self.multiple_of = pad_id, multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        width = math.ceil(width / self.multiple_of) * self.multiple_of
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
        }
        if "ref_loss" in features[0]:
            batch["ref_loss"] = torch.zeros((len(features), width), dtype=torch.float32)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = torch.as_tensor(f["labels"])
            if "ref_loss" in batch:
                batch["ref_loss"][row, :n] = torch.as_tensor(f["ref_loss"])
        return batch


def _trainer_class():
    from transformers import Trainer

    class MaskedLossTrainer(Trainer):
        """Trainer whose loss is the mean over kept tokens of the whole optimiser step (see module docstring).

        With ``keep_ratio`` set (and a ``ref_loss`` column), tokens are selected online instead: Rho-1's SLM keeps
        the micro-batch's top ``keep_ratio`` response tokens by excess loss, and the step's loss is divided by
        ``kept_count(keep_ratio, response tokens in the step)``.
        """

        loss_is_scaled_for_ga = True  # our loss is already divided by the step's kept-token count

        def __init__(self, *args, keep_ratio: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.keep_ratio = keep_ratio
            # Makes the Trainer count labels != IGNORE_INDEX over all micro-batches of the step (and processes)
            # and pass that count to compute_loss as num_items_in_batch.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            if self.keep_ratio is not None:
                loss_sum, n = slm_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], labels,
                                           inputs["ref_loss"], self.keep_ratio)
                if num_items_in_batch is not None:
                    num_items_in_batch = kept_count(self.keep_ratio, float(num_items_in_batch))
            else:
                loss_sum, n = kept_token_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], labels)
            denom = num_items_in_batch if num_items_in_batch is not None else n
            loss = loss_sum / torch.clamp(torch.as_tensor(denom, device=loss_sum.device, dtype=torch.float32), min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # DDP averages gradients over processes; the count already covers all of them.
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return MaskedLossTrainer


CPU_MICRO_BATCH = 1
"""Default micro-batch of a LoRA fine-tune on a CPU. A CPU gains no speed from wider batches (one row of a few hundred
tokens fills its cores) but pays for their padding, and a step's activations take host memory: measured on
SmolLM2-135M (LoRA, bf16 autocast, 300-token rows), one training step peaks at 5.08 GB RSS with 4 rows and 2.30 GB
with 1; ``tokenclean compare`` with benchmarks took 391 s and 5.33 GB at micro-batches of 4, 345 s and 3.12 GB at
1 (bench/README, issue 31). Not for a full fine-tune: every pass then also casts all the weights to bf16 and adds
into all their gradients, and the demo's four SmolLM2 fine-tunes (batches of 8 short rows) took 74-88 s each at 1
against 49-57 s at 8."""


def micro_batch(cfg: TrainConfig, device_type: str, online: bool = False) -> int:
    """Samples per forward/backward pass: ``cfg.micro_batch_size``, else ``CPU_MICRO_BATCH`` for a LoRA fine-tune on
    a CPU and the whole ``cfg.batch_size`` otherwise; always ``cfg.batch_size`` under online selection (``online``),
    which ranks the tokens of a whole micro-batch."""
    if online:
        if cfg.micro_batch_size not in (None, cfg.batch_size):
            log.warning("--micro-batch-size %d is not used by online selection (slm), which ranks the tokens of "
                        "each whole --batch-size (%d)", cfg.micro_batch_size, cfg.batch_size)
        return cfg.batch_size
    if cfg.micro_batch_size is not None:
        return cfg.micro_batch_size
    return CPU_MICRO_BATCH if device_type == "cpu" and cfg.lora else cfg.batch_size


def training_arguments(cfg: TrainConfig, output_dir: str | os.PathLike, use_bf16: bool, seed: int,
                       use_cpu: bool = False, micro: int | None = None):
    """``TrainingArguments`` for ``cfg``, passing each accumulation step's ``cfg.batch_size`` samples in
    micro-batches of ``micro`` (default: the whole batch; it must divide ``cfg.batch_size``). The samples of an
    optimiser step and its loss (a mean over the step's kept tokens) do not depend on ``micro``. ``use_cpu`` (the
    model is on the CPU) matters under ``torchrun``: without it Accelerate sees no GPU and no CPU request, so every
    process would silently train alone on all the data instead of DDP over gloo."""
    from transformers import TrainingArguments

    micro = micro or cfg.batch_size
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps * (cfg.batch_size // micro),
        optim=cfg.optimizer,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.lr_warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        seed=seed,
        data_seed=seed,
        bf16=use_bf16,
        use_cpu=use_cpu,
        ddp_backend="gloo" if use_cpu and launched_processes() > 1 else None,  # not MPI, even if torch has it
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        logging_steps=cfg.logging_steps,
        save_strategy="no" if fsdp_requested() else "steps",  # see train_model
        save_steps=cfg.save_steps,
        save_total_limit=1,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def route_trainer_logs(trainer) -> None:
    """Send the Trainer's loss logs to the ``tokenclean`` logger (stderr, silenced by ``--quiet``) instead of
    printing them to stdout, which carries the command's result. The progress bar stays."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                                     else f"{k} {v}" for k, v in logs.items()))

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    had_bar = any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if had_bar:
        trainer.add_callback(QuietProgress)
    trainer.add_callback(LogCallback)


def train_model(
    model,
    tokenizer,
    tokens: TokenTable,
    out_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    keep_mask: np.ndarray | None = None,
    drop_empty: bool = True,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    slm: OnlineSelection | None = None,
    save_adapter: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` on the kept response tokens of ``tokens`` and save a standard model directory.

    ``keep_mask``: (total_tokens,) bool aligned with ``tokens`` (None: all response tokens). The LoRA (if any) is
    merged and the result written to ``out_dir`` with ``save_pretrained`` (safetensors) together with the
    tokenizer; with ``save_adapter`` the unmerged adapter is also saved to ``out_dir/adapter`` (PEFT format), so
    the base and this model can be scored with one model in memory (``scoring.score_adapter_pair``).
    Checkpoints go to ``checkpoint_dir`` (default ``<out_dir>.checkpoints``); a call that finds one there resumes
    from it, and the directory is removed once the model is saved. ``slm``: select tokens online with Rho-1's SLM
    (``OnlineSelection``; a ``(ref_loss, keep_ratio)`` tuple too) instead of a fixed mask. Under DDP
    (``torchrun``) every process trains and process 0 saves. Returns counts and timings.
    """
    cfg = cfg or TrainConfig()
    slm = OnlineSelection(*slm) if slm is not None else None
    out_dir = Path(out_dir)
    dataset, left_out = training_examples(tokens, keep_mask, drop_empty, slm.ref_loss if slm else None)
    if len(dataset) == 0:
        raise ConfigError("no sample has a token to train on (all labels are masked)")
    trained_tokens = sum(trained_token_count(lab) for lab in dataset["labels"])
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    trainer = _masked_trainer(model, tokenizer, dataset, cfg, ckpt_dir, seed, slm.keep_ratio if slm else None)
    start = time.perf_counter()
    last = last_complete_checkpoint(ckpt_dir)
    with adapter_sums_in_fp32(trainer.model) if cfg.lora and trainer.args.bf16 else contextlib.nullcontext():
        result = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start
    _save_trained(trainer, tokenizer, cfg, out_dir, ckpt_dir, save_adapter)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    counts = {
        "samples": len(dataset),
        "samples_left_out": left_out,
        "trained_tokens": int(kept_count(slm.keep_ratio, trained_tokens)) if slm else trained_tokens,
        "optimizer_steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "resumed_from": last,
        "seconds": round(seconds, 3),
    }
    trainer.accelerator.free_memory()  # the accelerator keeps the model and optimizer it prepared
    del trainer
    return counts


def _masked_trainer(model, tokenizer, dataset, cfg: TrainConfig, ckpt_dir: Path, seed: int,
                    keep_ratio: float | None):
    """The ``MaskedLossTrainer`` of one fine-tune: seeded, with the LoRA adapter (if any) attached, its logs routed
    to the ``tokenclean`` logger, checkpointing to ``ckpt_dir``."""
    # Under FSDP the model comes in on the CPU and the Trainer moves each rank's shard to its GPU.
    device_type = "cuda" if fsdp_requested() and torch.cuda.is_available() else next(model.parameters()).device.type
    use_bf16 = resolve_bf16(cfg.bf16, device_type)
    from transformers import set_seed

    set_seed(seed)  # before the adapter is created, so its initialisation is reproducible
    if cfg.lora:
        model = with_lora(model, cfg, device_type)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    trainer = _trainer_class()(
        model=model,
        args=training_arguments(cfg, ckpt_dir, use_bf16, seed, use_cpu=device_type == "cpu",
                                micro=micro_batch(cfg, device_type, online=keep_ratio is not None)),
        train_dataset=dataset,
        data_collator=PadCollator(pad_id),
        keep_ratio=keep_ratio,
    )
    route_trainer_logs(trainer)
    if trainer.is_fsdp_enabled:
        log.warning("FSDP: no checkpoints during training (their sharded format keeps its index as a pickle, which "
                    "tokenclean never loads); a killed training stage starts again from its first step")
    if os.environ.get("TOKENCLEAN_TEST_KILL_AT"):
        trainer.add_callback(crash_after_save(ckpt_dir.name))
    return trainer


def _save_trained(trainer, tokenizer, cfg: TrainConfig, out_dir: Path, ckpt_dir: Path, save_adapter: bool) -> None:
    """Process 0 writes the trained model (LoRA merged; the adapter too with ``save_adapter``) and the tokenizer
    to ``out_dir``, then removes the checkpoints once every process is done with them."""
    save = trainer.args.should_save  # process 0 only: after DDP training every process holds the same weights
    model = _whole_model(trainer, cfg.lora) if trainer.is_fsdp_enabled else trainer.model
    if cfg.lora and save_adapter and save:
        model.save_pretrained(out_dir / ADAPTER_DIR)
    if cfg.lora and save:
        model = model.merge_and_unload()
    if save:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    trainer.accelerator.wait_for_everyone()  # no process still writes its part of a checkpoint
    if save:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _whole_model(trainer, lora: bool):
    """After FSDP training: the trained model with every weight whole, on process 0's CPU (None elsewhere).

    Every process takes part in gathering the full state dict (``Accelerator.get_state_dict``: to process 0, on
    the CPU); process 0 builds an empty copy of the model on the meta device (with the same LoRA adapter) and
    takes the gathered tensors as its weights, so the model is held once, not twice, on the CPU.
    """
    from transformers import AutoModelForCausalLM

    log.info("FSDP: gathering the trained weights on process 0")
    state = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.args.should_save:
        return None
    trained = trainer.accelerator.unwrap_model(trainer.model)
    config = trained.get_base_model().config if lora else trained.config
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype)
    if lora:
        from peft import get_peft_model

        copy = get_peft_model(copy, trained.peft_config["default"])
    missing, unexpected = copy.load_state_dict(state, strict=False, assign=True)
    tied = getattr(config, "tie_word_embeddings", False)  # the output projection is the input embedding, saved once
    if unexpected or [name for name in missing if not (tied and name.endswith("lm_head.weight"))]:
        raise RuntimeError(f"the gathered FSDP state does not fit the model: missing {missing}, unexpected "
                           f"{unexpected}")
    if tied:
        copy.tie_weights()
    return copy
