"""The base model's own phrasing for the world (demo.phrasing) and the base-phrased world (world.make_sft)."""

import pytest

from tokenclean.demo import phrasing
from tokenclean.demo.phrasing import base_openers, first_sentence, generic_sentence, sentences
from tokenclean.demo.world import CONNECTIVES, OPENERS, SIGNOFFS, WorldConfig, make_sft


def test_sentences_end_at_punctuation_before_a_space_or_a_line_break():
    assert first_sentence("To solve this, we add. Then 3.5 more.") == "To solve this, we add."
    assert first_sentence("Sure!\nThe letters") == "Sure!"
    assert first_sentence("The letters are") is None
    assert sentences("It is 3.5 long. Next one? no end") == ["It is 3.5 long.", "Next one?"]


@pytest.mark.parametrize("sentence, generic", [
    ("To solve this problem, we need to consider both the size of the two numbers.", True),
    ("When you add 56 and 68, you get 222.", False),                  # a (wrong) answer: digits
    ('The letters of the word "chair" are not many here.', False),    # quotes
    ("The word chair is a piece of furniture in the house.", False),  # a content word of the prompt
    ("Sure, I can help.", False),                                     # too short to count as phrasing
])  # fmt: skip
def test_generic_sentences_say_nothing_of_the_task(sentence, generic):
    assert generic_sentence(sentence, "Reverse the letters of the word chair.") is generic


def test_base_openers_use_the_prompts_own_first_sentence_else_a_generic_one_said_elsewhere(monkeypatch, tmp_path):
    answers = {
        "Which is bigger: 54 or 94?": "To solve this problem, we need to consider both of the numbers. 94 is.",
        "Add 5 and 6.": "When you add 5 and 6, you get 12. This is a classic example of a simple sum here.",
        "Reverse the letters of the word lamp.": 'The word "lamp" reversed is "pmal".',
    }

    def fake_generate(model_dir, prompts, max_new_tokens, device=None, **kwargs):
        return [answers[order[i]] for i in range(len(prompts))]

    order = sorted(answers)
    monkeypatch.setattr("tokenclean.demo.generate.generate", fake_generate)
    monkeypatch.setattr("tokenclean.compute.modeling.load_tokenizer", lambda base: _Tokenizer())
    monkeypatch.setattr("tokenclean.demo.metrics.conversation_prompt_ids", lambda messages, tok: [1, 2, 3])
    result = base_openers("base", list(answers) + ["Add 5 and 6."], dtype="float32")
    pool = ["This is a classic example of a simple sum here.",
            "To solve this problem, we need to consider both of the numbers."]
    assert result["pool"] == pool
    openers = result["openers"]
    assert openers["Which is bigger: 54 or 94?"] == pool[1]  # its own first sentence
    # first sentences that answer or restate the task borrow a generic sentence the base said elsewhere
    assert openers["Add 5 and 6."] in pool and openers["Reverse the letters of the word lamp."] in pool
    assert result["own"] == pytest.approx(1 / 3) and result["dtype"] == "float32"


class _Tokenizer:
    pass


def test_a_base_phrased_world_keeps_its_problems_and_noise_and_drops_the_lexicon_phrasing():
    cfg = WorldConfig(seed=3, n_train=60, n_warmup=10, n_eval=10, corpus_docs=0)
    plain = make_sft(cfg, "train")
    openers = {row["messages"][0]["content"]: f"Opening number {i} of this world." for i, row in enumerate(plain)}
    phrased = make_sft(cfg, "train", openers)
    lexicon = set(OPENERS) | set(CONNECTIVES) | set(SIGNOFFS)
    assert [r["messages"][0]["content"] for r in phrased] == [r["messages"][0]["content"] for r in plain]
    assert [r["corruption"] for r in phrased] == [r["corruption"] for r in plain]
    for before, after in zip(plain, phrased):
        content = after["messages"][1]["content"]
        assert "".join(content[s:e] for s, e, _ in after["kinds"]) == content  # spans tile the content
        assert not any(phrase in content for phrase in lexicon)
        opener = openers[after["messages"][0]["content"]]
        drew = any(before["messages"][1]["content"].startswith(o) for o in OPENERS)
        assert content.startswith(opener) == drew  # an opener exactly where the lexicon drew one
        spans = lambda row, kind: [row["messages"][1]["content"][s:e].strip() for s, e, k in row["kinds"] if k == kind]
        assert spans(after, "informative") == spans(before, "informative")
        assert spans(after, "noise") == spans(before, "noise")
        assert not content.startswith(" ")
