"""Multi-stage runs in a run directory, resumable and cached.

A run is a list of stages (tokens -> reference -> scores -> selection -> model -> export). Each stage writes its
outputs into ``<run>/<stage>/`` atomically (built under a temporary name, then renamed) together with
``stage.json``, which records the stage's *key*: a hash of its settings and of the keys of the stages it reads.
Running the same command again skips every stage whose key is unchanged; changing a setting recomputes the
stages that depend on it and nothing else.

Methods (``fixed`` here; the baselines and self-evolving cleaning register themselves the same way) are short
functions over these stages, registered by name in ``METHODS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Scores, Selection
from .config import as_dict, option
from .data import DataConfig
from .errors import ConfigError
from .io import atomic_dir, read_json, write_json
from .modeling import load_tokenizer, path_fingerprint
from .scoring import ScoreConfig
from .selection import SelectConfig
from .tokens import TokenizeConfig, TokenTable
from .training import TrainConfig

log = logging.getLogger("tokenclean")


@dataclass
class RunSettings:
    """Run: what to clean, with which base model, into which directory."""

    base: str | None = option(None, "base model: a model directory or hub id (the model SFT starts from)")
    data: str | None = option(None, "the SFT pool: .json/.jsonl/.parquet file, saved datasets directory or hub id")
    out: str | None = option(None, "run directory (created; an existing run resumes)")
    method: str = option("fixed", "cleaning method")
    warmup_data: str | None = option(None, "data for the warm-up reference model (default: --warmup-fraction of "
                                     "the pool)")
    warmup_fraction: float = option(0.2, "share of the pool (random, seeded) used to train the reference")
    seed: int = option(0, "seed for data splits, sampling and training")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: CUDA when available)")
    dtype: str = option("auto", "scoring weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    trust_remote_code: bool = option(False, "allow model/tokenizer code from the model repository to run")

    def __post_init__(self) -> None:
        if not 0.0 < self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in (0, 1), got {self.warmup_fraction}")


@dataclass
class RunConfig:
    """Every setting of a run, by stage."""

    run: RunSettings = field(default_factory=RunSettings)
    data: DataConfig = field(default_factory=DataConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = {"run": RunSettings, "data": DataConfig, "tokenize": TokenizeConfig, "score": ScoreConfig,
                "select": SelectConfig, "train": TrainConfig}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a flat mapping of field names (YAML keys / flags); each name belongs to one section."""
        from .config import build

        return cls(**{name: build(section, values) for name, section in cls.SECTIONS.items()})

    def flat(self) -> dict[str, Any]:
        return {k: v for name in self.SECTIONS for k, v in as_dict(getattr(self, name)).items()}

    def check(self) -> None:
        r = self.run
        missing = [f"--{n}" for n in ("base", "data", "out") if getattr(r, n) is None]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")
        if r.method not in METHODS:
            raise ConfigError(f"unknown method {r.method!r}, expected one of {sorted(METHODS)}")


def _check_unique_fields() -> None:
    from .config import field_names

    seen: set[str] = set()
    for section in RunConfig.SECTIONS.values():
        names = field_names(section)
        assert not names & seen, f"setting names must be unique across sections: {names & seen}"
        seen |= names


_check_unique_fields()


