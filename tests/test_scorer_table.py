"""experiments/scorer_table.py on a hand-made run directory: every scorer's shares of each token kind."""

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tokenclean.core.artifacts import Scores
from tokenclean.compute.prompt_free import prompt_free_sources, prompt_free_tokens
from tokenclean.core.tokens import TokenTable, _with_counts, list_column, write_parquet

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "scorer_table.py"
spec = importlib.util.spec_from_file_location("scorer_table", SCRIPT)
scorer_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scorer_table)

P, INF, GEN, NOISE = -1, 0, 1, 2
# three samples; 11 response tokens: 4 informative, 4 generic, 3 noise
KINDS = [[P, P, INF, INF, GEN, NOISE], [P, INF, GEN, GEN, NOISE], [P, INF, NOISE, GEN]]
# (base, reference, prompt-free reference) losses by kind: noise has the most excess (12 - 7), informative next
LOSSES = {INF: (5.0, 1.5, 6.0), GEN: (1.0, 0.9, 1.0), NOISE: (12.0, 7.0, 7.0)}


def write_run(root: Path, seeds: tuple[int, ...] | None = None) -> TokenTable:
    """A run directory (or, with ``seeds``, a compare directory) with tokens, kinds, base and reference losses,
    and prompt-free losses next to the last reference."""
    kinds = np.concatenate([np.array(k, np.int8) for k in KINDS])
    offsets = np.r_[0, np.cumsum([len(k) for k in KINDS])]
    ids = [f"s{i}" for i in range(len(KINDS))]
    table = pa.table({"sample_id": ids, "input_ids": list_column(np.arange(len(kinds), dtype=np.int32) + 1, offsets),
                      "response_mask": list_column(kinds != P, offsets)})
    tokens = TokenTable(table, _with_counts(table, {"template": "default", "max_seq_len": 64}))
    tokens.save(root / "tokens" / "pool")
    write_parquet(pa.table({"sample_id": ids, "kind": list_column(kinds, offsets)}).take([2, 1, 0]),
                  root / "tokens" / "pool_kinds.parquet")  # written in another order: read by sample id
    losses = [np.array([LOSSES[k][m] if k != P else np.nan for k in kinds], np.float32) for m in range(3)]
    Scores(ids, losses[0], offsets, {}).save(root / "scores" / "base")
    ref_dirs = [root / "scores"] if seeds is None else [root / f"seed-{s}" / "scores" for s in seeds]
    for ref_dir in ref_dirs:
        Scores(ids, losses[1], offsets, {}).save(ref_dir / "reference")
    pf_table = prompt_free_tokens(tokens, 0)
    sources = prompt_free_sources(tokens.flat_response_mask(), offsets, with_start=True)
    pf_loss = np.where(sources.response_mask, losses[2][np.maximum(sources.source, 0)], np.nan).astype(np.float32)
    Scores(pf_table.sample_ids, pf_loss, pf_table.offsets, {}).save(ref_dirs[-1] / "prompt_free")
    return tokens


def by_scorer(rows):
    return {row["scorer"]: row for row in rows}


def test_table_of_every_scorer_on_a_hand_made_run(tmp_path):
    write_run(tmp_path)
    config = scorer_table.SelectConfig(keep_ratio=7 / 11, gate_quantile=0.7)
    rows = by_scorer(scorer_table.run_table(tmp_path, config))
    assert list(rows) == ["excess", "small-loss", "curve-positive", "union", "intersection", "prompt", "prompt-excess"]
    # excess keeps the 3 noise (excess 5) and 4 informative tokens (3.5): every generic token dropped
    assert rows["excess"] == {"seed": "-", "scorer": "excess", "kept share": 7 / 11, "gated share": 0.0,
                              "informative dropped": 0.0, "generic dropped": 1.0, "noise dropped": 0.0,
                              "informative kept": 1.0, "kept informative": 4 / 7}
    # the gate at the 0.7 quantile of the reference losses (1.5) removes the noise (7.0); 3 generic fill the budget
    small = rows["small-loss"]
    assert small["gated share"] == 3 / 11 and small["noise dropped"] == 1.0 and small["generic dropped"] == 0.25
    assert small["kept informative"] == 4 / 7
    # the paper rule passes informative tokens only (generic: 1 < 2*0.9+0.07; noise: reference loss 7 >= 5)
    curve = rows["curve-positive"]
    assert curve["kept share"] == 4 / 11 and curve["kept informative"] == 1.0 and curve["noise dropped"] == 1.0
    # per sample, round(7/11 * 4) = 3 of sample s1 adds its first generic token to the global selection
    assert rows["union"]["kept share"] == 8 / 11 and rows["union"]["generic dropped"] == 0.75
    assert rows["intersection"]["kept share"] == 7 / 11
    # the prompt helps the informative tokens (gain 4.5) most; noise gains nothing
    assert rows["prompt"]["noise dropped"] == 1.0 and rows["prompt"]["informative kept"] == 1.0


def test_compare_directory_gives_rows_per_seed_and_a_markdown_table(tmp_path, capsys):
    write_run(tmp_path, seeds=(0, 1))
    rows = scorer_table.run_table(tmp_path, scorer_table.SelectConfig())
    assert [r["seed"] for r in rows] == ["0"] * 5 + ["1"] * 7  # prompt-free losses only next to seed 1's
    assert scorer_table.main([str(tmp_path), "--keep-ratio", str(7 / 11)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| seed | scorer | kept share | gated share | informative dropped |")
    assert out[2] == "| 0 | excess | 63.6% | 0.0% | 0.0% | 100.0% | 0.0% | 100.0% | 57.1% |"
    assert len(out) == 2 + 12


def test_missing_or_misaligned_kinds_are_errors(tmp_path, capsys):
    tokens = write_run(tmp_path)
    (tmp_path / "tokens" / "pool_kinds.parquet").unlink()
    assert scorer_table.main([str(tmp_path)]) == 2
    assert "no token kinds file" in capsys.readouterr().out
    write_parquet(pa.table({"sample_id": tokens.sample_ids,
                            "kind": list_column(np.zeros(tokens.meta["tokens"] - 1, np.int8),
                                                np.r_[tokens.offsets[:-1], tokens.offsets[-1] - 1])}),
                  tmp_path / "tokens" / "pool_kinds.parquet")
    with pytest.raises(scorer_table.DataError, match="not as long as the pool's samples"):
        scorer_table.run_table(tmp_path, scorer_table.SelectConfig())
