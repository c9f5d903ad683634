"""GSM8K rows with noise of known kinds, for study A (see experiments/README.md).

A seeded generator corrupts some responses of real GSM8K rows and labels every character of every response:
- ``informative``: the original solution text;
- ``generic``: filler a chat model already produces ("Sure! Let me solve this step by step.", "I hope this
  helps!"), added before or after the solution of some rows;
- ``noise``: a wrong final answer (with the intermediate result that produced it changed to match) or a garbled
  span of random characters between two lines.

Rows keep GSM8K's fields (``question``, ``answer``) and gain ``kinds`` (``[start_char, end_char, kind]`` spans
that tile ``answer`` exactly, the demo world's format, so ``tokenclean.demo_metrics.kind_codes`` maps them onto
tokens) and ``corruption`` (``"wrong_answer"``, ``"garble"`` or ``None``). Nothing here trains or loads a model.

    python experiments/noisy_gsm8k.py --out /tmp/noisy --pool 200 --warmup 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

GSM8K_TRAIN = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sft" / "gsm8k_train.jsonl"

OPENERS = ("Sure! Let me solve this step by step.", "Let's break this down step by step.",
           "Great question! Let's work through it together.", "To solve this problem, let's go step by step.",
           "Of course! Here is the solution.")
CLOSERS = ("I hope this helps!", "Let me know if you have any other questions.", "Hope this helps!",
           "I hope this explanation is clear.")
GARBLE_ALPHABET = "abcdefghijklmnopqrstuvwxyzQXZJK0123456789#@%&*~^"
FINAL = re.compile(r"#### *(-?[\d,]*\.?\d+)\s*$")


@dataclass
class NoiseConfig:
    """How the pool is corrupted. Rates are shares of rows (exact counts: round(rate x rows))."""

    noise_rate: float = 0.3  # rows with one corruption (a wrong answer or a garbled span)
    garble_share: float = 0.5  # of the corrupted rows, the share garbled (the rest get a wrong answer)
    filler_rate: float = 0.5  # rows with a generic opener and/or closer
    garble_chars: tuple[int, int] = (12, 32)


Edit = tuple[int, int, str, str]  # (start, end, replacement, kind) over the original text


def _apply(text: str, edits: list[Edit]) -> tuple[str, list[list]]:
    """``text`` with non-overlapping ``edits`` applied; the untouched parts are informative. Returns the new text
    and ``kinds`` spans that tile it exactly (adjacent spans of one kind merged)."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for start, end, replacement, kind in sorted(edits, key=lambda e: (e[0], e[1])):
        assert start >= pos, "edits overlap"
        pieces += [(text[pos:start], "informative"), (replacement, kind)]
        pos = end
    pieces.append((text[pos:], "informative"))
    kinds: list[list] = []
    out, at = [], 0
    for piece, kind in pieces:
        if not piece:
            continue
        if kinds and kinds[-1][2] == kind:
            kinds[-1][1] += len(piece)
        else:
            kinds.append([at, at + len(piece), kind])
        out.append(piece)
        at += len(piece)
    return "".join(out), kinds


def _wrong_number(value: str, rng: random.Random) -> str:
    """A plausible wrong value for the number ``value`` (as written, commas allowed): never equal to it."""
    number = float(value.replace(",", ""))
    delta = max(1, round(abs(number) * rng.uniform(0.1, 0.5)))
    wrong = number + rng.choice((-1, 1)) * delta
    return str(int(wrong)) if "." not in value else f"{wrong:.2f}"


def _wrong_answer_edits(answer: str, rng: random.Random) -> list[Edit] | None:
    """Change the final answer and the last calculator result equal to it (``<<a+b=N>>N``), consistently."""
    final = FINAL.search(answer)
    if final is None:
        return None
    value = final.group(1)
    wrong = _wrong_number(value, rng)
    edits: list[Edit] = [(final.start(1), final.end(1), wrong, "noise")]
    step = None
    for step in re.finditer(r"=(-?[\d,]*\.?\d+)>>(-?[\d,]*\.?\d+)", answer[:final.start()]):
        pass
    if step is not None and step.group(2).replace(",", "") == value.replace(",", ""):
        edits += [(step.start(1), step.end(1), wrong, "noise"), (step.start(2), step.end(2), wrong, "noise")]
    return edits


