"""What a row's fields are called and what its role values mean (``Spec``), and why a row is refused (``RowError``).

The defaults read the published formats (OpenAI/TRL messages, ShareGPT, Alpaca, ...) as they are; ``load_spec``
reads LLaMA-Factory's ``dataset_info.json`` entry (``formatting``, ``columns``, ``tags``) or Axolotl's dataset keys
for other names. ``core.formats`` reads rows with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Role values of the published formats -> role, matched case-insensitively and without a trailing colon (``User``,
# ``USER:``; see ``role_key``). Where each comes from: OpenAI (system, developer, user, assistant, tool), ShareGPT
# (human, gpt), Cohere chat fine-tuning files (System, User, Chatbot), Gemini (model), OpenAssistant (prompter),
# LLaMA-Factory (function_call: the assistant's tool call, trained; observation / function: tool results, context).
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "human": "user", "prompter": "user",
              "assistant": "assistant", "gpt": "assistant", "chatbot": "assistant", "model": "assistant",
              "function_call": "assistant", "tool": "tool", "observation": "tool", "function": "tool"}
# Row fields ``--columns FIELD=KEY`` can rename (LLaMA-Factory's column names), and the message keys it can name.
COLUMN_NAMES = ("messages", "system", "tools", "prompt", "query", "response", "completion", "history")
MESSAGE_KEYS = ("role", "content")
COLUMNS_SYNTAX = ("--columns 'VALUE=ROLE,...' (ROLE: system, user, assistant, tool), 'FIELD=KEY,...' (FIELD: "
                  f"{', '.join(COLUMN_NAMES)}), 'role=KEY,content=KEY' for message keys, or JSON/YAML")
# Per-turn training flags: key -> who uses it. A flag is 0/1 or a bool; anything else refuses the row.
TRAIN_KEYS = ("weight", "train", "training", "loss_weight", "loss")  # OpenAI, Axolotl (x2), LLaMA-Factory (x2)
TRAIN_DETAIL_KEYS = ("train_detail", "training_detail")  # Axolotl's character spans
MEDIA_PARTS = ("image", "image_url", "input_image", "audio", "input_audio", "video", "file")
MEDIA_COLUMNS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal columns
# (prompt, response) fields ``fields`` detects
FIELD_PAIRS = (("question", "answer"), ("query", "response"), ("prompt", "response"))


class RowError(ValueError):
    """Why one row is invalid. ``reason`` is a short fixed phrase (the key under which ``--skip-invalid`` counts
    the row, e.g. ``missing field``); the message says what was found and what was expected."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SkipRow(RowError):
    """A well-formed row with nothing to train on as text (e.g. an image): skipped and counted, never an error."""


def check_text(value: Any, what: str) -> None:
    """Refuse ``value`` (named ``what``) unless it is a string with some text."""
    if value is None:
        raise RowError("null", f"{what} is null, expected a string")
    if not isinstance(value, str):
        raise RowError("wrong type", f"{what} must be a string, got {kind(value)}")
    if not value.strip():
        raise RowError("empty text", f"{what} is empty or whitespace only, expected text")


def unknown_role(what: str, value: Any, spec: Spec) -> RowError:
    """The error for a role value neither ``spec`` nor ``ROLE_NAMES`` knows, with the ``--columns`` that maps it."""
    known = sorted(set(ROLE_NAMES) | set(spec.roles))
    example = value.strip().removesuffix(":") if isinstance(value, str) and value.strip() else "VALUE"
    return RowError("unknown role", f"{what} {value!r}, expected one of {known} (any case, a trailing ':' allowed); "
                    f"map it with --columns '{example}=assistant' (VALUE=ROLE, ROLE one of {', '.join(ROLES)})")


def kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


@dataclass(frozen=True)
class Spec:
    """Where a row's fields are and what its role values mean. The defaults read the published formats as is."""

    columns: dict[str, str] = field(default_factory=dict)  # name (messages, system, prompt, ...) -> key in the row
    role_key: str | None = None  # None: "role", or "from" when the message has no "role"
    content_key: str | None = None  # None: "content", or "value" when the message has no "content"
    roles: dict[str, str] = field(default_factory=dict)  # role value -> one of ROLES, before ROLE_NAMES
    train_key: str | None = None  # a message key holding a train flag, besides TRAIN_KEYS
    train_detail_key: str | None = None  # a message key holding Axolotl-style spans, besides TRAIN_DETAIL_KEYS
    format: str | None = None  # the format the spec names (LLaMA-Factory's "formatting")
    prompt_field: str | None = None
    response_field: str | None = None

    def col(self, name: str, default: str | None = None) -> str | None:
        return self.columns.get(name, default)

    def role_of(self, value: object) -> str | None:
        """The role (one of ``ROLES``) a message's role value names: the spec's own role map first (exactly, then
        as ``role_key`` spells it), then the known aliases of ``ROLE_NAMES``; None when neither knows it."""
        if not isinstance(value, str):
            return None
        own = {role_key(k): r for k, r in self.roles.items()}
        return self.roles.get(value) or own.get(role_key(value)) or ROLE_NAMES.get(role_key(value))


