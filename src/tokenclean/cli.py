"""The ``tokenclean`` command: a thin layer over ``tokenclean.api`` and ``tokenclean.runs``.

``commands.COMMANDS`` is the table of subcommands: a name, a one-line help and the function that adds the command's
flags (generated from the stage config dataclasses) and sets the function it runs. Only the chosen command's flags are
built, so ``tokenclean --help`` imports no torch. Errors the user can fix are printed as one line, without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .commands import COMMANDS, TRAINING_COMMANDS
from .config import add_config_args, add_fields, build, field_names, merge_settings
from .errors import ConfigError, TokencleanError
from .evaluation.benchmarks import parse_limit
from .io import process_rank

DESCRIPTION = """\
Token cleaning for supervised fine-tuning (Pang et al., ICML 2025): score every response token by how much a
short warm-up fine-tune lowered its loss (base loss - reference loss), keep the most informative share, and
fine-tune on those tokens only.

first:      tokenclean demo     (offline: a generated world, a tiny base, every method, a report)
main job:   tokenclean run --method fixed --base MODEL --data pool.jsonl --out runs/fixed
stages:     tokenclean score | select | train | export   (the same steps, one at a time)
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="only print warnings and the result")


def _model_args(p: argparse.ArgumentParser, flag: str = "--model",
                settings: tuple[str, ...] = ("device", "trust_remote_code")) -> None:
    """The model flag and the model-loading settings, declared once as ``RunSettings`` fields (``device``,
    ``dtype``, ``trust_remote_code``), so ``run``, its YAML and the stage commands share names, help and defaults."""
    from .runs.config import RunSettings

    g = p.add_argument_group("model")
    g.add_argument(flag, required=True, help="model directory, hub id, .gguf file (or a directory holding one) or "
                   "pkg:PACKAGE (an installed package carrying a GGUF); its tokenizer is used too")
    add_fields(g, RunSettings, only=settings)


def _settings(args: argparse.Namespace) -> Any:
    """``RunSettings`` of the declared settings given as flags (the others at their defaults)."""
    from .runs.config import RunSettings

    return build(RunSettings, {k: v for k, v in vars(args).items() if k not in ("data", "out")})


def _drop_empty(args: argparse.Namespace) -> bool:
    """``--drop-empty``, declared once as the ``SelectConfig`` field, at its default when not given."""
    from .selection.select import SelectConfig

    return build(SelectConfig, {"drop_empty": args.drop_empty}).drop_empty


def _data_args(p: argparse.ArgumentParser) -> None:
    from .core.data import DataConfig
    from .core.tokens import TokenizeConfig

    p.add_argument("--data", required=True, help=".json/.jsonl/.parquet file, saved datasets directory or hub id")
    add_config_args(p, DataConfig, "data")
    add_config_args(p, TokenizeConfig, "tokenization")


