"""Formats out: the pre-tokenized export matches what Axolotl and LLaMA-Factory document and load, and the keep
decisions can be written back into chat rows as Axolotl's ``train_detail`` character spans.

Checked here against the documented schema and with the collator both trainers build on
(``transformers.DataCollatorForSeq2Seq``, given every column as LLaMA-Factory does with
``remove_unused_columns=False``). LLaMA-Factory 0.9.5 itself was run on an export outside the test suite (see
the report of issue 15); it is not a test dependency.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tokenclean import prepare_tokens
from tokenclean.core.data import load_conversations, read_rows
from tokenclean.compute.export import (SAMPLE_IDS, TRAINER_COLUMNS, check_pretokenized, export_dataset, train_detail,
                               train_detail_rows)
from tokenclean.core.tokens import IGNORE_INDEX

CHATS = [
    {"conversations": [{"from": "human", "value": "Name three fruits."},
                       {"from": "gpt", "value": "Apple, pear and plum — all café-friendly."},
                       {"from": "human", "value": "And one more?"}, {"from": "gpt", "value": "Quince."}]},
    {"conversations": [{"from": "human", "value": "Say hello in Japanese."}, {"from": "gpt", "value": "こんにちは!"}]},
    {"conversations": [{"from": "human", "value": "Call it."},
                       {"from": "function_call", "value": '{"name":"f","arguments":{}}'},
                       {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "Done: ok."}]},
]


@pytest.fixture()
def chat_tokens(tmp_path, gpt2_tokenizer):
    path = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    tokens, _ = prepare_tokens(path, gpt2_tokenizer)
    keep = np.random.default_rng(0).random(len(tokens.flat_input_ids())) < 0.5
    return path, tokens, keep


def test_export_has_exactly_the_trainer_columns(tmp_path, chat_tokens):
    _, tokens, keep = chat_tokens
    export_dataset(tokens, tmp_path / "out", keep, parquet_path=tmp_path / "out.parquet")
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert tuple(ds.column_names) == TRAINER_COLUMNS
    check_pretokenized(ds.data.table, "datasets dir")
    check_pretokenized(pq.read_table(tmp_path / "out.parquet"), "parquet")
    ids = json.loads((tmp_path / "out" / SAMPLE_IDS).read_text())
    assert ids == ["0", "1", "2"] and len(ids) == len(ds)


def test_the_trainers_collator_pads_the_export_with_every_column(tmp_path, chat_tokens, gpt2_tokenizer):
    from transformers import DataCollatorForSeq2Seq

    _, tokens, keep = chat_tokens
    export_dataset(tokens, tmp_path / "out", keep)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.pad_token = tok.eos_token
    batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE_INDEX)([ds[i] for i in range(len(ds))])
    assert set(batch) == set(TRAINER_COLUMNS)
    n = len(ds[1]["labels"])
    assert batch["labels"][1, :n].tolist() == ds[1]["labels"]  # right padding: the row's own labels come first
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all() and batch["attention_mask"][1, n:].sum() == 0


@pytest.mark.parametrize("table, expected", [
    (pa.table({"input_ids": [[1, 2]], "attention_mask": [[1, 1]], "labels": [[-100, 2]], "sample_id": ["a"]}),
     "expected exactly ['input_ids', 'attention_mask', 'labels']"),
    (pa.table({"input_ids": [[1, 2]], "attention_mask": [[1]], "labels": [[-100, 2]]}), "row 0 has 2 input_ids, 1"),
    (pa.table({"input_ids": [[1, 2]], "attention_mask": [[1, 1]], "labels": [[-100, 3]]}), "each label its token"),
    (pa.table({"input_ids": [[1, 2]], "attention_mask": [[1, 1]], "labels": [[-100, -100]]}), "no trained token"),
    (pa.table({"input_ids": [["a"]], "attention_mask": [[1]], "labels": [[1]]}), "expected a list of integers"),
])
def test_check_pretokenized_refuses_what_the_trainers_refuse(table, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        check_pretokenized(table)


def test_train_detail_spans():
    assert train_detail("Hi there", [(0, 2), (2, 8)], [True, False]) == [
        {"begin_offset": 0, "end_offset": 1, "train": True}, {"begin_offset": 2, "end_offset": 7, "train": False}]
    # two byte-level tokens share the character é: trained only when both are kept; the tail no token reached
    # (truncation) is not trained
    assert train_detail("café ok", [(0, 4), (3, 4)], [True, False]) == [
        {"begin_offset": 0, "end_offset": 2, "train": True}, {"begin_offset": 3, "end_offset": 6, "train": False}]
    assert train_detail("ab", [(0, 2)], [True]) == [{"begin_offset": 0, "end_offset": 1, "train": True}]


def axolotl_trained(content: str, spans: list[dict], tokenizer) -> list[bool]:
    """Axolotl's documented rule: a token of the turn is trained when it lies wholly inside a ``train`` span."""
    offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [any(s["train"] and b >= s["begin_offset"] and e - 1 <= s["end_offset"] for s in spans)
            for b, e in offsets]