def role_key(value: str) -> str:
    """A role value as the alias tables match it: ``" USER: "`` -> ``"user"``."""
    return value.strip().removesuffix(":").strip().lower()


def load_spec(source: str | Path | dict) -> Spec:
    """A ``Spec`` from a JSON/YAML file, inline JSON, a dict or the short form ``NAME=VALUE,...`` (``parse_short``):
    one LLaMA-Factory ``dataset_info.json`` entry (``formatting``, ``columns``, ``tags``) or Axolotl dataset keys
    (``field_messages``, ``message_property_mappings``, ``roles``, ``message_field_training``,
    ``message_field_training_detail``)."""
    if isinstance(source, dict):
        raw = source
    elif is_short(str(source)):
        raw = parse_short(str(source))
    else:
        raw = _read_mapping(str(source))
    tags, columns = raw.get("tags") or {}, dict(raw.get("columns") or {})
    if raw.get("field_messages"):
        columns["messages"] = raw["field_messages"]
    props = raw.get("message_property_mappings") or {}
    roles = {tags[k]: role for k, role in (("user_tag", "user"), ("assistant_tag", "assistant"),
                                           ("system_tag", "system"), ("observation_tag", "tool"),
                                           ("function_tag", "assistant")) if k in tags}
    for role, values in (raw.get("roles") or {}).items():
        roles.update({v: role for v in ([values] if isinstance(values, str) else values)})
    bad = sorted(set(roles.values()) - set(ROLES))
    if bad:
        raise ValueError(f"column mapping names unknown role(s) {bad}, expected roles among {list(ROLES)}")
    fmt = {"sharegpt": "sharegpt", "alpaca": "alpaca", "openai": "messages"}.get(raw.get("formatting", ""))
    if fmt == "sharegpt" and "messages" in columns and columns["messages"] == "messages":
        fmt = "messages"
    return Spec(columns=columns, role_key=tags.get("role_tag") or props.get("role"),
                content_key=tags.get("content_tag") or props.get("content"), roles=roles,
                train_key=raw.get("message_field_training"), train_detail_key=raw.get("message_field_training_detail"),
                format=fmt)


def is_short(text: str) -> bool:
    """Whether ``--columns`` was given in the short form (``bot=assistant,messages=dialog``), not a file or JSON."""
    return "=" in text and not text.lstrip().startswith("{") and not Path(text).is_file()


def parse_short(text: str) -> dict:
    """``--columns`` in its short form, as the Axolotl keys ``load_spec`` reads. Each comma-separated item is
    ``VALUE=ROLE`` (a role value to one of ``ROLES``), ``role=KEY`` / ``content=KEY`` (the message keys) or
    ``FIELD=KEY`` (a row field of ``COLUMN_NAMES`` under another key).

    >>> parse_short("Bot=assistant,messages=dialog,role=speaker") == {"roles": {"assistant": ["Bot"]},
    ...     "columns": {"messages": "dialog"}, "message_property_mappings": {"role": "speaker"}}
    True
    """
    raw: dict = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        left, _, right = (part.strip() for part in item.partition("="))
        if not left or not right:
            raise ValueError(f"{item!r} is not NAME=VALUE; expected {COLUMNS_SYNTAX}")
        if right in ROLES:
            raw.setdefault("roles", {}).setdefault(right, []).append(left)
        elif left in MESSAGE_KEYS:
            raw.setdefault("message_property_mappings", {})[left] = right
        elif left in COLUMN_NAMES:
            raw.setdefault("columns", {})[left] = right
        else:
            raise ValueError(f"{item!r} maps neither a role value to a role nor a known field to a key; expected "
                             f"{COLUMNS_SYNTAX}")
    return raw


def _read_mapping(text: str) -> dict:
    import yaml

    path = Path(text)
    body = path.read_text(encoding="utf-8") if not text.lstrip().startswith("{") and path.is_file() else text
    try:
        value = yaml.safe_load(body)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise ValueError(f"{text}: not valid JSON or YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{text}: expected a file or inline JSON holding a mapping such as "
                         '{"columns": {"messages": "dialog"}, "tags": {"role_tag": "speaker"}}')
    return value
