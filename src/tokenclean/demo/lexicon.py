"""The generated world's words and the pretraining documents made of them (``world.make_corpus``).

Generic phrasing (openers, connectives, answer frames, sign-offs) comes from these lists both in the corpus and in
every SFT response, so a base model pretrained on the corpus already predicts it well.
"""

from __future__ import annotations

import random
import string

# --- the world's lexicon -------------------------------------------------------------------------------------

NAMES = (
    "Nora", "Tam", "Ivo", "Lena", "Otto", "Mira", "Bram", "Esra", "Kai", "Runa", "Jonas", "Edda", "Pim", "Sami",
    "Vera", "Arlo", "Ines", "Timo", "Yara", "Bodo", "Lio", "Hedda", "Remy", "Anouk", "Finn", "Zofia", "Ole",
    "Maren", "Kip", "Talia",
)  # fmt: skip
TOWNS = (
    "Pell", "Oss", "Rann", "Varden", "Kells", "Moorby", "Astel", "Brinn", "Dunmore", "Halsey", "Tolk", "Wenby",
    "Corrin", "Elmstead", "Fennick", "Gorse", "Lindale", "Norwick",
)  # fmt: skip
JOBS = (
    "baker", "farmer", "potter", "weaver", "smith", "fisher", "miller", "tailor", "carpenter", "teacher",
    "healer", "brewer", "mason", "gardener",
)  # fmt: skip
PETS = ("goat", "cat", "dog", "hen", "pony", "duck", "rabbit", "sheep")
THINGS = ("apples", "loaves", "baskets", "candles", "jars", "boats", "carts", "lamps", "coins", "fish")
WORDS = (
    "lamp", "river", "stone", "bread", "cloud", "apple", "tiger", "horse", "green", "light", "sugar", "paper",
    "glass", "table", "chair", "water", "house", "plant", "music", "storm", "night", "smile", "dream", "train",
    "ocean", "honey", "lemon", "mango", "piano", "robot", "spoon", "field", "north", "quiet", "brick", "candy",
    "dance", "eagle", "frost", "grape", "heart", "juice", "knife", "maple", "nurse", "olive", "pearl", "queen",
    "salt", "tent", "vine", "wolf", "yarn", "zero", "moon", "star", "fish", "bird", "tree", "rain", "snow",
    "wind", "fire", "rock", "sand", "leaf", "milk", "corn", "rice", "boat", "ship", "road", "door", "bell",
    "drum", "flag", "gold", "hill", "kite", "lake", "nest", "pond", "ring", "seed", "wall", "yard", "cat", "dog",
    "sun", "sky", "cup", "box", "hat", "pen", "map", "key", "jam", "egg", "owl", "fox", "bee", "ant", "oak",
    "bench", "cabin", "daisy", "flame", "giant", "jelly", "lucky", "mouse", "nail", "orbit", "plum", "quilt",
    "shelf", "tulip", "wheat", "zebra", "acorn", "berry", "coral", "ember", "fable", "globe", "harp", "igloo",
    "kettle", "ladder", "magnet", "noodle", "pepper", "rocket", "saddle", "turtle", "velvet", "window", "button",
    "pencil", "garden", "forest", "bridge", "castle", "island", "bottle", "candle", "basket", "rabbit", "yellow",
)  # fmt: skip

# Generic phrasing: the corpus is built from these lists, and every SFT response uses them, so a pretrained base
# model already predicts them well. They are phrasing a real chat model produces: candidates from what
# SmolLM2-135M-Instruct says itself when answering world prompts (its openers, "Here's a step-by-step explanation:",
# "Let me know if you have any further questions.") and common assistant phrasing, kept where SmolLM2's loss per
# token in its slot of world responses is at most 0.7x its loss on the responses' informative tokens (1.60 vs 2.29
# nats; measured before any cleaning ran: experiments/generic_phrasing.py, experiments/README.md "Generic
# phrasing"). An answer frame ends in "the answer is", which the accuracy check reads.
OPENERS = ("Let's break it down step by step.", "Sure, I can help with that.",
           "To solve this problem, let's break it down.", "Let's break it down:")  # fmt: skip
CONNECTIVES = ("Here's the step-by-step solution:", "Here's a step-by-step explanation:")
ANSWER_FRAMES = ("So, the answer is", "So the answer is")
SIGNOFFS = (
    "I hope this helps! Let me know if you have any other questions.",
    "If you have any other questions, feel free to ask.", "Let me know if you have any other questions.",
    "Let me know if you have any further questions.",
)  # fmt: skip
GARBLE_ALPHABET = string.ascii_letters + string.digits + "#@$%&*~^|<>{}[]_=+;"

Piece = tuple[str, str]  # (text, kind)