def _data_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(DataConfig, TokenizeConfig) from the flags."""
    from .core.data import DataConfig
    from .core.tokens import TokenizeConfig

    v = vars(args)
    return build(DataConfig, v), build(TokenizeConfig, v)


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    from .api import score, score_prompt_free
    from .compute.scoring import ScoreConfig

    data_cfg, tok_cfg = _data_configs(args)
    out, settings = Path(args.out), _settings(args)
    scores = (score_prompt_free if args.prompt_free else score)(
        args.model, args.data, out, data_config=data_cfg, tokenize_config=tok_cfg,
        score_config=build(ScoreConfig, vars(args)), device=settings.device, dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code, progress=not args.quiet,
        work_dir=out.with_name(f"{out.name}.shards"))  # a killed command resumes from here
    return scores.meta


def cmd_select(args: argparse.Namespace) -> dict[str, Any]:
    from .api import select
    from .selection.scorers import SCORERS, prompt_free_scorers
    from .selection.select import SelectConfig

    config = build(SelectConfig, vars(args))
    if SCORERS[config.scorer].needs_prompt_free and not args.prompt_free:
        raise ConfigError(f"--scorer {config.scorer} needs --prompt-free DIR: the reference's losses of the "
                          "responses without their prompts, from `tokenclean score --prompt-free --model REF` on the "
                          "data --ref was scored on")
    if args.prompt_free and not SCORERS[config.scorer].needs_prompt_free:
        logging.getLogger("tokenclean").warning("--prompt-free is not used by --scorer %s (only by %s)",
                                                config.scorer, " and ".join(prompt_free_scorers()))
    return select(args.base, args.ref, args.out, config, prompt_free=args.prompt_free).meta


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .api import train
    from .compute.training import TrainConfig

    data_cfg, tok_cfg = _data_configs(args)
    settings = _settings(args)
    return train(args.model, args.data, args.out, selection=args.selection, data_config=data_cfg,
                 tokenize_config=tok_cfg, train_config=build(TrainConfig, vars(args)),
                 drop_empty=_drop_empty(args), seed=settings.seed, device=settings.device,
                 trust_remote_code=settings.trust_remote_code)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .api import export

    data_cfg, tok_cfg = _data_configs(args)
    return export(args.data, args.out, tokenizer=args.tokenizer, selection=args.selection, data_config=data_cfg,
                  tokenize_config=tok_cfg, drop_empty=_drop_empty(args),
                  trust_remote_code=_settings(args).trust_remote_code, write_back=args.write_back)


def run_settings_names() -> set[str]:
    from .runs.pipeline import RunConfig

    return field_names(*RunConfig.SECTIONS.values())


def add_run_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Every setting of a run as a flag, plus ``--config``. Shared by ``run`` and commands built on it."""
    from .runs.pipeline import METHODS, RunConfig, RunSettings

    p.add_argument("--config", help="YAML file of settings (same names as the flags, with underscores); "
                                    "flags given on the command line override it")
    add_config_args(p, RunSettings, "run", skip=skip)
    for name, section in RunConfig.SECTIONS.items():
        if name != "run":
            add_config_args(p, section, name)
    for action in p._actions:
        if action.dest == "method":
            action.help += f"; one of: {', '.join(sorted(METHODS))}"


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    from .runs.pipeline import RunConfig, run_pipeline

    return run_pipeline(RunConfig.from_flat(merge_settings(args, run_settings_names(),
                                                           tuple(RunConfig.SECTIONS.values()))))


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from .runs.compare import benchmark_metrics, compare, parse_ablation
    from .runs.layout import Layout
    from .runs.pipeline import RunConfig

    values = merge_settings(args, run_settings_names(), tuple(RunConfig.SECTIONS.values()))
    cfg = RunConfig.from_flat({**values, "method": args.methods[0]})
    metrics, columns = None, []
    if args.eval_tasks:
        metrics, columns = benchmark_metrics(args.eval_tasks, args.eval_data_dir, args.eval_limit)
    elif args.eval_data_dir or args.eval_limit:
        raise ConfigError("--eval-data-dir and --eval-limit need --eval-tasks")
    ablations = [parse_ablation(a) for a in args.ablation or []]
    compare(cfg, args.methods, args.seeds, extra_metrics=metrics, extra_columns=columns, scorers=args.scorers,
            ablations=ablations)
    if process_rank() == 0:  # under torchrun rank 0 wrote it; the others may not see it yet
        print(Layout(Path(cfg.run.out)).comparison_md.read_text())
    return 0


def run_flags(p: argparse.ArgumentParser) -> None:
    p.description = ("Run a cleaning method end to end: tokenize, warm-up reference, score, select, train, export. "
                     "Re-running the same command skips finished stages.")
    add_run_args(p)
    p.set_defaults(func=cmd_run)


def compare_flags(p: argparse.ArgumentParser) -> None:
    from .runs.compare import DEFAULT_METHODS

    p.description = ("Run several methods on the same data, base, warm-up reference and seeds, sharing every "
                     "common stage, and write OUT/comparison.md and OUT/comparison.json (held-out split: "
                     "--eval-data, or --eval-fraction, default 0.1).")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="repeat for each seed (default: --seed)")
    p.add_argument("--scorers", nargs="+", default=None, metavar="SCORER",
                   help="more rows: each of these scorers other than --scorer reruns fixed, rho and self-evolving "
                        "as METHOD[SCORER] (e.g. fixed[small-loss]), sharing the reference and the scores")
    p.add_argument("--ablation", action="append", metavar="NAME=METHOD[,SETTING=VALUE...]",
                   help="one more row: METHOD under other run settings, in its own directory OUT/ablations/NAME/ "
                        "(e.g. fixed[noisy-warmup]=fixed,warmup_data=null); repeat for more")
    g = p.add_argument_group("benchmarks", "evaluate every final model with lm-evaluation-harness (pip install "
                                           "'tokenclean[eval]') and add a column per task and their average")
    g.add_argument("--eval-tasks", help="comma-separated benchmarks, e.g. gsm8k,arc_challenge (see tokenclean eval)")
    g.add_argument("--eval-data-dir", help="read the benchmarks from local files (the layout of tokenclean eval "
                                           "--data-dir) instead of the hub")
    g.add_argument("--eval-limit", type=parse_limit, help="at most this many questions per task; per benchmark: "
                                                         "100,mmlu=2 (a bare number is the default)")
    add_run_args(p, skip=("method",))
    p.set_defaults(func=cmd_compare)