def _garble_edit(answer: str, rng: random.Random, chars: tuple[int, int]) -> Edit:
    """A span of random characters inserted at the start of a line (never before the first line)."""
    starts = [m.end() for m in re.finditer(r"\n", answer)] or [len(answer)]
    at = rng.choice(starts)
    garble = "".join(rng.choice(GARBLE_ALPHABET) for _ in range(rng.randint(*chars)))
    return (at, at, garble + "\n", "noise")


def corrupt_rows(rows: list[dict], cfg: NoiseConfig, seed: int) -> list[dict]:
    """Copies of GSM8K ``rows`` with fillers and corruptions injected (seeded), each with ``kinds`` and
    ``corruption``. With all rates 0 the rows are returned clean, labelled entirely informative."""
    rng = random.Random(f"noise-{seed}")
    n = len(rows)
    noisy = set(rng.sample(range(n), round(cfg.noise_rate * n)))
    filled = set(rng.sample(range(n), round(cfg.filler_rate * n)))
    out = []
    for i, row in enumerate(rows):
        answer, edits, corruption = row["answer"], [], None
        if i in noisy:
            corruption = "garble" if rng.random() < cfg.garble_share else "wrong_answer"
            found = _wrong_answer_edits(answer, rng) if corruption == "wrong_answer" else None
            if found is None:
                corruption = "garble"
                found = [_garble_edit(answer, rng, cfg.garble_chars)]
            edits += found
        if i in filled:
            where = rng.choice(("open", "close", "both"))
            if where in ("open", "both"):
                edits.append((0, 0, rng.choice(OPENERS) + "\n", "generic"))
            if where in ("close", "both"):
                edits.append((len(answer), len(answer), "\n" + rng.choice(CLOSERS), "generic"))
        content, kinds = _apply(answer, edits)
        out.append({**row, "answer": content, "kinds": kinds, "corruption": corruption})
    return out


def split_gsm8k(source: Path, n_pool: int, n_warmup: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint seeded samples of GSM8K training rows: (pool, warm-up)."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if n_pool + n_warmup > len(rows):
        raise SystemExit(f"{source}: {len(rows)} rows, asked for {n_pool} + {n_warmup}")
    order = random.Random(f"split-{seed}").sample(range(len(rows)), n_pool + n_warmup)
    for i, row in enumerate(rows):
        row.setdefault("id", f"gsm8k-train-{i:05d}")
    return [rows[i] for i in order[:n_pool]], [rows[i] for i in order[n_pool:]]


def write_study_data(out: Path, n_pool: int, n_warmup: int, seed: int, cfg: NoiseConfig | None = None,
                     source: Path = GSM8K_TRAIN) -> dict[str, Path]:
    """``pool.jsonl`` (noisy), ``warmup_clean.jsonl`` (disjoint, clean) and ``warmup_noisy.jsonl`` (the same
    warm-up rows corrupted like the pool: the ablation), plus ``noise.json`` (the settings)."""
    cfg = cfg or NoiseConfig()
    pool, warmup = split_gsm8k(source, n_pool, n_warmup, seed)
    clean = corrupt_rows(warmup, NoiseConfig(noise_rate=0.0, filler_rate=0.0), seed)
    files = {"pool": corrupt_rows(pool, cfg, seed), "warmup_clean": clean,
             "warmup_noisy": corrupt_rows(warmup, cfg, seed + 1000)}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in files.items():
        paths[name] = out / f"{name}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        if not paths[name].is_file() or paths[name].read_text(encoding="utf-8") != text:
            paths[name].write_text(text, encoding="utf-8")
    (out / "noise.json").write_text(json.dumps({**asdict(cfg), "seed": seed, "pool": n_pool,
                                                "warmup": n_warmup}, indent=1))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pool", type=int, default=200)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name, path in write_study_data(args.out, args.pool, args.warmup, args.seed).items():
        print(name, path)


if __name__ == "__main__":
    main()