def key_of(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """A run directory and its stages."""

    def __init__(self, cfg: RunConfig):
        cfg.check()
        self.cfg = cfg
        self.dir = Path(cfg.run.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stages: dict[str, dict[str, Any]] = {}  # name -> stage.json of stages run or reused
        self._tokenizer = None
        self._base_fingerprint: str | None = None

    # -- shared state -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.run.base, self.cfg.run.trust_remote_code)
        return self._tokenizer

    @property
    def base_fingerprint(self) -> str:
        if self._base_fingerprint is None:
            self._base_fingerprint = path_fingerprint(self.cfg.run.base)
        return self._base_fingerprint

    def path(self, stage: str) -> Path:
        return self.dir / stage

    def key(self, stage: str) -> str:
        return self.stages[stage]["key"]

    # -- the stage mechanism ------------------------------------------------------------------------------------
    def stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(tmp_dir) -> result`` as stage ``name`` unless its directory records the same inputs.

        ``inputs`` must contain everything the result depends on (settings and upstream stage keys).
        """
        key = key_of(name, inputs)
        done = self.path(name) / "stage.json"
        if done.exists():
            record = read_json(done)
            if record.get("key") == key:
                log.info("[%s] up to date, skipped", name)
                self.stages[name] = record
                return record["result"]
            changed = sorted(k for k in inputs if record.get("inputs", {}).get(k) != inputs[k])
            log.info("[%s] settings changed (%s): recomputing", name, ", ".join(changed) or "code")
        log.info("[%s] running", name)
        start = time.perf_counter()
        with atomic_dir(self.path(name)) as tmp:
            result = fn(tmp)
            record = {"stage": name, "key": key, "inputs": inputs, "result": result,
                      "seconds": round(time.perf_counter() - start, 3)}
            write_json(tmp / "stage.json", record)
        log.info("[%s] done in %.1fs", name, record["seconds"])
        self.stages[name] = record
        return result

    # -- stages ----------------------------------------------------------------------------------------------------
    def tokens_stage(self) -> tuple[TokenTable, TokenTable | None]:
        """Tokenize the pool (and the warm-up data, if given). Stage ``tokens``: pool/ and warmup/."""
        from .api import prepare_tokens

        c = self.cfg
        inputs = {"data": path_fingerprint(c.run.data), "warmup_data": c.run.warmup_data and
                  path_fingerprint(c.run.warmup_data), "tokenizer": self._tokenizer_key(),
                  "data_config": asdict(c.data), "tokenize_config": asdict(c.tokenize)}

        def build(tmp: Path) -> dict[str, Any]:
            pool, report = prepare_tokens(c.run.data, self.tokenizer, c.data, c.tokenize)
            pool.save(tmp / "pool")
            result = {"pool": _counts(pool.meta), "load": report.to_dict()}
            if c.run.warmup_data:
                warm, wreport = prepare_tokens(c.run.warmup_data, self.tokenizer, c.data, c.tokenize)
                warm.save(tmp / "warmup")
                result.update(warmup=_counts(warm.meta), warmup_load=wreport.to_dict())
            return result

        self.stage("tokens", inputs, build)
        pool = TokenTable.load(self.path("tokens") / "pool")
        warm_dir = self.path("tokens") / "warmup"
        return pool, (TokenTable.load(warm_dir) if warm_dir.exists() else None)

    def _tokenizer_key(self) -> str:
        from .modeling import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    def split_stage(self, pool: TokenTable, warm: TokenTable | None) -> TokenTable:
        """The warm-up set: the given warm-up data, or a seeded random ``warmup_fraction`` of the pool."""
        if warm is not None:
            return warm
        c = self.cfg.run
        n = len(pool)
        n_warm = max(1, int(round(c.warmup_fraction * n)))
        idx = np.sort(np.random.default_rng(c.seed).permutation(n)[:n_warm])
        return pool.select(idx)

    def train_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                    selection: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Train ``model_path`` on ``tokens`` (kept tokens of stage ``selection``, else all response tokens)."""
        from .api import train

        c = self.cfg
        inputs = {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"],
                  "selection": selection and self.key(selection), "train_config": asdict(c.train),
                  "drop_empty": c.select.drop_empty, "seed": c.run.seed, **(extra or {})}
        sel = Selection.load(self.path(selection)) if selection else None
        self.stage(name, inputs, lambda tmp: train(
            str(model_path), tokens, tmp, selection=sel, tokenizer=self.tokenizer, train_config=c.train,
            drop_empty=c.select.drop_empty, seed=c.run.seed, device=c.run.device,
            trust_remote_code=c.run.trust_remote_code, checkpoint_dir=self.dir / "checkpoints" / name))
        return self.path(name)

    def score_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable) -> Scores:
        """Token losses of ``tokens`` under ``model_path``."""
        from .api import score

        c = self.cfg
        inputs = {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"], "dtype": c.run.dtype}
        self.stage(name, inputs, lambda tmp: score(
            str(model_path), tokens, tmp, score_config=c.score, device=c.run.device, dtype=c.run.dtype,
            trust_remote_code=c.run.trust_remote_code).meta)
        return Scores.load(self.path(name))

    def select_stage(self, name: str, base: str, ref: str, config: SelectConfig | None = None) -> Selection:
        from .api import select

        config = config or self.cfg.select
        inputs = {"base": self.key(base), "ref": self.key(ref), "select_config": asdict(config)}
        self.stage(name, inputs, lambda tmp: select(self.path(base), self.path(ref), tmp, config).meta)
        return Selection.load(self.path(name))

    def export_stage(self, tokens: TokenTable, selection: str | None) -> dict[str, Any]:
        from .export import export_dataset

        inputs = {"tokens": tokens.meta["tokens_fingerprint"], "selection": selection and self.key(selection),
                  "drop_empty": self.cfg.select.drop_empty}
        keep = Selection.load(self.path(selection)).keep_mask if selection else None
        return self.stage("export", inputs, lambda tmp: export_dataset(
            tokens, tmp, keep, self.cfg.select.drop_empty, parquet_path=tmp / "parquet" / "train.parquet"))

    def reference_stage(self, pool: TokenTable, warm: TokenTable | None) -> Path:
        """The warm-up reference: the base trained on all response tokens of the warm-up set."""
        warmup = self.split_stage(pool, warm)
        return self.train_stage("reference", self.base_fingerprint, self.cfg.run.base, warmup,
                                extra={"warmup": warmup.meta["tokens_fingerprint"]})

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        import yaml

        from .io import atomic_write_text

        atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(self.cfg.flat(), sort_keys=False))

    def write_summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        summary = {
            "method": self.cfg.run.method,
            "run_dir": str(self.dir),
            **extra,
            "stages": {name: {"seconds": rec.get("seconds"), "key": rec["key"]} for name, rec in self.stages.items()},
        }
        write_json(self.dir / "summary.json", summary)
        return summary


def _counts(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("samples", "tokens", "response_tokens", "truncated_samples", "no_response")}


def run_fixed(run: Run) -> dict[str, Any]:
    """Fixed-model cleaning: warm-up reference -> score the pool with base and reference -> select -> train the
    base on the kept tokens -> export."""
    pool, warm = run.tokens_stage()
    reference = run.reference_stage(pool, warm)
    run.score_stage("scores/base", run.base_fingerprint, run.cfg.run.base, pool)
    run.score_stage("scores/reference", run.key("reference"), reference, pool)
    selection = run.select_stage("selection", "scores/base", "scores/reference")
    run.train_stage("model", run.base_fingerprint, run.cfg.run.base, pool, selection="selection")
    export = run.export_stage(pool, "selection")
    return _summary_counts(run, selection.meta, export)


def _summary_counts(run: Run, selection: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    tokens = run.stages["tokens"]["result"]
    model = run.stages["model"]["result"]
    return {
        "data": tokens["load"],
        "pool": tokens["pool"],
        "selection": {k: selection[k] for k in ("response_tokens", "kept_tokens", "dropped_tokens", "kept_share",
                                                "samples_zero_kept", "score_threshold") if k in selection},
        "training": {k: model[k] for k in ("samples", "samples_left_out", "trained_tokens", "optimizer_steps",
                                           "train_loss")},
        "export": {k: export[k] for k in ("rows", "rows_left_out", "trained_tokens")},
        "model_dir": str(run.path("model")),
        "export_dir": str(run.path("export")),
    }


METHODS: dict[str, Callable[[Run], dict[str, Any]]] = {"fixed": run_fixed}


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg.run.method`` in ``cfg.run.out`` and return the summary (also written to ``summary.json``)."""
    run = Run(cfg)
    run.write_config()
    start = time.perf_counter()
    result = METHODS[cfg.run.method](run)
    return run.write_summary({**result, "seconds": round(time.perf_counter() - start, 3)})
