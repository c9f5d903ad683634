"""``tokenclean demo``: token cleaning shown from measurements, offline, on a laptop CPU.

1. **Data.** The generated world (``demo.world``): a pretraining corpus and SFT samples whose response tokens carry a
   ground-truth kind (informative / generic / noise). Or, with ``--data --corpus``, real data without kinds.
2. **Base model.** A tokenizer and a tiny Llama pretrained on the corpus (``demo.pretrain``), cached in
   ``<out>/base``.
3. **Methods.** full, random, rho, slm, fixed and self-evolving through ``compare`` (the same machinery as
   ``tokenclean compare``) over 3 seeds, in ``<out>/run``.
4. **Measurements** per method and seed (``demo.metrics``): held-out loss on informative tokens, accuracy of
   greedy answers to held-out prompts, and how the selection treated each kind of token.
5. **Conclusion** computed from those numbers, the time per stage, and the report (``<out>/run/report``).

Every step is cached: a second run with the same settings reuses the world, the base model and every stage.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import Scores, Selection
from ..runs.compare import DEFAULT_METHODS, Column, compare, render_markdown
from ..config import option
from ..core.data import read_rows
from .metrics import (answer_checker, generate, kind_codes, kind_mean, prompt_ids, save_kinds,
                           selection_quality)
from ..errors import ConfigError
from ..io import atomic_write_text, write_json
from ..runs.config import RunConfig
from ..runs.layout import HELDOUT_BASE, TOKENS, Layout
from ..runs.stages import Run

log = logging.getLogger("tokenclean")


@dataclass
class DemoConfig:
    """Demo: what to run it on and where."""

    out: str = option("tokenclean-demo", "output directory: world/, base/ (the pretrained model), run/ (methods, "
                      "comparison, report); a second run reuses everything finished")
    quick: bool = option(False, "a small world, model and schedule, one seed: a smoke test well under a minute")
    seeds: list[int] | None = option(None, "seeds; each runs every method (default: 0 1 2; --quick: 0)")
    methods: list[str] = option(list(DEFAULT_METHODS), "methods to compare")
    data: str | None = option(None, "real-data mode: an SFT file to clean instead of the generated world (no "
                              "ground-truth token kinds then); needs --corpus")
    corpus: list[str] | None = option(None, "real-data mode: text files or directories to pretrain the base on")
    tokenizer: str | None = option(None, "real-data mode: a tokenizer directory to use instead of training one")
    eval_data: str | None = option(None, "real-data mode: held-out SFT file (default: rows of --data not sampled "
                                   "for training)")
    max_train: int = option(600, "real-data mode: clean a seeded random sample of at most this many rows of --data")
    max_eval: int = option(150, "real-data mode: held-out rows for loss and accuracy, at most")
    device: str | None = option(None, "cpu, cuda, ... (default: CUDA when available)")
    overwrite: bool = option(False, "rerun into an --out made with other settings (the stages those settings "
                             "change are recomputed)")

    def __post_init__(self) -> None:
        real = {"--corpus": self.corpus, "--tokenizer": self.tokenizer, "--eval-data": self.eval_data}
        if self.data is None and any(v is not None for v in real.values()):
            given = [k for k, v in real.items() if v is not None]
            raise ConfigError(f"{', '.join(given)} only apply with --data (real-data mode)")
        if self.data is not None and not self.corpus:
            raise ConfigError("--data needs --corpus: the text the demo pretrains its base model on (no pretrained "
                              "weights are downloaded)")
        if self.max_train < 10 or self.max_eval < 1:
            raise ConfigError(f"--max-train must be >= 10 and --max-eval >= 1, got {self.max_train}, {self.max_eval}")


@dataclass(frozen=True)
class Profile:
    """The demo's fixed settings: world size, base model preset, run settings, generation length."""

    world: dict[str, Any]
    pretrain: str
    seeds: tuple[int, ...]
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields (flat)
    max_new_tokens: int = 96


_RUN = {
    "warmup_fraction": 0.2, "rounds": 2, "max_seq_len": 256,
    # a tiny from-scratch model: full fine-tuning at a high learning rate, small batches
    "lora": False, "learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "batch_size": 16,
    "gradient_accumulation_steps": 1, "epochs": 2.0, "logging_steps": 1000, "save_steps": 1000,
}  # fmt: skip
PROFILES = {
    "default": Profile(world={"n_train": 600, "n_eval": 100}, pretrain="tiny", seeds=(0, 1, 2), run=_RUN,
                       max_new_tokens=80),
    "quick": Profile(world={"n_train": 96, "n_eval": 24, "corpus_docs": 500}, pretrain="quick", seeds=(0,),
                     run={**_RUN, "rounds": 1, "max_seq_len": 160, "batch_size": 8, "epochs": 1.0},
                     max_new_tokens=32),
}  # fmt: skip

