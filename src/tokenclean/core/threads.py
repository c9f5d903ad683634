"""Conversation trees (OpenAssistant) flattened into threads: one training conversation per root-to-leaf path.

Two published shapes hold the same trees:

- ``oasst_tree``: one row per tree, ``{"message_tree_id", "prompt": {"role": "prompter", "text", "replies": [...]}}``,
  every reply a message with a ``role``, ``text``, optional ``rank`` and its own ``replies``;
- ``oasst_table``: one row per message, ``{"message_id", "parent_id", "role", "text", "rank", ...}`` (a root has
  ``parent_id`` null), as the OpenAssistant message tables are published.

A thread is a root-to-leaf path cut after its last assistant message (what follows an assistant turn last trains
nothing); a cut path that is the start of a longer thread is not a thread of its own, so no assistant turn is
trained twice by one tree's threads except where branches share it. ``top_ranked`` follows only the best-ranked
reply at each branch (lowest ``rank``; a reply without one comes after ranked replies; ties go to the first):
one thread per tree. The other keys of OpenAssistant's messages (``OASST_METADATA``) are bookkeeping, no text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .spec import RowError, SkipRow, Spec, check_text, kind, unknown_role

TREE_KEY = "prompt"  # the root message of an oasst_tree row
NODE_KEYS = ("role", "text", "replies", "rank", "message_id", "parent_id")
OASST_METADATA = ("message_tree_id", "tree_state", "user_id", "created_date", "review_count", "review_result",
                  "deleted", "synthetic", "model_name", "detoxify", "emojis", "labels", "lang")


def is_tree_row(row: dict) -> bool:
    return isinstance(row.get(TREE_KEY), dict) and ("replies" in row[TREE_KEY] or "text" in row[TREE_KEY])


def is_table_row(row: dict) -> bool:
    return all(k in row for k in ("message_id", "parent_id", "role", "text"))


def paths(root: int, children: dict[int, list[int]], is_assistant: Callable[[int], bool],
          rank: Callable[[int], float | None], top_ranked: bool) -> tuple[list[list[int]], set[int]]:
    """The threads under ``root`` (lists of node ids, root first) and every node the walk visited (all of the tree,
    or with ``top_ranked`` the best-ranked branch only)."""
    leaves, visited, stack = [], set(), [[root]]
    while stack:
        path = stack.pop()
        visited.add(path[-1])
        kids = children.get(path[-1], [])
        if top_ranked and kids:
            kids = [min(kids, key=lambda k: (rank(k) is None, rank(k) or 0.0))]  # min keeps the first of ties
        if not kids:
            leaves.append(path)
        stack.extend(path + [k] for k in reversed(kids))
    cut = []
    for path in leaves:
        last = max((i for i, node in enumerate(path) if is_assistant(node)), default=-1)
        if last >= 0:
            cut.append(tuple(path[: last + 1]))
    starts = {c[:k] for c in cut for k in range(1, len(c))}
    return [list(c) for c in dict.fromkeys(cut) if c not in starts], visited


@dataclass
class Node:
    """One message of a tree: its role (one of ``ROLES``), text, rank, and where it is (for messages)."""

    role: str
    text: str
    rank: float | None
    at: str


def read_node(message: Any, at: str, spec: Spec) -> Node:
    """A tree message (``role``, ``text``, optional ``rank``) checked; raises ``RowError`` naming ``at`` (a path in
    the row such as ``prompt.replies[0]``, or "" for a row that is the message)."""
    def name(key: str) -> str:
        return f"{at}.{key}" if at else f"field '{key}'"

    if not isinstance(message, dict):
        raise RowError("wrong type", f"{at} must be a message object with 'role' and 'text', got {kind(message)}")
    if "role" not in message:
        raise RowError("missing field", f"{at or 'the row'} has no 'role' (it has {sorted(message)})")
    role = spec.role_of(message["role"])
    if role is None:
        raise unknown_role(f"{name('role')} is an unknown role", message["role"], spec)
    check_text(message.get("text"), name("text"))
    rank = message.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))):
        raise RowError("wrong type", f"{name('rank')} must be a number (0 = best reply) or null, got {kind(rank)}")
    return Node(role, message["text"], rank, at)


def _unused(message: dict, name: str) -> set[str]:
    return {f"{name}.{k}" for k in message if k not in NODE_KEYS and k not in OASST_METADATA}


def tree_threads(row: dict, spec: Spec, top_ranked: bool) -> tuple[list[tuple[str, list[dict]]], set[str]]:
    """The threads of one ``oasst_tree`` row as (thread id, messages): the thread id is the last message's
    ``message_id``, else its position in the tree walk; and the message keys no thread uses."""
    nodes: list[Node] = []
    ids: list[Any] = []
    children: dict[int, list[int]] = {}
    unused: set[str] = set()
    todo = [(row[TREE_KEY], TREE_KEY, None)]
    while todo:
        message, at, parent = todo.pop()
        nodes.append(read_node(message, at, spec))
        ids.append(message.get("message_id"))
        me = len(nodes) - 1
        if parent is not None:
            children.setdefault(parent, []).append(me)
        unused |= _unused(message, TREE_KEY if parent is None else f"{TREE_KEY}.replies[]")
        replies = message.get("replies") or []
        if not isinstance(replies, list):
            raise RowError("wrong type", f"{at}.replies must be a list of messages, got {kind(replies)}")
        todo.extend((r, f"{at}.replies[{k}]", me) for k, r in reversed(list(enumerate(replies))))
    found, _ = paths(0, children, lambda n: nodes[n].role == "assistant", lambda n: nodes[n].rank, top_ranked)
    if not found:
        raise RowError("no assistant turn", "the conversation tree has no assistant reply, expected at least one "
                       "response to train on")
    threads = [(str(ids[p[-1]]) if ids[p[-1]] is not None else str(p[-1]), _messages(nodes, p)) for p in found]
    return threads, unused


def _messages(nodes: list[Node], path: list[int]) -> list[dict]:
    return [{"role": nodes[n].role, "content": nodes[n].text} for n in path]


@dataclass
class Table:
    """The threads of an ``oasst_table`` file: each a list of row indices (root first); ``skipped``: why each row on
    no thread is left out (a ``RowError`` for an invalid row, a ``SkipRow`` for a valid one); ``unused``: per row,
    the keys no thread uses."""

    threads: list[list[int]]
    messages: list[list[dict]]
    skipped: dict[int, RowError]
    unused: dict[int, set[str]]


def table_threads(rows: list[dict | RowError], spec: Spec, top_ranked: bool) -> Table:
    """Flatten the message rows of an ``oasst_table`` file into threads (see the module docstring)."""
    nodes: dict[int, Node] = {}
    skipped: dict[int, RowError] = {}
    by_id: dict[Any, int] = {}
    for i, row in enumerate(rows):
        try:
            if isinstance(row, RowError):
                raise row
            nodes[i] = read_node(row, "", spec)
            key = row["message_id"]
            if not isinstance(key, (str, int)) or isinstance(key, bool) or key in by_id:
                raise RowError("wrong type" if key not in by_id else "duplicate id",
                               f"message_id {key!r} must be a string or integer unique in the file"
                               + (f" (first seen at row {by_id[key]})" if key in by_id else ""))
            by_id[key] = i
        except RowError as e:
            nodes.pop(i, None)
            skipped[i] = e
    children: dict[int, list[int]] = {}
    roots = []
    for i in nodes:
        parent = rows[i]["parent_id"]
        if parent is None:
            roots.append(i)
        elif parent in by_id:
            children.setdefault(by_id[parent], []).append(i)
        else:
            skipped[i] = RowError("unknown parent", f"parent_id {parent!r} is no message_id of the file, expected "
                                  "the id of the message this one replies to (null for a first prompt)")
    threads, visited = [], set()
    for root in roots:
        found, seen = paths(root, children, lambda n: nodes[n].role == "assistant", lambda n: nodes[n].rank,
                            top_ranked)
        threads += found
        visited |= seen
    on_thread, invalid = {n for t in threads for n in t}, set(skipped)
    for i in nodes:
        if i not in on_thread and i not in skipped:
            skipped[i] = _why_not_used(i, visited, rows, by_id, invalid)
    unused = {i: {k for k in rows[i] if k not in NODE_KEYS and k not in OASST_METADATA} for i in on_thread}
    return Table(threads, [[{"role": nodes[n].role, "content": nodes[n].text} for n in t] for t in threads],
                 dict(sorted(skipped.items())), unused)


def _why_not_used(i: int, visited: set[int], rows: list, by_id: dict, invalid: set[int]) -> SkipRow:
    """Why valid message row ``i`` is on no thread (``invalid``: the rows refused)."""
    parent = rows[i]["parent_id"]
    while parent is not None and parent in by_id and by_id[parent] not in invalid:
        parent = rows[by_id[parent]]["parent_id"]
    if parent is not None:
        return SkipRow("reply to a skipped message", "it replies (directly or not) to a message that is skipped")
    if i not in visited:
        return SkipRow("not on the top-ranked branch", "it is not on the top-ranked branch of its tree "
                       "(--top-ranked-branch)")
    return SkipRow("no assistant reply after it", "no assistant message follows it in its tree, so no thread "
                   "trains on it")
