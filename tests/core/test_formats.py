"""Formats in: every published row shape is read, and its trained tokens are exactly the assistant text.

Fixture rows are written here after the shapes of the published example files (LLaMA-Factory's alpaca, sharegpt
and glaive tool-call demos, Axolotl's chat_template docs, TRL's dataset formats, OpenAI's fine-tuning docs,
Dolly, GPTeacher); no file is copied.
"""

from __future__ import annotations

import json
import logging

import pytest

from conftest import full_text, trained_text, write_jsonl
from tokenclean import prepare_tokens
from tokenclean.core.data import DataConfig, load_conversations
from tokenclean.errors import DataError
from tokenclean.core.formats import load_spec

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'

# name -> (row, the assistant turns it trains, texts that must be in the prompt and never trained)
ROWS = {
    "sharegpt": ({"conversations": [
        {"from": "system", "value": "You answer in French."}, {"from": "human", "value": "Hello there"},
        {"from": "gpt", "value": "Bonjour !"}, {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": CALL_TEXT}, {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "Il fait 21 degrés."}]},
        ["Bonjour !", CALL_TEXT, "Il fait 21 degrés."], ["You answer in French.", "Hello there", '{"temp": 21}']),
    "sharegpt_columns": ({"conversations": [{"from": "user", "value": "Add 2 and 3."},
                                            {"from": "assistant", "value": "5"}],
                         "system": "Be terse.", "tools": '[{"name": "add"}]'},
                        ["5"], ["Be terse.", '[{"name": "add"}]', "Add 2 and 3."]),
    "axolotl_role_content": ({"conversations": [{"role": "user", "content": "Name a colour."},
                                                {"role": "assistant", "content": "Teal."}]}, ["Teal."],
                             ["Name a colour."]),
    "trl_conversational": ({"prompt": [{"role": "system", "content": "Count."}, {"role": "user", "content": "1, 2"}],
                            "completion": [{"role": "assistant", "content": "3, 4"}]}, ["3, 4"], ["Count.", "1, 2"]),
    "messages_tool_calls": ({"messages": [
        {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "temp=21"},
        {"role": "assistant", "content": "21 C in Paris."}]},
        [CALL_TEXT, "21 C in Paris."], ["Weather in Paris?", "temp=21"]),
    "openai_content_parts": ({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]}]}, ["Hi!"], ["Be kind.", "Say hi."]),
    "alpaca_history_system": ({"instruction": "And 3 + 3?", "input": "", "output": "6",
                               "system": "You do sums.", "history": [["1 + 1?", "2"], ["2 + 2?", "4"]]},
                              ["2", "4", "6"], ["You do sums.", "1 + 1?", "2 + 2?", "And 3 + 3?"]),
    "dolly": ({"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.",
               "response": "Shakespeare.", "category": "closed_qa"}, ["Shakespeare."],
              ["Who wrote it?", "Hamlet is a play by Shakespeare."]),
    "gpteacher": ({"instruction": "Translate to German.", "input": "Good morning", "response": "Guten Morgen"},
                  ["Guten Morgen"], ["Translate to German.", "Good morning"]),
    # ModelScope's trainers: the system prompt and the earlier turns must reach the tokens too
    "system_query_response_history": ({"system": "You do sums.", "query": "And 3 + 3?", "response": "6",
                                       "history": [["1 + 1?", "2"], ["2 + 2?", "4"]]},
                                      ["2", "4", "6"], ["You do sums.", "1 + 1?", "2 + 2?", "And 3 + 3?"]),
    "prompt_response": ({"prompt": "Name a prime.", "response": "Seven."}, ["Seven."], ["Name a prime."]),
    "prompt_completion_system": ({"system": "Be exact.", "prompt": "2 * 3?", "completion": "6"}, ["6"],
                                 ["Be exact.", "2 * 3?"]),
    "sharegpt_system_and_plain_roles": ({"system": "Speak plainly.", "conversations": [
        {"from": "system", "value": "Use short words."}, {"from": "user", "value": "What is rain?"},
        {"from": "assistant", "value": "Water that falls."}]},
        ["Water that falls."], ["Speak plainly.", "Use short words.", "What is rain?"]),
    "conversation_pairs": ({"conversation_id": 7, "category": "qa", "conversation": [
        {"human": "Hi", "assistant": "Hello!"}, {"human": "Bye", "assistant": "Goodbye!"}]},
        ["Hello!", "Goodbye!"], ["Hi", "Bye"]),
    "chatbot_roles_any_case": ({"messages": [
        {"role": "System", "content": "You are Coral."}, {"role": "User", "content": "Who are you?"},
        {"role": "Chatbot", "content": "I am Coral."}]}, ["I am Coral."], ["You are Coral.", "Who are you?"]),
    "speaker_names": ({"conversations": [{"from": "USER:", "value": "2 + 2?"}, {"from": "ASSISTANT:", "value": "4"},
                                         {"from": "Human", "value": "And 3 + 3?"}, {"from": "GPT", "value": "6"}]},
                      ["4", "6"], ["2 + 2?", "And 3 + 3?"]),
    "gemini_contents": ({"systemInstruction": {"role": "system", "parts": [{"text": "Answer in one word."}]},
                         "contents": [{"role": "user", "parts": [{"text": "Capital of "}, {"text": "France?"}]},
                                      {"role": "model", "parts": [{"text": "Paris"}]},
                                      {"role": "user", "parts": [{"text": "Of Italy?"}]},
                                      {"role": "model", "parts": [{"text": "Rome"}]}]},
                        ["Paris", "Rome"], ["Answer in one word.", "Capital of France?", "Of Italy?"]),
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_tokenizer):
    """GPT-2 with a ChatML-like template that renders every role, the tool role included."""
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.chat_template = CHATML
    return tok


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("template", ["default", "chat"])
def test_trained_tokens_are_exactly_the_assistant_turns(tmp_path, name, template, gpt2_tokenizer, chat_tokenizer):
    row, answers, context = ROWS[name]
    tok = chat_tokenizer if template == "chat" else gpt2_tokenizer
    end = "<|im_end|>\n" if template == "chat" else gpt2_tokenizer.eos_token
    tokens, report = prepare_tokens(write_jsonl(tmp_path / "rows.jsonl", [row, row]), tok)
    assert report.used == 2 and report.rows == 2
    assert trained_text(tokens, 0, tok) == "".join(a + end for a in answers)
    full = full_text(tokens, 0, tok)
    for text in context:
        assert text in full and text not in trained_text(tokens, 0, tok)


