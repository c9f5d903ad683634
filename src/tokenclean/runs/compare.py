"""Side-by-side comparison of methods on the same data, base, warm-up reference and seeds.

All methods run in one directory, so the stages they share (tokenization, the base model's losses, and per seed
the warm-up reference and its losses) are computed once. Each final model's mean loss over the response tokens of
a held-out split is measured, and one row per method (mean and spread over seeds) goes to ``comparison.json`` and
``comparison.md``. More columns join through ``extra_metrics``: benchmark scores (``benchmark_metrics``, the
paper's Table 1 layout) or the demo's ground-truth measurements.

``scorers`` adds rows: each scorer other than the run's own (``--scorer``) reruns the methods whose selection uses
the scorer (``Method.uses_scorer``) as ``<method>[<scorer>]`` (``layout.variant_name``), in that name's own directory,
sharing the tokens, base scores, warm-up reference and its scores with the plain rows.

``ablations`` adds rows run under other *run* settings (``Ablation``: e.g. the reference warmed up on a noisy
sample of the pool instead of the clean warm-up set, or for a few steps only). Those settings change stages every
method of a seed shares, so each ablation is a compare directory of its own, ``<out>/ablations/<name>/``
(``Layout.ablation``); the base model's losses come from the score cache, and the rows join the same table.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import current_names
from ..errors import ConfigError
from ..io import atomic_write_text, write_json
from ..selection.scorers import SCORERS
from .layout import HELDOUT_BASE, Layout, variant_name
from .methods import METHODS, check_method

if TYPE_CHECKING:  # the table functions below are used by the report, which imports no torch
    from ..selection.select import SelectConfig
    from .config import RunConfig
    from .run import Run
    from .summary import MethodSummary

log = logging.getLogger("tokenclean")

DEFAULT_METHODS = ("full", "random", "rho", "slm", "fixed", "self-evolving")
DEFAULT_EVAL_FRACTION = 0.1

Column = tuple[str, str, str]  # (key in a row's metrics, column header, format of one value)

# lower is better for losses
COLUMNS: list[Column] = [
    ("kept_tokens", "kept tokens", "{:.0f}"),
    ("training_tokens", "training tokens", "{:.0f}"),
    ("seconds", "wall time (s)", "{:.1f}"),
    ("heldout_loss", "held-out loss", "{:.4f}"),
]


@dataclass(frozen=True)
class Ablation:
    """A comparison row that runs ``method`` with ``overrides`` (flat ``RunConfig`` settings) on top of the
    comparison's own; ``name`` is its row and directory name (e.g. ``fixed[noisy-warmup]``), ``note`` one line on
    what it changes, for tables and reports."""

    name: str
    method: str
    overrides: dict[str, Any]
    note: str = ""


def parse_ablation(text: str) -> Ablation:
    """``NAME=METHOD[,SETTING=VALUE...]`` (``tokenclean compare --ablation``) as an ``Ablation``; values are read as
    YAML scalars (``null``, numbers, booleans, strings).

    >>> parse_ablation("fixed[noisy-warmup]=fixed,warmup_data=null,warmup_fraction=0.2").overrides
    {'warmup_data': None, 'warmup_fraction': 0.2}
    """
    import yaml

    name, eq, rest = text.partition("=")
    method, *settings = rest.split(",")
    overrides = {}
    for item in settings:
        key, eq2, value = item.partition("=")
        if not eq2 or not key.strip():
            raise ConfigError(f"--ablation {text!r}: {item!r} is not SETTING=VALUE")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    if not eq or not name.strip() or not method.strip():
        raise ConfigError(f"--ablation {text!r}: expected NAME=METHOD[,SETTING=VALUE...], e.g. "
                          "fixed[noisy-warmup]=fixed,warmup_data=null")
    return Ablation(name.strip(), method.strip(), overrides, ", ".join(s.strip() for s in settings))


# (the method's run, its summary) -> extra columns. The run gives the stage mechanism, so a costly metric can be
# a stage keyed by the model's stage key (``summary["model_stage"]``) and is not recomputed on a re-run.
Metrics = Callable[["Run", "MethodSummary"], dict[str, float]]


def compare(cfg: RunConfig, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS, seeds: list[int] | None = None,
            extra_metrics: Metrics | None = None, extra_columns: list[Column] | tuple[Column, ...] = (),
            scorers: list[str] | tuple[str, ...] | None = None, ablations: Sequence[Ablation] = ()
            ) -> dict[str, Any]:
    """Run ``methods`` for each seed in ``cfg.run.out`` and write the comparison. Returns it.

    ``scorers``: more rows, ``<method>[<scorer>]`` for each of these scorers other than ``cfg.select.scorer`` and
    each method among ``methods`` that uses the scorer (see ``plan_rows``). ``ablations``: more rows, each run
    under its own settings in its own directory (``Ablation``), after the plain rows. ``extra_columns`` gives
    headers and formats to keys ``extra_metrics`` returns (others show under their key). The result's ``timings`` lists every
    stage with the seconds it took in *this* call (0 when reused) and in the call that ran it (``Store.timings``).
    """
    from .run import Run
    from .stages import score_stage, tokens_stage

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}, expected some of {sorted(METHODS)}")
    if not methods:
        raise ConfigError("no method to compare")
    plan = plan_rows(methods, cfg.select, scorers or ())  # a bad method or scorer fails here, before anything runs
    seeds = list(seeds or [cfg.run.seed])
    if not cfg.run.eval_data and not cfg.run.eval_fraction:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, eval_fraction=DEFAULT_EVAL_FRACTION))
    root = Run(cfg)
    with root.locked():  # one process at a time in a compare directory (store.Store.locked)
        root.write_config(ignore=("method",))  # the methods are an argument of compare, not one setting
        ablation_roots = _ablation_roots(root, ablations, {name for name, _, _ in plan})
        tables = tokens_stage(root)
        base_loss = score_stage(root, HELDOUT_BASE, root.base_fingerprint, cfg.run.base, tables["eval"],
                                dtype=cfg.run.eval_dtype).meta["mean_token_loss"]
        runs = [record for seed in seeds
                for record in _run_seed(root, plan, ablations, ablation_roots, seed, extra_metrics)]
        names = [name for name, _, _ in plan] + [a.name for a in ablations]
        rows = aggregate(runs, names)
        result = {"methods": names, "scorers": list(scorers or []), "seeds": seeds, "base_heldout_loss": base_loss,
                  "ablations": [dataclasses.asdict(a) for a in ablations],
                  "columns": _columns(rows, [*COLUMNS, *extra_columns]), "rows": rows, "runs": runs,
                  "timings": root.timings}
        write_json(root.layout.comparison, result)
        atomic_write_text(root.layout.comparison_md, render_markdown(result))
    return result


def _run_seed(root: Run, plan: list[tuple[str, str, SelectConfig | None]], ablations: Sequence[Ablation],
              ablation_roots: dict[str, Run], seed: int, extra_metrics: Metrics | None) -> list[dict[str, Any]]:
    """Run every row of ``plan`` and every ablation for ``seed``: one record per row (its name, seed, scorer,
    metrics and model directory)."""
    from .pipeline import run_method

    rows = [(name, _variant(root, name, method, seed, select_config)) for name, method, select_config in plan]
    rows += [(a.name, ablation_roots[a.name].variant(a.method, seed)) for a in ablations]
    records = []
    for name, run in rows:
        log.info("=== %s, seed %d ===", name, seed)
        summary = run_method(run)
        metrics = {
            "kept_tokens": summary["selection"]["kept_tokens"],
            "training_tokens": summary["training"]["trained_tokens"],
            "seconds": summary["seconds"],
            "heldout_loss": summary["heldout_loss"],
        }
        if extra_metrics:
            metrics.update(extra_metrics(run, summary))
        records.append({"method": name, "seed": seed, "scorer": run.cfg.select.scorer, "metrics": metrics,
                        "model_dir": summary["model_dir"]})
    return records


def _ablation_roots(root: Run, ablations: Sequence[Ablation], taken: set[str]) -> dict[str, Run]:
    """Each ablation's compare directory as a ``Run`` (``Layout.ablation``), its settings checked and written.
    It shares ``root``'s timings, and its loaded tokenizer unless the ablation changes the base model."""
    from .config import RunConfig
    from .run import Run

    cfg, roots = root.cfg, {}
    for a in ablations:
        plain = re.fullmatch(r"[\w.\-\[\]]+", a.name) and a.name.strip(".")
        if a.name in taken or a.name in roots or not plain:
            raise ConfigError(f"ablation name {a.name!r}: must be unique among the rows and a plain directory "
                              "name (letters, digits, _ . - [ ])")
        overrides = current_names(a.overrides, tuple(RunConfig.SECTIONS.values()), f"ablation {a.name}")
        unknown = sorted(set(overrides) - set(cfg.flat()))
        if unknown:
            raise ConfigError(f"ablation {a.name}: unknown setting(s) {unknown}")
        sub = RunConfig.from_flat({**cfg.flat(), **overrides, "out": str(root.layout.ablation(a.name)),
                                   "method": a.method})
        try:
            check_method(a.method, sub.select)
        except ConfigError as e:
            raise ConfigError(f"ablation {a.name}: {e}") from None
        roots[a.name] = Run(sub, shared=root if sub.run.base == cfg.run.base else None)
        roots[a.name].write_config(ignore=("method",))
    return roots


