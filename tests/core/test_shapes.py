"""Conversation trees flattened into threads, and the errors a user gets for a shape, role or row that does not fit.

Rows are written here after the published shapes (OpenAssistant's tree export and message table); no file is copied.
"""

from __future__ import annotations

import logging

import pytest

from conftest import full_text, trained_text, write_jsonl
from tokenclean import prepare_tokens
from tokenclean.cli import main
from tokenclean.core.data import DataConfig, load_conversations
from tokenclean.core.spec import load_spec, parse_short
from tokenclean.errors import DataError


def _message(mid, role, text, rank=None, replies=()):
    return {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": "en", "review_count": 3,
            "replies": list(replies)}


# P0 has three ranked answers; A1's thread goes on, and a prompter leaf under A1 (P7) or A5 (P6) trains nothing.
TREE = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": _message(
    "P0", "prompter", "2 + 2?", replies=[
        _message("A1", "assistant", "4", 0, [_message("P2", "prompter", "Why?", 0, [
            _message("A3", "assistant", "Two and two make four.", 0)]), _message("P7", "prompter", "Thanks", 1)]),
        _message("A4", "assistant", "Four.", 1),
        _message("A5", "assistant", "5", 2, [_message("P6", "prompter", "Wrong.", 0)])])}
THREADS = {  # leaf -> (trained assistant turns, prompt texts)
    "A3": (["4", "Two and two make four."], ["2 + 2?", "Why?"]),
    "A4": (["Four."], ["2 + 2?"]),
    "A5": (["5"], ["2 + 2?"]),
}


def _table(tree: dict) -> list[dict]:
    """The tree as OpenAssistant's message table: one row per message, parent_id linking them."""
    rows, todo = [], [(tree["prompt"], None)]
    while todo:
        message, parent = todo.pop(0)
        rows.append({**{k: v for k, v in message.items() if k != "replies"}, "parent_id": parent,
                     "message_tree_id": tree["message_tree_id"]})
        todo += [(r, message["message_id"]) for r in message["replies"]]
    return rows


