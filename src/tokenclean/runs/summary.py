"""The result of one method's run: what ``summary.json`` holds, typed, so ``compare``, the demo and the report read
named fields instead of guessing keys.

A method (``runs.methods``) returns a ``MethodSummary`` without the bookkeeping fields; ``write_summary`` adds them
(``method``, ``seed``, ``run_dir``, ``versions``, ``compute``, ``base_model``, ``seconds``, ``stages``) and writes
the file. The types are ``TypedDict``s: the file stays plain JSON, as older runs wrote it. Importing this module
imports no torch (the report reads the types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from ..io import write_json

if TYPE_CHECKING:
    from .run import Run


class SelectionSummary(TypedDict, total=False):
    """What the method trained on, in response tokens (``selection.selection_counts``' fields, when it selects)."""

    response_tokens: int
    kept_tokens: int
    dropped_tokens: int
    kept_share: float
    samples_zero_kept: int
    score_threshold: float
    gated_tokens: int
    score_health: dict[str, Any]
    online: bool  # slm: selected per micro-batch, no stored mask


class TrainingSummary(TypedDict):
    samples: int
    samples_left_out: int
    trained_tokens: int  # tokens with a label, summed over self-evolving's rounds
    optimizer_steps: int
    train_loss: float | None


class MethodSummary(TypedDict, total=False):
    """``summary.json`` of one method and seed."""

    method: str
    seed: int
    run_dir: str
    versions: dict[str, Any]
    compute: dict[str, Any]
    base_model: dict[str, Any]
    data: dict[str, Any]  # the pool's load report (rows used, skipped by reason, truncated)
    pool: dict[str, Any]
    selection: SelectionSummary
    training: TrainingSummary
    export: dict[str, Any]
    heldout_loss: float | None  # mean loss over the held-out response tokens; None without held-out data
    model_stage: str  # the stage (path under the run directory) of the final model
    model_dir: str
    export_dir: str
    score_health: dict[str, Any]  # fixed, rho, self-evolving: selection.health of the scores it selected from
    rounds: list[dict[str, Any]]  # self-evolving: one record per round
    seconds: float
    stages: dict[str, dict[str, Any]]


def write_summary(run: Run, extra: MethodSummary) -> MethodSummary:
    """``extra`` (what the method returned) with the run's bookkeeping fields, written to ``summary.json``."""
    summary: MethodSummary = {
        "method": run.cfg.run.method,
        "seed": run.cfg.run.seed,
        "run_dir": str(run.dir / run.layout.ns) if run.layout.ns else str(run.dir),
        "versions": library_versions(),
        "compute": _compute_facts(run),
        "base_model": _base_model_record(run),
        **extra,
        "seconds": round(sum(rec.get("seconds") or 0 for rec in run.stages.values()), 3),
        "stages": {name: {"seconds": rec.get("seconds"), "key": rec["key"]} for name, rec in run.stages.items()},
    }
    write_json(run.layout.summary, summary)
    return summary


def library_versions() -> dict[str, Any]:
    """Versions of Python and the libraries that decide a run's numbers, and torch's CPU thread count."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in ("tokenclean", "torch", "transformers", "peft", "datasets", "numpy", "pyarrow", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions["torch_cuda"] = torch.version.cuda
    versions["torch_threads"] = torch.get_num_threads()
    return versions


def _compute_facts(run: Run) -> dict[str, Any]:
    """What ran this run's numbers: device, CPU capability, whether bf16 is native, the scoring dtype and whether
    training autocasts to bf16 (``compute.hardware``)."""
    import torch

    from ..compute.hardware import compute_facts, resolve_bf16
    from ..compute.modeling import resolve_device

    device = resolve_device(run.cfg.run.device)
    return {**compute_facts(device, getattr(torch, run.resolved_dtype())),
            "train_bf16": resolve_bf16(run.cfg.train.bf16, device)}


def _base_model_record(run: Run) -> dict[str, Any]:
    """The base model as given, its fingerprint, and for a GGUF source the file it was converted from
    (``compute.gguf``: name, size, sha256, converter versions)."""
    from ..compute import gguf

    record = {"source": str(run.cfg.run.base), "fingerprint": run.base_fingerprint}
    if gguf.is_gguf_source(run.cfg.run.base):
        record["gguf"] = gguf.read_source(gguf.converted_dir(run.cfg.run.base))
    return record
