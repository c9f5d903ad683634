"""The study-A noise generator (experiments/noisy_gsm8k.py): spans tile the text, corruptions are what they say."""

import importlib.util
import sys
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / ".." / "shared" / "data" / "sft" / "gsm8k_train.jsonl"


@pytest.fixture(scope="module")
def noisy():
    spec = importlib.util.spec_from_file_location("noisy_gsm8k", ROOT / "experiments" / "noisy_gsm8k.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["noisy_gsm8k"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rows(n=200):
    return [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]


def _text_of(row, kind):
    return "".join(row["answer"][s:e] for s, e, k in row["kinds"] if k == kind)


def test_kinds_tile_every_answer_and_clean_text_survives(noisy):
    rows = _rows()
    out = noisy.corrupt_rows(rows, noisy.NoiseConfig(), seed=3)
    for original, row in zip(rows, out):
        spans = row["kinds"]
        assert spans[0][0] == 0 and spans[-1][1] == len(row["answer"])
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        if row["corruption"] is None:  # only generic filler added: removing it gives the original back
            assert _text_of(row, "informative") == original["answer"]
            assert not _text_of(row, "noise")


def test_exact_counts_and_each_corruption(noisy):
    rows = _rows()
    cfg = noisy.NoiseConfig(noise_rate=0.3, filler_rate=0.5)
    out = noisy.corrupt_rows(rows, cfg, seed=0)
    corrupted = [r for r in out if r["corruption"]]
    assert len(corrupted) == 60
    assert sum(bool(_text_of(r, "generic")) for r in out) == 100
    for original, row in zip(rows, out):
        if row["corruption"] == "wrong_answer":
            gold = re.search(r"#### *(\S+)", original["answer"]).group(1)
            final = re.search(r"#### *(\S+)", row["answer"]).group(1)
            assert final != gold and final in _text_of(row, "noise")
        elif row["corruption"] == "garble":
            noise = _text_of(row, "noise")
            assert 12 <= len(noise.strip()) <= 32 and noise not in original["answer"]
    assert {r["corruption"] for r in corrupted} == {"wrong_answer", "garble"}


def test_seeded_and_split_disjoint(noisy, tmp_path):
    a = noisy.write_study_data(tmp_path / "a", 50, 40, seed=1)
    b = noisy.write_study_data(tmp_path / "b", 50, 40, seed=1)
    assert a["pool"].read_text() == b["pool"].read_text()
    pool = {json.loads(l)["question"] for l in a["pool"].read_text().splitlines()}
    warm = [json.loads(l) for l in a["warmup_clean"].read_text().splitlines()]
    assert len(pool) == 50 and len(warm) == 40 and not pool & {r["question"] for r in warm}
    assert all(r["corruption"] is None and r["kinds"] == [[0, len(r["answer"]), "informative"]] for r in warm)
