"""The reference's own training settings and the top-rated warm-up set."""

import dataclasses

import numpy as np
import pytest

from tokenclean.config import field_names
from tokenclean.core.data import DataConfig
from tokenclean.errors import ConfigError, DataError
from tokenclean.compute.scoring import ScoreConfig
from tokenclean.selection.select import SelectConfig
from tokenclean.core.tokens import TokenizeConfig
from tokenclean.compute.training import TrainConfig
from tokenclean.runs.warmup import WarmupConfig, reference_train_config, steps_per_epoch, top_rated


def test_setting_names_do_not_collide_with_other_sections():
    from tokenclean.runs.config import RunSettings

    others = field_names(RunSettings, DataConfig, TokenizeConfig, ScoreConfig, SelectConfig, TrainConfig)
    assert not field_names(WarmupConfig) & others


@pytest.mark.parametrize("samples,batch,acc,processes,expected", [
    (54, 4, 12, 1, 2),  # the case: 14 micro-batches, 2 steps (the last one partial)
    (48, 4, 12, 1, 1),
    (49, 4, 12, 1, 2),
    (54, 4, 1, 1, 14),
    (54, 4, 1, 2, 7),  # 27 rows per process
    (1, 4, 12, 1, 1),
])
def test_steps_per_epoch_counts_as_the_trainer(samples, batch, acc, processes, expected):
    assert steps_per_epoch(samples, batch, acc, processes) == expected


def test_small_warmup_set_gets_the_minimum_steps():
    final = TrainConfig(learning_rate=2e-4, max_steps=7, lora_r=8)
    ref = reference_train_config(final, WarmupConfig(warmup_min_steps=50), 54)
    assert ref.gradient_accumulation_steps == 1 and ref.max_steps == 50  # 14 steps a pass: more passes needed
    assert ref.learning_rate == 2e-4 and ref.lora_r == 8 and ref.batch_size == final.batch_size
    assert final.gradient_accumulation_steps == 12  # the final fine-tune's settings are untouched


def test_accumulation_shrinks_only_as_far_as_needed():
    ref = reference_train_config(TrainConfig(), WarmupConfig(warmup_min_steps=50), 1000)  # 250 micro-batches
    assert ref.gradient_accumulation_steps == 5 and ref.max_steps == -1  # 250 / 5 = 50 steps in one pass
    assert steps_per_epoch(1000, 4, ref.gradient_accumulation_steps) >= 50


def test_large_warmup_set_keeps_the_final_settings():
    final = TrainConfig(max_steps=3)
    ref = reference_train_config(final, WarmupConfig(warmup_epochs=2.0, warmup_learning_rate=5e-4), 10_000)
    assert ref.gradient_accumulation_steps == 12 and ref.max_steps == -1  # final's max_steps is not inherited
    assert ref.epochs == 2.0 and ref.learning_rate == 5e-4


def test_no_minimum():
    ref = reference_train_config(TrainConfig(), WarmupConfig(warmup_min_steps=0), 54)
    assert dataclasses.astuple(ref) == dataclasses.astuple(dataclasses.replace(TrainConfig(), max_steps=-1))


@pytest.mark.parametrize("bad", [{"warmup_epochs": 0}, {"warmup_min_steps": -1}, {"warmup_learning_rate": 0.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        WarmupConfig(**bad)


ROWS = [{"q": "a", "rating": 3}, {"q": "b", "rating": 5.5}, {"q": "c", "rating": 5.5}, {"q": "d", "rating": 1},
        {"q": "e", "rating": 4}]


def test_top_rated_picks_the_highest_with_ties_to_the_earlier_row():
    assert top_rated(ROWS, "rating", ["0", "1", "2", "3", "4"], 3, "pool.jsonl").tolist() == [1, 2, 4]
    assert top_rated(ROWS, "rating", ["0", "1", "2", "3", "4"], 1, "pool.jsonl").tolist() == [1]  # 1 before 2
    assert top_rated(ROWS, "rating", ["0", "1", "2", "3", "4"], 99, "pool.jsonl").tolist() == [0, 1, 2, 3, 4]


def test_top_rated_returns_positions_among_the_candidates_only():
    """Held-out rows (here rows 1 and 2) are not candidates; positions index the candidates' list."""
    assert top_rated(ROWS, "rating", ["4", "0", "3"], 2, "pool.jsonl").tolist() == [0, 1]


def test_top_rated_matches_rows_by_their_id_field():
    rows = [{"id": "x", "r": 1}, {"id": "y", "r": 2}]
    assert top_rated(rows, "r", ["x", "y"], 1, "f.jsonl").tolist() == [1]


@pytest.mark.parametrize("value,expected", [(None, "None"), ("5", "'5'"), (True, "True"), (float("nan"), "nan")])
def test_non_numeric_rating_names_file_row_and_expectation(value, expected):
    rows = [{"rating": 1}, {"rating": value}]
    with pytest.raises(DataError, match=rf"pool\.jsonl:7: field 'rating' is {expected}, expected a finite number"):
        top_rated(rows, "rating", ["0", "1"], 1, "pool.jsonl", lines=[3, 7])


def test_missing_rating_names_file_row_and_the_fields_there():
    with pytest.raises(DataError, match=r"pool\.parquet: row 1: no field 'score'.*expected a number.*\['q', 'r'\]"):
        top_rated([{"score": 2}, {"q": 1, "r": 2}], "score", ["0", "1"], 1, "pool.parquet")


def test_bad_count_is_refused():
    with pytest.raises(ConfigError, match="at least one row"):
        top_rated(ROWS, "rating", ["0"], 0, "pool.jsonl")


def test_unknown_sample_id_is_an_error():
    with pytest.raises(DataError, match="no row has the sample id 'z'"):
        top_rated(ROWS, "rating", ["z"], 1, "pool.jsonl")
