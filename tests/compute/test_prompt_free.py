"""Prompt-free tables: response spans, sources with and without a start token, multi-turn samples, back-mapping,
and losses scored through the table equal a direct computation."""

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from tokenclean.core.data import Conversation
from tokenclean.errors import MismatchError
from tokenclean.api import score_prompt_free
from tokenclean.compute.prompt_free import (map_back, prompt_free_sources, prompt_free_tokens, response_spans,
                                    start_token_id)
from tokenclean.core.tokens import tokenize

# sample 0: prompt, span [2, 4), prompt, span [5, 6), prompt; sample 1: prompt, span [8, 10); sample 2: no response
MASK = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0], bool)
OFFSETS = np.array([0, 7, 10, 12])


def test_response_spans_stop_at_sample_boundaries():
    assert [s.tolist() for s in response_spans(MASK, OFFSETS)] == [[2, 5, 8], [4, 6, 10]]
    # a run across a sample boundary is two spans
    mask = np.array([0, 1, 1, 1, 1, 0], bool)
    assert [s.tolist() for s in response_spans(mask, np.array([0, 3, 6]))] == [[1, 3], [3, 5]]
    assert [s.tolist() for s in response_spans(np.zeros(0, bool), np.array([0]))] == [[], []]


def test_layout_with_a_start_token_scores_every_response_token():
    sources = prompt_free_sources(MASK, OFFSETS, with_start=True)
    assert sources.source.tolist() == [-1, 2, 3, -1, 5, -1, 8, 9]
    assert sources.offsets.tolist() == [0, 3, 5, 8]
    assert sources.sample.tolist() == [0, 0, 1] and sources.span.tolist() == [0, 1, 0]
    assert sources.response_mask.tolist() == [False, True, True, False, True, False, True, True]


def test_layout_without_a_start_token_leaves_each_spans_first_token_unscored():
    sources = prompt_free_sources(MASK, OFFSETS, with_start=False)
    assert sources.source.tolist() == [2, 3, 5, 8, 9]
    assert sources.offsets.tolist() == [0, 2, 3, 5]
    assert sources.response_mask.tolist() == [False, True, False, False, True]
    mapped = map_back(np.array([10, 11, 12, 13, 14], np.float32), MASK, OFFSETS, with_start=False)
    expected = np.full(12, np.nan, np.float32)
    expected[[3, 9]] = [11, 14]  # position 0 of a prompt-free sample has no loss, whatever the array holds there
    np.testing.assert_array_equal(mapped, expected)


def test_map_back_puts_losses_at_their_original_positions_and_refuses_other_tables():
    losses = np.array([np.nan, 1, 2, np.nan, 3, np.nan, 4, 5], np.float32)  # as scored: NaN at the start tokens
    mapped = map_back(losses, MASK, OFFSETS, with_start=True, prompt_free_offsets=np.array([0, 3, 5, 8]))
    expected = np.full(12, np.nan, np.float32)
    expected[[2, 3, 5, 8, 9]] = [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(mapped, expected)
    with pytest.raises(MismatchError, match="were not made from these tokens' responses"):
        map_back(losses, MASK, OFFSETS, with_start=False)
    with pytest.raises(MismatchError, match="start token on"):
        map_back(losses, MASK, OFFSETS, with_start=True, prompt_free_offsets=np.array([0, 2, 5, 8]))


def conversations() -> list[Conversation]:
    one = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
           {"role": "assistant", "content": "Hello you"}, {"role": "user", "content": "More?"},
           {"role": "assistant", "content": "Yes, more text here"}]
    return [Conversation("single", one, 0), Conversation("multi", two, 1)]


def test_prompt_free_table_of_single_and_multi_turn_chats(gpt2_tokenizer):
    tokens = tokenize(conversations(), gpt2_tokenizer)
    bos = start_token_id(gpt2_tokenizer)
    assert bos == 50256
    table = prompt_free_tokens(tokens, bos)
    assert table.sample_ids == ["single#0", "multi#0", "multi#1"]
    eos = gpt2_tokenizer.eos_token
    texts = [gpt2_tokenizer.decode(row) for row in table.table.column("input_ids").to_pylist()]
    # each assistant turn alone, after BOS: no user or system turn, no header, no earlier assistant turn
    assert texts == [f"{eos}It is 4.{eos}", f"{eos}Hello you{eos}", f"{eos}Yes, more text here{eos}"]
    masks = table.table.column("response_mask").to_pylist()
    assert all(m[0] is False and all(m[1:]) for m in masks)
    assert table.meta["response_tokens"] == tokens.meta["response_tokens"]
    assert table.meta["prompt_free"] == {"start_token_id": bos,
                                         "source_tokens_fingerprint": tokens.meta["tokens_fingerprint"]}
    without = prompt_free_tokens(tokens, None)
    assert without.meta["response_tokens"] == tokens.meta["response_tokens"] - 3  # each span's first token


def direct_losses(model, ids: list[int]) -> np.ndarray:
    """(len(ids),) loss of token j from the logits at j - 1 of one unpadded sequence; NaN at 0."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = np.full(len(ids), np.nan, np.float32)
    out[1:] = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    return out


def test_mapped_prompt_free_losses_equal_a_direct_computation(gpt2_tokenizer):
    torch.set_num_threads(1)
    tokens = tokenize(conversations(), gpt2_tokenizer)
    model = tiny_llama().eval()
    bos = start_token_id(gpt2_tokenizer)
    scores = score_prompt_free(model, tokens, tokenizer=gpt2_tokenizer, progress=False)
    mapped = scores.token_loss
    mask, ids, offsets = tokens.flat_response_mask(), tokens.flat_input_ids(), tokens.offsets
    assert np.isnan(mapped[~mask]).all() and not np.isnan(mapped[mask]).any()
    starts, stops = response_spans(mask, offsets)
    assert len(starts) == 3
    for a, b in zip(starts, stops):
        direct = direct_losses(model, [bos] + ids[a:b].tolist())
        np.testing.assert_allclose(mapped[a:b], direct[1:], rtol=1e-4, atol=1e-4)
    # not the losses with the prompt: the second turn's tokens see different contexts
    with_prompt = direct_losses(model, ids[offsets[1]:offsets[2]].tolist())
    a, b = starts[2] - offsets[1], stops[2] - offsets[1]
    assert not np.allclose(with_prompt[a:b], mapped[starts[2]:stops[2]], atol=1e-4)
    assert scores.meta["scored_tokens"] == int(mask.sum())
