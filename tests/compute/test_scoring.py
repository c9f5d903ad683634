"""Stored losses equal a direct per-position computation; entry j is the loss of token j."""

import numpy as np
import pytest
import torch

from conftest import chat_table, tiny_llama
from tokenclean import score
from tokenclean.core.artifacts import Scores
from tokenclean.errors import ConfigError
from tokenclean.compute.losses import token_losses
from tokenclean.compute.scoring import ScoreConfig, compute_token_loss, length_batches


@pytest.fixture(scope="module")
def table(gpt2_tokenizer):
    return chat_table(gpt2_tokenizer, [(f"Question {i}: " + "why? " * i, f"Because {i}." * (1 + i % 4))
                                       for i in range(12)])


def direct_losses(model, ids: np.ndarray) -> np.ndarray:
    """loss of token j = -log softmax(logits at j-1)[ids[j]], from full logits of one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids[None], dtype=torch.long)).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = np.full(len(ids), np.nan, np.float32)
    out[1:] = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)].numpy()
    return out


def test_losses_equal_direct_computation(table):
    model = tiny_llama().eval()
    losses = compute_token_loss(model, table, ScoreConfig(batch_tokens=300), progress=False)
    mask = table.flat_response_mask()
    assert np.isnan(losses[~mask]).all() and not np.isnan(losses[mask]).any()
    offsets, ids = table.offsets, table.flat_input_ids()
    for i in range(len(table)):
        a, b = offsets[i], offsets[i + 1]
        direct = direct_losses(model, ids[a:b])
        m = mask[a:b]
        np.testing.assert_allclose(losses[a:b][m], direct[m], rtol=1e-4, atol=1e-4)


def test_batch_budget_does_not_change_losses(table):
    model = tiny_llama().eval()
    a = compute_token_loss(model, table, ScoreConfig(batch_tokens=64), progress=False)
    b = compute_token_loss(model, table, ScoreConfig(batch_tokens=100_000), progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fast_path_equals_model_forward():
    model = tiny_llama().eval()
    ids = torch.randint(0, 50257, (3, 9))
    attention = torch.ones(3, 9, dtype=torch.long)
    attention[2, 6:] = 0
    target = torch.rand(3, 9) > 0.4
    target[2, 6:] = False
    fast = token_losses(model, ids, attention, target, chunk_tokens=2)
    model.config.final_logit_softcapping = 1.0  # forces the generic path (logits_to_keep through forward)
    slow = token_losses(model, ids, attention, target)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_length_batches_respect_budget():
    lengths = np.array([5, 100, 7, 50, 50, 3])
    batches = length_batches(lengths, 120)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 120
    assert batches[0].tolist() == [1]  # longest first


def test_score_writes_columnar_file_with_fingerprints(tmp_path, tiny_model_dir, gsm8k_rows):
    from conftest import write_jsonl
    from tokenclean.core.data import DataConfig

    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:6])
    scores = score(tiny_model_dir, data, tmp_path / "s", data_config=DataConfig(prompt_field="question",
                                                                                response_field="answer"),
                   progress=False)
    loaded = Scores.load(tmp_path / "s")
    assert loaded.sample_ids == [str(i) for i in range(6)]
    np.testing.assert_array_equal(loaded.token_loss, scores.token_loss)
    for key in ("model_fingerprint", "tokenizer_fingerprint", "data_fingerprint", "tokens_fingerprint",
                "max_seq_len"):
        assert loaded.meta[key]
    assert loaded.meta["scored_tokens"] == int((~np.isnan(loaded.token_loss)).sum())
    assert not list(tmp_path.glob("s/*.pkl")) and (tmp_path / "s" / "token_loss.parquet").exists()


def test_the_batch_budget_defaults_by_device():
    """On a CPU the default budget is CPU_BATCH_TOKENS (wide batches spill out of the caches); an explicit one is
    kept (the losses do not depend on it: see the batch-size test above)."""
    from tokenclean.compute.scoring import CPU_BATCH_TOKENS, batch_budget

    model = tiny_llama().eval()
    assert ScoreConfig().batch_tokens is None
    assert batch_budget(ScoreConfig(), model) == CPU_BATCH_TOKENS == 2048
    assert batch_budget(ScoreConfig(batch_tokens=300), model) == 300
    with pytest.raises(ConfigError, match="batch_tokens must be >= 1"):
        ScoreConfig(batch_tokens=0)
