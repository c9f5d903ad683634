"""The position-0 rule and labels, on hand-built arrays (numpy, torch, lists)."""

import numpy as np
import torch

from tokenclean.core.labels import (IGNORE_INDEX, clear_first_positions, clear_position_0, first_positions,
                                    make_labels, trained_token_count)


def test_clear_position_0_on_a_row_a_list_and_a_batch():
    assert clear_position_0([True, True, False]) == [False, True, False]
    assert clear_position_0([]) == []
    row = np.ones(3, bool)
    assert clear_position_0(row) is row and row.tolist() == [False, True, True]
    batch = torch.ones(2, 3, dtype=torch.bool)
    assert clear_position_0(batch).tolist() == [[False, True, True], [False, True, True]]
    assert clear_position_0(np.ones((2, 0), bool)).shape == (2, 0)


def test_first_positions_skip_empty_samples():
    offsets = np.array([0, 3, 3, 5, 5])
    assert first_positions(offsets).tolist() == [0, 3]
    mask = clear_first_positions(np.ones(5, bool), offsets)
    assert mask.tolist() == [False, True, True, False, True]


def test_trained_token_count_ignores_position_0():
    labels = make_labels(np.array([5, 6, 7, 8]), np.array([True, False, True, True]))
    assert labels.tolist() == [5, IGNORE_INDEX, 7, 8]
    assert trained_token_count(labels) == 2
    assert trained_token_count([IGNORE_INDEX]) == 0 and trained_token_count([]) == 0