# The demo's own columns; compare's wall time and token counts stay in comparison.md/json.
DEMO_COLUMNS: list[Column] = [
    ("informative_loss", "informative-token loss", "{:.3f}"),
    ("heldout_loss", "held-out loss", "{:.3f}"),
    ("accuracy", "accuracy", "{:.1%}"),
    ("informative_kept", "informative kept", "{:.1%}"),
    ("generic_dropped", "generic dropped", "{:.1%}"),
    ("garbled_dropped", "garbled dropped", "{:.1%}"),
    ("wrong_answer_dropped", "wrong answers dropped", "{:.1%}"),
    ("precision", "kept that are informative", "{:.1%}"),
]


@dataclass
class DemoInputs:
    train: Path
    eval: Path
    corpus: list[Path]
    tokenizer: Path | None
    world: bool  # ground-truth token kinds available


class Clock:
    """Wall time of the demo's own steps: ``with clock("step"): ...``."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - start))


def run_demo(cfg: DemoConfig, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``cfg.out``; return ``compare``'s result plus ``conclusion``, ``timings`` and ``paths``.

    ``overrides``: flat ``RunConfig`` settings (e.g. ``keep_ratio``, ``epochs``) on top of the demo's profile.
    """
    from .pretrain import PretrainConfig, pretrain

    profile = PROFILES["quick" if cfg.quick else "default"]
    seeds = list(cfg.seeds or profile.seeds)
    out = Path(cfg.out)
    clock = Clock()
    with clock("data: world" if cfg.data is None else "data: sample"):
        inputs = _inputs(cfg, profile, out)
    with clock("pretrain base model"):
        base = pretrain(inputs.corpus, out / "base", PretrainConfig.preset(profile.pretrain), inputs.tokenizer,
                        progress=progress)
    run_cfg = RunConfig.from_flat({**profile.run, **(overrides or {}), "base": str(base), "data": str(inputs.train),
                                   "eval_data": str(inputs.eval), "out": str(out / "run"), "device": cfg.device,
                                   "overwrite": cfg.overwrite,
                                   "method": cfg.methods[0],
                                   "skip_invalid": True})  # sampled rows that do not fit: skipped and counted
    root = Run(run_cfg)
    tables = root.tokens_stage()
    with clock("token kinds, prompts"):
        measure = DemoMetrics(root, tables, inputs, profile.max_new_tokens)
    result = compare(run_cfg, cfg.methods, seeds, extra_metrics=measure, extra_columns=DEMO_COLUMNS)
    base_scores = Scores.load(root.path(HELDOUT_BASE))
    if inputs.world:
        result["base_informative_loss"] = measure.informative_loss(base_scores)
    loads = root.result(TOKENS)
    result["data"] = {"train": loads["load"], "eval": loads.get("eval_load")}
    result["conclusion"] = conclude(result, inputs.world)
    stage_timings = result["timings"]
    result["timings"] = time_per_stage(root.timings + stage_timings, clock.steps)
    result["paths"] = {"world" if inputs.world else "data": str(inputs.train.parent), "base": str(base),
                       "run": run_cfg.run.out, "report": str(root.layout.report / "index.html")}
    result["settings"] = {"demo": asdict(cfg), "profile": asdict(profile)}
    write_json(root.layout.demo, result)  # before the report, which shows the conclusion
    with clock("report"):
        _report(run_cfg.run.out)
    result["timings"] = time_per_stage(root.timings + stage_timings, clock.steps)
    write_json(root.layout.demo, result)
    atomic_write_text(root.layout.demo.with_name("demo.md"), render(result))
    return result


# --- inputs --------------------------------------------------------------------------------------------------


def _inputs(cfg: DemoConfig, profile: Profile, out: Path) -> DemoInputs:
    """The generated world, or a seeded sample of the user's data, as files under ``out``."""
    from .world import WorldConfig, write_world

    if cfg.data is None:
        world = out / "world"
        wcfg = WorldConfig(**profile.world)
        if not _same_json(world / "world.json", asdict(wcfg)):  # the world is a pure function of its config
            write_world(wcfg, world)
        return DemoInputs(world / "train.jsonl", world / "eval.jsonl", [world / "corpus.txt"], None, True)
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


# --- measurements ----------------------------------------------------------------------------------------------


