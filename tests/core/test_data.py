"""Reading rows: formats, sources, and one-line errors that name the file, row and expectation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tokenclean.core.data import DataConfig, load_conversations
from tokenclean.errors import DataError

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}


def test_formats_normalise_to_messages(tmp_path):
    rows = {
        "messages": CHAT,
        "prompt_completion": {"prompt": "Q", "completion": "A"},
        "alpaca": {"instruction": "Do X", "input": "on Y", "output": "Done"},
    }
    for fmt, row in rows.items():
        convs, report = load_conversations(write_jsonl(tmp_path / f"{fmt}.jsonl", [row]))
        assert report.used == 1
        assert convs[0].messages[-1]["role"] == "assistant"
    convs, _ = load_conversations(tmp_path / "alpaca.jsonl")
    assert convs[0].messages[0]["content"] == "Do X\n\non Y"
    convs, _ = load_conversations(write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "2"}]),
                                  DataConfig(prompt_field="question", response_field="answer"))
    assert convs[0].messages == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    assert convs[0].sample_id == "0"


def test_json_array_parquet_and_datasets_dir(tmp_path):
    import datasets

    rows = [{"id": "a", "prompt": "p1", "completion": "c1"}, {"id": "b", "prompt": "p2", "completion": "c2"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for source in ("rows.json", "rows.parquet", "ds"):
        convs, _ = load_conversations(tmp_path / source)
        assert [c.sample_id for c in convs] == ["a", "b"]
        assert convs[1].messages[1]["content"] == "c2"


def test_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "p", "completion": "c"}\r\n{"prompt": "q", "completion": "d"}\r\n')
    convs, _ = load_conversations(path)
    assert [c.messages[1]["content"] for c in convs] == ["c", "d"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"prompt": "p", "completion": ', "malformed JSON"),
        ('{"prompt": "p"}', "missing field 'completion'"),
        ('{"prompt": "p", "completion": 3}', "must be a string, got int"),
        ('{"prompt": "p", "completion": null}', "is null"),
        ('{"prompt": "p", "completion": "   "}', "empty or whitespace only"),
        ('{"messages": []}', "no assistant turn"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot'"),
        ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}', "empty"),
        ('{"messages": "hello"}', "must be a list"),
    ],
)
def test_bad_rows_name_file_row_and_expectation(tmp_path, line, expected):
    first = '{"prompt": "ok", "completion": "fine"}' if '"prompt"' in line else \
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    path = tmp_path / "bad.jsonl"
    path.write_text(first + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        load_conversations(path)
    msg = str(e.value)
    assert str(path) in msg and expected in msg
    assert ":2:" in msg or "row 1" in msg
    assert "\n" not in msg


def test_skip_invalid_counts_every_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n{"prompt": "c", "completion": ""}\n'
                    '{"prompt": "d", "completion": "e"}\n')
    convs, report = load_conversations(path, DataConfig(skip_invalid=True))
    assert [c.row for c in convs] == [0, 3]
    assert report.rows == 4 and report.used == 2 and len(report.skipped) == 2
    assert [s["row"] for s in report.skipped] == [1, 2]
    assert report.used + len(report.skipped) == report.rows


def test_duplicate_ids_and_odd_sources(tmp_path):
    rows = [{"id": 1, "prompt": "a", "completion": "b"}, {"id": 1, "prompt": "c", "completion": "d"}]
    with pytest.raises(DataError, match="duplicate id '1'"):
        load_conversations(write_jsonl(tmp_path / "dup.jsonl", rows))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_conversations(tmp_path / "empty.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load_conversations(tmp_path / "dir")
    with pytest.raises(DataError, match="no such file"):
        load_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "bytes.jsonl").write_bytes(b'{"prompt": "\xff", "completion": "x"}\n')
    with pytest.raises(DataError, match="invalid UTF-8"):
        load_conversations(tmp_path / "bytes.jsonl")
    with pytest.raises(DataError, match=r"unknown.jsonl:1: unknown row shape; the row has keys \['text'\]"):
        load_conversations(write_jsonl(tmp_path / "unknown.jsonl", [{"text": "hi"}]))


def test_question_answer_rows_are_detected_without_field_flags(tmp_path):
    convs, _ = load_conversations(write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "2"}]))
    assert convs[0].messages == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    with pytest.raises(DataError, match=r"--prompt-field q --response-field a"):
        load_conversations(write_jsonl(tmp_path / "h.jsonl", [{"q": "1+1?", "a": "2"}]))