def test_written_back_spans_reproduce_the_keep_mask(chat_tokens, gpt2_tokenizer):
    path, tokens, keep = chat_tokens
    convs, report = load_conversations(path)
    rows, counts = train_detail_rows(read_rows(path), convs, tokens, keep, gpt2_tokenizer, report.format)
    assert counts == {"rows": 3, "turns": 5, "turns_not_carried": 0}  # function_call values are kept verbatim
    mask, ids, offsets = tokens.flat_response_mask(), tokens.flat_input_ids(), tokens.offsets
    checked = 0
    for i, row in enumerate(rows):
        a, b = offsets[i], offsets[i + 1]
        resp = np.flatnonzero(mask[a:b]) + a
        k = 0
        for m in row["conversations"]:
            if m["from"] not in ("gpt", "function_call"):
                continue
            n = len(gpt2_tokenizer(m["value"] + gpt2_tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            content_tokens = resp[k: k + n - 1]  # the turn's tokens but its end-of-turn marker
            k += n
            if "train_detail" not in m:
                continue
            assert axolotl_trained(m["value"], m["train_detail"], gpt2_tokenizer) == keep[content_tokens].tolist()
            assert gpt2_tokenizer.decode(ids[content_tokens]) == m["value"]
            checked += 1
    assert checked == 5
    assert CHATS[0]["conversations"][1].get("train_detail") is None  # the input rows are not modified


def test_turns_whose_text_is_rewritten_are_counted_not_carried(tmp_path, gpt2_tokenizer):
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = {"messages": [{"role": "user", "content": "Call f."},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}]}
    path = write_jsonl(tmp_path / "tools.jsonl", [row])
    tokens, _ = prepare_tokens(path, gpt2_tokenizer)
    convs, report = load_conversations(path)
    keep = np.ones(len(tokens.flat_input_ids()), bool)
    rows, counts = train_detail_rows(read_rows(path), convs, tokens, keep, gpt2_tokenizer, report.format)
    assert counts == {"rows": 1, "turns": 2, "turns_not_carried": 1}
    assert "train_detail" not in rows[0]["messages"][1]
    assert rows[0]["messages"][3]["train_detail"] == [{"begin_offset": 0, "end_offset": 4, "train": True}]
    with pytest.raises(ValueError, match="the alpaca format cannot carry per-span keep decisions"):
        train_detail_rows([], [], tokens, keep, gpt2_tokenizer, "alpaca")


def test_write_back_file(tmp_path, chat_tokens, gpt2_tokenizer):
    from tokenclean.compute.export import write_back

    path, tokens, keep = chat_tokens
    result = write_back(path, tmp_path / "cleaned.jsonl", tokens, keep, gpt2_tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "cleaned.jsonl").read_text(encoding="utf-8").splitlines()]
    assert result["rows"] == len(rows) == 3 and rows[1]["conversations"][1]["value"] == "こんにちは!"
    spans = rows[0]["conversations"][1]["train_detail"]
    assert spans[0]["begin_offset"] == 0 and spans[-1]["end_offset"] == len(rows[0]["conversations"][1]["value"]) - 1
    everything = write_back(path, tmp_path / "all.jsonl", tokens, None, gpt2_tokenizer)
    first = json.loads((tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert everything["turns"] == 5 and all(s["train"] for s in first["conversations"][3]["train_detail"])


MESSAGES = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three fruits."},
                  {"role": "assistant", "content": "Apple, pear and plum."},
                  {"role": "user", "content": "And one more?"},
                  {"role": "assistant", "content": "Quince, café-style."}]},
    {"messages": [{"role": "user", "content": "Say hello in Japanese."},
                  {"role": "assistant", "content": "こんにちは!"}]},
]


