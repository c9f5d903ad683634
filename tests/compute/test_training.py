"""Token-masked training: dropped tokens get exactly zero gradient; the loss is a mean over the step's kept
tokens (correct under gradient accumulation); empty batches give zero, never NaN; models save and load."""

import logging

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from tokenclean.core.data import Conversation
from tokenclean.errors import ConfigError
from tokenclean.compute.losses import kept_token_loss_sum
from tokenclean.core.tokens import IGNORE_INDEX, tokenize
from tokenclean.compute.training import PadCollator, TrainConfig, train_model


def test_dropped_tokens_get_exactly_zero_gradient():
    model = tiny_llama()
    ids = torch.randint(0, 50257, (2, 8))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[0, 5] = IGNORE_INDEX  # a dropped response token
    captured = {}

    def keep_grad(module, inputs, out):
        out.retain_grad()
        captured["h"] = out

    hook = model.model.norm.register_forward_hook(keep_grad)
    loss_sum, n = kept_token_loss_sum(model, ids, torch.ones_like(ids), labels)
    (loss_sum / n).backward()
    hook.remove()
    grad = captured["h"].grad  # (B, T, H): final hidden state, which feeds only the output layer
    # position j-1 predicts token j: dropped/ignored tokens are 0,1,2 and (row 0) 5 -> positions 0,1 and 4
    assert n == 2 * 5 - 1
    assert torch.count_nonzero(grad[0, [0, 1, 4]]) == 0 and torch.count_nonzero(grad[1, [0, 1]]) == 0
    assert torch.count_nonzero(grad[1, 7]) == 0  # the last position predicts nothing
    assert torch.count_nonzero(grad[0, 2]) > 0 and torch.count_nonzero(grad[0, 5]) > 0
    # and the value is the mean over kept tokens of the full-logit cross-entropy
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="mean")
    torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-5)


def test_batch_without_kept_tokens_is_zero_not_nan():
    model = tiny_llama()
    ids = torch.randint(0, 50257, (2, 6))
    loss_sum, n = kept_token_loss_sum(model, ids, torch.ones_like(ids), torch.full_like(ids, IGNORE_INDEX))
    assert n == 0 and loss_sum.item() == 0.0
    loss_sum.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def _table(tokenizer, n=8):
    convs = [Conversation(str(i), [{"role": "user", "content": f"Say {i}" + " please" * (i % 3)},
                                   {"role": "assistant", "content": f"{i} " * (1 + 3 * (i % 4))}], i) for i in range(n)]
    return tokenize(convs, tokenizer)


def _weights_after_one_step(tmp_path, tokenizer, table, keep, batch_size, accumulation, micro=None, rows=None,
                            lora=False):
    """The saved weights after one SGD step (a LoRA adapter merged; no dropout); ``rows`` collects the rows of every
    forward pass."""
    from transformers import AutoModelForCausalLM

    model = tiny_llama(seed=1)
    if rows is not None:
        model.model.embed_tokens.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    cfg = TrainConfig(lora=lora, lora_r=4, lora_dropout=0.0, batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, max_steps=1, micro_batch_size=micro,
                      lr_warmup_ratio=0.0, learning_rate=1.0, lr_scheduler="constant", optimizer="sgd")
    out = tmp_path / f"m{batch_size}x{accumulation}x{micro}{'lora' if lora else ''}"
    train_model(model, tokenizer, table, out, cfg, keep, drop_empty=False, seed=0)
    return AutoModelForCausalLM.from_pretrained(out).state_dict()


def test_gradient_accumulation_gives_the_same_step(tmp_path, gpt2_tokenizer):
    table = _table(gpt2_tokenizer)
    keep = np.random.default_rng(0).random(len(table.flat_input_ids())) < 0.5
    one_rows, four_rows = [], []
    one = _weights_after_one_step(tmp_path, gpt2_tokenizer, table, keep, 8, 1, rows=one_rows)
    four = _weights_after_one_step(tmp_path, gpt2_tokenizer, table, keep, 2, 4, rows=four_rows)
    assert one_rows == [8] and four_rows == [2, 2, 2, 2]  # a full fine-tune passes its whole batch at once
    base = tiny_llama(seed=1).state_dict()
    changed = [k for k in one if not torch.equal(one[k], base[k])]
    assert changed, "the step changed no weight"
    for k in one:
        torch.testing.assert_close(one[k], four[k], rtol=1e-4, atol=1e-5)


