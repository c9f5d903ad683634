"""The settings of a run: one dataclass per stage, a flat namespace of names shared by YAML files and flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..compute.scoring import ScoreConfig
from ..compute.training import TrainConfig
from ..config import as_dict, build, current_names, field_names, option
from ..core.data import DataConfig
from ..core.tokens import TokenizeConfig
from ..errors import ConfigError
from ..selection.select import SelectConfig
from .warmup import WarmupConfig


@dataclass
class RunSettings:
    """Run: what to clean, with which base model, into which directory."""

    base: str | None = option(None, "base model (the model SFT starts from): a model directory, hub id, .gguf file "
                              "(or a directory holding one), or pkg:PACKAGE, an installed package carrying a GGUF")
    data: str | None = option(None, "the SFT pool: .json/.jsonl/.parquet file, saved datasets directory or hub id")
    out: str | None = option(None, "run directory (created; an existing run resumes)")
    method: str = option("fixed", "cleaning method")
    warmup_data: str | None = option(None, "data for the warm-up reference model (default: --warmup-fraction of "
                                     "the pool)")
    warmup_fraction: float = option(0.2, "share of the pool (random, seeded) used to train the reference")
    seed: int = option(0, "seed for data splits, sampling and training")
    rounds: int = option(4, "self-evolving: rounds of cleaning (the pool is split into rounds + 1 chunks)")
    contiguous: bool = option(False, "self-evolving: split the pool into chunks in file order instead of shuffled")
    eval_data: str | None = option(None, "held-out data: the final model's mean loss on its response tokens is "
                                   "reported")
    eval_fraction: float = option(0.0, "hold out this share of the pool (fixed split, never trained on) for the "
                                  "held-out loss, when no --eval-data is given")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: CUDA when available)")
    dtype: str = option("auto", "scoring weights dtype: auto = float32 on every device (bf16's loss error, about "
                        "as large as most scores, moves the selection: bench/README.md), float32, or bfloat16 for "
                        "speed (2.3-2.8x faster on a CPU with AVX512-BF16)")
    eval_dtype: str = option("float32", "weights dtype for measuring models (the held-out loss; compare's "
                             "benchmarks): float32, or auto / bfloat16 for speed. bf16 weights round away part of a "
                             "fine-tune: on SmolLM2 they raised final models' held-out loss by 0.007-0.012 nats, "
                             "unevenly across methods, and the base's by 0.001")
    cache: bool = option(True, "take the base model's token losses from the score cache when another run "
                         "computed them for the same base, tokenizer and data, and store new ones there "
                         "(--no-cache: always compute)")
    cache_dir: str | None = option(None, "score cache directory (default: $TOKENCLEAN_CACHE, else "
                                   "~/.cache/tokenclean)")
    trust_remote_code: bool = option(False, "allow model/tokenizer code from the model repository to run")
    overwrite: bool = option(False, "run even if --out holds a run with other settings: stages whose inputs "
                             "changed are recomputed, the old config.yaml is kept as config.<time>.yaml")

    def __post_init__(self) -> None:
        if not 0.0 < self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in (0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")


@dataclass
class RunConfig:
    """Every setting of a run, by stage."""

    run: RunSettings = field(default_factory=RunSettings)
    data: DataConfig = field(default_factory=DataConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)

    SECTIONS = {"run": RunSettings, "data": DataConfig, "tokenize": TokenizeConfig, "score": ScoreConfig,
                "select": SelectConfig, "train": TrainConfig, "warmup": WarmupConfig}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a flat mapping of field names (YAML keys / flags); each name belongs to one section. A
        setting's former name is accepted, with a warning (``config.current_names``)."""
        values = current_names(values, tuple(cls.SECTIONS.values()))
        return cls(**{name: build(section, values) for name, section in cls.SECTIONS.items()})

    def pool_data(self) -> DataConfig:
        """The data settings the pool is read with: ``--warmup-rated-by``'s field picks the warm-up rows, so it
        reaches no token on purpose (it is not lost: ``runs.warmup`` reads it)."""
        rated = self.warmup.warmup_rated_by
        if not rated or rated in (self.data.ignore_fields or []):
            return self.data
        return dataclasses.replace(self.data, ignore_fields=[*(self.data.ignore_fields or []), rated])

    def flat(self) -> dict[str, Any]:
        return {k: v for name in self.SECTIONS for k, v in as_dict(getattr(self, name)).items()}

    def check(self) -> None:
        """Refuse missing or contradicting settings and a device that is not there, before anything runs. The
        method and whether it can use the scorer are checked by ``methods.check_method``."""
        r = self.run
        missing = [f"--{n}" for n in ("base", "data", "out") if getattr(r, n) is None]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")
        from ..compute.modeling import resolve_device, resolve_dtype

        if r.warmup_data and self.warmup.warmup_rated_by:
            raise ConfigError("--warmup-rated-by picks the warm-up rows from the pool; it cannot be combined with "
                              "--warmup-data (your own warm-up set)")

        resolve_dtype(r.dtype, resolve_device(r.device))  # a missing GPU is reported before anything runs
        resolve_dtype(r.eval_dtype, resolve_device(r.device))


def _check_unique_fields() -> None:
    seen: set[str] = set()
    for section in RunConfig.SECTIONS.values():
        names = field_names(section)
        assert not names & seen, f"setting names must be unique across sections: {names & seen}"
        seen |= names


_check_unique_fields()
