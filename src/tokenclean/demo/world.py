"""A generated instruction world: a pretraining corpus and SFT samples with ground-truth token kinds.

The demo cannot ship data, so it makes its own. Everything here is a pure function of a seeded ``WorldConfig``.

The world has people (invented names) with jobs and home towns, short English words, and small numbers.

- The **corpus** is what a base model reads during pretraining: chat transcripts, letters and notes about the
  world's people and towns, and reference sheets of the knowledge the tasks build on (how each word is spelled,
  single-digit sums, the tens and ones of two-digit numbers), as a real LLM has read them. It is full of
  *generic* assistant phrasing (openers, connectives, sign-offs, "the answer is") but contains no task: no
  instruction, no worked steps, no lookups answered.
- The **SFT samples** are instructions from seven tasks that need different skills:

  ========  =====================================================  ===========================
  task      prompt                                                 skill
  ========  =====================================================  ===========================
  add       What is 34 + 27?                                       column addition with carry
  compare   Which number is larger, 34 or 27?                      digit-wise comparison
  count     How many letters are in the word lamp?                 spelling, counting
  lookup    Notes: <3-4 records>. Where does Tam live?             reading facts in context
  letter    What is the first letter of the word lamp?             spelling, position
  reverse   Reverse the letters of the word lamp.                  spelling, reordering
  sort      Sort the letters of the word lamp alphabetically.      spelling, sorting
  ========  =====================================================  ===========================

  Words stand unquoted after "the word", so they are the same tokens (with their leading space) as in the
  corpus, where the base model learnt how each is spelled.

  A response is a sequence of pieces, each with a ground-truth kind:

  - ``informative``: the steps of the task (spelling, carrying, copying the relevant record) and the answer;
  - ``generic``: an opener, a connective sentence, the "So the answer is" frame and a sign-off, drawn from the
    same phrase lists the corpus is made of, so a pretrained base model already predicts them;
  - ``noise``: in ``round(noise_rate * n_train)`` training samples, either a garbled span (random characters,
    as from a broken encoding or a scraping artefact) inserted between two pieces, or the answer replaced by a
    plausible wrong one. ``garble_share`` sets the split between the two.

  The **warm-up set** (``n_warmup`` rows) is made like the training samples but with no injected noise: the
  curated set the paper warms its reference up on. Eval samples are noise-free too, and their problems (the
  numbers of a sum, the word to spell, ...) never occur in training for the same task: about one problem in
  five, by a stable hash, is reserved for eval.

Example:
    >>> cfg = WorldConfig(seed=0, n_train=8, n_eval=2, corpus_docs=4)
    >>> row = make_sft(cfg, "train")[0]
    >>> content = row["messages"][1]["content"]
    >>> "".join(content[s:e] for s, e, _ in row["kinds"]) == content
    True
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.artifacts import KIND_CODES
from ..errors import ConfigError
from ..io import atomic_write_text, write_json
from .lexicon import (  # noqa: F401  (re-exported: tests and the demo read them here)
    NAMES,
    TOWNS,
    JOBS,
    WORDS,
    OPENERS,
    CONNECTIVES,
    ANSWER_FRAMES,
    SIGNOFFS,
    GARBLE_ALPHABET,
    Piece,
    chat_doc,
    knowledge_doc,
    letter_doc,
    notes_doc,
    recall_doc,
    PETS,
    THINGS,
)

KINDS = tuple(KIND_CODES)
# The ground truth each SFT row carries beside its messages: read by the demo's measurements, never tokenized, so
# a run over world files drops them on purpose (``DataConfig.ignore_fields``).
GROUND_TRUTH_FIELDS = ("task", "answer", "kinds", "corruption")
TASKS = ("add", "compare", "reverse", "sort", "count", "lookup", "letter")



@dataclass(frozen=True)
class WorldConfig:
    """Settings of the generated world; the same config always yields the same files."""

    seed: int = 0
    """Seed of every random choice (corpus, train and eval are drawn from separate streams of it)."""
    n_train: int = 1000
    """Number of SFT training samples."""
    n_eval: int = 200
    """Number of held-out SFT samples (noise-free, prompts disjoint from train)."""
    n_warmup: int = 300
    """Number of warm-up samples: the clean, curated set the reference is warmed up on (the paper's protocol: its
    reference trains on a rated high-quality set, not on the noisy pool). Same tasks and phrasing as train, no
    injected noise; rows of their own (problems drawn from the training side of the world)."""
    noise_rate: float = 0.2
    """Fraction of training samples that carry one injected corruption (exact count: round(rate * n_train))."""
    garble_share: float = 0.5
    """Of the corrupted samples, the fraction with a garbled span; the rest get a wrong answer."""
    garble_chars: tuple[int, int] = (8, 20)
    """Inclusive range of the length of a garbled span, in characters."""
    corpus_docs: int = 6000
    """Number of pretraining corpus documents (about 60 tokens each with the default tokenizer)."""
    tasks: tuple[str, ...] = TASKS
    """Tasks to draw SFT samples from, uniformly."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_eval", "n_warmup", "corpus_docs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"WorldConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("noise_rate", "garble_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.garble_chars
        if not 1 <= lo <= hi:
            raise ConfigError(f"WorldConfig.garble_chars must be (lo, hi) with 1 <= lo <= hi, got {self.garble_chars}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"WorldConfig.tasks: unknown or empty {unknown or list(self.tasks)}; allowed: {TASKS}")


# --- the corpus ----------------------------------------------------------------------------------------------


def make_corpus(cfg: WorldConfig) -> list[str]:
    """Pretraining documents: chat transcripts, letters and notes about the world, and reference sheets of what
    the tasks build on (spellings, digit sums, place values). Single newlines only inside."""
    rng = random.Random(f"{cfg.seed}-corpus")
    genres = (chat_doc, letter_doc, notes_doc, knowledge_doc, recall_doc)
    return [rng.choice(genres)(rng) for _ in range(cfg.corpus_docs)]


# --- tasks: each returns (key, prompt, informative steps, answer, wrong answer) --------------------------------
# The key names the problem regardless of wording: a key held out for eval never occurs in training.

Problem = tuple[str, str, str, str, str]  # (key, prompt, steps, answer, wrong answer)
EVAL_SHARE = 5  # one key in EVAL_SHARE is reserved for eval


def is_held_out(seed: int, task: str, key: str) -> bool:
    """Whether a problem belongs to the eval side of the world (a stable hash, about 1 key in 5)."""
    return zlib.crc32(f"{seed}|{task}|{key}".encode()) % EVAL_SHARE == 0


def _letters(word: str) -> str:
    return ", ".join(word)


def _task_add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    c = a + b
    prompt = rng.choice((f"What is {a} + {b}?", f"Add {a} and {b}.", f"Compute {a} plus {b}.",
                         f"What do you get when you add {a} and {b}?"))  # fmt: skip
    ones = a % 10 + b % 10
    carry = ones // 10
    if carry:
        steps = f"Ones: {a % 10} + {b % 10} = {ones}, write {ones % 10} and carry 1."
    else:
        steps = f"Ones: {a % 10} + {b % 10} = {ones}, write {ones}."
    steps += f" Tens: {a // 10} + {b // 10}" + (" + 1" if carry else "") + f" = {c // 10}. So {a} + {b} = {c}."
    wrong = c + rng.choice((-10, -2, -1, 1, 2, 10))
    return f"{min(a, b)}+{max(a, b)}", prompt, steps, str(c), str(wrong)


def _task_compare(rng: random.Random) -> Problem:
    a, b = rng.sample(range(10, 100), 2)
    prompt = rng.choice((f"Which number is larger, {a} or {b}?", f"Which is bigger: {a} or {b}?",
                         f"Of {a} and {b}, which is greater?"))  # fmt: skip
    big, small = max(a, b), min(a, b)
    if a // 10 != b // 10:
        steps = f"Compare the tens: {a // 10} and {b // 10}. {big // 10} is larger, so {big} > {small}."
    else:
        steps = (f"The tens are equal. Compare the ones: {a % 10} and {b % 10}. "
                 f"{big % 10} is larger, so {big} > {small}.")
    return f"{min(a, b)},{max(a, b)}", prompt, steps, str(big), str(small)


def _word_prompt(rng: random.Random, templates: Sequence[str]) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return word, rng.choice(templates).format(w=word)


def _shuffled_other(rng: random.Random, word: str, correct: str) -> str:
    letters = list(word)
    for _ in range(20):
        rng.shuffle(letters)
        if "".join(letters) != correct:
            return "".join(letters)
    return correct[::-1] if correct[::-1] != correct else correct + correct[-1]


def _task_reverse(rng: random.Random) -> Problem:
    word, prompt = _word_prompt(rng, ('Reverse the letters of the word {w}.', 'Write the word {w} backwards.',
                                      'What is the word {w} spelled backwards?'))  # fmt: skip
    answer = word[::-1]
    steps = f"The letters are {_letters(word)}. In reverse order they are {_letters(answer)}."
    return word, prompt, steps, answer, _shuffled_other(rng, word, answer)


def _task_sort(rng: random.Random) -> Problem:
    word, prompt = _word_prompt(rng, ('Sort the letters of the word {w} in alphabetical order.',
                                      'Put the letters of the word {w} in alphabetical order.'))  # fmt: skip
    answer = "".join(sorted(word))
    steps = f"The letters are {_letters(word)}. In alphabetical order they are {_letters(answer)}."
    return word, prompt, steps, answer, _shuffled_other(rng, word, answer)


def _task_count(rng: random.Random) -> Problem:
    word, prompt = _word_prompt(rng, ('How many letters are in the word {w}?', 'Count the letters in the word {w}.',
                                      'How long is the word {w}?'))  # fmt: skip
    numbered = ", ".join(f"{ch} ({i})" for i, ch in enumerate(word, 1))
    steps = f"The letters are {numbered}. That makes {len(word)} letters."
    wrong = len(word) + rng.choice((-2, -1, 1, 2))
    return word, prompt, steps, str(len(word)), str(wrong)


def _task_letter(rng: random.Random) -> Problem:
    word = rng.choice(WORDS)
    first = rng.random() < 0.5
    which = "first" if first else "last"
    prompt = rng.choice((f'What is the {which} letter of the word {word}?', f'Which letter does the word {word} '
                         f'{"start" if first else "end"} with?'))  # fmt: skip
    answer = word[0] if first else word[-1]
    steps = f"The letters are {_letters(word)}. The {which} one is {answer}."
    wrong = rng.choice([c for c in string.ascii_lowercase if c != answer])
    return word, prompt, steps, answer, wrong


def _task_lookup(rng: random.Random) -> Problem:
    people = rng.sample(NAMES, rng.randint(3, 4))
    towns = rng.sample(TOWNS, len(people))
    jobs = rng.sample(JOBS, len(people))
    records = " ".join(f"{p} is a {j} from {t}." for p, j, t in zip(people, jobs, towns))
    k = rng.randrange(len(people))
    if rng.random() < 0.5:
        question, answer, others = f"Where does {people[k]} live?", towns[k], towns
    else:
        question, answer, others = f"What is {people[k]}'s job?", jobs[k], jobs
    prompt = f"Notes: {records}\n{question}"
    steps = f"The notes say: {people[k]} is a {jobs[k]} from {towns[k]}."
    wrong = rng.choice([o for o in others if o != answer])
    return prompt, prompt, steps, answer, wrong


TASK_FNS: dict[str, Callable[[random.Random], Problem]] = {
    "add": _task_add, "compare": _task_compare, "reverse": _task_reverse, "sort": _task_sort,
    "count": _task_count, "lookup": _task_lookup, "letter": _task_letter,
}  # fmt: skip


# --- SFT samples ---------------------------------------------------------------------------------------------


SPLITS = ("train", "warmup", "eval")


def make_sft(cfg: WorldConfig, split: str, openers: Mapping[str, str | None] | None = None) -> list[dict]:
    """SFT rows of one split ("train": the noisy pool, "warmup": the clean warm-up set, "eval": held-out
    prompts); see the module docstring for the row format. Each split draws from its own random stream; train and
    warmup draw problems from the training side of the world, eval from the held-out side.

    ``openers``: the generic phrasing of a real base model (``demo.phrasing``: prompt -> its own opener, or None).
    Given, a response that would open with a lexicon opener opens with its prompt's opener instead (none when
    None), and no response carries the lexicon's openers, connectives or sign-offs. The random draws are the same either way, so the problems, prompts and
    noise of a world do not depend on who phrases it.

    ``kinds`` are ``[start_char, end_char, kind]`` spans that tile the assistant content exactly.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    n = {"train": cfg.n_train, "warmup": cfg.n_warmup, "eval": cfg.n_eval}[split]
    n_noisy = round(cfg.noise_rate * n) if split == "train" else 0
    rng = random.Random(f"{cfg.seed}-{split}")
    noisy = set(random.Random(f"{cfg.seed}-{split}-noise").sample(range(n), n_noisy))
    rows = []
    for i in range(n):
        task = rng.choice(cfg.tasks)
        while True:  # rejection sampling: about 1 draw in 5 (eval) or 5 in 4 (train) is accepted
            key, prompt, steps, answer, wrong = TASK_FNS[task](rng)
            if is_held_out(cfg.seed, task, key) == (split == "eval"):
                break
        pieces = _response_pieces(rng, steps, answer)
        corruption = None
        if i in noisy:
            corruption = "garble" if rng.random() < cfg.garble_share else "wrong_answer"
            pieces = _corrupt(rng, pieces, corruption, answer, wrong, cfg.garble_chars)
        if openers is not None:
            pieces = _base_phrased(pieces, openers.get(prompt))
        content, kinds = _join(_spaced(pieces))
        rows.append({
            "id": f"{split}-{i:05d}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": content}],
            "task": task,
            "answer": answer,
            "kinds": kinds,
            "corruption": corruption,
        })  # fmt: skip
    return rows


# How often a response has each optional generic piece. Chosen for the world's composition alone: generic phrasing
# is ~40% of the response tokens (SmolLM2's tokenizer, demo pool: 40.1% before the phrasing came from SmolLM2 and
# 40.3% after; with the earlier slot rates 0.85/0.6/0.7 the new, longer phrases made it 48%), so at the default keep ratio (60%) a selection can drop up to ~90% of the generic tokens.
P_OPENER, P_CONNECTIVE, P_SIGNOFF = 0.85, 0.3, 0.4


def _response_pieces(rng: random.Random, steps: str, answer: str) -> list[Piece]:
    """Opener, connective, steps, answer frame, answer, sign-off (unspaced: ``_spaced`` adds the spaces)."""
    pieces: list[Piece] = []
    if rng.random() < P_OPENER:
        pieces.append((rng.choice(OPENERS), "generic"))
    if rng.random() < P_CONNECTIVE:
        pieces.append((rng.choice(CONNECTIVES), "generic"))
    pieces.append((steps, "informative"))
    pieces.append((rng.choice(ANSWER_FRAMES), "generic"))
    pieces.append((answer, "informative"))
    pieces.append((".", "generic"))
    if rng.random() < P_SIGNOFF:
        pieces.append((rng.choice(SIGNOFFS), "generic"))
    return pieces


_LEXICON_PHRASES = frozenset(OPENERS + CONNECTIVES + SIGNOFFS)


def _base_phrased(pieces: list[Piece], opener: str | None) -> list[Piece]:
    """``pieces`` with the lexicon's openers, connectives and sign-offs removed and, where the lexicon drew an
    opener, ``opener`` (the base model's own, if any) in front instead. The answer frame stays: the checker reads
    "the answer is"."""
    drew = any(kind == "generic" and text in OPENERS for text, kind in pieces)
    kept = [(text, kind) for text, kind in pieces if not (kind == "generic" and text in _LEXICON_PHRASES)]
    return ([(opener, "generic")] if opener and drew else []) + kept


def _spaced(pieces: list[Piece]) -> list[Piece]:
    """Separating spaces start the following piece, matching byte-level BPE tokens, which carry their leading
    space; the final "." and a noise span's own leading space (``_corrupt``) take none."""
    return [(text.lstrip() if i == 0 else text if text == "." or text.startswith(" ") else " " + text, kind)
            for i, (text, kind) in enumerate(pieces)]


def _corrupt(
    rng: random.Random, pieces: list[Piece], corruption: str, answer: str, wrong: str, garble_chars: tuple[int, int]
) -> list[Piece]:
    if corruption == "wrong_answer":
        return [(text.replace(answer, wrong), "noise") if text.strip() == answer else (text, kind)
                for text, kind in pieces]  # fmt: skip
    garble = "".join(rng.choice(GARBLE_ALPHABET) for _ in range(rng.randint(*garble_chars)))
    at = rng.randint(1, len(pieces))  # after some piece: the garbled span is never the whole start
    return pieces[:at] + [(" " + garble, "noise")] + pieces[at:]


def _join(pieces: list[Piece]) -> tuple[str, list[list]]:
    kinds, pos = [], 0
    for text, kind in pieces:
        kinds.append([pos, pos + len(text), kind])
        pos += len(text)
    return "".join(text for text, _ in pieces), kinds


# --- files ---------------------------------------------------------------------------------------------------


def world_prompts(cfg: WorldConfig) -> list[str]:
    """The user prompt of every SFT row of every split (the same whoever phrases the responses: see ``make_sft``)."""
    return [row["messages"][0]["content"] for split in SPLITS for row in make_sft(cfg, split)]


def write_world(cfg: WorldConfig, out_dir: str | Path, openers: Mapping[str, str | None] | None = None,
                record: dict | None = None) -> dict[str, Path]:
    """Write ``corpus.txt`` (documents separated by a blank line), ``train.jsonl``, ``warmup.jsonl``,
    ``eval.jsonl`` and ``world.json`` (the config, plus ``record``: e.g. who phrased it) into ``out_dir``, each
    atomically; ``openers`` as in ``make_sft``. Returns their paths by name. ``world.json`` is written last: a
    world directory with it is complete."""
    out_dir = Path(out_dir)
    files = {"corpus": "corpus.txt", **{split: f"{split}.jsonl" for split in SPLITS}, "config": "world.json"}
    paths = {name: out_dir / file for name, file in files.items()}
    atomic_write_text(paths["corpus"], "\n\n".join(make_corpus(cfg)) + "\n")
    for split in SPLITS:
        atomic_write_text(paths[split], "".join(json.dumps(row) + "\n" for row in make_sft(cfg, split, openers)))
    write_json(paths["config"], {**dataclasses.asdict(cfg), **(record or {})})
    return paths


# --- token kinds and scoring ---------------------------------------------------------------------------------

_PRIORITY = {"noise": 2, "informative": 1, "generic": 0}


def token_kinds(kinds_spans: Sequence[Sequence], offsets: Sequence[tuple[int, int]]) -> list[str | None]:
    """Kind of each token from its ``(start, end)`` character offsets within the assistant content.

    A token takes the kind covering most of its characters; on a tie noise wins, then informative. Tokens with
    no characters in any span (empty offsets, special tokens) get ``None``.

    Example:
        >>> token_kinds([[0, 4, "generic"], [4, 6, "noise"]], [(0, 3), (3, 5), (5, 6), (6, 6)])
        ['generic', 'noise', 'noise', None]
    """
    kinds: list[str | None] = []
    for start, end in offsets:
        best, best_key = None, (0, -1)
        for s, e, kind in kinds_spans:
            overlap = min(end, e) - max(start, s)
            if overlap > 0 and (overlap, _PRIORITY[kind]) > best_key:
                best, best_key = kind, (overlap, _PRIORITY[kind])
        kinds.append(best)
    return kinds


_ANSWER_RE = re.compile(r"answer is\s*:?\s*([A-Za-z0-9]+)", re.IGNORECASE)


def answer_correct(task: str, generated_text: str, reference_answer: str) -> bool:
    """Whether a generation gets the task right: the word after the last "answer is" (else the last word)
    equals the reference, case-insensitively; numbers compare as integers (so "07" matches "7")."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {TASKS}")
    matches = _ANSWER_RE.findall(generated_text)
    words = matches or re.findall(r"[A-Za-z0-9]+", generated_text)
    if not words:
        return False
    got, want = words[-1].lower(), reference_answer.strip().lower()
    if got.isdigit() and want.isdigit():
        return int(got) == int(want)
    return got == want
