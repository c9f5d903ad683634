"""tokenclean: token-level cleaning of supervised fine-tuning data (Pang et al., ICML 2025).

The Python API mirrors the CLI: ``score``, ``select``, ``train``, ``export`` and ``run`` (a whole pipeline).
"""

__version__ = "0.1.0"

from .api import export, prepare_tokens, score, select, train  # noqa: E402
from .core.artifacts import Scores, Selection  # noqa: E402
from .core.data import DataConfig  # noqa: E402
from .errors import ConfigError, DataError, MismatchError, TokencleanError  # noqa: E402
from .runs.pipeline import RunConfig, RunSettings, run_pipeline as run  # noqa: E402
from .compute.scoring import ScoreConfig  # noqa: E402
from .selection.select import SelectConfig, select_tokens  # noqa: E402
from .core.tokens import IGNORE_INDEX, TokenizeConfig, TokenTable  # noqa: E402
from .compute.training import TrainConfig  # noqa: E402

__all__ = [
    "ConfigError", "DataConfig", "DataError", "IGNORE_INDEX", "MismatchError", "RunConfig", "RunSettings",
    "ScoreConfig", "Scores", "SelectConfig", "Selection", "TokenTable", "TokencleanError", "TokenizeConfig",
    "TrainConfig", "export", "prepare_tokens", "run", "score", "select", "select_tokens", "train",
]
