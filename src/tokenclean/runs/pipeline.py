"""Multi-stage runs in a run directory, resumable and cached.

A run is a list of stages (tokens -> reference -> scores -> selection -> model -> export). Each stage writes its
outputs into ``<run>/<stage>/`` atomically (built under a temporary name, then renamed) together with
``stage.json``, which records the stage's *key*: a hash of its settings and of the keys of the stages it reads.
Running the same command again skips every stage whose key is unchanged; changing a setting recomputes the
stages that depend on it and nothing else, but only with ``--overwrite``: a run directory whose ``config.yaml``
differs from the new settings is refused, never silently overwritten. A stage that is killed resumes from its
last finished unit (scoring shards, training checkpoints), kept in ``checkpoints/<stage>/`` while it runs.

Methods (``fixed`` here; the baselines and self-evolving cleaning register themselves the same way) are short
functions over these stages, registered by name in ``METHODS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import Scores, Selection
from ..config import as_dict, option
from ..core.data import DataConfig
from ..compute.distributed import barrier, from_rank0, fsdp_requested, process_rank
from ..errors import ConfigError
from ..io import atomic_dir, atomic_write_text, crash_point, read_json, write_json
from ..compute.modeling import load_tokenizer, path_fingerprint
from ..compute.scoring import ScoreConfig
from ..selection.select import SelectConfig
from ..core.tokens import TokenizeConfig, TokenLayout, TokenTable
from ..compute.training import TrainConfig

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
    rounds: int = option(4, "self-evolving: rounds of cleaning (the pool is split into rounds + 1 chunks)")
    contiguous: bool = option(False, "self-evolving: split the pool into chunks in file order instead of shuffled")
    eval_data: str | None = option(None, "held-out data: the final model's mean loss on its response tokens is "
                                   "reported")
    eval_fraction: float = option(0.0, "hold out this share of the pool (fixed split, never trained on) for the "
                                  "held-out loss, when no --eval-data is given")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: CUDA when available)")
    dtype: str = option("auto", "scoring weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
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

    SECTIONS = {"run": RunSettings, "data": DataConfig, "tokenize": TokenizeConfig, "score": ScoreConfig,
                "select": SelectConfig, "train": TrainConfig}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a flat mapping of field names (YAML keys / flags); each name belongs to one section."""
        from ..config import build

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
        from ..compute.modeling import resolve_device, resolve_dtype

        resolve_dtype(r.dtype, resolve_device(r.device))  # a missing GPU is reported before anything runs


