"""The export is what TRL's SFTTrainer (and other trainers) consume unchanged."""

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenclean import export
from tokenclean.core.data import Conversation
from tokenclean.core.tokens import IGNORE_INDEX, tokenize


@pytest.fixture()
def table(gpt2_tokenizer):
    convs = [Conversation(f"s{i}", [{"role": "user", "content": f"Count to {i}."},
                                    {"role": "assistant", "content": " ".join(str(k) for k in range(i + 1))}], i)
             for i in range(6)]
    return tokenize(convs, gpt2_tokenizer)


def test_export_columns_and_labels(tmp_path, table):
    keep = np.zeros(len(table.flat_input_ids()), bool)
    keep[table.offsets[2]:] = True  # samples s0 and s1 keep nothing
    result = export(table, tmp_path / "export", selection=None)
    assert result["rows"] == 6
    from tokenclean.compute.export import export_dataset, export_table

    t = export_table(table, keep)
    assert t.column("sample_id").to_pylist() == ["s2", "s3", "s4", "s5"]
    export_dataset(table, tmp_path / "cleaned", keep, parquet_path=tmp_path / "cleaned.parquet")
    ds = datasets.load_from_disk(str(tmp_path / "cleaned"))
    assert set(ds.column_names) >= {"input_ids", "attention_mask", "labels"}
    assert len(ds) == 4
    row = ds[0]
    a, b = table.offsets[2], table.offsets[3]
    expected = np.where(table.flat_response_mask()[a:b] & keep[a:b], table.flat_input_ids()[a:b], IGNORE_INDEX)
    assert row["labels"] == expected.tolist() and row["input_ids"] == table.flat_input_ids()[a:b].tolist()
    assert pq.read_table(tmp_path / "cleaned.parquet").num_rows == 4


def test_trl_sft_trainer_trains_a_step_on_the_export(tmp_path, table, gpt2_tokenizer):
    trl = pytest.importorskip("trl", reason="TRL is an optional extra (pip install tokenclean[trl])")
    from conftest import tiny_llama

    keep = np.random.default_rng(0).random(len(table.flat_input_ids())) < 0.6
    from tokenclean.compute.export import export_dataset

    export_dataset(table, tmp_path / "export", keep)
    ds = datasets.load_from_disk(str(tmp_path / "export"))
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.pad_token = tok.eos_token
    model = tiny_llama()
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                         report_to="none", learning_rate=1e-2, save_strategy="no", bf16=False)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    # TRL keeps our labels: the dropped tokens stay -100 in what it trains on
    first = trainer.train_dataset[0]
    assert first["labels"] == ds[0]["labels"]
    trainer.train()
    assert trainer.state.global_step == 1
    assert not model.model.layers[0].mlp.up_proj.weight.detach().equal(before)


def test_export_takes_a_tokenizer_saved_on_its_own(tmp_path, gpt2_tokenizer, gsm8k_rows):
    from conftest import write_jsonl
    from tokenclean.cli import main

    tok_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(tok_dir)  # no config.json: a tokenizer directory, not a model directory
    data = write_jsonl(tmp_path / "rows.jsonl", gsm8k_rows[:3])
    assert main(["export", "--tokenizer", str(tok_dir), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--prompt-field", "question", "--response-field", "answer", "--quiet"]) == 0
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 3 and all(any(label != IGNORE_INDEX for label in row) for row in ds["labels"])