def plan_rows(methods: list[str] | tuple[str, ...], select: SelectConfig, scorers: list[str] | tuple[str, ...]
              ) -> list[tuple[str, str, SelectConfig | None]]:
    """The rows of a comparison, in order: (name, method, selection settings; None = the run's own). Each method's
    row is followed by its scorer variants: one per scorer of ``scorers`` other than the run's own, for the
    methods that use the scorer (``Method.uses_scorer``). Left out, with a log line: a variant that would select
    exactly as the plain row (``Method.ranks_by``: rho ranks by excess under union and intersection), and one whose
    method cannot use the scorer (``Method.check``: self-evolving with a prompt scorer). A method that cannot use the
    run's own scorer is refused (``check_method``)."""
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:
        raise ConfigError(f"unknown scorer(s) {unknown}, expected some of {list(SCORERS)}")
    plan: list[tuple[str, str, SelectConfig | None]] = []
    for method in methods:
        check_method(method, select)  # the run's own scorer: refused, not left out
        plan.append((method, method, None))
        rules = METHODS[method]
        for scorer in dict.fromkeys(scorers) if rules.uses_scorer else ():
            name = variant_name(method, scorer)
            if rules.ranks_by(scorer) == rules.ranks_by(select.scorer):
                if scorer != select.scorer:
                    log.info("compare: %s left out: it would select exactly as the %s row (it ranks by %s)", name,
                             method, rules.ranks_by(scorer))
                continue
            try:
                rules.check(method, scorer)
            except ConfigError as e:
                log.warning("compare: %s left out: %s", name, e)
                continue
            plan.append((name, method, dataclasses.replace(select, scorer=scorer)))  # checks level and scorer
    return plan