class DemoMetrics:
    """``compare``'s ``extra_metrics`` for the demo: called with each method's run and summary."""

    def __init__(self, root: Run, tables: dict, inputs: DemoInputs, max_new_tokens: int):
        self.pool, self.eval, self.world = tables["pool"], tables["eval"], inputs.world
        tokenizer, template = root.tokenizer, self.pool.meta["template"]
        if self.world:
            self.codes, self.garbled = kind_codes(self.pool, inputs.train, tokenizer, root.cfg.data)
            self.eval_codes, _ = kind_codes(self.eval, inputs.eval, tokenizer, root.cfg.data)
            save_kinds(self.pool, self.codes, root.layout.kinds)
        self.rows, self.prompts = prompt_ids(inputs.eval, tokenizer, template, root.cfg.data)
        self.checker = answer_checker(self.rows)
        self.max_new_tokens = max_new_tokens

    def informative_loss(self, heldout: Scores) -> float:
        return kind_mean(heldout.token_loss, self.eval_codes, "informative")

    def __call__(self, run: Run, summary: dict[str, Any]) -> dict[str, float]:
        model_stage = summary["model_stage"]
        metrics: dict[str, float] = {}
        if self.world:
            heldout = Scores.load(run.path(Layout.next_to(model_stage, "heldout")))
            metrics["informative_loss"] = self.informative_loss(heldout)
            keep = self._keep_mask(run, summary["method"])
            if keep is not None:
                metrics.update(selection_quality(keep, self.codes, self.garbled))
        if self.checker is not None:
            metrics["accuracy"] = self._accuracy(run, summary, Layout.next_to(model_stage, "accuracy"))["accuracy"]
        return metrics

    def _keep_mask(self, run: Run, method: str) -> np.ndarray | None:
        """What the method trained on: its saved selection; every response token for full; None for slm, whose
        selection changes at every step."""
        selection = run.path(run.layout.selection)
        if (selection / Selection.FILE).is_file():
            return Selection.load(selection).keep_mask
        return self.pool.flat_response_mask() if method == "full" else None

    def _accuracy(self, run: Run, summary: dict[str, Any], stage: str) -> dict[str, Any]:
        """Greedy answers to the held-out prompts, graded: a stage, so a re-run does not generate again. Writes
        ``generations.jsonl`` (one row per prompt: id, generated text, correct)."""
        inputs = {"model": run.key(summary["model_stage"]), "eval": self.eval.meta["tokens_fingerprint"],
                  "max_new_tokens": self.max_new_tokens}

        def build(tmp: Path) -> dict[str, Any]:
            texts = generate(summary["model_dir"], self.prompts, self.max_new_tokens, run.cfg.run.device)
            correct = [bool(self.checker(row, text)) for row, text in zip(self.rows, texts)]
            by_task: dict[str, list[bool]] = defaultdict(list)
            for row, ok in zip(self.rows, correct):
                by_task[str(row.get("task", "all"))].append(ok)
            atomic_write_text(tmp / "generations.jsonl", "".join(
                json.dumps({"id": row.get("id"), "generated": text, "correct": ok}) + "\n"
                for row, text, ok in zip(self.rows, texts, correct)))
            return {"accuracy": float(np.mean(correct)), "n": len(correct),
                    "per_task": {task: float(np.mean(v)) for task, v in sorted(by_task.items())}}

        return run.stage(stage, inputs, build)


# --- conclusion, timings, rendering ----------------------------------------------------------------------------


