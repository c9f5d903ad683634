"""Rendering a conversation to text segments that are response text or not.

With a tokenizer that has a chat template, the conversation is rendered with it; otherwise with the
default template (the paper's format, from open-instruct)::

    <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}\\n<|user|>\\n...

The rendered text is cut into segments that are either response text (each assistant turn's content plus its
end-of-turn marker) or not, and each segment is tokenized on its own. So the response mask is exact by
construction: no token spans a boundary, and no boundary is ever found by re-tokenizing a prefix. This is also
what the model sees at inference, where the prompt is tokenized up to the generation prompt and the response is
generated token by token.
"""

from __future__ import annotations

import re

from ..errors import DataError
from .labels import clear_position_0


def render_segments(messages: list[dict[str, str]], tokenizer, template: str = "auto") -> list[tuple[str, bool]]:
    """Render a conversation to ``[(text, is_response), ...]`` whose concatenation is the full text. An assistant
    message with ``"train": False`` (a per-turn flag of the row's format: see ``core.formats``) renders as context:
    its tokens stay in the input and out of the response mask."""
    if template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None)):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("template 'chat' requested but the tokenizer has no chat template")
        return _chat_template_segments(messages, tokenizer)
    return _default_segments(messages, tokenizer)


def _default_segments(messages: list[dict[str, str]], tokenizer) -> list[tuple[str, bool]]:
    eos = tokenizer.eos_token or ""
    segments: list[tuple[str, bool]] = []
    prompt = tokenizer.bos_token or ""
    for m in messages:
        if m["role"] == "assistant":
            segments.append((prompt + "<|assistant|>\n", False))
            segments.append((m["content"] + eos, m.get("train", True) is not False))
            prompt = "\n"
        else:
            prompt += f"<|{m['role']}|>\n{m['content']}\n"
    return segments


def _chat_template_segments(messages: list[dict[str, str]], tokenizer) -> list[tuple[str, bool]]:
    """Cut the chat template's rendering at each assistant turn: the turn starts where the rendering of the
    turns before it with the generation prompt ends, and ends where the rendering up to it ends, less any
    whitespace after its end-of-turn special token (ChatML's and Gemma's "\n" after ``<|im_end|>`` /
    ``<end_of_turn>``: generation stops at the special token, so the model never produces that newline)."""
    def render(msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        if not msgs:
            return ""
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 (jinja2 raises its own errors, and templates raise_exception())
            raise DataError(f"the tokenizer's chat template fails on this conversation ({type(e).__name__}: {e}); "
                            "fix the conversation's roles, or use --template default") from None

    flags = [m.get("train", True) is not False for m in messages]
    messages = [{k: v for k, v in m.items() if k != "train"} for m in messages]  # templates never see the flag
    full = render(messages, False)
    specials = _special_token_texts(tokenizer)
    segments: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        upto = render(messages[: i + 1], False)
        if not full.startswith(upto) or not full.startswith(before) or len(before) < pos:
            raise DataError(
                f"the tokenizer's chat template is not prefix-stable (assistant turn {i}: rendering the turns before "
                "it, or up to it, is not a prefix of rendering the whole conversation; templates that rewrite "
                "earlier turns or add text to the generation prompt do this), so response tokens cannot be located "
                "exactly; use --template default"
            )
        response = full[len(before) : len(upto)]
        if response.rstrip() != response and response.rstrip().endswith(specials):
            response = response.rstrip()
        segments.append((full[pos : len(before)], False))
        segments.append((response, flags[i]))
        pos = len(before) + len(response)
    segments.append((full[pos:], False))
    return [s for s in segments if s[0]]


def _special_token_texts(tokenizer) -> tuple[str, ...]:
    """The text of every special token (EOS, ``<|im_end|>``, ``<end_of_turn>``, ...), longest first."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts.update(t.content for t in decoder.values() if getattr(t, "special", False))
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
GENERATION_CHECK_ROWS = 16


def check_generation_mask(messages: list[dict[str, str]], tokenizer, input_ids: list[int],
                          response_mask: list[bool]) -> str | None:
    """For a chat template that marks assistant text with ``{% generation %}``: compare the template's own assistant
    mask (``return_assistant_tokens_mask``) with ``response_mask`` (untruncated, from the segments).

    Returns "" when they agree, None when the whole-text tokenization differs from the segment one (nothing to
    compare), else a description of the difference. The segments stay the mask either way: they are what the model
    generates after the generation prompt at inference (e.g. the space between ``Assistant:`` and the reply, which
    a template may leave outside its generation block).
    """
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]
    if ids != list(input_ids):
        return None
    clear_position_0(mask)
    diff = [j for j, (a, b) in enumerate(zip(mask, response_mask)) if a != b]
    if not diff:
        return ""
    tokens = tokenizer.convert_ids_to_tokens([ids[j] for j in diff[:8]])
    return (f"the chat template's {{% generation %}} blocks mark {sum(mask)} tokens, the rendered assistant turns "
            f"{sum(response_mask)}; they differ at {len(diff)} token(s) ({tokens})")