def score_flags(p: argparse.ArgumentParser) -> None:
    from .compute.scoring import ScoreConfig

    p.description = ("Write OUT/token_loss.parquet (sample_id, token_loss: one float per token, NaN where not a "
                     "response token) and OUT/scores.json (fingerprints, counts).")
    _model_args(p, settings=("device", "dtype", "trust_remote_code"))
    _data_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prompt-free", action="store_true",
                   help="score each response without its prompt (after the tokenizer's BOS alone), the losses put "
                        "back at the data's tokens: with the reference model, what select --prompt-free takes")
    add_config_args(p, ScoreConfig, "scoring")
    p.set_defaults(func=cmd_score)


def select_flags(p: argparse.ArgumentParser) -> None:
    from .selection.scorers import prompt_free_scorers
    from .selection.select import SelectConfig

    p.description = ("score = base loss - reference loss (or --scorer's); keep the top --keep-ratio (global or per "
                     "sample) or score > --threshold. Writes OUT/keep_mask.parquet and OUT/selection.json.")
    p.add_argument("--base", required=True, help="score directory of the base model")
    p.add_argument("--ref", required=True, help="score directory of the reference model")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prompt-free", metavar="DIR",
                   help=f"--scorer {' / '.join(prompt_free_scorers())}: the reference's prompt-free losses "
                        "(tokenclean score --prompt-free --model REF, the same data)")
    add_config_args(p, SelectConfig, "selection")
    p.set_defaults(func=cmd_select)


def train_flags(p: argparse.ArgumentParser) -> None:
    from .compute.training import TrainConfig
    from .runs.config import RunSettings
    from .selection.select import SelectConfig

    p.description = ("Fine-tune MODEL on DATA, training only on kept response tokens (all response tokens without "
                     "--selection). Saves a merged model directory to OUT.")
    _model_args(p)
    _data_args(p)
    p.add_argument("--selection", help="selection directory from tokenclean select")
    p.add_argument("--out", required=True, help="output model directory")
    add_config_args(p, RunSettings, "run", only=("seed",))
    add_config_args(p, SelectConfig, "selection", only=("drop_empty",))
    add_config_args(p, TrainConfig, "training")
    p.set_defaults(func=cmd_train)


def export_flags(p: argparse.ArgumentParser) -> None:
    from .runs.config import RunSettings
    from .selection.select import SelectConfig

    p.description = ("Write OUT (datasets.save_to_disk) and OUT.parquet with input_ids, attention_mask and labels "
                     "(-100 for dropped and prompt tokens).")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer (or model) directory, hub id, .gguf file or pkg:PACKAGE")
    add_fields(p, RunSettings, only=("trust_remote_code",))
    _data_args(p)
    p.add_argument("--selection", help="selection directory (default: keep every response token)")
    p.add_argument("--out", required=True, help="output dataset directory")
    add_config_args(p, SelectConfig, "selection", only=("drop_empty",))
    p.add_argument("--write-back", metavar="PATH",
                   help="also write the rows of a messages or ShareGPT file to PATH (JSON Lines) in their own "
                        "format, each assistant message with Axolotl train_detail spans of the kept tokens")
    p.set_defaults(func=cmd_export)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``tokenclean`` parser. With ``argv``, only the command it names gets its flags (the others are listed
    with their help line), so parsing ``--help`` imports no torch; without, every command gets its flags."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="tokenclean", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tokenclean {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (help_line, flags) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line)
        if chosen is None or name == chosen:
            module, function = flags.split(":")
            try:
                getattr(importlib.import_module(module), function)(p)
            except ModuleNotFoundError as e:  # an optional part that is not installed: its command is left out
                if e.name != module:
                    raise
                del sub.choices[name]
                continue
        _common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    quiet = args.quiet or process_rank() != 0  # under torchrun one process reports
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    _quiet_libraries()
    if args.command in TRAINING_COMMANDS:
        from .compute.modeling import freeze_library_objects

        freeze_library_objects()
    try:
        result = args.func(args)
    except TokencleanError as e:
        message = getattr(e, "message", str(e))
        print(f"tokenclean {args.command}: error: {' '.join(message.split())}", file=sys.stderr)  # one line,
        for hint in getattr(e, "hints", ()):  # then the error's hints, if any, one per line
            print(f"  {' '.join(hint.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokenclean {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if isinstance(result, int):
        return result
    if result is not None and process_rank() == 0:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, deprecation notes) out of the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
