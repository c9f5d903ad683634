"""The token contract: exact response masks, truncation, labels."""

import numpy as np
import pytest

from tokenclean.core.data import Conversation
from tokenclean.core.tokens import IGNORE_INDEX, TokenizeConfig, TokenTable, make_labels, render_segments, tokenize

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": " The answer is 4."}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course!"}]

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokens(tokenizer, messages, **cfg):
    return tokenize([Conversation("x", messages, 0)], tokenizer, TokenizeConfig(**cfg))


def _response_text(tokenizer, table: TokenTable) -> list[str]:
    ids, mask = table.flat_input_ids(), table.flat_response_mask()
    # contiguous runs of response tokens, decoded
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(int(i))
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def test_default_template_masks_exactly_the_assistant_turns(gpt2_tokenizer):
    table = _tokens(gpt2_tokenizer, CHAT)
    eos = gpt2_tokenizer.eos_token
    assert _response_text(gpt2_tokenizer, table) == [" The answer is 4." + eos, "6, of course!" + eos]
    # every response token is exactly the tokenization of the assistant content (+ EOS), segment by segment
    ids, mask = table.flat_input_ids(), table.flat_response_mask()
    expected = gpt2_tokenizer(" The answer is 4.", add_special_tokens=False)["input_ids"] + [50256]
    expected += gpt2_tokenizer("6, of course!", add_special_tokens=False)["input_ids"] + [50256]
    assert ids[mask].tolist() == expected
    text = gpt2_tokenizer.decode(ids)
    assert text.startswith(eos + "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n The answer")


def test_boundary_merge_does_not_leak(gpt2_tokenizer):
    # "\n" + "The" would merge differently if tokenized together; segments are tokenized separately
    table = _tokens(gpt2_tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\nThe"}])
    assert _response_text(gpt2_tokenizer, table) == ["\nThe" + gpt2_tokenizer.eos_token]


def test_chat_template_masks_exactly_the_assistant_turns(gpt2_tokenizer):
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.chat_template = CHATML
    table = _tokens(tok, CHAT)
    assert _response_text(tok, table) == [" The answer is 4.<|im_end|>\n", "6, of course!<|im_end|>\n"]
    segments = render_segments(CHAT, tok)
    assert "".join(s for s, _ in segments) == tok.apply_chat_template(CHAT, tokenize=False)


def test_truncation_and_train_on_prompt(gpt2_tokenizer):
    long = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "yes"}]
    convs = [Conversation("a", long, 0), Conversation("b", CHAT, 1)]
    table = tokenize(convs, gpt2_tokenizer, TokenizeConfig(max_seq_len=40))
    assert table.lengths.tolist() == [40, 40]
    assert table.meta["truncated_samples"] == 2
    assert table.meta["no_response"] == 1  # the long prompt swallowed sample a's response
    assert table.flat_response_mask()[40:].sum() == 6  # b keeps its first response (6 tokens), loses the second
    full = _tokens(gpt2_tokenizer, CHAT, train_on_prompt=True)
    mask = full.flat_response_mask()
    assert not mask[0] and mask[1:].all()


def test_position_zero_is_never_a_response_token(gpt2_tokenizer):
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    table = _tokens(tok, [{"role": "assistant", "content": "Hello world"}])
    assert not table.flat_response_mask()[0]
    assert table.flat_response_mask()[1:].all()


def test_labels_and_roundtrip(tmp_path, gpt2_tokenizer):
    ids = np.array([5, 6, 7, 8])
    labels = make_labels(ids, np.array([False, True, True, True]), np.array([True, False, True, True]))
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]
    table = _tokens(gpt2_tokenizer, CHAT)
    table.save(tmp_path)
    again = TokenTable.load(tmp_path)
    assert again.meta == table.meta
    assert np.array_equal(again.flat_input_ids(), table.flat_input_ids())
    other = _tokens(gpt2_tokenizer, CHAT, max_seq_len=10)
    assert other.meta["tokens_fingerprint"] != table.meta["tokens_fingerprint"]


def test_chat_template_that_rewrites_history_is_refused(gpt2_tokenizer):
    from tokenclean.errors import DataError

    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    # renders only the last message: not prefix-stable
    tok.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(DataError, match="--template default"):
        _tokens(tok, CHAT)


def test_select_recounts_truncated_samples(tmp_path, gpt2_tokenizer):
    """A subset counts its own truncated samples (the pool/eval split and the warm-up split record them)."""
    long = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "word " * 50}]
    short = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "yes"}]
    convs = [Conversation("a", long, 0), Conversation("b", short, 1), Conversation("c", long, 2)]
    table = tokenize(convs, gpt2_tokenizer, TokenizeConfig(max_seq_len=20))
    assert table.meta["truncated_samples"] == 2
    assert table.select([1]).meta["truncated_samples"] == 0
    assert table.select([0, 1]).meta["truncated_samples"] == 1
    assert table.select([2, 0]).select([1]).meta["truncated_samples"] == 1
    table.save(tmp_path)
    assert TokenTable.load(tmp_path).select([1, 2]).meta["truncated_samples"] == 1


def test_token_layout_is_read_written_and_compared_by_key():
    from tokenclean.core.tokens import TokenOrigin

    meta = {"tokenizer_fingerprint": "t", "max_seq_len": 8, "template": "auto", "train_on_prompt": False,
            "samples": 3}
    origin = TokenOrigin.of(meta)
    assert origin.meta() == {"tokenizer_fingerprint": "t", "max_seq_len": 8, "template": "auto",
                             "train_on_prompt": False}
    assert origin.first_difference(TokenOrigin.of({**meta, "train_on_prompt": True})) == "train_on_prompt"
    assert origin.first_difference(TokenOrigin.of({"max_seq_len": 9, "template": "chat"})) == "max_seq_len"
    assert origin.first_difference(TokenOrigin.of({"data_fingerprint": "d"})) is None  # recorded by one side only


def test_per_sample_sum_counts_masks_and_sums_values_with_empty_samples():
    from tokenclean.core.tokens import per_sample_sum

    offsets = np.array([0, 2, 2, 5, 5])  # samples of 2, 0, 3 and 0 tokens (the last one trailing)
    mask = np.array([True, False, True, True, False])
    counts = per_sample_sum(mask, offsets)
    assert counts.tolist() == [1, 0, 2, 0] and counts.dtype == np.int64
    sums = per_sample_sum(np.array([0.5, 1.0, 2.0, 3.0, 4.0], np.float32), offsets)
    assert sums.tolist() == [1.5, 0.0, 9.0, 0.0] and sums.dtype == np.float64
    assert per_sample_sum(np.zeros(0, bool), np.array([0, 0, 0])).tolist() == [0, 0]
