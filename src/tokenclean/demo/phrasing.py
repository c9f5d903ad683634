"""A world's generic phrasing taken from the base model's own output: the paper's premise by construction.

Token cleaning assumes that many response tokens are phrasing the base model already predicts. The tiny world
makes that true by pretraining its base on a corpus built from the same phrase lists as its responses
(``demo.lexicon``). A real pretrained base (``--base``, SmolLM2 by default) has read no such corpus, so its world
takes the phrasing from the base itself: every prompt of the world is answered greedily by the base, and each
sentence of those answers that is *generic* (``generic_sentence``: no digit, no quotation mark, no content word of
its prompt, so it restates nothing of the task and answers nothing, right or wrong) is the base's own phrasing.
A response that opens with phrasing opens with its own prompt's first sentence when that one is generic, else with
one of the generic sentences the base said to other prompts of the world (chosen by a hash of the prompt). A small
model mostly starts answering at once (SmolLM2-135M: its first sentence is generic for about one prompt in ten),
so most openers are borrowed; whether the base predicts them well is measured, not assumed: the demo prints the
base's loss per kind of token. Generated once per world and base and cached with the world (``phrasing.json``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Words of a prompt that do not make a sentence task-specific when they recur in it.
STOPWORDS = frozenset("""a an the of in on to and or is are was be it this that what which who where how do does
you your i me we us for with by from as at letter letters word words number numbers many much long""".split())
MIN_WORDS, MAX_WORDS = 6, 30
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_WORD = re.compile(r"[A-Za-z]+")


def first_sentence(text: str) -> str | None:
    """``text`` up to and including its first sentence end (``.``, ``!`` or ``?`` before a space or the end of the
    text; a line break ends a sentence without being part of it), stripped; None when ``text`` has no sentence end.

    >>> first_sentence("Sure, I can help. The sum is 5.")
    'Sure, I can help.'
    >>> first_sentence("no end yet") is None
    True
    """
    match = _SENTENCE_END.search(text)
    if match is None:
        return None
    sentence = text[:match.end()].rstrip("\n").strip()
    return sentence or None


def content_words(prompt: str) -> set[str]:
    """The lower-cased words of ``prompt`` (letters only) that are not ``STOPWORDS`` and have 2 or more letters."""
    return {w for w in (m.lower() for m in _WORD.findall(prompt)) if len(w) > 1 and w not in STOPWORDS}


def generic_sentence(sentence: str, prompt: str) -> bool:
    """Whether ``sentence`` is generic for ``prompt``: ``MIN_WORDS`` to ``MAX_WORDS`` words, no digit, no quotation
    mark, and no content word of the prompt (``content_words``).

    >>> generic_sentence("To solve this problem, we need to think.", "Which is bigger: 54 or 94?")
    True
    >>> generic_sentence("When you add 56 and 68, you get 222.", "Add 56 and 68.")
    False
    """
    words = _WORD.findall(sentence)
    if not MIN_WORDS <= len(words) <= MAX_WORDS or any(c.isdigit() or c in "\"'`“”‘’" for c in sentence):
        return False
    return not ({w.lower() for w in words} & content_words(prompt))


def sentences(text: str) -> list[str]:
    """The complete sentences of ``text`` in order (``first_sentence`` applied until none is left)."""
    out = []
    while (sentence := first_sentence(text)) is not None:
        out.append(sentence)
        text = text[text.index(sentence) + len(sentence):]
    return out


def base_openers(base: str | Path, prompts: list[str], device: str | None = None, dtype: str = "auto",
                 max_new_tokens: int = 48, progress: bool = False) -> dict[str, Any]:
    """The opener of each distinct prompt in the base model's own words (see the module docstring), from its greedy
    answers under its own chat template. Returns ``{"openers": {prompt: opener | None}, "own": share of prompts
    whose own first sentence is generic, "pool": the generic sentences said to any prompt, "dtype": the weights'
    dtype as resolved here}``; an opener is None only when the base said nothing generic to any prompt."""
    import zlib

    from ..compute.modeling import load_tokenizer, resolve_device, resolve_dtype
    from .generate import generate
    from .metrics import conversation_prompt_ids

    distinct = sorted(set(prompts))
    tokenizer = load_tokenizer(base)
    ids = [conversation_prompt_ids([{"role": "user", "content": p}, {"role": "assistant", "content": "."}],
                                   tokenizer) for p in distinct]
    texts = generate(base, ids, max_new_tokens, device, dtype=dtype, progress=progress, desc="base phrasing")
    said = {p: [s for s in sentences(t) if generic_sentence(s, p)] for p, t in zip(distinct, texts)}
    own = {p: said[p][0] if said[p] and sentences(t)[:1] == said[p][:1] else None for p, t in zip(distinct, texts)}
    pool = sorted({s for found in said.values() for s in found})
    openers = {p: own[p] or (pool[zlib.crc32(p.encode()) % len(pool)] if pool else None) for p in distinct}
    resolved = str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
    return {"openers": openers, "own": sum(o is not None for o in own.values()) / max(1, len(own)), "pool": pool,
            "dtype": resolved}
