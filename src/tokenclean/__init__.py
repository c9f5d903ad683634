"""tokenclean: token-level cleaning of supervised fine-tuning data (Pang et al., ICML 2025).

The Python API mirrors the CLI: ``score``, ``select``, ``train``, ``export`` and ``run`` (a whole pipeline).

Names are imported on first use (PEP 562), so ``import tokenclean`` (and ``tokenclean --help``) loads no torch.
How the code is organised: ``core`` (the token contract), ``compute`` (models), ``selection`` (keep-masks),
``runs`` (run directories, stages, methods), ``report``, ``demo``, ``evaluation``; see the README.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "export": ("api", "export"), "prepare_tokens": ("api", "prepare_tokens"), "score": ("api", "score"),
    "select": ("api", "select"), "train": ("api", "train"), "score_prompt_free": ("api", "score_prompt_free"),
    "compare": ("runs.compare", "compare"),
    "Scores": ("core.artifacts", "Scores"), "Selection": ("core.artifacts", "Selection"),
    "DataConfig": ("core.data", "DataConfig"),
    "ConfigError": ("errors", "ConfigError"), "DataError": ("errors", "DataError"),
    "MismatchError": ("errors", "MismatchError"), "TokencleanError": ("errors", "TokencleanError"),
    "RunConfig": ("runs.config", "RunConfig"), "RunSettings": ("runs.config", "RunSettings"),
    "run": ("runs.pipeline", "run_pipeline"),
    "ScoreConfig": ("compute.scoring", "ScoreConfig"),
    "SelectConfig": ("selection.select", "SelectConfig"), "select_tokens": ("selection.select", "select_tokens"),
    "IGNORE_INDEX": ("core.labels", "IGNORE_INDEX"), "TokenizeConfig": ("core.tokens", "TokenizeConfig"),
    "TokenOrigin": ("core.tokens", "TokenOrigin"), "TokenTable": ("core.tokens", "TokenTable"),
    "TokenLayout": ("core.tokens", "TokenOrigin"),  # TokenOrigin's former name, kept for code that imports it
    "TrainConfig": ("compute.training", "TrainConfig"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenclean' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
