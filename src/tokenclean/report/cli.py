"""``tokenclean report`` (an HTML page and plots of a run) and ``tokenclean show`` (one sample in the terminal).

    tokenclean report runs/cmp --method fixed --seed 1 --samples 300
    tokenclean show runs/fixed --sample 12
"""

from __future__ import annotations

import argparse


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory of `tokenclean run` or `tokenclean compare`")
    p.add_argument("--method", help="compare directory: the method to show (default: fixed, else the first)")
    p.add_argument("--seed", type=int, help="compare directory: the seed to show (default: the first)")
    p.add_argument("--tokenizer", help="decode tokens with this tokenizer (default: the run's base model, from "
                                       "RUN_DIR/config.yaml)")


def report_flags(report: argparse.ArgumentParser) -> None:
    """The flags of ``tokenclean report``."""
    from .view import DEFAULT_SAMPLES

    report.description = ("Write RUN_DIR/report/index.html (one self-contained file: searchable, sortable samples "
                          "with every response token coloured by score and marked kept or dropped, the run's "
                          "numbers, the comparison table and the plots) and the plots as PNG beside it.")
    _run_args(report)
    report.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                        help=f"show the first N samples of the pool (default: {DEFAULT_SAMPLES})")
    report.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    report.add_argument("--no-plots", action="store_true", help="leave the plots out (no matplotlib needed)")
    report.set_defaults(func=run_report)


def show_flags(show: argparse.ArgumentParser) -> None:
    """The flags of ``tokenclean show``."""
    show.description = ("Print a sample's tokens: kept green, dropped red and dim, prompt grey (plain text marks "
                        "{+kept+} and [-dropped-] without colour: --no-color, or when the output is not a "
                        "terminal).")
    _run_args(show)
    show.add_argument("--sample", default="0", metavar="N",
                      help="sample id, else index in the pool (default: 0, the first sample)")
    show.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                      help="colour the output (default: when writing to a terminal and NO_COLOR is unset)")
    show.set_defaults(func=run_show)


def run_report(args: argparse.Namespace) -> int:
    from .page import write_report

    page = write_report(args.run_dir, args.out, method=args.method, seed=args.seed, samples=args.samples,
                        tokenizer=args.tokenizer, plots=not args.no_plots)
    print(page)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from .view import find_sample, load_run, load_view_tokenizer
    from .show import show, use_color

    view = load_run(args.run_dir, args.method, args.seed)
    index = find_sample(view, args.sample)
    color = use_color() if args.color is None else args.color
    print(show(view, index, load_view_tokenizer(view, args.tokenizer), color), end="")
    return 0
