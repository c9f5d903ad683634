"""What the hardware computes natively, and the dtype rule that follows from it.

The rule (``--dtype auto`` for scoring, ``--bf16 auto`` for training): bf16 where the device multiplies bf16
natively, fp32 elsewhere. Natively means a CUDA GPU for which ``torch.cuda.is_bf16_supported()`` holds, or a CPU
with AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension (Arm). On a CPU without them torch still runs bf16
matmuls, but by converting to fp32 on the fly: measured on an AVX2-only EPYC, slower than fp32 (see
``bench/README.md``), so ``auto`` never assumes bf16 pays.

A run records ``compute_facts(device, dtype)`` (CPU model, torch's capability string, the relevant CPU flags,
whether bf16 is native and the dtype chosen), so a throughput figure can be read against the hardware it came from.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

# CPU flags (as /proc/cpuinfo spells them) that give native bf16 matmuls; "bf16" is Arm's (e.g. Graviton 3).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags worth recording next to a CPU benchmark figure.
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "bf16", "sve")
_BF16_CHOICES = ("auto", "true", "false")
NATIVE_BF16_ENV = "TOKENCLEAN_NATIVE_BF16"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()`` where that file does not exist."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """torch's name for the vector instructions its CPU kernels use here (``AVX2``, ``AVX512``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively: torch's own probe (AVX512-BF16 or AMX tiles, through the
    cpuinfo library) where this torch has it, or the flags of ``/proc/cpuinfo``. ``$TOKENCLEAN_NATIVE_BF16`` (``0``
    or ``1``) overrides the detection, e.g. to keep ``auto`` at fp32 on a bf16 CPU (the test suite does, so that
    its numerical checks do not depend on the machine)."""
    override = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        from ..errors import ConfigError

        raise ConfigError(f"${NATIVE_BF16_ENV} must be 0 or 1, got {override!r}")
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None and probe() for probe in probes):
        return True
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (a CUDA GPU that supports it, or a CPU with bf16 instructions)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The ``auto`` rule: bf16 where ``device`` computes it natively, fp32 elsewhere."""
    return torch.bfloat16 if has_native_bf16(device) else torch.float32


def scoring_dtype(setting: str) -> str:
    """The weights dtype that selection scores are computed in: ``auto`` is ``float32`` on every device; an explicit
    dtype (``bfloat16`` for speed) is kept. Why not bf16 where native: the score is a difference of two losses, and
    bf16's error on each (0.018-0.033 nats mean) is as large as most scores, so it reorders the middle of the
    ranking. Measured on SmolLM2-135M with AVX512-BF16 (bench/README.md, 2026-12-07): no bf16 variant's top-60%
    agrees >= 99% with fp32's (bf16 weights 97.8%, bf16 trunk + fp32 head 98.4%, autocast 98.8%, with a reference
    that moved far; bf16 weights 77.0% with the default warm-up's reference), though bf16 scores 2.3-2.8x faster.
    Training (``resolve_bf16``) and generation keep bf16 where native: they move no selection."""
    return "float32" if setting == "auto" else setting


def resolve_bf16(setting: str | bool, device: torch.device | str) -> bool:
    """Whether training uses bf16 autocast: ``auto`` follows ``auto_dtype``; ``true``/``false`` force it."""
    value = str(setting).lower()
    if value not in _BF16_CHOICES:
        from ..errors import ConfigError

        raise ConfigError(f"unknown bf16 setting {setting!r}, expected one of {', '.join(_BF16_CHOICES)}")
    return auto_dtype(device) == torch.bfloat16 if value == "auto" else value == "true"


def compute_facts(device: torch.device | str, dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """What a run records about the hardware it ran on: ``device``, ``cpu_model``, ``cpu_capability`` (torch's),
    ``cpu_flags`` (those of ``RECORDED_FLAGS`` present), ``native_bf16``, ``dtype`` (as chosen, e.g. ``bfloat16``)
    and, on CUDA, ``gpu``."""
    device = torch.device(device)
    facts: dict[str, Any] = {
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_flags": sorted(cpu_flags() & set(RECORDED_FLAGS)),
        "native_bf16": has_native_bf16(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(device)
    if dtype is not None:
        facts["dtype"] = str(dtype).replace("torch.", "")
    return facts
