"""What to say about a row of unknown shape: its keys, and the closest known shapes with the flags that map them.

``closest`` looks at what the row holds, not only at its key names: a list of message objects is mapped with
``--columns messages=KEY`` (plus its role and content keys and role values), two text fields with
``--prompt-field``/``--response-field``. Names are compared with ``difflib`` to pick the likeliest keys.
"""

from __future__ import annotations

import difflib
from typing import Any

from .formats import CONTENT_KEYS
from .spec import Spec, kind

PROMPT_NAMES = ("prompt", "question", "query", "instruction", "input", "user", "human", "source", "context")
RESPONSE_NAMES = ("response", "answer", "completion", "output", "target", "reply", "assistant", "solution", "label")
ROLE_KEYS = ("role", "from", "speaker", "author", "sender", "who")
MAX_SHOWN = 3


def describe(row: dict[str, Any], limit: int = 8) -> str:
    """``row``'s keys and what each holds, short: ``keys ['dialog', 'id'] (dialog: list of 2 objects {speaker,
    text}; id: int)``."""
    parts = [f"{k}: {_what(v)}" for k, v in list(row.items())[:limit]]
    more = f"; {len(row) - limit} more" if len(row) > limit else ""
    return f"keys {sorted(row)} ({'; '.join(parts)}{more})"


def _what(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return f"list of {len(value)} objects {{{', '.join(_keys(value))}}}"
    if isinstance(value, dict):
        return f"object {{{', '.join(list(value)[:6])}}}"
    return "string" if isinstance(value, str) else kind(value)


def _keys(objects: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for o in objects[:8] for k in o))


def _similarity(name: str, targets: tuple[str, ...]) -> float:
    return max(difflib.SequenceMatcher(None, name.lower(), t).ratio() for t in targets)


def closest(row: dict[str, Any]) -> list[str]:
    """Up to ``MAX_SHOWN`` lines, likeliest first, each a known shape and the flags that would read ``row`` as it."""
    found: list[tuple[float, str]] = []
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found.append(_chat(key, value))
    texts = [k for k, v in row.items() if isinstance(v, str)]
    if len(texts) >= 2:
        score, prompt, response = max(((_similarity(p, PROMPT_NAMES) + _similarity(r, RESPONSE_NAMES)) / 2, p, r)
                                      for p in texts for r in texts if p != r)
        found.append((score, f"prompt and response, two text fields: --prompt-field {prompt} "
                             f"--response-field {response}"))
    elif len(texts) == 1 and not found:
        found.append((0.0, f"a prompt and a response need two text fields; '{texts[0]}' alone is plain text, not "
                           "SFT data"))
    generic = [(-1.0, "messages [{role, content}]: --columns messages=KEY"),
               (-1.0, "prompt and response, two text fields: --prompt-field KEY --response-field KEY")]
    lines = [line for _, line in sorted(found, key=lambda f: -f[0])]
    lines += [line for _, line in generic if not any(line.split(":")[0] == have.split(":")[0] for have in lines)]
    return [f"- {line}" for line in lines[:MAX_SHOWN]]


def _chat(key: str, messages: list[dict]) -> tuple[float, str]:
    """How to read the list of objects ``messages`` (field ``key``) as chat turns, and how sure that is."""
    keys = _keys(messages)
    if all(Spec().role_of(k) for k in keys):  # {"human": ..., "assistant": ...} objects: one exchange each
        return 0.9, f"pairs [{{human, assistant}}]: --format pairs --columns messages={key}"
    if not any(k in ROLE_KEYS or k in CONTENT_KEYS for k in keys) and len(keys) == 2:  # {"q": ..., "a": ...}
        aliases = ",".join(f"{k}={role}" for k, role in zip(keys, ("user", "assistant")) if not Spec().role_of(k))
        return 0.5, f"pairs [{{human, assistant}}]: --format pairs --columns messages={key},{aliases}"
    role = max(keys, key=lambda k: (_known_roles(messages, k), _similarity(k, ROLE_KEYS)))
    content = max((k for k in keys if k != role), key=lambda k: (_texts(messages, k), _similarity(k, CONTENT_KEYS)),
                  default="content")
    flags = [f"messages={key}"]
    flags += [f"role={role}"] if role not in ("role", "from") else []
    flags += [f"content={content}"] if content not in CONTENT_KEYS else []
    values = list(dict.fromkeys(m[role] for m in messages if isinstance(m.get(role), str)))
    unknown = [v for v in values if not Spec().role_of(v)]
    flags += [f"{v}={r}" for v, r in zip(unknown, ("user", "assistant"))]  # first speaker: the user, as is usual
    note = " (check the roles)" if unknown else ""
    return 0.8 + 0.1 * _similarity(key, ("messages", "conversations", "contents")), \
        f"messages [{{role, content}}]: --columns {','.join(flags)}{note}"


def _known_roles(messages: list[dict], key: str) -> int:
    return sum(bool(Spec().role_of(m.get(key))) for m in messages)


def _texts(messages: list[dict], key: str) -> int:
    return sum(isinstance(m.get(key), (str, list)) for m in messages)