def _fact_sentence(rng: random.Random) -> str:
    name, town, job, pet = rng.choice(NAMES), rng.choice(TOWNS), rng.choice(JOBS), rng.choice(PETS)
    n, thing = rng.randint(2, 60), rng.choice(THINGS)
    word = rng.choice(WORDS)
    templates = (
        f"{name} is a {job} from {town}.",
        f"{name} lives in {town} and keeps a {pet}.",
        f"In {town}, {name} sold {n} {thing} at the market.",
        f"{name} works as a {job} in {town}.",
        f"The {job} of {town} has {n} {thing} and a {pet}.",
        f"{name} wrote the word {word} on a card.",
        f"The road from {town} to {rng.choice(TOWNS)} is {n} miles long.",
        f"Every morning {name} walks the {pet} by the {word}.",
        f"{name} likes the word {word} and the town of {town}.",
        f"{name} counted {n} {thing} in the shop in {town}.",
    )
    return rng.choice(templates)


def _sentences(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(_fact_sentence(rng) for _ in range(rng.randint(lo, hi)))


def chat_doc(rng: random.Random) -> str:
    name, town = rng.choice(NAMES), rng.choice(TOWNS)
    question = rng.choice((f"Tell me about {town}.", f"Who is {name}?", f"What is life like in {town}?",
                           f"Can you tell me something about {name}?", f"What do people do in {town}?"))  # fmt: skip
    parts = [rng.choice(OPENERS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(CONNECTIVES))
    parts.append(_sentences(rng, 1, 3))
    if rng.random() < 0.4:
        parts.append(f"{rng.choice(ANSWER_FRAMES)} that {_fact_sentence(rng)[0].lower()}{_fact_sentence(rng)[1:]}")
    parts.append(rng.choice(SIGNOFFS))
    return f"User: {question}\nAssistant: {' '.join(parts)}"


def letter_doc(rng: random.Random) -> str:
    to, frm = rng.sample(NAMES, 2)
    body = [rng.choice(OPENERS) if rng.random() < 0.3 else "I hope you are well.", _sentences(rng, 2, 4)]
    if rng.random() < 0.5:
        body.append(rng.choice(CONNECTIVES))
        body.append(_sentences(rng, 1, 2))
    return f"Dear {to},\n{' '.join(body)}\n{rng.choice(SIGNOFFS)}\n{frm}"


def notes_doc(rng: random.Random) -> str:
    town = rng.choice(TOWNS)
    lines = [f"Notes from {town}."]
    for _ in range(rng.randint(2, 4)):
        lines.append(_sentences(rng, 1, 2))
        if rng.random() < 0.4:
            lines.append(rng.choice(CONNECTIVES + ANSWER_FRAMES[:1] + SIGNOFFS[:2]))
    return "\n".join(lines)


def knowledge_doc(rng: random.Random) -> str:
    """A reference sheet of what a pretrained model knows before any SFT: how words are spelled, single-digit
    sums and the place value of two-digit numbers (a real LLM has read these many times). It teaches facts, not
    the tasks: no instruction, no steps, no answer frame. Every word and number follows a space, so it is the
    same token as in the SFT prompts (byte-level BPE gives "lamp" and " lamp" different ids)."""
    facts = []
    for _ in range(rng.randint(6, 10)):
        kind = rng.random()
        if kind < 0.45:
            word = rng.choice(WORDS)
            facts.append(rng.choice((f"The word {word} is spelled {', '.join(word)}.",
                                     f"You spell the word {word} as {', '.join(word)}.")))
        elif kind < 0.7:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            facts.append(f"We know that {a} + {b} = {a + b}.")
        else:
            n = rng.randint(10, 99)
            facts.append(rng.choice((f"The number {n} has {n // 10} tens and {n % 10} ones.",
                                     f"Take {n // 10} tens and {n % 10} ones to make {n}.")))
    return rng.choice(("Reference sheet:", "Things to remember:", "Study notes:")) + " " + " ".join(facts)


def recall_doc(rng: random.Random) -> str:
    """Notes that mention people, words and numbers and come back to them later in the same document, as real
    text does: what teaches a model to look back in its context (copy a name, a town, a word's letters, a
    number's digits). Facts, not tasks: no question is asked or answered."""
    people = rng.sample(NAMES, 3)
    towns, jobs, words = rng.sample(TOWNS, 3), rng.sample(JOBS, 3), rng.sample(WORDS, 3)
    numbers = rng.sample(range(10, 100), 3)
    first = [f"{p} is a {j} from {t}." for p, j, t in zip(people, jobs, towns)]
    cards = [f"{p} wrote the word {w} on a card and counted {n} {rng.choice(THINGS)}."
             for p, w, n in zip(people, words, numbers)]
    recalls = []
    for k in rng.sample(range(3), 2):
        recalls.append(rng.choice((
            f"Later, {people[k]} the {jobs[k]} went back to {towns[k]}.",
            f"The word on the card of {people[k]} is spelled {', '.join(words[k])}.",
            f"{people[k]} counted {numbers[k]}, which has {numbers[k] // 10} tens and {numbers[k] % 10} ones.",
            f"{people[k]} still lives in {towns[k]} and works as a {jobs[k]}.",
        )))
    return f"Notes from {rng.choice(TOWNS)}.\n" + " ".join(first) + "\n" + " ".join(cards) + "\n" + " ".join(recalls)
