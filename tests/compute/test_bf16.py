"""bf16: the ``auto`` dtype rule follows the hardware, runs record it, and bf16 scores select what fp32 scores do."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import chat_table, tiny_llama

import tokenclean.compute.losses as losses_module
from tokenclean.compute import hardware
from tokenclean.errors import ConfigError
from tokenclean.compute.modeling import resolve_dtype
from tokenclean.compute.scoring import compute_token_loss, score_tokens
from tokenclean.selection.select import round_half_up, top_k_mask
from tokenclean.compute.training import TrainConfig


@pytest.fixture
def cpu_without_probes(monkeypatch):
    """torch's own CPU probes report nothing, so ``/proc/cpuinfo``'s flags (patched per test) decide."""
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)  # the suite's fp32 pin (conftest)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)

    def set_flags(*flags):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))

    return set_flags


def test_the_environment_overrides_the_detection(monkeypatch, cpu_without_probes):
    cpu_without_probes("avx2")
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    assert hardware.auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    cpu_without_probes("avx512_bf16")
    assert hardware.auto_dtype("cpu") == torch.float32
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="TOKENCLEAN_NATIVE_BF16 must be 0 or 1"):
        hardware.auto_dtype("cpu")


def test_auto_picks_bf16_only_on_cpus_with_native_bf16(cpu_without_probes):
    cpu_without_probes("avx2", "fma")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert hardware.resolve_bf16("auto", "cpu") is False
    cpu_without_probes("avx2", "avx512f", "avx512_bf16")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert hardware.resolve_bf16("auto", "cpu") is True
    cpu_without_probes("avx2", "amx_tile", "amx_bf16")
    assert hardware.auto_dtype("cpu") == torch.bfloat16


def test_torch_probe_counts_as_native(monkeypatch, cpu_without_probes):
    cpu_without_probes("avx2")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert hardware.auto_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cuda_follows_is_bf16_supported(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert hardware.auto_dtype("cuda") == expected
    assert hardware.resolve_bf16("auto", torch.device("cuda", 0)) is supported


def test_explicit_settings_win_and_bad_ones_are_refused(cpu_without_probes):
    cpu_without_probes("avx2")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert hardware.resolve_bf16("true", "cpu") is True and hardware.resolve_bf16(False, "cpu") is False
    with pytest.raises(ConfigError, match="auto, true, false"):
        hardware.resolve_bf16("sometimes", "cpu")
    assert TrainConfig(bf16=True).bf16 == "true"  # as YAML's `bf16: true` arrives
    with pytest.raises(ConfigError, match="bf16 must be auto, true or false"):
        TrainConfig(bf16="maybe")


def test_selection_scores_stay_fp32_under_auto_where_training_takes_bf16(cpu_without_probes, tiny_model_dir,
                                                                       gpt2_tokenizer):
    """On a CPU with native bf16, ``--dtype auto`` scores in fp32 (bf16's loss error reorders the selection), while
    training's ``--bf16 auto`` and other ``auto`` weights take bf16; ``bfloat16`` asked for is kept."""
    from tokenclean import api

    cpu_without_probes("avx2", "avx512f", "avx512_bf16")
    tokens = chat_table(gpt2_tokenizer, [("What is 2 + 2?", "It is 4.")])
    assert api.score(tiny_model_dir, tokens, progress=False).meta["compute"]["dtype"] == "float32"
    assert api.score(tiny_model_dir, tokens, dtype="bfloat16", progress=False).meta["compute"]["dtype"] == "bfloat16"
    assert hardware.scoring_dtype("auto") == "float32" and hardware.scoring_dtype("bfloat16") == "bfloat16"
    assert hardware.resolve_bf16("auto", "cpu") is True and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_scores_record_the_hardware_and_dtype(gpt2_tokenizer):
    tokens = chat_table(gpt2_tokenizer, [("What is 2+2?", "It is 4.")])
    meta = score_tokens(tiny_llama().eval(), tokens, progress=False).meta["compute"]
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["native_bf16"] == hardware.cpu_has_native_bf16()
    assert set(meta["cpu_flags"]) <= set(hardware.RECORDED_FLAGS) and meta["cpu_model"]
    bf16_meta = score_tokens(tiny_llama().eval().to(torch.bfloat16), tokens, progress=False).meta["compute"]
    assert bf16_meta["dtype"] == "bfloat16"


def _peaked_pair():
    """A tiny Llama whose predictions are peaked (scaled tied embedding: losses of ~12 nats spread over ~0-40,
    like a trained model's spread rather than a random one's flat log(V)), and a "reference": the same with
    noise on every non-embedding weight, so that scores = base - reference spread over ~0.1 nats."""
    base = tiny_llama(hidden=64).eval()
    with torch.no_grad():
        base.model.embed_tokens.weight.mul_(8)
    ref = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "embed" not in name:
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    return base, ref


def _top60(score: np.ndarray) -> np.ndarray:
    scored = ~np.isnan(score)
    return top_k_mask(score[scored], int(round_half_up(0.6 * scored.sum())))


def _bf16_log_softmax_head(hidden, weight, targets, bias=None, chunk_tokens=None):
    """The bug the fp32 log-softmax prevents: logits *and* their log-softmax in bf16."""
    return F.cross_entropy(hidden @ weight.T, targets, reduction="none").float()


def test_bf16_scores_agree_with_fp32(gpt2_tokenizer, gsm8k_rows, monkeypatch):
    """bf16 weights with the fp32 log-softmax stay within bounds that a bf16 log-softmax breaks.

    Measured on this model and data (AVX2 CPU, torch 2.13): bf16 max |loss difference| 0.026, mean 0.0061,
    top-60% agreement 98.2%; with the log-softmax in bf16 too: max 0.056, mean 0.0177, agreement 94.5%. (The tiny
    random model's scores are nearly tied, ~0.13 nats of spread, so its agreement is lower than a real model's.)
    """
    tokens = chat_table(gpt2_tokenizer, [(r["question"], r["answer"]) for r in gsm8k_rows[:8]])
    base, ref = _peaked_pair()
    fp32 = [compute_token_loss(m, tokens, progress=False) for m in (base, ref)]
    bf16_models = [copy.deepcopy(m).to(torch.bfloat16) for m in (base, ref)]
    bf16 = [compute_token_loss(m, tokens, progress=False) for m in bf16_models]
    monkeypatch.setattr(losses_module, "head_losses", _bf16_log_softmax_head)
    buggy = [compute_token_loss(m, tokens, progress=False) for m in bf16_models]

    scored = ~np.isnan(fp32[0])
    selected = _top60(fp32[0] - fp32[1])

    def diff_and_agreement(pair):
        d = np.abs(pair[0][scored] - fp32[0][scored])
        return d.max(), d.mean(), (selected & _top60(pair[0] - pair[1])).sum() / selected.sum()

    d_max, d_mean, agree = diff_and_agreement(bf16)
    assert d_max < 0.045 and d_mean < 0.011 and agree >= 0.97
    b_max, b_mean, b_agree = diff_and_agreement(buggy)
    assert b_mean >= 0.011 or b_agree < 0.97  # the bounds above would catch a bf16 log-softmax


def test_lora_adds_its_adapter_in_fp32_under_bf16_autocast():
    """A young adapter's contribution (here ~1e-4 of the frozen layer's output) is below bf16's resolution: peft's
    bf16 sum returns the frozen layer's output unchanged almost everywhere; inside ``adapter_sums_in_fp32`` the layer returns the
    frozen output plus the adapter's, in fp32. Leaving the block removes the hooks."""
    from peft import LoraConfig, get_peft_model

    from tokenclean.compute.adapters import adapter_sums_in_fp32

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 64)),
                           LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["0"]))
    layer = model.base_model.model[0]
    torch.nn.init.constant_(layer.lora_B["default"].weight, 1e-5)
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        frozen = layer.base_layer(x)
        delta = layer.lora_B["default"](layer.lora_A["default"](x)).float() * layer.scaling["default"]
        plain = layer(x)
        with adapter_sums_in_fp32(model):
            summed = layer(x)
        after = layer(x)
    assert frozen.dtype == plain.dtype == after.dtype == torch.bfloat16 and summed.dtype == torch.float32
    assert delta.abs().max() < 1e-3 * frozen.abs().max()
    assert (plain == frozen).float().mean() > 0.9  # rounded away, except where the frozen output is near 0
    torch.testing.assert_close(summed - frozen.float(), delta, rtol=1e-3, atol=1e-7)
    assert torch.equal(after, plain)


def test_lora_training_under_bf16_leaves_no_hook_behind(tmp_path, gpt2_tokenizer):
    from tokenclean.compute.training import train_model

    model = tiny_llama(seed=3)
    table = chat_table(gpt2_tokenizer, [("Say 1", "1 1"), ("Say 2", "2 2 2"), ("Hi", "Hello there"), ("Go", "ok")])
    cfg = TrainConfig(lora_r=4, batch_size=2, gradient_accumulation_steps=1, max_steps=1, bf16="true")
    train_model(model, gpt2_tokenizer, table, tmp_path / "m", cfg)
    assert not [name for name, m in model.named_modules() if m._forward_hooks]
