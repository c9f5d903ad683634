"""The result of one method's run: what ``summary.json`` holds, typed, so ``compare``, the demo and the report read
named fields instead of guessing keys.

A method (``runs.methods``) returns a ``MethodSummary`` without the bookkeeping fields; ``Run.write_summary`` adds
them (``method``, ``seed``, ``run_dir``, ``versions``, ``compute``, ``base_model``, ``seconds``, ``stages``) and
writes the file. The types are ``TypedDict``s: the file stays plain JSON, as older runs wrote it.
"""

from __future__ import annotations

from typing import Any, TypedDict


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
