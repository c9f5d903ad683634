"""What a row's fields are called and what its role values mean (``Spec``), and why a row is refused (``RowError``).

The defaults read the published formats (OpenAI/TRL messages, ShareGPT, Alpaca, ...) as they are; ``load_spec``
reads LLaMA-Factory's ``dataset_info.json`` entry (``formatting``, ``columns``, ``tags``) or Axolotl's dataset keys
for other names. ``core.formats`` reads rows with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")
# Role values of the published formats -> role. function_call is the assistant's tool call (trained, as in
# LLaMA-Factory); observation / function are tool results (context, never trained).
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
              "gpt": "assistant", "function_call": "assistant", "tool": "tool", "observation": "tool",
              "function": "tool"}
# Per-turn training flags: key -> who uses it. A flag is 0/1 or a bool; anything else refuses the row.
TRAIN_KEYS = ("weight", "train", "training", "loss_weight", "loss")  # OpenAI, Axolotl (x2), LLaMA-Factory (x2)
TRAIN_DETAIL_KEYS = ("train_detail", "training_detail")  # Axolotl's character spans
MEDIA_PARTS = ("image", "image_url", "input_image", "audio", "input_audio", "video", "file")
MEDIA_COLUMNS = ("images", "videos", "audios")  # LLaMA-Factory's multimodal columns
FIELD_PAIRS = (("question", "answer"), ("query", "response"))  # (prompt, response) fields ``fields`` detects


class RowError(ValueError):
    """Why one row is invalid. ``reason`` is a short fixed phrase (the key under which ``--skip-invalid`` counts
    the row, e.g. ``missing field``); the message says what was found and what was expected."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SkipRow(RowError):
    """A well-formed row with nothing to train on as text (e.g. an image): skipped and counted, never an error."""


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


def load_spec(source: str | Path | dict) -> Spec:
    """A ``Spec`` from a JSON/YAML file, inline JSON or a dict: one LLaMA-Factory ``dataset_info.json`` entry
    (``formatting``, ``columns``, ``tags``) or Axolotl dataset keys (``field_messages``,
    ``message_property_mappings``, ``roles``, ``message_field_training``, ``message_field_training_detail``)."""
    raw = source if isinstance(source, dict) else _read_mapping(str(source))
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