def _check_unique_fields() -> None:
    from ..config import field_names

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
    """A run directory and its stages.

    Stage names are paths under the run directory. Stages that depend only on the data and the base model
    (``tokens``, ``scores/base``) live at the top; stages that depend on the seed live under ``seed_ns`` and those
    of one method under ``seed_ns + method_ns``. A single ``run`` uses empty namespaces; ``compare`` gives each seed
    and method its own, so shared stages are computed once and reused by all.
    """

    def __init__(self, cfg: RunConfig, seed_ns: str = "", method_ns: str = "", shared: Run | None = None):
        cfg.check()
        self.cfg = cfg
        self.dir = Path(cfg.run.out)
        from ..io import disk_full_as_error

        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"{self.dir}: is a file, expected a run directory for --out")
        with disk_full_as_error(self.dir):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except PermissionError as e:
                raise ConfigError(f"{self.dir}: cannot create the run directory ({e.strerror}); choose another "
                                  "--out") from None
        self.seed_ns, self.ns = seed_ns, seed_ns + method_ns
        self.stages: dict[str, dict[str, Any]] = {}  # name -> stage.json of stages run or reused
        self._cache: dict[str, Any] = shared._cache if shared else {}
        # every stage entered through this run or its variants, in order: {stage, seconds (this call), reused}
        self.timings: list[dict[str, Any]] = shared.timings if shared else []

    def variant(self, method: str, seed: int, seed_ns: str, method_ns: str) -> Run:
        """The same run directory for another method and seed, sharing loaded state."""
        import copy

        cfg = copy.deepcopy(self.cfg)
        cfg.run.method, cfg.run.seed = method, seed
        return Run(cfg, seed_ns, method_ns, shared=self)

    # -- shared state -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if "tokenizer" not in self._cache:
            self._cache["tokenizer"] = load_tokenizer(self.cfg.run.base, self.cfg.run.trust_remote_code)
        return self._cache["tokenizer"]

    @property
    def base_fingerprint(self) -> str:
        if "base" not in self._cache:
            self._cache["base"] = path_fingerprint(self.cfg.run.base)
        return self._cache["base"]

    def path(self, stage: str) -> Path:
        path = self.dir / stage
        if not path.resolve().is_relative_to(self.dir.resolve()):
            raise ConfigError(f"stage {stage!r} would write outside the run directory {self.dir}")
        return path

    def work_dir(self, name: str, inputs: dict[str, Any]) -> Path:
        """``checkpoints/<name>/``: where stage ``name`` keeps its finished units (scoring shards, Trainer
        checkpoints) while it runs, so a killed run resumes there. Units left by a run of the stage with other
        inputs are discarded first."""
        path = self.path(f"checkpoints/{name}")
        stamp, key = path / "stage-key.txt", key_of(name, inputs)
        if process_rank() == 0 and path.exists() and (not stamp.exists() or stamp.read_text() != key):
            log.info("[%s] discarding the unfinished work of a run with other settings", name)
            shutil.rmtree(path)
        atomic_write_text(stamp, key)
        return path

    def key(self, stage: str) -> str:
        return self.stages[stage]["key"]

    # -- the stage mechanism ------------------------------------------------------------------------------------
    def stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(tmp_dir) -> result`` as stage ``name`` unless its directory records the same inputs.

        ``inputs`` must contain everything the result depends on (settings and upstream stage keys).
        """
        key = key_of(name, inputs)
        record = self._record(name)
        if record is not None:
            if record.get("key") == key:
                log.info("[%s] up to date, skipped", name)
                self.stages[name] = record
                self.timings.append({"stage": name, "seconds": 0.0, "reused": True})
                return record["result"]
            changed = sorted(k for k in inputs if record.get("inputs", {}).get(k) != inputs[k])
            log.info("[%s] settings changed (%s): recomputing", name, ", ".join(changed) or "code")
        log.info("[%s] running", name)
        self._remove_leftovers(self.path(name))
        start = time.perf_counter()
        with atomic_dir(self.path(name)) as tmp:  # under torchrun every rank runs fn; rank 0's output is kept
            result = fn(tmp)
            record = {"stage": name, "key": key, "inputs": inputs, "result": result,
                      "seconds": round(time.perf_counter() - start, 3)}
            crash_point(f"stage:{name}")
            write_json(tmp / "stage.json", record)
        barrier()  # the other ranks read rank 0's files from here on
        if process_rank() == 0:
            shutil.rmtree(self.dir / "checkpoints" / name, ignore_errors=True)  # its finished units: not needed now
        log.info("[%s] done in %.1fs", name, record["seconds"])
        self.stages[name] = record
        self.timings.append({"stage": name, "seconds": record["seconds"], "reused": False})
        return result

    def _record(self, name: str) -> dict[str, Any] | None:
        """The ``stage.json`` of a finished stage ``name`` (rank 0's view under torchrun, so all ranks skip or
        run a stage together), or None."""
        done = self.path(name) / "stage.json"
        return from_rank0(read_json(done) if done.exists() else None)

    def up_to_date(self, name: str, inputs: dict[str, Any]) -> bool:
        """Whether stage ``name`` finished with these inputs (``stage`` would skip it)."""
        record = self._record(name)
        return record is not None and record.get("key") == key_of(name, inputs)

    @staticmethod
    def _remove_leftovers(path: Path) -> None:
        """Remove what a killed run left of ``path``: half-built temporary directories (``.NAME.*.tmp``, and
        ``..NAME.*.tmp`` of the API call inside the stage) and a replaced one (``.NAME.old``)."""
        if process_rank() != 0 or not path.parent.is_dir():  # rank 0 owns the files under torchrun
            return
        for p in path.parent.iterdir():
            if (p.name.startswith((f".{path.name}.", f"..{path.name}.")) and p.name.endswith(".tmp")) or \
                    p.name == f".{path.name}.old":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # -- stages ----------------------------------------------------------------------------------------------------
    def tokens_stage(self) -> dict[str, TokenTable]:
        """Tokenize the pool, the warm-up data and the held-out data. Stage ``tokens`` with one directory each:
        ``pool`` (what methods train on), ``warmup`` (if given), ``eval`` (``--eval-data``, or a fixed
        ``--eval-fraction`` of the pool, which is then removed from ``pool``)."""
        from ..api import prepare_tokens

        c = self.cfg
        inputs = {"data": path_fingerprint(c.run.data), "tokenizer": self._tokenizer_key(),
                  "warmup_data": c.run.warmup_data and path_fingerprint(c.run.warmup_data),
                  "eval_data": c.run.eval_data and path_fingerprint(c.run.eval_data),
                  "eval_fraction": 0.0 if c.run.eval_data else c.run.eval_fraction,
                  "data_config": asdict(c.data), "tokenize_config": asdict(c.tokenize)}

        def build(tmp: Path) -> dict[str, Any]:
            pool, report = prepare_tokens(c.run.data, self.tokenizer, c.data, c.tokenize)
            result: dict[str, Any] = {"load": report.to_dict()}
            tables = {"pool": pool}
            for name, source in (("warmup", c.run.warmup_data), ("eval", c.run.eval_data)):
                if source:
                    tables[name], rep = prepare_tokens(source, self.tokenizer, c.data, c.tokenize)
                    result[f"{name}_load"] = rep.to_dict()
            if inputs["eval_fraction"]:
                # A fixed split (seed 0), the same for every method and seed, so held-out losses are comparable.
                perm = np.random.default_rng(0).permutation(len(pool))
                n_eval = max(1, int(round(inputs["eval_fraction"] * len(pool))))
                tables["eval"] = pool.select(np.sort(perm[:n_eval]))
                tables["pool"] = pool.select(np.sort(perm[n_eval:]))
                result["load"]["heldout"] = n_eval  # used rows held out of the pool
            for name, table in tables.items():
                table.save(tmp / name)
                result[name] = _counts(table.meta)
            return result

        self.stage("tokens", inputs, build)
        return {d.name: TokenTable.load(d) for d in sorted(self.path("tokens").iterdir()) if d.is_dir()}

    def _tokenizer_key(self) -> str:
        from ..compute.modeling import tokenizer_fingerprint

        if "tokenizer_key" not in self._cache:  # serialising a large vocabulary is not free; once per process
            self._cache["tokenizer_key"] = tokenizer_fingerprint(self.tokenizer)
        return self._cache["tokenizer_key"]

    def warmup_split(self, tables: dict[str, TokenTable]) -> TokenTable:
        """The warm-up set: the given warm-up data, or a seeded random ``warmup_fraction`` of the pool."""
        if "warmup" in tables:
            return tables["warmup"]
        pool, c = tables["pool"], self.cfg.run
        n_warm = max(1, int(round(c.warmup_fraction * len(pool))))
        return pool.select(np.sort(np.random.default_rng(c.seed).permutation(len(pool))[:n_warm]))

    def train_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                    keep: tuple[str, np.ndarray] | None = None, slm: tuple[str, np.ndarray] | None = None,
                    save_adapter: bool = False) -> Path:
        """Train ``model_path`` on ``tokens``: the kept tokens of ``keep`` = (key, mask), Rho-1 online selection
        with ``slm`` = (key, reference losses), else all response tokens. ``save_adapter``: keep the unmerged
        LoRA adapter in ``adapter/`` too."""
        from ..api import train

        c = self.cfg
        inputs = {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"],
                  "keep": keep and keep[0],
                  "slm": slm and [slm[0], c.select.keep_ratio], "train_config": asdict(c.train),
                  "drop_empty": c.select.drop_empty, "seed": c.run.seed}
        mask = keep[1] if keep else None
        self.stage(name, inputs, lambda tmp: train(
            str(model_path), tokens, tmp, tokenizer=self.tokenizer, train_config=c.train,
            drop_empty=c.select.drop_empty, seed=c.run.seed, device=c.run.device,
            trust_remote_code=c.run.trust_remote_code, checkpoint_dir=self.work_dir(name, inputs),
            slm=(slm[1], c.select.keep_ratio) if slm else None, selection=_as_selection(mask, tokens),
            save_adapter=save_adapter))
        return self.path(name)

    @property
    def cache(self) -> bool | str:
        """The score cache setting for ``api.score``: False (``--no-cache``), a directory, or True (the default)."""
        return self.cfg.run.cache and (self.cfg.run.cache_dir or True)

    def _score_inputs(self, model_key: str, tokens: TokenTable) -> dict[str, Any]:
        return {"model": model_key, "tokens": tokens.meta["tokens_fingerprint"], "dtype": self.cfg.run.dtype}

    def score_stage(self, name: str, model_key: str, model_path: str | Path, tokens: TokenTable,
                    cache: bool = False, compute: Callable[[], Scores] | None = None) -> Scores:
        """Token losses of ``tokens`` under ``model_path``, through the score cache when ``cache`` (and the run's
        ``--cache``). ``compute`` replaces scoring ``model_path`` alone (e.g. scores from an adapter pair)."""
        from ..api import score
        from .cache import save_scores

        c = self.cfg
        inputs = self._score_inputs(model_key, tokens)
        compute = compute or (lambda: score(
            str(model_path), tokens, score_config=c.score, device=c.run.device, dtype=c.run.dtype,
            trust_remote_code=c.run.trust_remote_code, cache=cache and self.cache,
            work_dir=self.work_dir(name, inputs)))

        def fn(tmp: Path) -> dict[str, Any]:
            scores = compute()
            save_scores(scores, tmp)
            return scores.meta

        self.stage(name, inputs, fn)
        return Scores.load(self.path(name))

    def select_stage(self, name: str, base: Scores, ref: Scores, inputs: dict[str, Any],
                     config: SelectConfig | None = None) -> Selection:
        """Select from two ``Scores`` (``inputs`` identifies them: their stage keys)."""
        from ..api import select

        config = config or self.cfg.select
        self.stage(name, {**inputs, "select_config": asdict(config)},
                   lambda tmp: select(base, ref, tmp, config).meta)
        return Selection.load(self.path(name))

    def mask_stage(self, name: str, tokens: TokenTable, inputs: dict[str, Any],
                   make: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> Selection:
        """Save the keep-mask ``make() -> (mask, counts)`` over ``tokens`` as a ``Selection`` stage, for methods
        whose mask does not come from ``select_stage`` (random, self-evolving's union of rounds)."""
        def build(tmp: Path) -> dict[str, Any]:
            mask, counts = make()
            _as_selection(mask, tokens, counts).save(tmp)
            return counts

        self.stage(name, {**inputs, "tokens": tokens.meta["tokens_fingerprint"]}, build)
        return Selection.load(self.path(name))

    def export_stage(self, name: str, tokens: TokenTable, keep: tuple[str, np.ndarray] | None) -> dict[str, Any]:
        """Export ``tokens`` with ``keep`` = (key, mask), or all response tokens."""
        from ..compute.export import export_dataset

        inputs = {"tokens": tokens.meta["tokens_fingerprint"], "keep": keep and keep[0],
                  "drop_empty": self.cfg.select.drop_empty}
        return self.stage(name, inputs, lambda tmp: export_dataset(
            tokens, tmp, keep[1] if keep else None, self.cfg.select.drop_empty,
            parquet_path=tmp / "parquet" / "train.parquet"))

    def base_scores(self, pool: TokenTable) -> Scores:
        """The base model's losses over the whole pool: computed once, shared by every method and seed, and
        taken from (or stored in) the score cache, so other run directories over the same base, tokenizer and
        data reuse them."""
        return self.score_stage("scores/base", self.base_fingerprint, self.cfg.run.base, pool, cache=True)

    def reference_model(self, tables: dict[str, TokenTable]) -> Path:
        """The warm-up reference: the base trained on all response tokens of the warm-up set. With ``--lora``
        its unmerged adapter is kept in ``adapter/`` as well, for ``base_and_reference``."""
        return self.train_stage(f"{self.seed_ns}reference", self.base_fingerprint, self.cfg.run.base,
                                self.warmup_split(tables), save_adapter=self.cfg.train.lora)

    def reference(self, tables: dict[str, TokenTable]) -> tuple[Path, Scores]:
        """The warm-up reference model and its losses over the pool."""
        ref = self.reference_model(tables)
        return ref, self.score_stage(f"{self.seed_ns}scores/reference", self.key(f"{self.seed_ns}reference"), ref,
                                     tables["pool"])

    def base_and_reference(self, tables: dict[str, TokenTable]) -> tuple[Scores, Scores]:
        """The base model's and the warm-up reference's losses over the pool (stages ``scores/base`` and
        ``scores/reference``, the same keys and files however they are computed).

        When the reference is a LoRA adapter on the base (``--lora``, the default) and neither stage is done, one
        model is loaded instead of two: the base is scored with the adapter off, then the reference with it
        merged (``api.score_pair``; cached base losses are reused); the losses equal the two-model path's up to
        float rounding. Otherwise (and under FSDP, whose sharded weights cannot take a merge) each is scored with its
        own model (the base through the score cache)."""
        c, pool = self.cfg, tables["pool"]
        ref = self.reference_model(tables)
        names = ("scores/base", f"{self.seed_ns}scores/reference")
        models = (self.base_fingerprint, self.key(f"{self.seed_ns}reference"))
        adapter = ref / "adapter"
        if (not adapter.is_dir() or fsdp_requested()
                or any(self.up_to_date(n, self._score_inputs(m, pool)) for n, m in zip(names, models))):
            return self.base_scores(pool), self.score_stage(names[1], models[1], ref, pool)
        from ..api import score_pair

        pair: list[Scores] = []
        work = {n: self._score_inputs(m, pool) for n, m in zip(names, models)}

        def compute(i: int) -> Scores:  # both scored on first use, with one model load
            if not pair:
                pair.extend(score_pair(c.run.base, adapter, pool, score_config=c.score, device=c.run.device,
                                       dtype=c.run.dtype, trust_remote_code=c.run.trust_remote_code,
                                       cache=self.cache, work_dir=self.work_dir(f"{self.seed_ns}scores/pair", work)))
            return pair[i]

        scores = (self.score_stage(names[0], models[0], c.run.base, pool, compute=lambda: compute(0)),
                  self.score_stage(names[1], models[1], ref, pool, compute=lambda: compute(1)))
        if process_rank() == 0:
            shutil.rmtree(self.dir / "checkpoints" / f"{self.seed_ns}scores/pair", ignore_errors=True)
        return scores

    def heldout_stage(self, model_stage: str, tables: dict[str, TokenTable]) -> float | None:
        """Mean loss of the held-out response tokens under the model of stage ``model_stage`` (None without
        held-out data). The mean divides by the number of held-out response tokens."""
        if "eval" not in tables:
            return None
        name = f"{model_stage.rsplit('model', 1)[0]}heldout"
        return self.score_stage(name, self.key(model_stage), self.path(model_stage), tables["eval"]).meta[
            "mean_token_loss"]

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def write_config(self, ignore: tuple[str, ...] = ()) -> None:
        """Save the settings as ``config.yaml``, after checking that ``--out`` is new, empty, or a run of the same
        settings (any of them but ``ignore`` and ``overwrite``); with ``--overwrite`` the old file is kept as
        ``config.<time>.yaml``."""
        import yaml

        path, new = self.dir / "config.yaml", self.cfg.flat()
        if path.exists():
            old = {**RunConfig().flat(), **(yaml.safe_load(path.read_text(encoding="utf-8")) or {})}
            ignore = (*ignore, "overwrite", "out")
            changed = sorted(k for k in new if k not in ignore and _same(old.get(k)) != _same(new[k]))
            if changed and not self.cfg.run.overwrite:
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
                more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
                raise ConfigError(f"{self.dir} holds a run with other settings ({shown}{more}); pass --overwrite to "
                                  "recompute the stages they change, or choose a new --out")
            if changed:
                atomic_write_text(self.dir / f"config.{time.strftime('%Y%m%d-%H%M%S')}.yaml",
                                  path.read_text(encoding="utf-8"))
        elif _holds_other_files(self.dir):
            raise ConfigError(f"{self.dir}: exists and is not empty, but holds no tokenclean run (no config.yaml); "
                              "choose a new or empty --out")
        atomic_write_text(path, yaml.safe_dump(new, sort_keys=False))

    def write_summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        summary = {
            "method": self.cfg.run.method,
            "seed": self.cfg.run.seed,
            "run_dir": str(self.dir / self.ns) if self.ns else str(self.dir),
            "versions": library_versions(),
            **extra,
            "seconds": round(sum(rec.get("seconds") or 0 for rec in self.stages.values()), 3),
            "stages": {name: {"seconds": rec.get("seconds"), "key": rec["key"]} for name, rec in self.stages.items()},
        }
        write_json(self.path(self.ns) / "summary.json", summary)
        return summary


def _holds_other_files(directory: Path) -> bool:
    """Whether ``directory`` holds files that are not a tokenclean run's: visible entries (hidden ones are
    temporary files) and no stage directory (a run begun through the API, before its config was written)."""
    visible = [p for p in directory.iterdir() if not p.name.startswith(".")]
    return bool(visible) and not any(directory.glob("*/stage.json"))


def _same(value: Any) -> Any:
    """A setting as compared between runs: paths that exist by their absolute form (``./a`` and ``a`` agree)."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


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


def _as_selection(mask: np.ndarray | None, tokens: TokenTable, counts: dict[str, Any] | None = None
                  ) -> Selection | None:
    """``mask`` ((total_tokens,) bool over ``tokens``) as a ``Selection`` carrying the tokens' fingerprints and
    ``counts``."""
    if mask is None:
        return None
    return Selection(tokens.sample_ids, mask, tokens.offsets, {**TokenLayout.of(tokens.meta).meta(), **(counts or {})})


def _counts(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("samples", "tokens", "response_tokens", "truncated_samples", "no_response")}


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg.run.method`` in ``cfg.run.out`` and return the summary (also written to ``summary.json``)."""
    run = Run(cfg)
    run.write_config()
    return run_method(run)


def run_method(run: Run) -> dict[str, Any]:
    """Run one method within ``run``'s namespaces and write its ``summary.json``."""
    result = METHODS[run.cfg.run.method](run)
    return run.write_summary(result)


from .methods import METHODS  # noqa: E402  (the methods use Run; registered after it is defined)