def conclude(result: dict[str, Any], world: bool) -> list[str]:
    """Sentences computed from the numbers: does fixed-model cleaning beat full and random seed by seed, which
    method is best on each measure, and (world) what the selection kept and dropped against the issue's targets."""
    per = {(r["method"], r["seed"]): r["metrics"] for r in result["runs"]}
    means = {r["method"]: r["mean"] for r in result["rows"]}
    seeds, methods = result["seeds"], result["methods"]
    key, what = ("informative_loss", "loss on informative tokens") if world else ("heldout_loss", "loss")
    lines = []
    if "fixed" in methods:
        for other in ("full", "random"):
            if other not in methods:
                continue
            wins = sum(per[("fixed", s)][key] < per[(other, s)][key] for s in seeds)
            lines.append(f"Fixed-model cleaning reached a lower held-out {what} than {other} in {wins} of "
                         f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({means['fixed'][key]:.3f} vs "
                         f"{means[other][key]:.3f} on average).")
    best = min(methods, key=lambda m: means[m][key])
    lines.append(f"Lowest held-out {what}: {best} ({means[best][key]:.3f}).")
    if all("accuracy" in means[m] for m in methods):
        top = max(methods, key=lambda m: means[m]["accuracy"])
        versus = f"; full: {means['full']['accuracy']:.1%}" if "full" in methods and top != "full" else ""
        lines.append(f"Highest greedy accuracy on held-out prompts: {top} ({means[top]['accuracy']:.1%}{versus}).")
    if world and "fixed" in methods and "informative_kept" in means["fixed"]:
        f = means["fixed"]
        garbled, kept = f.get("garbled_dropped"), f["informative_kept"]
        parts = [f"dropped {garbled:.1%} of garbled tokens (target >= 90%: "
                 f"{'met' if garbled >= 0.9 else 'not met'})" if garbled is not None else None,
                 f"{f['wrong_answer_dropped']:.1%} of wrong-answer tokens" if "wrong_answer_dropped" in f else None,
                 f"{f['generic_dropped']:.1%} of generic tokens" if "generic_dropped" in f else None]
        lines.append(f"Fixed-model selection {', '.join(p for p in parts if p)}, and kept {kept:.1%} of "
                     f"informative tokens (target >= 80%: {'met' if kept >= 0.8 else 'not met'}); "
                     f"{f['precision']:.1%} of the tokens it kept are informative.")
    return lines


_STAGE_GROUPS = (  # (stage name ends with, group); the first match wins
    ("scores/base", "score: base model"), ("heldout-base", "held-out loss"), ("scores/reference",
    "score: warm-up reference"), ("/reference", "train: warm-up reference"), ("/scores", "score: self-evolving rounds"),
    ("selection", "select"), ("heldout", "held-out loss"), ("export", "export"), ("accuracy", "generate answers"),
    ("benchmarks", "benchmarks"), ("tokens", "tokenize"),
)  # fmt: skip


def stage_group(name: str) -> str:
    """The line a stage's time is counted on: training per method, everything else by kind of work."""
    if name.endswith("model"):
        return f"train: {name.split('/')[1]}" if name.startswith("seed-") else "train"
    return next((group for end, group in _STAGE_GROUPS if name.endswith(end)), name)


def time_per_stage(stages: list[dict[str, Any]], steps: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Seconds spent in this call per group of work (pipeline stages grouped by ``stage_group``, then the demo's
    own steps), in order of first appearance."""
    seconds: dict[str, float] = {name: 0.0 for name, _ in steps[:2]}  # data and pretraining come first
    for record in stages:
        group = stage_group(record["stage"])
        seconds[group] = seconds.get(group, 0.0) + record["seconds"]
    for name, s in steps:
        seconds[name] = seconds.get(name, 0.0) + s
    return [{"stage": name, "seconds": round(s, 1)} for name, s in seconds.items()]


def render(result: dict[str, Any]) -> str:
    """The demo's output: the table (mean ± std over seeds), the conclusion, the time per stage and the paths."""
    shown = {c[0] for c in DEMO_COLUMNS} - ({"heldout_loss"} if "base_informative_loss" in result else set())
    table = render_markdown({**result, "columns": [c for c in result["columns"] if c[0] in shown]})
    table = table.split("\n\nHeld-out loss:")[0]  # compare's footnote is about its own columns
    lines = [table.rstrip(), ""]
    for split, load in (result.get("data") or {}).items():
        if load:
            skipped = "; ".join(f"{n} {reason}" for reason, n in load.get("skipped_by_reason", {}).items())
            lines.append(f"Data ({split}): {load['used']} of {load['rows']} rows used"
                         + (f", {load.get('truncated', 0)} truncated to max_seq_len" if load.get("truncated") else "")
                         + (f" (skipped: {skipped})" if skipped else "") + ".")
    lines.append("")
    if "base_informative_loss" in result:
        lines += [f"Base model before SFT: informative-token loss {result['base_informative_loss']:.3f}.", ""]
    lines += ["Columns: held-out losses are mean per-token losses of the held-out prompts' responses (lower is "
              "better); accuracy is greedy answers graded against the reference; kept/dropped shares compare what "
              "each method trained on with the ground-truth token kinds (slm selects online: no fixed mask).", ""]
    lines += ["## Conclusion", "", *[f"- {s}" for s in result["conclusion"]], "", "## Time per stage", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {t['stage']} | {t['seconds']:.1f} |" for t in result["timings"]]
    total = sum(t["seconds"] for t in result["timings"])
    lines += [f"| **total** | **{total:.1f}** |", ""]
    lines += [f"{name}: {path}" for name, path in result["paths"].items() if path]
    return "\n".join(lines) + "\n"


def _report(run_dir: str) -> None:
    """Write the HTML report and plots for the run (``tokenclean report``); without matplotlib (the ``report``
    extra), say so and go on: the numbers are already written."""
    from ..errors import TokencleanError
    from ..report.view import write_report

    try:
        write_report(run_dir)
    except TokencleanError as e:
        log.warning("report not written: %s", e)
