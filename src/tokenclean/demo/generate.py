"""Greedy generation for the demo: answers to held-out prompts, and a base model's own phrasing for the world.

One batched, KV-cached ``model.generate`` per batch of left-padded prompts. A row stops at the end-of-turn token or,
with ``stop``, as soon as its text so far satisfies ``stop`` (e.g. "the answer sentence is complete"), and the batch
stops when every row has: on a CPU most of the cost of a long ``max_new_tokens`` is rows that already finished.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

# A complete answer sentence: "... answer is X" followed by a sentence end or a line break (what the checkers read).
ANSWER_DONE = re.compile(r"answer is\s*:?\s*[A-Za-z0-9]+\s*[.!\n]", re.IGNORECASE)


def answer_done(text: str) -> bool:
    """Whether ``text`` holds a finished "... the answer is X." sentence, after which a greedy answer is graded."""
    return ANSWER_DONE.search(text) is not None


class _StopWhen:
    """A ``StoppingCriteria``: per row, True once the decoded text of its last ``window`` generated tokens satisfies
    ``stop`` (a window, not the whole continuation, so each step decodes a constant number of tokens; ``stop`` must
    recognise its ending within it: "answer is X." takes under ten tokens)."""

    def __init__(self, tokenizer, width: int, stop: Callable[[str], bool], window: int = 16):
        self.tokenizer, self.width, self.stop, self.window = tokenizer, width, stop, window

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        start = max(self.width, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([self.stop(t) for t in texts], device=input_ids.device)


def generate(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int, device: str | None = None,
             batch_size: int = 128, stop: Callable[[str], bool] | None = None, dtype: str = "auto",
             progress: bool = False, desc: str = "generating") -> list[str]:
    """Greedy continuations of ``prompts`` (token ids) by the model in ``model_dir``, decoded without special
    tokens, in the order of ``prompts``. Prompts are sorted by length and left-padded in batches of ``batch_size``
    (less padding); each row stops at the end-of-turn token or once ``stop(text)`` holds. ``dtype``: the weights'
    dtype (``auto``: bf16 where the hardware computes it natively)."""
    import torch
    from transformers import StoppingCriteriaList

    from ..compute.modeling import load_model, load_tokenizer
    from tqdm.auto import tqdm

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device, dtype=dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = [prompts[i] for i in rows]
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
            criteria = StoppingCriteriaList([_StopWhen(tokenizer, width, stop)]) if stop else None
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                     stopping_criteria=criteria)
            for i, text in zip(rows, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                texts[i] = text
            bar.update(len(rows))
    return texts
