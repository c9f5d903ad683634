"""``tokenclean run``: one method in one run directory, resumable and cached.

A run is a list of stages (tokens -> reference -> scores -> selection -> model -> export) in ``<run>/<stage>/``
(``runs.layout``), each skipped when its directory records the same inputs (``runs.store``). Running the same
command again skips every finished stage; changing a setting recomputes the stages that depend on it and nothing
else, but only with ``--overwrite``: a run directory whose ``config.yaml`` differs from the new settings is refused,
never silently overwritten. A stage that is killed resumes from its last finished unit. Methods are short functions
over the stages (``runs.stages``, functions of a ``runs.run.Run``), registered by name in ``runs.methods.METHODS``.
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig, RunSettings
from .methods import METHODS, check_method
from .run import Run
from .store import key_of
from .summary import MethodSummary, library_versions, write_summary

__all__ = ["METHODS", "Run", "RunConfig", "RunSettings", "key_of", "library_versions", "run_method", "run_pipeline"]


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg.run.method`` in ``cfg.run.out`` and return the summary (also written to ``summary.json``)."""
    check_method(cfg.run.method, cfg.select)
    run = Run(cfg)
    with run.locked():
        run.write_config()
        return run_method(run)


def run_method(run: Run) -> MethodSummary:
    """Run one method within ``run``'s layout and write its ``summary.json``."""
    return write_summary(run, METHODS[run.cfg.run.method].run(run))
