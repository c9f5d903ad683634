"""Shared fixtures: the GPT-2 tokenizer from ../shared/data and tiny Llama models built in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "sft" / "gsm8k_train.jsonl"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"

# `auto` dtypes at fp32 on every machine (torchrun workers inherit it), so that tests comparing computations to
# tolerances of 1e-5 do not turn bf16 on a CPU with native bf16; the tests of the detection itself unset it.
os.environ.setdefault("TOKENCLEAN_NATIVE_BF16", "0")


def tiny_llama(vocab_size: int = 50257, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A randomly initialised Llama with a few hundred thousand parameters (mostly the embedding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=50256, eos_token_id=50256,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """torch's thread count is process-wide: a test that sets it must not change the tests after it. The
    bitwise-reproducibility tests compare this process's results with a subprocess's, which runs on the default
    count; on a 2-core CPU with AMX, 1 thread against 2 changed the last bits of the scores (found in CI order)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def score_cache_dir(tmp_path_factory):
    """Runs use the score cache by default: keep it in the session's temporary directory, never in ~/.cache."""
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("score-cache")
    patch.setenv("TOKENCLEAN_CACHE", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A saved tiny Llama with the GPT-2 tokenizer: a standard model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def chat_table(tokenizer, pairs: list[tuple[str, str]]):
    """A ``TokenTable`` of one-turn chats (user prompt, assistant reply); sample ids are "0", "1", ..."""
    from tokenclean.core.data import Conversation
    from tokenclean.core.tokens import tokenize

    convs = [Conversation(str(i), [{"role": "user", "content": p}, {"role": "assistant", "content": r}], i)
             for i, (p, r) in enumerate(pairs)]
    return tokenize(convs, tokenizer)


def trained_text(tokens, i: int, tokenizer) -> str:
    """The decoded response tokens (the ones trained) of sample ``i`` of ``tokens``."""
    a, b = tokens.offsets[i], tokens.offsets[i + 1]
    ids, mask = tokens.flat_input_ids()[a:b], tokens.flat_response_mask()[a:b]
    return tokenizer.decode(ids[mask])


def full_text(tokens, i: int, tokenizer) -> str:
    """The decoded tokens of sample ``i`` of ``tokens``, prompt and response."""
    a, b = tokens.offsets[i], tokens.offsets[i + 1]
    return tokenizer.decode(tokens.flat_input_ids()[a:b])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gsm8k_rows() -> list[dict]:
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(400), f)]