def test_lora_on_a_cpu_passes_each_sample_alone_by_default_and_trains_the_same_step(tmp_path, gpt2_tokenizer):
    """The default micro-batch of a LoRA fine-tune on a CPU is one sample: eight passes of one row for a batch of 8,
    and the merged weights after the step are those of one pass over all 8 (rows of unequal length: padding
    differs too)."""
    table = _table(gpt2_tokenizer)
    keep = np.random.default_rng(1).random(len(table.flat_input_ids())) < 0.5
    whole_rows, default_rows = [], []
    whole = _weights_after_one_step(tmp_path, gpt2_tokenizer, table, keep, 8, 1, micro=8, rows=whole_rows, lora=True)
    default = _weights_after_one_step(tmp_path, gpt2_tokenizer, table, keep, 8, 1, rows=default_rows, lora=True)
    assert whole_rows == [8] and default_rows == [1] * 8
    base = tiny_llama(seed=1).state_dict()
    assert not torch.equal(whole["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"]), "the step changed no weight"
    for k in whole:
        torch.testing.assert_close(whole[k], default[k], rtol=1e-4, atol=1e-5)


def test_micro_batch_defaults_and_bounds(caplog):
    from tokenclean.compute.training import micro_batch

    cfg = TrainConfig(batch_size=4)
    assert micro_batch(cfg, "cpu") == 1 and micro_batch(cfg, "cuda") == 4
    assert micro_batch(TrainConfig(batch_size=4, lora=False), "cpu") == 4  # full fine-tune: one pass per batch
    assert micro_batch(cfg, "cpu", online=True) == 4  # Rho-1 ranks tokens within the whole batch
    with caplog.at_level(logging.WARNING, logger="tokenclean"):
        assert micro_batch(TrainConfig(batch_size=4, micro_batch_size=2), "cpu", online=True) == 4
    assert "--micro-batch-size 2 is not used by online selection" in caplog.text  # said, not silently dropped
    assert micro_batch(TrainConfig(batch_size=4, micro_batch_size=2), "cuda") == 2
    with pytest.raises(ConfigError, match="micro_batch_size must divide batch_size \\(4\\), got 3"):
        TrainConfig(batch_size=4, micro_batch_size=3)


def test_lora_training_saves_a_loadable_merged_model(tmp_path, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    table = _table(gpt2_tokenizer)
    keep = np.zeros(len(table.flat_input_ids()), bool)
    keep[table.offsets[1]:] = True  # sample 0 has no kept token
    model = tiny_llama(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(batch_size=2, gradient_accumulation_steps=1, learning_rate=5e-3, lora_r=4)
    result = train_model(model, gpt2_tokenizer, table, tmp_path / "model", cfg, keep, drop_empty=True)
    assert result["samples"] == 7 and result["samples_left_out"] == 1
    assert result["trained_tokens"] == int((keep & table.flat_response_mask()).sum())
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not (tmp_path / "model.checkpoints").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not any("lora" in k for k in loaded.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded.state_dict()[q], before[q])  # the merged adapter changed the projections
    torch.testing.assert_close(loaded.state_dict()["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_collator_pads_with_ignore_index():
    batch = PadCollator(pad_id=0, multiple_of=4)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                                  {"input_ids": [4], "labels": [-100]}])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"][1].tolist() == [-100] * 4
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_resume_skips_a_checkpoint_cut_off_by_a_kill(tmp_path):
    """The Trainer writes ``trainer_state.json`` last: a newer checkpoint without it is skipped, not resumed from."""
    from tokenclean.compute.training import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, complete in ((2, True), (10, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "optimizer.pt").write_bytes(b"")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()  # not a step: ignored
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric order, not text order


def test_rand_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    from tokenclean.compute.adapters import RandDropout

    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros, so a zero output means dropped
    drop = RandDropout(0.1)
    x.requires_grad_(True)
    out = drop(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 10^6 draws: sd 0.0003
    torch.testing.assert_close(out[kept], x.detach()[kept] / 0.9)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    assert torch.equal(drop.eval()(x), x)  # off outside training
    bf16 = torch.ones(100_000, dtype=torch.bfloat16)
    assert abs((drop.train()(bf16) != 0).float().mean().item() - 0.9) < 0.005  # fp32 uniforms for a bf16 input


def test_lora_on_a_cpu_draws_dropout_with_rand_and_elsewhere_keeps_torch_dropout():
    from tokenclean.compute.adapters import RandDropout, with_lora

    def dropouts(model):
        return {type(d) for m in model.modules() for d in getattr(m, "lora_dropout", {}).values()}

    assert dropouts(with_lora(tiny_llama(), TrainConfig(lora_r=4), "cpu")) == {RandDropout}
    assert dropouts(with_lora(tiny_llama(), TrainConfig(lora_r=4), "cuda")) == {torch.nn.Dropout}
    assert dropouts(with_lora(tiny_llama(), TrainConfig(lora_r=4, lora_dropout=0.0), "cpu")) == {torch.nn.Identity}