def test_export_writes_back_through_the_cli(tmp_path, tiny_model_dir, capsys):
    from tokenclean.cli import main
    from tokenclean.compute.modeling import load_tokenizer
    from tokenclean.core.artifacts import Selection
    from tokenclean.core.tokens import TokenOrigin

    path = write_jsonl(tmp_path / "chats.jsonl", MESSAGES)
    tokenizer = load_tokenizer(str(tiny_model_dir))  # what export --tokenizer loads
    tokens, _ = prepare_tokens(path, tokenizer)
    keep = tokens.flat_response_mask() & (np.random.default_rng(1).random(len(tokens.flat_input_ids())) < 0.5)
    assert 0 < keep.sum() < tokens.flat_response_mask().sum()
    Selection(tokens.sample_ids, keep, tokens.offsets, TokenOrigin.of(tokens.meta).meta()).save(tmp_path / "sel")
    argv = ["export", "--tokenizer", str(tiny_model_dir), "--data", str(path), "--selection", str(tmp_path / "sel"),
            "--out", str(tmp_path / "out"), "--write-back", str(tmp_path / "cleaned.jsonl")]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["write_back"] == {"rows": 2, "turns": 3, "turns_not_carried": 0,
                                    "path": str(tmp_path / "cleaned.jsonl")}
    rows = [json.loads(line) for line in (tmp_path / "cleaned.jsonl").read_text(encoding="utf-8").splitlines()]
    mask, offsets, checked_tokens = tokens.flat_response_mask(), tokens.offsets, 0
    for i, row in enumerate(rows):
        resp, k = np.flatnonzero(mask[offsets[i]:offsets[i + 1]]) + offsets[i], 0
        for m in row["messages"]:
            assert ("train_detail" in m) == (m["role"] == "assistant")  # nothing on system and user turns
            if m["role"] != "assistant":
                continue
            n = len(tokenizer(m["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            kept = keep[resp[k: k + n - 1]]  # the turn's tokens but its end-of-turn marker
            k += n
            # a character split over two byte-level tokens (ち here) is trained only when both are kept
            spans = tokenizer(m["content"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            expected = [all(kept[j] for j, (b2, e2) in enumerate(spans) if b2 < e and b < e2) for b, e in spans]
            assert axolotl_trained(m["content"], m["train_detail"], tokenizer) == expected
            checked_tokens += len(expected)
        assert {k: v for k, v in row.items() if k != "messages"} == {}
        unchanged = [{k: v for k, v in m.items() if k != "train_detail"} for m in row["messages"]]
        assert unchanged == MESSAGES[i]["messages"]  # the rows in their own format, only the spans added
    assert checked_tokens == 6 + 7 + 7
    assert (tmp_path / "out" / "dataset_info.json").exists() and (tmp_path / "out.parquet").exists()


def test_export_write_back_refuses_a_format_without_turns(tmp_path, tiny_model_dir, capsys):
    from tokenclean.cli import main

    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Add 2 and 2.", "input": "", "output": "4"}])
    argv = ["export", "--tokenizer", str(tiny_model_dir), "--data", str(path), "--out", str(tmp_path / "out"),
            "--write-back", str(tmp_path / "cleaned.jsonl"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--write-back {tmp_path / 'cleaned.jsonl'}: {path}: the alpaca format cannot" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cleaned.jsonl").exists()  # nothing written
