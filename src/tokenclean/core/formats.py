"""Row formats: one small reader per format, a registry by name, and detection from a row.

A reader turns one raw row (a dict) into chat messages ``[{"role", "content"}, ...]`` (roles ``system``, ``user``,
``assistant``, ``tool``) plus the names of the row's fields it did not use; ``read_row`` adds the row's ``system``
and ``tools`` fields as a first system turn, for every format. Assistant turns are the response; one marked not to
train (OpenAI ``weight: 0``, Axolotl ``train: false``, LLaMA-Factory ``loss_weight: 0``) carries ``"train": False``
and is meant to stay in the prompt as context (see ``data.apply_turn_flags``).

Formats (``FORMATS``; detected from the first row by ``detect``, or named with ``--format``):

- ``messages``: OpenAI / TRL chat, ``{"messages": [{"role", "content"}, ...]}``; ``content`` may be a list of parts
  (``{"type": "text", "text": ...}``); ``tool_calls`` (with empty content) and ``tool`` results are read;
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value"}],
  "system", "tools"}`` as LLaMA-Factory and Axolotl use it;
- ``gemini``: ``{"contents": [{"role": "user"|"model", "parts": [{"text"}]}], "systemInstruction": {"parts"}}``;
- ``pairs``: ``{"conversation": [{"human": ..., "assistant": ...}, ...]}``, one exchange per object;
- ``oasst_tree`` / ``oasst_table``: OpenAssistant conversation trees, one training conversation per thread
  (``core.threads``);
- ``prompt_completion``: ``{"prompt", "completion"}``, strings or (TRL conversational) lists of messages;
- ``alpaca``: ``{"instruction", "input", "output", "system", "history": [[q, a], ...]}``;
- ``dolly`` / ``gpteacher``: ``{"instruction", "context"|"input", "response"}``;
- ``fields``: two fields named by ``Spec.prompt_field`` / ``Spec.response_field``, or one of ``FIELD_PAIRS``
  (GSM8K's ``question``/``answer``; ``query``/``response`` with ``system`` and ``history``; ``prompt``/``response``).

Role values are matched case-insensitively, without a trailing colon, against ``spec.ROLE_NAMES`` (``User``,
``Chatbot``, ``model``, ``USER:``). Other key names and role values come from a ``Spec`` (``load_spec`` reads the
short form ``bot=assistant,messages=dialog``, LLaMA-Factory's ``dataset_info.json`` entry, ``columns`` and
``tags``, or Axolotl's ``field_messages`` / ``message_property_mappings`` / ``roles``). Rows whose content cannot be
trained on as text (images, audio) raise ``SkipRow``: always skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Spec, roles, flag keys and row errors live in core.spec; re-exported here, where the readers use them.
from . import threads
from .spec import (FIELD_PAIRS, MEDIA_COLUMNS, MEDIA_PARTS, ROLE_NAMES, ROLES,  # noqa: F401
                   TRAIN_DETAIL_KEYS, TRAIN_KEYS, RowError, SkipRow, Spec, check_text, kind, load_spec, unknown_role)

CONTENT_KEYS = ("content", "value", "parts", "text")  # a message's text: OpenAI, ShareGPT, Gemini, others
MESSAGE_METADATA = ("tool_call_id",)  # message keys that link turns and carry no text (OpenAI's tool results)
MEDIA_PART_KEYS = ("inlineData", "inline_data", "fileData", "file_data")  # Gemini's media parts
GEMINI_SYSTEM = ("systemInstruction", "system_instruction")


# ---------------------------------------------------------------------------------------------------- readers
Reader = Callable[[dict, Spec], tuple[list[dict], set[str]]]


def read_messages(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    key = spec.col("messages", "messages")
    messages, unused = chat(_get(row, key), key, spec)
    return messages, unused | _rest(row, spec, key)


def read_sharegpt(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    key = spec.col("messages", "conversations")
    messages, unused = chat(_get(row, key), key, spec)
    return messages, unused | _rest(row, spec, key)


def read_gemini(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    """Gemini / Vertex AI tuning rows: ``contents`` turns of ``parts``, and ``systemInstruction`` (also spelled
    ``system_instruction``) as the system turn."""
    key = spec.col("messages", "contents")
    messages, unused = chat(_get(row, key), key, spec)
    names = [k for k in GEMINI_SYSTEM if k in row]
    if names:
        value, at = row[names[0]], names[0]
        if not isinstance(value, dict):
            raise RowError("wrong type", f"'{at}' must be an object with 'parts', got {kind(value)}")
        system, more = chat([{"role": "system", **value}], at, spec)
        messages, unused = system + messages, unused | {k.replace("[]", "") for k in more}
    return messages, unused | _rest(row, spec, key, *names)


def read_pairs(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    """``{"conversation": [{"human": ..., "assistant": ...}, ...]}``: each object is one exchange, its keys role
    values (``human``, ``assistant``, ... as ``Spec.role_of`` reads them), in order."""
    key = spec.col("messages", "conversation")
    pairs = _get(row, key)
    if not isinstance(pairs, list):
        raise RowError("wrong type", f"'{key}' must be a list of {{\"human\": ..., \"assistant\": ...}} objects, "
                       f"got {kind(pairs)}")
    messages = []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise RowError("wrong type", f"'{key}'[{k}] must be a {{\"human\": ..., \"assistant\": ...}} object, "
                           f"got {kind(pair)}")
        for name, text in pair.items():
            role = spec.role_of(name)
            if role is None:
                raise unknown_role(f"'{key}'[{k}] has key", name, spec)
            check_text(text, f"'{key}'[{k}].{name}")
            messages.append({"role": role, "content": text})
    return messages, _rest(row, spec, key)


def read_prompt_completion(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    p, c = spec.col("prompt", "prompt"), spec.col("completion", "completion")
    prompt, completion = _get(row, p), _get(row, c)
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt-completion
        before, u1 = chat(prompt, p, spec) if isinstance(prompt, list) else ([_turn("user", row, p)], set())
        after, u2 = chat(completion, c, spec)
        if any(m["role"] != "assistant" for m in after):
            raise RowError("wrong role", f"'{c}' must hold assistant messages only, got roles "
                           f"{[m['role'] for m in after]}")
        return before + after, u1 | u2 | _rest(row, spec, p, c)
    return [_turn("user", row, p), _turn("assistant", row, c)], _rest(row, spec, p, c)


def read_alpaca(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    return _instruction(row, spec, spec.col("query", "input"), spec.col("response", "output"))


def read_dolly(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    extra = "context" if "context" in row else spec.col("query", "input")
    return _instruction(row, spec, extra, spec.col("response", "response"))


def read_fields(row: dict, spec: Spec) -> tuple[list[dict], set[str]]:
    """Two text fields (``Spec.prompt_field`` / ``response_field``), after the earlier turns of ``history`` (as in
    the ``system``/``query``/``response``/``history`` rows of ModelScope's trainers)."""
    p, r = spec.prompt_field, spec.response_field
    history, key = _history(row, spec)
    return history + [_turn("user", row, p), _turn("assistant", row, r)], _rest(row, spec, p, r, key)


def _instruction(row: dict, spec: Spec, extra: str, response: str) -> tuple[list[dict], set[str]]:
    """Alpaca-shaped rows: the instruction and its extra input form the last user turn; ``history`` pairs come
    before it (their answers are assistant turns, trained as in LLaMA-Factory unless ``mask_history``)."""
    instruction = spec.col("prompt", "instruction")
    prompt = _text(row, instruction)
    value = row.get(extra)
    if value is not None and not isinstance(value, str):
        raise RowError("wrong type", f"field '{extra}' must be a string, got {kind(value)}")
    if value and value.strip():
        prompt = f"{prompt}\n\n{value}"
    history, key = _history(row, spec)
    messages = history + [{"role": "user", "content": prompt}, _turn("assistant", row, response)]
    return messages, _rest(row, spec, instruction, extra, response, key)


def _history(row: dict, spec: Spec) -> tuple[list[dict], str]:
    """The earlier turns of ``row``'s ``history`` field (a list of [question, answer] pairs) and the field's key."""
    key = spec.col("history", "history")
    turns: list[dict] = []
    for k, pair in enumerate(row.get(key) or []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RowError("wrong type", f"'{key}'[{k}] must be a [question, answer] pair, got {pair!r:.60}")
        for role, text, what in (("user", pair[0], 0), ("assistant", pair[1], 1)):
            check_text(text, f"'{key}'[{k}][{what}]")
            turns.append({"role": role, "content": text})
    return turns, key


# ---------------------------------------------------------------------------------------------------- messages
def chat(turns: Any, where: str, spec: Spec) -> tuple[list[dict], set[str]]:
    """Read a list of chat messages (any of the published shapes) at field ``where``; returns the messages and
    the message keys not used, as ``where[].key``."""
    if not isinstance(turns, list):
        raise RowError("wrong type", f"'{where}' must be a list of {{role, content}} objects, got {kind(turns)}")
    out, unused = [], set()
    for k, t in enumerate(turns):
        at = f"{where}[{k}]"
        if not isinstance(t, dict):
            raise RowError("wrong type", f"{at} must be an object with 'role' and 'content', got {kind(t)}")
        role_key = spec.role_key or ("from" if "role" not in t and "from" in t else "role")
        content_key = spec.content_key or _content_key(t, role_key)
        if role_key not in t:
            raise RowError("missing field", f"{at} has no '{role_key}' (it has {sorted(t)})")
        role = spec.role_of(t[role_key])
        if role is None:
            raise unknown_role(f"{at} has unknown role", t[role_key], spec)
        content = _content(t, content_key, role, at)
        message = {"role": role, "content": content}
        if _turn_trained(t, role, at, spec, content_key) is False and role == "assistant":
            message["train"] = False
        out.append(message)
        used = {role_key, content_key, "tool_calls", spec.train_key, spec.train_detail_key, *TRAIN_KEYS,
                *TRAIN_DETAIL_KEYS, *MESSAGE_METADATA}
        unused |= {f"{where}[].{key}" for key in t if key not in used}
    return out, unused


def _content_key(t: dict, role_key: str) -> str:
    """The key holding a message's text: ``content`` (OpenAI), ``value`` (ShareGPT), ``parts`` (Gemini) or
    ``text``, whichever the message has; when it has none, the one its role key implies (for the error)."""
    found = next((k for k in CONTENT_KEYS if k in t), None)
    return found or ("value" if role_key == "from" else "content")


def _content(t: dict, key: str, role: str, at: str) -> str:
    """The message's text: a string or the text parts of a list, then its tool calls as JSON lines (the text a
    chat template without tool support renders, and what the default template shows)."""
    value = t.get(key)
    if isinstance(value, list):
        value = "".join(_part_text(p, f"{at}.{key}[{j}]") for j, p in enumerate(value))
    calls = t.get("tool_calls")
    if calls:
        if role != "assistant":
            raise RowError("wrong role", f"{at} has 'tool_calls' but role {role!r}, expected an assistant turn")
        if value is not None and not isinstance(value, str):
            raise RowError("wrong type", f"{at}.{key} must be a string, got {kind(value)}")
        text = "\n".join(_call_text(c, f"{at}.tool_calls[{j}]") for j, c in enumerate(calls))
        return f"{value}\n{text}" if value and value.strip() else text
    if key not in t:
        raise RowError("missing field", f"{at} has no '{key}' (it has {sorted(t)})")
    check_text(value, f"{at}.{key}")
    return value


def _part_text(part: Any, at: str) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise RowError("wrong type", f"{at} must be a content part object, got {kind(part)}")
    media = part.get("type") if part.get("type") in MEDIA_PARTS else next((k for k in MEDIA_PART_KEYS if k in part),
                                                                            None)
    if media:
        raise SkipRow(f"{media} content", f"{at} is {media!r} content, which is not text to train on")
    text = part.get("text", part.get("value"))
    if part.get("type") == "tool_call":  # LLaMA-Factory v1: the call as a JSON string
        try:
            return _call_text(json.loads(text) if isinstance(text, str) else text, at) + "\n"
        except json.JSONDecodeError:
            raise RowError("wrong type", f"{at} is a tool call whose value is not JSON, expected "
                           '{"name": ..., "arguments": ...}') from None
    if part.get("type") == "reasoning" and isinstance(text, str):  # as reasoning templates write it (Qwen3, R1)
        return f"<think>\n{text}\n</think>\n\n"
    if part.get("type", "text") != "text" or not isinstance(text, str):
        raise RowError("wrong type", f"{at} must be a text part {{'type': 'text', 'text': ...}}, got keys "
                       f"{sorted(part)}")
    return text


def _call_text(call: Any, at: str) -> str:
    """One tool call as ``{"name": ..., "arguments": {...}}`` (OpenAI's ``function`` wrapper removed, string
    arguments parsed when they are JSON)."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RowError("wrong type", f"{at} must be a tool call {{'function': {{'name', 'arguments'}}}}, got "
                       f"{call!r:.80}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass  # keep the string: it is what the model is to produce
    return json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)


def _turn_trained(t: dict, role: str, at: str, spec: Spec, content_key: str = "content") -> bool | None:
    """The turn's train flag (None when it has none): its own, its ``train_detail`` spans' or its content parts'
    (Axolotl's per-part ``train``); raises when it cannot be honoured exactly (a flag on part of the turn only)."""
    flag = None
    for key in (spec.train_key, *TRAIN_KEYS):
        if key and key in t and t[key] is not None:
            v = t[key]
            if isinstance(v, bool) or v in (0, 1):
                flag = bool(v)
            else:
                raise RowError("fractional weight", f"{at}.{key} is {v!r}; a turn is trained or not, expected 0 or 1 "
                               "(true/false)")
    parts = _parts_trained(t.get(content_key), f"{at}.{content_key}", spec)
    if parts is not None:
        flag = parts if flag is None else flag and parts
    for key in (spec.train_detail_key, *TRAIN_DETAIL_KEYS):
        if key and t.get(key):
            spans = {bool(s.get("train")) for s in t[key] if isinstance(s, dict)}
            if len(spans) != 1:
                raise RowError("partial-turn training", f"{at}.{key} trains only part of the turn; tokenclean trains "
                               "whole assistant turns and selects tokens itself, expected every span to have the "
                               "same 'train'")
            flag = spans.pop() if flag is None else flag and spans.pop()
    if flag and role != "assistant":
        raise RowError("trained non-assistant turn", f"{at} is a {role} turn marked to train; only assistant turns "
                       "are trained (or every token, with --train-on-prompt)")
    return flag


def _parts_trained(parts: Any, at: str, spec: Spec) -> bool | None:
    """The common train flag of a content-part list whose parts carry one (None: no part does); a flag on some parts
    only, or parts that disagree, is training part of a turn: refused, as for ``train_detail``."""
    if not isinstance(parts, list):
        return None
    flags = []
    for part in parts:
        keys = [k for k in (spec.train_key, *TRAIN_KEYS) if k and isinstance(part, dict) and part.get(k) is not None]
        flags.append(bool(part[keys[0]]) if keys else None)
    if all(f is None for f in flags):
        return None
    if len(set(flags)) != 1:
        raise RowError("partial-turn training", f"{at} marks some content parts to train and others not; tokenclean "
                       "trains whole assistant turns and selects tokens itself, expected every part to have the "
                       "same 'train'")
    return flags[0]


# ---------------------------------------------------------------------------------------------------- helpers
def _with_system(row: dict, spec: Spec, messages: list[dict]) -> list[dict]:
    """``messages`` with the row's ``system`` (and ``tools`` description, as text) as a first system turn."""
    parts = []
    for name in ("system", "tools"):
        value = row.get(spec.col(name, name))
        if value in (None, "", []):
            continue
        if name == "tools" and not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        check_text(value, f"field '{spec.col(name, name)}'")
        parts.append(value if name == "system" else f"Tools:\n{value}")
    if not parts:
        return messages
    if messages and messages[0]["role"] == "system":
        parts.append(messages[0]["content"])
        messages = messages[1:]
    return [{"role": "system", "content": "\n\n".join(parts)}] + messages


def _check_media(row: dict) -> None:
    for name in MEDIA_COLUMNS:
        if row.get(name):
            raise SkipRow(name, f"the row has {name} ({len(row[name])}), which are not text to train on")


def _rest(row: dict, spec: Spec, *used: str | None) -> set[str]:
    """The fields of ``row`` the reader did not use (``read_row`` reads ``id``, ``system``, ``tools``, media)."""
    known = {*used, "id", *(spec.col(n, n) for n in ("system", "tools", *MEDIA_COLUMNS))}
    return {k for k in row if k not in known}


def _get(row: dict, name: str) -> Any:
    if name not in row:
        raise RowError("missing field", f"missing field '{name}' (row has {sorted(row)})")
    return row[name]


def _turn(role: str, row: dict, name: str | None) -> dict[str, str]:
    return {"role": role, "content": _text(row, name)}


def _text(row: dict, name: str | None) -> str:
    value = _get(row, name)
    check_text(value, f"field '{name}'")
    return value


# ---------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Format:
    """A row format: its reader, whether a row looks like it (``detect``), the fields that identify it (``shape``,
    for messages), the fields of the published format that are bookkeeping, not text (``metadata``), and what a
    row is (``unit``): one conversation (``row``), a conversation tree (``tree``), or one message of a tree
    (``table``: the file is read as a whole by ``threads.table_threads``)."""

    read: Reader | None
    detect: Callable[[dict, Spec], bool]
    shape: str
    metadata: tuple[str, ...] = ()
    unit: str = "row"


FORMATS: dict[str, Format] = {
    "messages": Format(read_messages, lambda r, s: s.col("messages", "messages") in r,
                       "{'messages': [{'role', 'content'}]}"),
    "sharegpt": Format(read_sharegpt, lambda r, s: s.col("messages", "conversations") in r,
                       "{'conversations': [{'from', 'value'}], 'system'}"),
    "gemini": Format(read_gemini, lambda r, s: s.col("messages", "contents") in r,
                     "{'contents': [{'role', 'parts': [{'text'}]}], 'systemInstruction'}"),
    "pairs": Format(read_pairs, lambda r, s: s.col("messages", "conversation") in r,
                    "{'conversation': [{'human', 'assistant'}]}", metadata=("conversation_id", "category", "dataset")),
    "oasst_tree": Format(None, lambda r, s: threads.is_tree_row(r),
                         "{'prompt': {'role', 'text', 'replies': [...]}} (OpenAssistant trees)", unit="tree"),
    "oasst_table": Format(None, lambda r, s: threads.is_table_row(r),
                          "{'message_id', 'parent_id', 'role', 'text'} (OpenAssistant message table)", unit="table"),
    "prompt_completion": Format(read_prompt_completion, lambda r, s: "prompt" in r and "completion" in r,
                                "{'prompt', 'completion'}"),
    "alpaca": Format(read_alpaca, lambda r, s: "instruction" in r and s.col("response", "output") in r,
                     "{'instruction', 'input', 'output', 'system', 'history'}"),
    "dolly": Format(read_dolly, lambda r, s: "instruction" in r and "response" in r and "context" in r,
                    "{'instruction', 'context', 'response'}", metadata=("category",)),
    "gpteacher": Format(read_dolly, lambda r, s: "instruction" in r and "response" in r,
                        "{'instruction', 'input', 'response'}"),
    "fields": Format(read_fields, lambda r, s: s.prompt_field is not None,
                     "two text fields (--prompt-field, --response-field), 'system', 'history'"),
}


def read_row(name: str, row: dict, spec: Spec, top_ranked: bool = False
             ) -> tuple[list[tuple[str, list[dict]]], set[str]]:
    """Read ``row`` in format ``name`` (not a ``table`` format): its conversations as (thread id, messages), one
    with thread id "" unless the row is a tree, each with the row's ``system`` and ``tools`` as a first system
    turn; and the fields no conversation uses, the format's ``metadata`` left out. Raises ``RowError``."""
    fmt = FORMATS[name]
    _check_media(row)
    if fmt.unit == "tree":
        found, unused = threads.tree_threads(row, spec, top_ranked)
    else:
        messages, unused = fmt.read(row, spec)
        found = [("", messages)]
    return [(t, _with_system(row, spec, m)) for t, m in found], unused - set(fmt.metadata)


def detect(row: dict, spec: Spec) -> str | None:
    """The name of the first format of ``FORMATS`` that ``row`` looks like (``spec.format`` when it names one);
    None when none fits. ``fields`` is detected for the common pairs of ``FIELD_PAIRS`` too."""
    if spec.prompt_field:
        return "fields"
    if spec.format:
        return spec.format
    name = next((n for n, f in FORMATS.items() if f.detect(row, spec)), None)
    return name or ("fields" if field_pair(row) else None)


def field_pair(row: dict) -> tuple[str, str] | None:
    """The first of ``FIELD_PAIRS`` that ``row`` has, else None."""
    return next((pair for pair in FIELD_PAIRS if pair[0] in row and pair[1] in row), None)
