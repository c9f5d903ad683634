"""The prompt scorers from the command line: ``tokenclean score --prompt-free`` writes the reference's losses of the
responses without their prompts, aligned with the data, and ``tokenclean select --scorer prompt-excess`` takes them
with ``--prompt-free`` (and refuses to run without)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_llama, write_jsonl

import tokenclean as tc
from tokenclean.cli import main
from tokenclean.core.artifacts import Scores, Selection
from tokenclean.selection.from_scores import select_for
from tokenclean.selection.select import SelectConfig

FIELDS = tc.DataConfig(prompt_field="question", response_field="answer")
DATA_FLAGS = ["--prompt-field", "question", "--response-field", "answer", "--max-seq-len", "128"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir, gpt2_tokenizer, gsm8k_rows):
    """(data, base scores, reference model, reference scores, prompt-free scores): all through the CLI."""
    tmp = tmp_path_factory.mktemp("prompt-free")
    data = write_jsonl(tmp / "pool.jsonl", gsm8k_rows[:6])
    ref_model = tmp / "ref-model"
    tiny_llama(seed=1).save_pretrained(ref_model)
    gpt2_tokenizer.save_pretrained(ref_model)
    for model, out, extra in ((tiny_model_dir, "base", []), (ref_model, "ref", []),
                              (ref_model, "prompt-free", ["--prompt-free"])):
        argv = ["score", "--model", str(model), "--data", str(data), *DATA_FLAGS, "--dtype", "float32",
                "--out", str(tmp / out), *extra, "--quiet"]
        assert main(argv) == 0
    return data, tmp / "base", ref_model, tmp / "ref", tmp / "prompt-free"


def _direct_losses(model, ids: list[int]) -> np.ndarray:
    """(len(ids),) loss of token j given tokens < j, NaN at 0: computed here without tokenclean."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = np.full(len(ids), np.nan, np.float32)
    out[1:] = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    return out


def test_score_prompt_free_writes_losses_without_the_prompt_aligned_with_the_data(scored, gpt2_tokenizer):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    data, _, ref_model, ref, free_dir = scored
    tokens, _ = tc.prepare_tokens(data, gpt2_tokenizer, FIELDS, tc.TokenizeConfig(max_seq_len=128))
    free = Scores.load(free_dir)
    assert free.sample_ids == tokens.sample_ids and np.array_equal(free.offsets, tokens.offsets)
    assert free.meta["tokens_fingerprint"] == tokens.meta["tokens_fingerprint"]
    response = tokens.flat_response_mask()
    assert np.isnan(free.token_loss[~response]).all() and np.isfinite(free.token_loss[response]).all()
    assert not free_dir.with_name("prompt-free.shards").exists()  # the resume shards are gone once written
    model = AutoModelForCausalLM.from_pretrained(ref_model, torch_dtype=torch.float32).eval()
    ids, offsets, bos = tokens.flat_input_ids(), tokens.offsets, gpt2_tokenizer.bos_token_id
    for i in (0, 3):  # one-turn rows: the response is one span, scored after BOS alone
        at = np.flatnonzero(response[offsets[i]:offsets[i + 1]]) + offsets[i]
        direct = _direct_losses(model, [bos, *ids[at].tolist()])[1:]
        np.testing.assert_allclose(free.token_loss[at], direct, rtol=1e-4, atol=1e-4)
        with_prompt = Scores.load(ref).token_loss[at]
        assert not np.allclose(with_prompt[1:], direct[1:], atol=1e-3)  # not the losses given the prompt


def test_select_takes_prompt_free_scores_and_refuses_a_prompt_scorer_without(scored, tmp_path, capsys):
    _, base, _, ref, free = scored
    flags = ["select", "--base", str(base), "--ref", str(ref), "--scorer", "prompt-excess", "--quiet"]
    assert main([*flags, "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokenclean select: error: --scorer prompt-excess needs --prompt-free")
    assert not (tmp_path / "none").exists()

    assert main([*flags, "--prompt-free", str(free), "--out", str(tmp_path / "sel")]) == 0
    selection = Selection.load(tmp_path / "sel")
    meta = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert meta["config"]["scorer"] == "prompt-excess"
    b, r, f = Scores.load(base), Scores.load(ref), Scores.load(free)
    expected, counts = select_for(SelectConfig(scorer="prompt-excess"), b.token_loss, r.token_loss, b.offsets,
                                  prompt_free_loss=f.token_loss)
    assert np.array_equal(selection.keep_mask, expected)
    assert meta["kept_tokens"] == counts["kept_tokens"] == int(np.floor(0.6 * counts["response_tokens"] + 0.5))
