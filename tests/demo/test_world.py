import json
import re

import pytest

from tokenclean.errors import ConfigError
from tokenclean.demo.world import (
    ANSWER_FRAMES,
    CONNECTIVES,
    OPENERS,
    SIGNOFFS,
    TASKS,
    WorldConfig,
    answer_correct,
    make_corpus,
    make_sft,
    token_kinds,
    write_world,
)

CFG = WorldConfig(seed=3, n_train=700, n_eval=140, corpus_docs=300)


@pytest.fixture(scope="module")
def train():
    return make_sft(CFG, "train")


@pytest.fixture(scope="module")
def eval_rows():
    return make_sft(CFG, "eval")


def _content(row):
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    return row["messages"][1]["content"]


def test_same_config_same_world_other_seed_other_world(train):
    assert make_sft(CFG, "train") == train
    assert make_corpus(CFG) == make_corpus(WorldConfig(seed=3, n_train=600, n_eval=120, corpus_docs=300))
    other = WorldConfig(seed=4, n_train=600, n_eval=120, corpus_docs=300)
    assert make_sft(other, "train") != train
    assert make_corpus(other) != make_corpus(CFG)


def test_spans_tile_the_assistant_content(train, eval_rows):
    for row in train + eval_rows:
        content, pos = _content(row), 0
        for start, end, kind in row["kinds"]:
            assert start == pos and end > start and kind in ("informative", "generic", "noise")
            pos = end
        assert pos == len(content)


def test_noise_count_and_split_follow_the_config(train):
    corrupted = [row for row in train if row["corruption"]]
    assert len(corrupted) == round(CFG.noise_rate * CFG.n_train)
    garbled = sum(row["corruption"] == "garble" for row in corrupted)
    share, n = CFG.garble_share, len(corrupted)  # each corrupted row is garbled with probability garble_share
    assert abs(garbled / n - share) < 4 * (share * (1 - share) / n) ** 0.5  # within 4 binomial standard deviations
    for row in train:
        has_noise = any(kind == "noise" for _, _, kind in row["kinds"])
        assert has_noise == bool(row["corruption"])


def test_noise_rate_is_configurable():
    for rate in (0.0, 0.5):
        rows = make_sft(WorldConfig(n_train=200, noise_rate=rate, corpus_docs=0), "train")
        assert sum(bool(row["corruption"]) for row in rows) == round(rate * 200)


def test_wrong_answers_are_wrong_and_garble_keeps_the_answer(train):
    for row in train:
        content = _content(row)
        noise = [content[s:e].strip() for s, e, kind in row["kinds"] if kind == "noise"]
        if row["corruption"] == "wrong_answer":
            assert noise[0] != row["answer"] and not answer_correct(row["task"], content, row["answer"])
        elif row["corruption"] is None:
            assert answer_correct(row["task"], content, row["answer"])
        else:  # the garbled span may sit between "the answer is" and the answer, so check the answer span
            assert [content[s:e].strip() for s, e, k in row["kinds"] if k == "informative"][-1] == row["answer"]


def _problem(row):
    """What a sample asks, regardless of wording: the task with its numbers or word (lookups: the whole prompt)."""
    prompt = row["messages"][0]["content"]
    if row["task"] == "lookup":
        return ("lookup", prompt)
    word = re.search(r"the word ([a-z]+)", prompt)
    return (row["task"], word.group(1) if word else tuple(sorted(re.findall(r"\d+", prompt))))


def test_eval_is_clean_and_its_problems_are_new(train, eval_rows):
    assert len(eval_rows) == CFG.n_eval
    train_problems = {_problem(row) for row in train}
    for row in eval_rows:
        assert row["corruption"] is None
        assert all(kind != "noise" for _, _, kind in row["kinds"])
        assert _problem(row) not in train_problems
        assert answer_correct(row["task"], _content(row), row["answer"])


def test_answers_are_right_for_every_task(train):
    assert {row["task"] for row in train} == set(TASKS)
    for row in train:
        prompt, answer = row["messages"][0]["content"], row["answer"]
        word = re.search(r"the word ([a-z]+)", prompt)
        numbers = [int(n) for n in re.findall(r"\d+", prompt)]
        if row["task"] == "add":
            assert int(answer) == sum(numbers)
        elif row["task"] == "compare":
            assert int(answer) == max(numbers)
        elif row["task"] == "reverse":
            assert answer == word.group(1)[::-1]
        elif row["task"] == "sort":
            assert answer == "".join(sorted(word.group(1)))
        elif row["task"] == "count":
            assert int(answer) == len(word.group(1))
        elif row["task"] == "letter":
            assert answer == word.group(1)[0 if ("first" in prompt or "start" in prompt) else -1]
        else:
            assert re.search(rf"\b{answer}\b", prompt)


