"""LoRA adapters for training: attaching one (peft), and the two places where its arithmetic on a CPU or under bf16
autocast is changed from peft's own, each with the measurement that made it necessary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def adapter_sums_in_fp32(model) -> Iterator[None]:
    """While the block runs, every LoRA layer of ``model`` adds its adapter's output to its frozen layer's output in
    fp32 (a hook hands the frozen layer's bf16 output on as fp32) instead of in bf16. For LoRA training under bf16
    autocast: bf16's resolution (~0.4% of a value) rounds away most of a young adapter's contribution, so the
    training forward does not see what the adapter has learnt.

    Measured (``bench/bench_bf16_training.py --curve 40 --lora --held-out 16 [--fp32-adapter-sum]``, SmolLM2,
    bench/README): bf16 minus fp32 training loss at most +0.101 nats with bf16 sums, +0.015 with fp32 sums; held-out
    loss of the trained adapters, read in fp32, +0.0083 nats at step 40 with bf16 sums, +0.0007 with fp32 sums. Only
    the output projections (whose output meets the fp32 residual stream) in fp32: +0.066 and +0.0052, so every layer
    gets it (an fp32 output that meets fp32 arithmetic before the next matmul, RoPE or the MLP's gating, keeps the
    adapter's part). Cost: bf16 LoRA steps 1.75-1.80x fp32's instead of 1.80-1.92x (1.87x once ``RandDropout``
    came). The hooks are removed on exit, before the adapter is merged."""
    handles = [module.base_layer.register_forward_hook(_output_in_fp32) for module in model.modules()
               if hasattr(module, "base_layer") and hasattr(module, "lora_A")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_in_fp32(module, args, output):
    return output.float() if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16 else output


def with_lora(model, cfg: Any, device_type: str = "cpu"):
    """``model`` wrapped in the LoRA adapter of ``cfg`` (a ``training.TrainConfig``: its ``lora_*`` settings; peft),
    only the adapter trainable. On a CPU the adapter's dropout draws its masks with ``RandDropout`` (same
    distribution, faster there)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules[0] if cfg.lora_target_modules == ["all-linear"]
        else cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if device_type == "cpu":
        for module in model.modules():
            for name, dropout in getattr(module, "lora_dropout", {}).items():
                if type(dropout) is torch.nn.Dropout:
                    module.lora_dropout[name] = RandDropout(dropout.p)
    return model


class RandDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose mask comes from ``torch.rand`` instead of ``bernoulli_``: the same distribution (each
    element kept with probability 1 - p, kept ones scaled by 1 / (1 - p)), another random stream. Written because
    on a CPU torch's dropout spends most of its time in ``bernoulli_`` (512 x 1536 fp32 on the 2-core EPYC: dropout
    5.5 ms, ``rand`` + compare + scale 3.2 ms), and LoRA's dropout of every adapted layer's input was 26% of a
    SmolLM2 LoRA step under bf16 autocast (bench/README). The uniforms are fp32 whatever the input's dtype, so p is
    kept to 2^-24."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))
