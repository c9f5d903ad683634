"""Which tokens each scorer keeps, measured against ground-truth token kinds.

Given a run directory with base and reference losses and the pool's token kinds (the demo writes them), print a
table: one row per scorer (and per seed of a compare directory), with the share of each kind dropped, the share of
informative tokens kept and the share of kept tokens that are informative. Nothing is trained or scored here.

    python experiments/scorer_table.py RUN_DIR [--keep-ratio 0.6] [--level global] [--gate-quantile 0.9]

Reads ``RUN_DIR/tokens/pool`` (the token table), ``RUN_DIR/tokens/pool_kinds.parquet`` (``sample_id`` + ``kind``,
list<int8> aligned with the tokens: 0 informative, 1 generic, 2 noise, -1 not a response token),
``RUN_DIR/scores/base`` and the reference losses in ``RUN_DIR/scores/reference`` or, in a compare directory, in
every ``RUN_DIR/seed-*/scores/reference``. The prompt scorers are included when the reference's prompt-free losses
are next to them (``.../scores/prompt_free``: the ``Scores`` of ``prompt_free.prompt_free_tokens``' table, as a run
stores them, or the output of ``tokenclean score --prompt-free`` with the reference, aligned with the pool).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tokenclean.core.artifacts import Scores
from tokenclean.errors import DataError, TokencleanError
from tokenclean.compute.prompt_free import map_back_scores
from tokenclean.selection.from_scores import select_for
from tokenclean.selection.scorers import SCORERS
from tokenclean.selection.select import SelectConfig
from tokenclean.core.tokens import TokenTable

KIND_NAMES = {0: "informative", 1: "generic", 2: "noise"}
NOT_RESPONSE = -1


def read_kinds(path: Path, tokens: TokenTable) -> np.ndarray:
    """(total_tokens,) int8 kinds of ``path`` in the order of ``tokens``' samples; an error when not aligned."""
    if not path.is_file():
        raise DataError(f"{path}: no token kinds file; expected the demo's tokens/pool_kinds.parquet")
    table = pq.read_table(path)
    if not {"sample_id", "kind"} <= set(table.column_names):
        raise DataError(f"{path}: columns {table.column_names}, expected 'sample_id' and 'kind'")
    ids = table.column("sample_id").to_pylist()
    if sorted(ids) != sorted(tokens.sample_ids):
        raise DataError(f"{path}: covers other samples than the pool's tokens")
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    table = table.take([position[sample_id] for sample_id in tokens.sample_ids])
    column = table.column("kind").combine_chunks()
    if not np.array_equal(np.diff(column.offsets.to_numpy()), tokens.lengths):
        raise DataError(f"{path}: the kind lists are not as long as the pool's samples")
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.int8)


def kind_shares(keep: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Shares of a keep-mask ((total_tokens,) bool) per kind: ``<kind> dropped`` = dropped / tokens of the kind,
    ``informative kept`` = kept informative / informative, ``kept informative`` = kept informative / kept response
    tokens. A share whose denominator is zero is left out."""
    shares: dict[str, float] = {}
    for code in sorted(set(np.unique(kinds).tolist()) - {NOT_RESPONSE}):
        members = kinds == code
        shares[f"{KIND_NAMES.get(code, f'kind {code}')} dropped"] = float((~keep[members]).mean())
    informative = kinds == 0
    if informative.any():
        shares["informative kept"] = float(keep[informative].mean())
    kept = keep & (kinds != NOT_RESPONSE)
    if kept.any():
        shares["kept informative"] = float(informative[kept].mean())
    return shares


def scorer_rows(base_loss: np.ndarray, ref_loss: np.ndarray, tokens: TokenTable, kinds: np.ndarray,
                config: SelectConfig, prompt_free_loss: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per scorer (``config`` with each scorer in turn, at level global for union and intersection; the
    prompt scorers only with ``prompt_free_loss``): ``scorer``, ``kept share`` (kept / response tokens), ``gated
    share`` (gated / response tokens) and ``kind_shares``."""
    rows = []
    for name, scorer in SCORERS.items():
        if scorer.needs_prompt_free and prompt_free_loss is None:
            continue
        cfg = dataclasses.replace(config, scorer=name, level="global" if scorer.combine else config.level)
        keep, counts = select_for(cfg, base_loss, ref_loss, tokens.offsets, tokens.flat_response_mask(),
                                  prompt_free_loss)
        n = max(counts["response_tokens"], 1)
        rows.append({"scorer": name, "kept share": counts["kept_tokens"] / n, "gated share": counts["gated_tokens"] / n,
                     **kind_shares(keep, kinds)})
    return rows


def references(run_dir: Path) -> list[tuple[str, Path]]:
    """(seed label, reference scores directory) of a run ("-") or of each seed of a compare directory."""
    single = run_dir / "scores" / "reference"
    if single.is_dir():
        return [("-", single)]
    seeds = sorted((d for d in run_dir.glob("seed-*") if (d / "scores" / "reference").is_dir()),
                   key=lambda d: int(d.name[5:]) if d.name[5:].lstrip("-").isdigit() else 0)
    if not seeds:
        raise DataError(f"{run_dir}: no reference scores (scores/reference or seed-*/scores/reference)")
    return [(d.name[5:], d / "scores" / "reference") for d in seeds]


def run_table(run_dir: Path, config: SelectConfig) -> list[dict[str, Any]]:
    """``scorer_rows`` for every reference of ``run_dir``, each row with its ``seed``."""
    tokens = TokenTable.load(run_dir / "tokens" / "pool")
    kinds = read_kinds(run_dir / "tokens" / "pool_kinds.parquet", tokens)
    base = Scores.load(run_dir / "scores" / "base")
    rows = []
    for seed, ref_dir in references(run_dir):
        ref = Scores.load(ref_dir)
        for scores, what in ((base, "base"), (ref, f"reference ({ref_dir})")):
            if scores.sample_ids != tokens.sample_ids or not np.array_equal(scores.offsets, tokens.offsets):
                raise DataError(f"{what} scores cover other samples than {run_dir}/tokens/pool")
        prompt_free = None
        if (ref_dir.parent / "prompt_free").is_dir():
            pf = Scores.load(ref_dir.parent / "prompt_free")
            aligned = pf.sample_ids == tokens.sample_ids and np.array_equal(pf.offsets, tokens.offsets)
            # a run's own stage holds the prompt-free table's losses; `tokenclean score --prompt-free` writes them
            # already put back at the pool's tokens
            prompt_free = pf.token_loss if aligned else map_back_scores(pf.offsets, pf.token_loss, tokens)
        rows += [{"seed": seed, **row} for row in scorer_rows(base.token_loss, ref.token_loss, tokens, kinds, config,
                                                               prompt_free)]
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table; shares as percentages with one decimal."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{100 * v:.1f}%" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run or compare directory with token kinds")
    parser.add_argument("--keep-ratio", type=float, default=0.6)
    parser.add_argument("--level", default="global", choices=["global", "sample", "threshold"])
    parser.add_argument("--threshold", type=float, default=0.0)
    parser.add_argument("--gate-quantile", type=float, default=0.9)
    args = parser.parse_args(argv)
    try:
        config = SelectConfig(keep_ratio=args.keep_ratio, level=args.level, threshold=args.threshold,
                              gate_quantile=args.gate_quantile)
        print(markdown(run_table(args.run_dir, config)))
    except TokencleanError as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