def _variant(root: Run, name: str, method: str, seed: int, select: SelectConfig | None) -> Run:
    """``root.variant(method, seed)`` in the directory ``seed-<s>/<name>/`` (its own stages; the seed's shared stages
    as every method's), with ``select`` as its selection settings for a scorer variant."""
    run = root.variant(method, seed, name)
    if select is not None:
        run.cfg.select = select
    return run


def aggregate(runs: list[dict[str, Any]], methods: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per method: mean and (sample) standard deviation of every metric over seeds."""
    rows = []
    for method in methods:
        mine = [r["metrics"] for r in runs if r["method"] == method]
        keys = [k for k in mine[0] if all(m.get(k) is not None for m in mine)]
        mean = {k: statistics.fmean(m[k] for m in mine) for k in keys}
        std = {k: statistics.stdev(m[k] for m in mine) if len(mine) > 1 else 0.0 for k in keys}
        rows.append({"method": method, "n_seeds": len(mine), "mean": mean, "std": std})
    return rows


def _columns(rows: list[dict[str, Any]], specs: list[Column]) -> list[Column]:
    """The columns to show: the ``specs`` some row has, then any other metric under its own key."""
    specs = list({c[0]: c for c in reversed(specs)}.values())[::-1]  # one column per key: the first spec wins
    known = [c for c in specs if any(c[0] in r["mean"] for r in rows)]
    named = {c[0] for c in specs}
    extra = [(k, k, "{:.4f}") for r in rows for k in r["mean"] if k not in named]
    return known + list(dict.fromkeys(extra))


def render_markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown table: methods as rows; every metric present becomes a column."""
    columns = [tuple(c) for c in result.get("columns") or _columns(result["rows"], COLUMNS)]
    multi = len(result["seeds"]) > 1
    lines = [
        f"# Comparison ({len(result['seeds'])} seed{'s' if multi else ''}: {', '.join(map(str, result['seeds']))})",
        "",
        "| method | " + " | ".join(h for _, h, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in result["rows"]:
        cells = []
        for key, _, fmt in columns:
            if key not in row["mean"]:
                cells.append("")
                continue
            cell = fmt.format(row["mean"][key])
            if multi and key in row["std"]:
                cell += " ± " + fmt.format(row["std"][key])
            cells.append(cell)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if result.get("base_heldout_loss") is not None:
        lines += ["", f"Base model held-out loss (before any fine-tuning): {result['base_heldout_loss']:.4f}."]
    lines += ["", "Held-out loss: mean loss per response token of the held-out split (lower is better). "
              "Wall time: seconds of every stage the method used, shared stages included, as recorded when computed."]
    return "\n".join(lines) + "\n"


def benchmark_metrics(tasks: str | list[str], data_dir: str | None = None, limit: int | None = None
                      ) -> tuple[Metrics, list[Column]]:
    """Benchmark columns (lm-evaluation-harness through ``evaluation.evaluate``) and the unweighted average, for
    ``compare(extra_metrics=..., extra_columns=...)``. Each model's evaluation is a stage next to its model
    (``.../benchmarks/results.json``), so a re-run does not evaluate it again."""
    from ..evaluation.benchmarks import parse_tasks
    from ..evaluation.results import AVERAGE, COLUMN_TITLES, benchmark_columns, write_results
    from ..core.fingerprints import path_fingerprint

    names = [b.name for b in parse_tasks(tasks)]  # unknown names fail here, before any training

    def metrics(run: Run, summary: MethodSummary) -> dict[str, float]:
        from ..evaluation.harness import evaluate_in_child

        stage = Layout.next_to(summary["model_stage"], "benchmarks")
        # the weights' dtype as resolved on this machine: an `auto` run moved to other hardware evaluates again
        inputs = {"model": run.key(summary["model_stage"]), "tasks": names, "limit": limit,
                  "data": data_dir and path_fingerprint(data_dir),
                  "dtype": run.resolved_dtype(run.cfg.run.eval_dtype)}

        def build(tmp: Path) -> dict[str, float]:
            results = evaluate_in_child(summary["model_dir"], names, limit=limit, data_dir=data_dir,
                                        device=run.cfg.run.device, dtype=run.cfg.run.eval_dtype)
            write_results(results, tmp / "results.json")
            return benchmark_columns(results)

        return run.stage(stage, inputs, build)

    columns = [(name, COLUMN_TITLES.get(name, name), "{:.1%}") for name in [*names, AVERAGE]]
    return metrics, columns
