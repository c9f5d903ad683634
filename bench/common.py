"""Shared set-up of the benchmarks: the GSM8K workload, the model, a matmul FLOP/s probe, the machine's load."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "sft" / "gsm8k_train.jsonl"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.1f}")


def gsm8k_conversations(n: int = 1000, seed: int = 0):
    """The first ``n`` rows of GSM8K after a seeded shuffle, as conversations (user = question, assistant = answer)."""
    from tokenclean.core.data import Conversation

    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [Conversation(str(i), [{"role": "user", "content": rows[i]["question"]},
                                  {"role": "assistant", "content": rows[i]["answer"]}], int(i)) for i in order]


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))


def llama(vocab: int = 50257, hidden: int = 256, layers: int = 4, heads: int = 4, mlp: int = 1024, seed: int = 0):
    """A randomly initialised Llama with tied embeddings, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    special = min(50256, vocab - 1)  # GPT-2's <|endoftext|>, kept inside smaller vocabularies
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=special, eos_token_id=special)
    return LlamaForCausalLM(cfg).eval()


def non_embedding_params(model) -> int:
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def matmul_flops(n: int = 2048, reps: int = 3) -> float:
    """Best-of-``reps`` FLOP/s of an n x n x n fp32 matmul on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