def test_csv_rows_are_read_with_their_lines(tmp_path, gpt2_tokenizer):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,input,output\nAdd,"1 and\n2",3\nDouble,4,8\n', encoding="utf-8")
    tokens, report = prepare_tokens(path, gpt2_tokenizer)
    assert report.format == "alpaca" and report.used == 2
    assert trained_text(tokens, 1, gpt2_tokenizer) == "8" + gpt2_tokenizer.eos_token
    convs, _ = load_conversations(path)
    assert convs[0].messages[0]["content"] == "Add\n\n1 and\n2" and [c.line for c in convs] == [2, 4]
    path.write_text("prompt,completion\nq,a\nq2,a2,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.csv:3: 3 values, expected 2 \(the header's columns\)"):
        load_conversations(path)


def test_rows_accounted_media_skipped_with_reason(tmp_path):
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    image_part = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                            {"type": "text", "text": "What is it?"}]},
                               {"role": "assistant", "content": "A cat."}]}
    images_column = {"messages": ok["messages"], "images": ["cat.png"]}
    bad = {"messages": [{"role": "user", "content": "q"}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", [ok, image_part, images_column, ok, bad])
    with pytest.raises(DataError, match=r"mixed.jsonl:5: the chat has no assistant turn"):
        load_conversations(path)  # media rows are skipped even without --skip-invalid; the bad row still stops
    convs, report = load_conversations(path, DataConfig(skip_invalid=True))
    assert report.used == 2 and report.used + len(report.skipped) == report.rows == 5
    assert report.skip_counts() == {"image_url content": 1, "images": 1, "no assistant turn": 1}
    assert [s["line"] for s in report.skipped] == [2, 3, 5]


@pytest.mark.parametrize("row, expected", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "conversations[1] has unknown role 'robot'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "conversations[1] has no 'value'"),
    ({"conversations": "q"}, "'conversations' must be a list"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
     "'completion' must hold assistant messages only"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"x": 1}]}]},
     "messages[1].tool_calls[0] must be a tool call"),
    ({"messages": [{"role": "user", "content": "q", "tool_calls": [CALL]}, {"role": "assistant", "content": "a"}]},
     "messages[0] has 'tool_calls' but role 'user'"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "'history'[0] must be a [question, answer] pair"),
    ({"instruction": "q", "context": 3, "response": "a"}, "field 'context' must be a string, got int"),
    ({"instruction": "q", "input": "x"}, "missing field 'output'"),
])
def test_bad_rows_give_one_line_with_file_line_and_expectation(tmp_path, row, expected):
    first = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    if "prompt" in row:
        first = {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    elif "messages" in row:
        first = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    elif "instruction" in row:
        first = {"instruction": "q", "input": "", "output": "a"} if "context" not in row else \
            {"instruction": "q", "context": "", "response": "a"}
    path = write_jsonl(tmp_path / "bad.jsonl", [first, row])
    with pytest.raises(DataError) as e:
        load_conversations(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: ") and expected in msg and "\n" not in msg


TURNS = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]


def _with(k: int, **flag) -> dict:
    return {"messages": [dict(m, **flag) if i == k else m for i, m in enumerate(TURNS)]}


@pytest.mark.parametrize("row, reason, expected", [
    (_with(3, weight=0.5), "fractional weight", "messages[3].weight is 0.5; a turn is trained or not"),
    (_with(0, train=True), "trained non-assistant turn", "messages[0] is a user turn marked to train"),
    ({"messages": [dict(m, weight=0) if m["role"] == "assistant" else m for m in TURNS]}, "no trained turn",
     "all 2 assistant turn(s) are marked not to train"),
    (_with(3, train_detail=[{"begin_offset": 0, "end_offset": 0, "train": True},
                            {"begin_offset": 1, "end_offset": 1, "train": False}]),
     "partial-turn training", "messages[3].train_detail trains only part of the turn"),
    # Axolotl's per-part flags (docs/dataset-formats/conversation.qmd): parts that disagree train part of a turn
    ({"messages": [TURNS[0], {"role": "assistant", "content": [
        {"type": "text", "text": "Let me think step by step...", "train": False},
        {"type": "text", "text": " The answer is 4.", "train": True}]}]},
     "partial-turn training", "messages[1].content marks some content parts to train and others not"),
    ({"messages": [TURNS[0], {"role": "assistant", "content": [
        {"type": "text", "text": "a", "train": False}, {"type": "text", "text": "b"}]}]},
     "partial-turn training", "messages[1].content marks some content parts"),
])
def test_turn_flags_are_honoured_or_refused_with_why(tmp_path, row, reason, expected):
    path = write_jsonl(tmp_path / "flags.jsonl", [row])
    with pytest.raises(DataError, match="flags.jsonl:1: ") as e:
        load_conversations(path)
    assert expected in str(e.value)
    path = write_jsonl(tmp_path / "flags2.jsonl", [{"messages": TURNS}, row])
    _, report = load_conversations(path, DataConfig(skip_invalid=True))
    assert report.skip_counts() == {reason: 1}


def test_flags_that_need_no_context_turn_are_honoured_exactly(tmp_path, gpt2_tokenizer):
    eos = gpt2_tokenizer.eos_token
    rows = [_with(3, weight=0), _with(3, train=False), _with(0, train=False), _with(3, weight=1),
            _with(3, train_detail=[{"begin_offset": 0, "end_offset": 1, "train": False}]),
            {"messages": [{"role": "user", "content": "q1"},
                          {"role": "assistant", "content": "a1", "loss_weight": 1.0}]},
            # every content part marked alike: the turn's flag
            {"messages": [*TURNS[:3], {"role": "assistant", "content": [{"type": "text", "text": "a", "train": False},
                                                                        {"type": "text", "text": "2", "train": False}]}]}]
    tokens, report = prepare_tokens(write_jsonl(tmp_path / "rows.jsonl", rows), gpt2_tokenizer)
    assert report.used == 7
    trained = [trained_text(tokens, i, gpt2_tokenizer) for i in range(7)]
    assert trained == ["a1" + eos, "a1" + eos, "a1" + eos + "a2" + eos, "a1" + eos + "a2" + eos, "a1" + eos,
                       "a1" + eos, "a1" + eos]
    assert "q2" not in full_text(tokens, 0, gpt2_tokenizer)  # the untrained last turn and what led to it: dropped


def test_mask_history(tmp_path, gpt2_tokenizer):
    one = {"instruction": "q", "output": "a"}
    tokens, _ = prepare_tokens(write_jsonl(tmp_path / "one.jsonl", [one]), gpt2_tokenizer,
                               DataConfig(mask_history=True))
    assert trained_text(tokens, 0, gpt2_tokenizer) == "a" + gpt2_tokenizer.eos_token


def test_a_field_that_reaches_no_token_stops_the_load_unless_ignored(tmp_path):
    rows = [dict(ROWS["dolly"][0], id=str(i)) for i in range(3)]  # Dolly's own 'category' is bookkeeping, not text
    rows[1]["notes"] = "checked by Ann"
    rows[2]["notes"], rows[2]["source"] = "", "wiki"
    path = write_jsonl(tmp_path / "dolly.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert str(e.value) == (f"{path}:2: fields 'notes' (2 of 3 rows), 'source' (1 of 3 rows) reach no token in the "
                            "dolly format; map them with --columns FIELD=KEY (e.g. system=notes puts it in the system "
                            "prompt) or drop them on purpose with --ignore-fields notes source")
    convs, report = load_conversations(path, DataConfig(ignore_fields=["notes", "source"]))
    assert len(convs) == 3 and report.unused_fields == {"notes": 2, "source": 1}
    assert report.to_dict()["unused_fields"] == {"notes": 2, "source": 1}
    _, report = load_conversations(write_jsonl(tmp_path / "tools.jsonl", [ROWS["messages_tool_calls"][0]]))
    assert report.unused_fields == {}  # tool_call_id links a result to its call: read, no text to lose
    named = dict(ROWS["messages_tool_calls"][0])
    named["messages"] = [dict(m, name="Ann") if m["role"] == "user" else m for m in named["messages"]]
    with pytest.raises(DataError, match=r"tools2.jsonl:1: field 'messages\[\].name' \(1 of 1 rows\) reaches no "
                                        r"token in the messages format; drop it on purpose with --ignore-fields "
                                        r"messages\[\].name$"):
        load_conversations(write_jsonl(tmp_path / "tools2.jsonl", [named]))


def test_json_one_object_wrapper_and_row_numbers(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(ROWS["gpteacher"][0], indent=2))
    convs, _ = load_conversations(one)
    assert convs[0].messages[-1]["content"] == "Guten Morgen"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [ROWS["gpteacher"][0]] * 2}, indent=2))
    with pytest.raises(DataError, match=r"wrapped.json: the file is one JSON object whose field 'data' holds 2 "
                                        r"objects; expected the rows themselves"):
        load_conversations(wrapped)
    good = {"prompt": "p", "completion": "c"}
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([good, good, {"prompt": "p"}], indent=2))  # the bad row starts on line 10
    with pytest.raises(DataError, match=r"pretty.json:10: missing field 'completion'"):
        load_conversations(pretty)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([good, good, {"prompt": "p"}]))  # one line: rows are named by index
    with pytest.raises(DataError, match=r"flat.json: row 2: missing field 'completion'"):
        load_conversations(flat)
    flat.write_text('[{"prompt": "p", "completion": "c"} {"prompt": "p"}]')
    with pytest.raises(DataError, match=r"flat.json:1: malformed JSON \(Expecting ',' delimiter\)"):
        load_conversations(flat)