@pytest.mark.parametrize("shape", ["oasst_tree", "oasst_table"])
@pytest.mark.parametrize("top_ranked", [False, True])
def test_trees_give_one_thread_per_root_to_leaf_path(tmp_path, gpt2_tokenizer, caplog, shape, top_ranked):
    rows = [TREE] if shape == "oasst_tree" else _table(TREE)
    path = write_jsonl(tmp_path / f"{shape}.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="tokenclean"):
        tokens, report = prepare_tokens(path, gpt2_tokenizer, DataConfig(top_ranked_branch=top_ranked))
    leaves = ["A3"] if top_ranked else ["A3", "A4", "A5"]
    assert report.format == shape and report.threads == len(tokens) == len(leaves)
    assert [s.rsplit("/", 1)[1] for s in tokens.sample_ids] == leaves
    eos = gpt2_tokenizer.eos_token
    for i, leaf in enumerate(leaves):
        answers, prompts = THREADS[leaf]
        assert trained_text(tokens, i, gpt2_tokenizer) == "".join(a + eos for a in answers)
        for text in prompts:
            assert text in full_text(tokens, i, gpt2_tokenizer)
        assert "Thanks" not in full_text(tokens, i, gpt2_tokenizer)  # a prompter leaf trains nothing: cut
    assert f"threads (training conversations): {len(leaves)} from 1 conversation trees" in caplog.text
    assert report.rows == report.used + len(report.skipped)
    if shape == "oasst_table":
        left_out = {s["row"]: s["reason"] for s in report.skipped}
        names = [r["message_id"] for r in rows]
        expected = {"P6": "no assistant reply after it", "P7": "no assistant reply after it"}
        if top_ranked:
            expected = {m: "not on the top-ranked branch" for m in ("A4", "A5", "P6", "P7")}
        assert {names[r]: why for r, why in left_out.items()} == expected


def test_tree_errors_name_the_message(tmp_path):
    broken = {"prompt": _message("P0", "prompter", "q", replies=[_message("A1", "robot", "a", 0)])}
    with pytest.raises(DataError, match=r"t.jsonl:1: prompt.replies\[0\].role is an unknown role 'robot'"):
        load_conversations(write_jsonl(tmp_path / "t.jsonl", [broken]))
    lonely = {"prompt": _message("P0", "prompter", "q")}
    with pytest.raises(DataError, match="the conversation tree has no assistant reply"):
        load_conversations(write_jsonl(tmp_path / "u.jsonl", [lonely]))
    rows = _table(TREE)
    rows[-1]["parent_id"] = "nobody"  # A3's parent is unknown: A3 is invalid, and so the thread ends at A1
    assert rows[-1]["message_id"] == "A3"
    with pytest.raises(DataError, match=r"v.jsonl:8: parent_id 'nobody' is no message_id of the file"):
        load_conversations(write_jsonl(tmp_path / "v.jsonl", rows))
    convs, report = load_conversations(tmp_path / "v.jsonl", DataConfig(skip_invalid=True))
    assert [c.sample_id for c in convs] == ["P0/A1", "P0/A4", "P0/A5"]
    assert report.skip_counts() == {"unknown parent": 1, "no assistant reply after it": 3}  # P2 is a leaf now


def test_unknown_shape_names_its_keys_and_the_closest_shapes_with_flags_that_work(tmp_path, gpt2_tokenizer):
    row = {"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}], "lang": "en"}
    path = write_jsonl(tmp_path / "dialog.jsonl", [row])
    with pytest.raises(DataError) as e:
        load_conversations(path)
    lines = str(e.value).splitlines()
    assert lines[0] == (f"{path}:1: unknown row shape; the row has keys ['dialog', 'lang'] (dialog: list of 2 "
                        "objects {speaker, text}; lang: string)")
    assert 3 <= len(lines) <= 5 and all(len(line) <= 120 for line in lines[1:])
    assert lines[2] == ("  - messages [{role, content}]: --columns messages=dialog,role=speaker,me=user,bot=assistant "
                        "(check the roles)")
    assert "--prompt-field" not in lines[2] and "--skip-invalid" not in str(e.value)
    tokens, _ = prepare_tokens(path, gpt2_tokenizer, DataConfig(columns="messages=dialog,role=speaker,me=user,"
                                                                        "bot=assistant", ignore_fields=["lang"]))
    assert trained_text(tokens, 0, gpt2_tokenizer) == "Hello!" + gpt2_tokenizer.eos_token
    pair = write_jsonl(tmp_path / "pair.jsonl", [{"ask": "2 + 2?", "reply": "4"}])
    with pytest.raises(DataError, match="prompt and response, two text fields: --prompt-field ask "
                                        "--response-field reply"):
        load_conversations(pair)


def test_the_cli_prints_the_shape_hints_one_per_line(tmp_path, capsys, tiny_model_dir):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "a document"}])
    code = main(["export", "--tokenizer", str(tiny_model_dir), "--data", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0] == (f"tokenclean export: error: {path}:1: unknown row shape; the row has keys "
                                    "['text'] (text: string)")
    assert err[2] == "  - a prompt and a response need two text fields; 'text' alone is plain text, not SFT data"
    assert 3 <= len(err) <= 5 and not any("Traceback" in line for line in err)


def test_skip_invalid_is_suggested_only_when_some_row_would_be_left(tmp_path):
    good, bad = {"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": None}
    with pytest.raises(DataError) as e:
        load_conversations(write_jsonl(tmp_path / "some.jsonl", [good, bad, bad]))
    assert str(e.value).endswith("some.jsonl:2: field 'completion' is null, expected a string (2 of 3 rows are "
                                 "invalid; fix them, or use --skip-invalid to skip such rows)")
    with pytest.raises(DataError) as e:
        load_conversations(write_jsonl(tmp_path / "all.jsonl", [bad, bad]))
    assert "--skip-invalid" not in str(e.value)
    assert str(e.value).endswith("all.jsonl:1: field 'completion' is null, expected a string (all 2 rows are "
                                 "invalid or have nothing to train on; fix the data or its mapping)")


def test_unknown_role_shows_the_columns_syntax_that_maps_it(tmp_path, gpt2_tokenizer):
    row = {"messages": [{"role": "Customer", "content": "Refund?"}, {"role": "Agent", "content": "Done."}]}
    path = write_jsonl(tmp_path / "roles.jsonl", [row])
    with pytest.raises(DataError, match=r"roles.jsonl:1: messages\[0\] has unknown role 'Customer', expected one of "
                                        r"\[.*'chatbot'.*\] \(any case, a trailing ':' allowed\); map it with "
                                        r"--columns 'Customer=assistant' \(VALUE=ROLE, ROLE one of system, user, "
                                        r"assistant, tool\)"):
        load_conversations(path)
    tokens, _ = prepare_tokens(path, gpt2_tokenizer, DataConfig(columns="customer=user,AGENT=assistant"))
    assert trained_text(tokens, 0, gpt2_tokenizer) == "Done." + gpt2_tokenizer.eos_token


def test_short_columns_form():
    assert parse_short("Bot=assistant, me=user,messages=dialog,content=text") == {
        "roles": {"assistant": ["Bot"], "user": ["me"]}, "columns": {"messages": "dialog"},
        "message_property_mappings": {"content": "text"}}
    spec = load_spec("Bot=assistant,system=sys")
    assert spec.role_of("bot:") == "assistant" and spec.col("system") == "sys" and spec.role_of("narrator") is None
    for bad in ("dialog", "colour=teal", "=user"):
        with pytest.raises(ValueError, match="VALUE=ROLE"):
            parse_short(bad)
    with pytest.raises(DataError, match="--columns: 'colour=teal' maps neither a role value"):
        load_conversations("unused.jsonl", DataConfig(columns="colour=teal"))
