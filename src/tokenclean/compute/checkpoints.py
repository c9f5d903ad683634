"""Training checkpoints: which one a killed fine-tune resumes from, and the crash hook the resume tests use."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("tokenclean")


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``ckpt_dir`` that the Trainer finished writing (its ``trainer_state.json``
    is written last), or None. A checkpoint cut off by a kill is skipped, so the resume starts from the one
    before it instead of failing on a missing file."""
    if not ckpt_dir.is_dir():
        return None
    steps = {int(d.name.removeprefix("checkpoint-")): d for d in ckpt_dir.glob("checkpoint-*")
             if d.name.removeprefix("checkpoint-").isdigit()}
    for step in sorted(steps, reverse=True):
        if (steps[step] / "trainer_state.json").exists():
            return str(steps[step])
        log.warning("skipping the unfinished checkpoint %s", steps[step])
    return None


def crash_after_save(name: str):
    """A callback for the crash-safety tests: ``crash_point("train:<name>:step<N>")`` once process 0 (the writer)
    has saved checkpoint N."""
    from transformers import TrainerCallback

    from ..io import crash_point

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                crash_point(f"train:{name}:step{state.global_step}")

    return CrashAfterSave()