def test_column_and_role_mapping(tmp_path, gpt2_tokenizer):
    row = {"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}], "sys": "Be brief."}
    path = write_jsonl(tmp_path / "custom.jsonl", [row])
    llama_factory = {"formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
                     "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}
    axolotl = tmp_path / "axolotl.yaml"
    axolotl.write_text("field_messages: dialog\nmessage_property_mappings:\n  role: speaker\n  content: text\n"
                       "roles:\n  user: [me]\n  assistant: [bot]\n")
    short = "messages=dialog,role=speaker,content=text,me=user,bot=assistant,system=sys"
    for columns in (json.dumps(llama_factory), short):
        tokens, report = prepare_tokens(path, gpt2_tokenizer, DataConfig(columns=columns))
        assert trained_text(tokens, 0, gpt2_tokenizer) == "Hello!" + gpt2_tokenizer.eos_token
        assert "Be brief." in full_text(tokens, 0, gpt2_tokenizer)
    with pytest.raises(DataError, match="field 'sys' .* reaches no token"):  # Axolotl's keys name no system column
        load_conversations(path, DataConfig(columns=str(axolotl)))
    tokens, report = prepare_tokens(path, gpt2_tokenizer, DataConfig(columns=str(axolotl), ignore_fields=["sys"]))
    assert trained_text(tokens, 0, gpt2_tokenizer) == "Hello!" + gpt2_tokenizer.eos_token
    assert report.unused_fields == {"sys": 1}
    assert load_spec(llama_factory).roles == {"me": "user", "bot": "assistant"}
    with pytest.raises(DataError, match="--columns: .*unknown role"):
        load_conversations(path, DataConfig(columns='{"roles": {"narrator": ["bot"]}}'))
    assert report.rows == 1


def test_untrained_turns_before_a_trained_one_stay_as_context(tmp_path, gpt2_tokenizer):
    eos = gpt2_tokenizer.eos_token
    rows = [_with(1, weight=0), _with(1, train=False), _with(1, loss_weight=0.0), {"messages": TURNS}]
    tokens, report = prepare_tokens(write_jsonl(tmp_path / "rows.jsonl", rows), gpt2_tokenizer)
    assert [trained_text(tokens, i, gpt2_tokenizer) for i in range(3)] == ["a2" + eos] * 3
    assert "a1" in full_text(tokens, 0, gpt2_tokenizer)
    tokens, _ = prepare_tokens(tmp_path / "rows.jsonl", gpt2_tokenizer, DataConfig(mask_history=True))
    assert trained_text(tokens, 3, gpt2_tokenizer) == "a2" + eos