def test_generic_phrases_are_in_the_corpus_and_task_content_is_not(train):
    corpus = "\n\n".join(make_corpus(WorldConfig(seed=3, corpus_docs=3000)))
    for phrase in OPENERS + CONNECTIVES + ANSWER_FRAMES + SIGNOFFS:
        assert phrase in corpus, phrase
    # the knowledge the tasks build on is there (as a pretrained LLM has it), the tasks' worked steps are not
    assert " lamp is spelled l, a, m, p." in corpus and " 7 + 8 = 15." in corpus
    assert " 34 has 3 tens and 4 ones." in corpus
    assert "The letters are" not in corpus and "The notes say" not in corpus and "Ones:" not in corpus
    assert "Compare the tens" not in corpus
    for row in train[:100]:
        for start, end, kind in row["kinds"]:
            if kind == "informative" and end - start > 12:
                assert _content(row)[start:end].strip() not in corpus


def test_generic_share_is_substantial(train):
    chars = {"informative": 0, "generic": 0, "noise": 0}
    for row in train:
        for start, end, kind in row["kinds"]:
            chars[kind] += end - start
    total = sum(chars.values())
    assert 0.25 < chars["generic"] / total < 0.6
    assert 0.01 < chars["noise"] / total < 0.1


def test_write_world_round_trips(tmp_path, train):
    paths = write_world(CFG, tmp_path / "world")
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert rows == train
    assert len(paths["eval"].read_text().splitlines()) == CFG.n_eval
    docs = paths["corpus"].read_text().strip().split("\n\n")
    assert docs == make_corpus(CFG)
    assert json.loads(paths["config"].read_text())["seed"] == 3


def test_token_kinds_on_hand_made_offsets():
    spans = [[0, 10, "generic"], [10, 20, "informative"], [20, 24, "noise"], [24, 30, "generic"]]
    offsets = [(0, 4), (4, 12), (8, 14), (18, 22), (19, 23), (22, 26), (29, 30), (5, 5), (30, 35)]
    assert token_kinds(spans, offsets) == [
        "generic",  # inside one span
        "generic",  # 6 generic chars vs 2 informative
        "informative",  # 2 vs 4
        "noise",  # 2 informative vs 2 noise: noise wins the tie
        "noise",  # 1 vs 3
        "noise",  # 2 noise vs 2 generic: noise wins the tie
        "generic",
        None,  # empty offsets (a special token)
        None,  # past the end of the content
    ]


def test_token_kinds_with_a_real_tokenizer(train):
    from tokenclean.demo.pretrain import train_tokenizer

    tok = train_tokenizer(make_corpus(CFG), vocab_size=600)
    for row in [r for r in train if r["corruption"] == "garble"][:20]:
        content = _content(row)
        enc = tok(content, add_special_tokens=False, return_offsets_mapping=True)
        kinds = token_kinds(row["kinds"], enc["offset_mapping"])
        assert None not in kinds
        (noise_span,) = [(s, e) for s, e, k in row["kinds"] if k == "noise"]
        noisy_tokens = [o for o, k in zip(enc["offset_mapping"], kinds) if k == "noise"]
        assert noisy_tokens and all(noise_span[0] <= s and e <= noise_span[1] + 1 for s, e in noisy_tokens)


@pytest.mark.parametrize(
    ("task", "text", "reference", "expected"),
    [
        ("add", "Ones: 4 + 7 = 11. So the answer is 61.", "61", True),
        ("add", "So the answer is 061. I hope this helps!", "61", True),
        ("add", "The answer is 60, not 61.", "61", False),
        ("reverse", "In reverse order they are p, m, a, l. The answer is PMAL.", "pmal", True),
        ("lookup", "The notes say: Tam is a baker from Oss.", "Oss", True),  # no frame: last word
        ("sort", "", "almp", False),
    ],
)
def test_answer_correct(task, text, reference, expected):
    assert answer_correct(task, text, reference) is expected


@pytest.mark.parametrize(
    "bad",
    [dict(n_train=-1), dict(noise_rate=1.5), dict(garble_share=-0.1), dict(garble_chars=(5, 2)), dict(tasks=("fly",))],
)
def test_bad_config_raises(bad):
    with pytest.raises(ConfigError):
        WorldConfig(**bad)
