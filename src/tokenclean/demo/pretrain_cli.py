"""`tokenclean pretrain`: a tiny base model from your own text files.

    tokenclean pretrain --corpus ../shared/data/corpus --out runs/base --size tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import read_json



def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``pretrain`` subcommand on an ``argparse`` subparsers object."""
    from ..commands import COMMANDS  # the one-line help lives in the command table

    p = subparsers.add_parser("pretrain", help=COMMANDS["pretrain"][0])
    pretrain_flags(p)
    return p


def pretrain_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``tokenclean pretrain``."""
    p.description = ("Train a byte-level BPE tokenizer and a tiny Llama-architecture model on .txt files "
                     "(documents separated by blank lines) and .jsonl files (a 'text' field per row). Cached: "
                     "rerunning with the same corpus and settings returns at once.")
    p.add_argument("--corpus", nargs="+", required=True, type=Path, metavar="PATH",
                   help=".txt/.jsonl files or directories of them")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output model directory")
    p.add_argument("--tokenizer", type=Path, metavar="DIR", help="use this tokenizer instead of training one")
    p.add_argument("--size", choices=("tiny", "quick"), default="tiny", help="model/schedule preset (default: tiny)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="blocks per step (default: the preset's)")
    p.add_argument("--max-seq-len", type=int, help="block length in tokens (default: the preset's)")
    p.add_argument("--vocab-size", type=int, help="tokenizer vocabulary size (default: the preset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    p.add_argument("--seed", type=int, help="seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .pretrain import MARKER, PretrainConfig, pretrain

    cfg = PretrainConfig.preset(
        args.size, steps=args.steps, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
        vocab_size=args.vocab_size, lr=args.lr, seed=args.seed,
    )  # fmt: skip
    marker = args.out / MARKER
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    out = pretrain(args.corpus, args.out, cfg, tokenizer=args.tokenizer)
    meta = read_json(out / MARKER)
    cached = " (cached: same corpus and settings)" if marker.stat().st_mtime_ns == before else ""
    print(
        f"base model: {out}{cached}  ({meta['n_parameters']:,} parameters, vocab {meta['vocab_size']}, "
        f"{meta['n_tokens']:,} corpus tokens, held-out loss {meta['initial_eval_loss']:.3f} -> "
        f"{meta['final_eval_loss']:.3f}, trained in {meta['train_seconds']:.0f} s)"
    )
    return 0
