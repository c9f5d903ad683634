"""The fast paths compute the same numbers as the plain ones: the chunked transposed head, scoring base and
reference with one PEFT model, the score cache, and the kept-positions-only training loss (values and gradients)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import chat_table, tiny_llama, write_jsonl
from tokenclean import api
from tokenclean.compute import score_model
from tokenclean.core.artifacts import Scores
from tokenclean.compute.modeling import load_model
from tokenclean.compute.losses import head_losses, kept_token_loss_sum, token_losses
from tokenclean.compute.scoring import ScoreConfig, compute_token_loss, score_adapter_pair
from tokenclean.core.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def table(gpt2_tokenizer):
    return chat_table(gpt2_tokenizer, [(f"Question {i}: " + "how? " * i, f"So {i}." * (1 + i % 3))
                                       for i in range(10)])


@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_head_losses_equal_cross_entropy(chunk):
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(11, 16), torch.randn(300, 16) * 3, torch.randn(300)
    targets = torch.randint(0, 300, (11,))
    for b in (None, bias):
        expected = F.cross_entropy(F.linear(hidden, weight, b), targets, reduction="none")
        got = head_losses(hidden, weight, targets, b, chunk_tokens=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert head_losses(hidden[:0], weight, targets[:0]).shape == (0,)


def test_head_losses_bf16_weights_use_fp32_softmax():
    torch.manual_seed(1)
    hidden, weight = torch.randn(5, 16).bfloat16(), torch.randn(200, 16).bfloat16()
    targets = torch.randint(0, 200, (5,))
    expected = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")
    torch.testing.assert_close(head_losses(hidden, weight, targets), expected, rtol=1e-5, atol=1e-5)


def lora_model(seed: int = 0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # a non-trivial adapter (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def test_peft_model_fast_path_equals_its_forward():
    model = lora_model()
    ids = torch.randint(0, 50257, (2, 9))
    attention = torch.ones(2, 9, dtype=torch.long)
    attention[1, 7:] = 0
    target = torch.rand(2, 9) > 0.3
    target[1, 7:] = False
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    expected = F.cross_entropy(logits[:, :-1][target[:, 1:]], ids[:, 1:][target[:, 1:]], reduction="none")
    torch.testing.assert_close(token_losses(model, ids, attention, target), expected, rtol=1e-5, atol=1e-5)


def test_adapter_pair_equals_separate_models(table):
    model = lora_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base, ref = score_adapter_pair(model, table, ScoreConfig(batch_tokens=200), "b", "r", progress=False)
    # the adapter was merged for the reference pass and unmerged afterwards: the weights are back
    assert not any(getattr(m, "merged", False) for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)
    plain = tiny_llama().eval()  # the same base weights, no adapter
    merged = lora_model().merge_and_unload().eval()
    np.testing.assert_allclose(base.token_loss, compute_token_loss(plain, table, progress=False), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ref.token_loss, compute_token_loss(merged, table, progress=False), rtol=1e-4,
                               atol=1e-4)
    assert not np.allclose(np.nan_to_num(base.token_loss), np.nan_to_num(ref.token_loss))
    assert base.meta["model_fingerprint"] == "b" and ref.meta["model_fingerprint"] == "r"
    with model.disable_adapter():  # the adapter is back on after scoring
        pass
    assert model.active_adapter == "default"


def pool(path, rows):
    return write_jsonl(path, [{"prompt": r["question"], "completion": r["answer"]} for r in rows])


def counting_score_tokens(monkeypatch) -> list:
    calls = []
    original = score_model.score_tokens

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(score_model, "score_tokens", counting)
    return calls


def test_score_cache_reuses_losses(tmp_path, monkeypatch, tiny_model_dir, gsm8k_rows):
    data = pool(tmp_path / "pool.jsonl", gsm8k_rows[:6])
    other = pool(tmp_path / "other.jsonl", gsm8k_rows[6:10])
    monkeypatch.setenv("TOKENCLEAN_CACHE", str(tmp_path / "cache"))
    calls = counting_score_tokens(monkeypatch)
    loads = []
    monkeypatch.setattr(score_model, "load_model", lambda *a, **k: loads.append(1) or load_model(*a, **k))
    first = api.score(tiny_model_dir, data, tmp_path / "s1", cache=True, progress=False)
    second = api.score(tiny_model_dir, data, tmp_path / "s2", cache=True, progress=False)
    assert len(calls) == 1 and first.meta["cache_hit"] is False and second.meta["cache_hit"] is True
    assert len(loads) == 1  # a hit on a model directory does not even load the model
    assert Scores.load(tmp_path / "s2").meta["cache_hit"] is True
    np.testing.assert_array_equal(first.token_loss, second.token_loss)
    assert len(list((tmp_path / "cache" / "scores").iterdir())) == 1
    assert not list((tmp_path / "cache" / "scores").glob(".*"))  # no temporary leftovers
    api.score(tiny_model_dir, other, cache=True, progress=False)  # other data: a new entry
    assert len(calls) == 2
    # An in-memory model is keyed by its weights: same weights hit, changed weights miss.
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    kwargs = dict(tokenizer=tiny_model_dir, cache=tmp_path / "mem", progress=False)
    api.score(loaded, data, **kwargs)
    api.score(loaded, data, **kwargs)
    assert len(calls) == 3
    with torch.no_grad():
        loaded.model.norm.weight.mul_(2)
    api.score(loaded, data, **kwargs)
    assert len(calls) == 4


def test_score_pair_reuses_cached_base(tmp_path, monkeypatch, tiny_model_dir, gsm8k_rows):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = pool(tmp_path / "pool.jsonl", gsm8k_rows[:5])
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    adapted.save_pretrained(tmp_path / "adapter")
    cache = tmp_path / "cache"
    base_alone = api.score(tiny_model_dir, data, cache=cache, progress=False)  # fills the cache
    import tokenclean.compute.scoring as scoring

    seen = []  # number of passes of each scoring call
    original = scoring.compute_token_losses

    def counting(*args, **kwargs):
        seen.append(len(args[4]) if len(args) > 4 else 1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scoring, "compute_token_losses", counting)
    base, ref = api.score_pair(tiny_model_dir, tmp_path / "adapter", data, tmp_path / "b", tmp_path / "r",
                               cache=cache, progress=False)
    assert seen == [1]  # only the reference pass ran
    np.testing.assert_array_equal(base.token_loss, base_alone.token_loss)
    merged = adapted.merge_and_unload().eval()
    expected = api.score(merged, data, tokenizer=tiny_model_dir, progress=False)
    np.testing.assert_allclose(ref.token_loss, expected.token_loss, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "r" / "token_loss.parquet").exists() and (tmp_path / "b" / "scores.json").exists()


def test_kept_positions_loss_and_gradients_equal_full_logits():
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (3, 12))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[torch.rand(3, 12) < 0.4] = IGNORE_INDEX
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0
    labels[2, 9:] = IGNORE_INDEX
    fast_model, full_model = tiny_llama(seed=3), tiny_llama(seed=3)
    loss_sum, n = kept_token_loss_sum(fast_model, ids, attention, labels)
    (loss_sum / n).backward()
    logits = full_model(input_ids=ids, attention_mask=attention).logits  # (B, T, V): every position
    full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="mean")
    full.backward()
    # Equal up to float summation order (the head's weight gradient sums over fewer rows on the fast path).
    torch.testing.assert_close(loss_sum / n, full, rtol=1e-6, atol=1e-6)
    for (name, a), (_, b) in zip(fast_model.named_parameters(), full_model.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_frozen_library_objects_leave_the_runs_cycles_collectable():
    """A training command freezes the imported stack out of the collector's reach (each full collection then walks
    only what the run made), and a reference cycle made afterwards, such as a Trainer's, is still collected. In a
    child process: freezing this one would keep the test session's objects."""
    code = """
import gc, weakref
from tokenclean.compute.modeling import freeze_library_objects
freeze_library_objects()
frozen = gc.get_freeze_count()
class Node: pass
a, b = Node(), Node()
a.other, b.other = b, a
alive = weakref.ref(a)
del a, b
gc.collect()
print(frozen, alive() is None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 100_000  # the training stack: torch, transformers' Trainer, accelerate, datasets
    assert out[1] == "True"


def test_training_commands_freeze_the_library_objects(monkeypatch, tmp_path, capsys):
    """``tokenclean train`` (a training command) freezes before it runs; ``select`` does not. Both then stop on a
    missing input."""
    from tokenclean import cli
    from tokenclean.compute import modeling

    calls = []
    monkeypatch.setattr(modeling, "freeze_library_objects", lambda: calls.append(True))
    missing = str(tmp_path / "missing")
    assert cli.main(["select", "--base", missing, "--ref", missing, "--out", str(tmp_path / "s")]) == 2
    assert calls == []
    assert cli.main(["train", "--model", missing, "--data", missing + ".jsonl", "--out", str(tmp_path / "m")]) == 2
    assert calls == [True]
