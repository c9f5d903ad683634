"""What the demo measures beyond held-out loss: token kinds, selection precision/recall, greedy-answer accuracy.

- **Token kinds.** The generated world marks every character of a response as informative, generic or noise
  (``world.make_sft``). ``kind_codes`` maps that onto the tokens of a ``TokenTable``: each response token takes the
  kind covering most of its characters (``world.token_kinds``); the end-of-turn token, which has no characters of
  the content, counts as generic. Codes: ``KIND_CODES``; ``NOT_RESPONSE`` (-1) for prompt tokens.
- **Selection quality.** ``selection_quality`` compares a keep-mask with the kinds: the share of informative
  tokens kept (recall), of generic and noise tokens dropped, and of kept tokens that are informative (precision).
  Noise is split into garbled spans and wrong answers, the two corruptions the world injects.
- **Accuracy.** ``generate`` answers held-out prompts greedily with a model; ``accuracy`` checks each answer with
  the world's checker, or with GSM8K's final-number match on real GSM8K-style data.
- **Learned noise.** The same greedy answers to the prompts of the pool's wrong-answer rows: how often the final
  model repeats the wrong answer it was shown (``wrong_answer_reproduced``).
- **Known and new tokens.** The held-out informative-token loss split by whether the base model already predicted
  the token (base loss below ``KNOWN_LOSS``): cleaning leaves the tokens the base knows out of training, so this
  shows what that costs on them and what it buys on the rest.
- **Score health.** The ``selection.health`` verdict of each run's scores (1 = healthy) and how far the reference
  moved (mean |score| / mean base loss), so the demo shows when a selection is close to noise.

``DemoMetrics`` is ``compare``'s ``extra_metrics``: it computes all of these for each method and seed.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..core.artifacts import KIND_CODES, NOT_RESPONSE, Scores, Selection
from ..core.data import DataConfig, load_conversations, read_rows
from ..core.tokens import TokenTable, list_column, render_segments, write_parquet
from ..errors import DataError
from .generate import answer_done, generate
from ..io import atomic_write_text
from ..runs.layout import ACCURACY_BASE, HELDOUT_BASE, Layout

if TYPE_CHECKING:
    from ..runs.compare import Column
    from ..runs.stages import Run
    from ..runs.summary import MethodSummary

log = logging.getLogger("tokenclean")

KNOWN_LOSS = 0.5  # nats: a held-out token the base model already predicts (p > 0.61) when its base loss is below


def kind_codes(tokens: TokenTable, source: str | Path, tokenizer, data_config: DataConfig | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth kind of every token of ``tokens`` (made from the world file ``source``).

    Returns ``(codes, garbled)``: ``codes`` (total_tokens,) int8 (``KIND_CODES``, ``NOT_RESPONSE`` for non-response
    tokens) and ``garbled`` (total_tokens,) bool, True at noise tokens of a sample whose corruption is a garbled
    span (the other noise tokens are wrong answers).
    """
    from .world import token_kinds

    by_id = {c.sample_id: (c, row) for c, row in _with_rows(source, data_config)}
    ids, mask, offsets = tokens.flat_input_ids(), tokens.flat_response_mask(), tokens.offsets
    codes = np.full(len(ids), NOT_RESPONSE, np.int8)
    garbled = np.zeros(len(ids), bool)
    for i, sample_id in enumerate(tokens.sample_ids):
        conversation, row = by_id[sample_id]
        if "kinds" not in row:
            raise DataError(f"{source}: row {conversation.row} has no 'kinds' spans (not a world file)")
        content = conversation.messages[-1]["content"]
        segment = next(text for text, is_response in render_segments(
            conversation.messages, tokenizer, tokens.meta["template"]) if is_response)
        shift = segment.find(content)
        enc = tokenizer(segment, add_special_tokens=False, return_offsets_mapping=True)
        lo, hi = offsets[i], offsets[i + 1]
        where = lo + np.flatnonzero(mask[lo:hi])
        if shift < 0 or enc["input_ids"][: len(where)] != ids[where].tolist():
            raise DataError(f"{source}: row {conversation.row}: the response tokens do not match the "
                            "tokenized response; were the tokens made from this file with this tokenizer?")
        spans = [(s - shift, e - shift) for s, e in enc["offset_mapping"][: len(where)]]
        kinds = token_kinds(row["kinds"], spans)
        codes[where] = [KIND_CODES[k or "generic"] for k in kinds]
        if row.get("corruption") == "garble":
            garbled[where] = codes[where] == KIND_CODES["noise"]
    return codes, garbled


def _with_rows(source: str | Path, data_config: DataConfig | None) -> list[tuple[Any, dict[str, Any]]]:
    """Each usable conversation of ``source`` with its raw row (which keeps fields the conversation drops: kinds,
    task, answer)."""
    conversations, _ = load_conversations(source, data_config or DataConfig())
    rows = read_rows(source)
    return [(c, rows[c.row]) for c in conversations]


def save_kinds(tokens: TokenTable, codes: np.ndarray, path: str | Path) -> None:
    """Write ``codes`` as Parquet: ``sample_id`` and ``kind`` (list<int8> aligned with ``input_ids``)."""
    write_parquet(pa.table({"sample_id": pa.array(tokens.sample_ids, pa.string()),
                            "kind": list_column(codes.astype(np.int8), tokens.offsets)}), path)


def selection_quality(keep: np.ndarray, codes: np.ndarray, garbled: np.ndarray) -> dict[str, float]:
    """How a keep-mask ((total_tokens,) bool) treats each kind of response token. Shares in [0, 1]; a share
    whose denominator is empty (no garbled token in the pool...) is left out.

    ``informative_kept`` = kept informative / informative (recall); ``precision`` = kept informative / kept;
    ``generic_dropped``, ``garbled_dropped``, ``wrong_answer_dropped`` = dropped / all of that kind.
    """
    noise = codes == KIND_CODES["noise"]
    groups = {"informative_kept": (codes == KIND_CODES["informative"], True),
              "generic_dropped": (codes == KIND_CODES["generic"], False),
              "garbled_dropped": (noise & garbled, False),
              "wrong_answer_dropped": (noise & ~garbled, False)}
    result = {}
    for name, (members, kept) in groups.items():
        n = int(members.sum())
        if n:
            hits = int((keep[members] if kept else ~keep[members]).sum())
            result[name] = hits / n
    response_kept = keep & (codes != NOT_RESPONSE)
    if response_kept.any():
        result["precision"] = float((codes[response_kept] == KIND_CODES["informative"]).mean())
    return result


def kind_mean(values: np.ndarray, codes: np.ndarray, kind: str) -> float:
    """Mean of ``values`` ((total_tokens,), e.g. token losses) over the tokens of ``kind``: sum / their count."""
    return float(values[codes == KIND_CODES[kind]].mean())


# --- greedy answers ------------------------------------------------------------------------------------------

Checker = Callable[[dict[str, Any], str], bool]  # (eval row, generated text) -> correct


def answer_checker(rows: Sequence[dict[str, Any]]) -> Checker | None:
    """How to grade answers to ``rows``: the world's checker for world rows (``task`` + ``answer``), GSM8K's
    final-number match for rows whose ``answer`` ends ``#### N``; ``None`` when neither applies."""
    from ..evaluation.gsm8k import extract_answer, reference_answer, same_number
    from .world import answer_correct

    if rows and all("task" in r and "answer" in r for r in rows):
        return lambda row, text: answer_correct(row["task"], text, row["answer"])
    if rows and all(reference_answer(str(r.get("answer", ""))) is not None for r in rows):
        return lambda row, text: same_number(extract_answer(text), reference_answer(row["answer"]))
    return None


def conversation_prompt_ids(messages: list[dict[str, str]], tokenizer, template: str = "auto") -> list[int]:
    """Token ids of everything before the first response of ``messages``, tokenized segment by segment exactly as
    ``tokens.tokenize`` does, so a model sees the same ids it was trained on."""
    ids: list[int] = []
    for text, is_response in render_segments(messages, tokenizer, template):
        if is_response:
            break
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def prompt_ids(source: str | Path, tokenizer, template: str, data_config: DataConfig | None = None
               ) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """Rows of ``source`` and the token ids of each one's prompt (``conversation_prompt_ids``)."""
    pairs = _with_rows(source, data_config)
    return [row for _, row in pairs], [conversation_prompt_ids(c.messages, tokenizer, template) for c, _ in pairs]


def wrong_answers(rows: Sequence[dict[str, Any]]) -> list[str | None]:
    """The injected wrong answer of each world row (the text of its noise span), None for rows without one."""
    out: list[str | None] = []
    for row in rows:
        content = row["messages"][-1]["content"] if "messages" in row else ""
        spans = [content[s:e].strip() for s, e, kind in row.get("kinds", []) if kind == "noise"]
        out.append(spans[0] if row.get("corruption") == "wrong_answer" and spans else None)
    return out


# --- the demo's measurements of one method and seed ----------------------------------------------------------

# The demo's own columns; compare's wall time and token counts stay in comparison.md/json.
DEMO_COLUMNS: list[Column] = [
    ("informative_loss", "informative-token loss", "{:.3f}"),
    ("heldout_loss", "held-out loss", "{:.3f}"),
    ("accuracy", "accuracy", "{:.1%}"),
    ("wrong_answer_reproduced", "wrong answers repeated", "{:.1%}"),
    ("informative_kept", "informative kept", "{:.1%}"),
    ("generic_dropped", "generic dropped", "{:.1%}"),
    ("garbled_dropped", "garbled dropped", "{:.1%}"),
    ("wrong_answer_dropped", "wrong answers dropped", "{:.1%}"),
    ("precision", "kept that are informative", "{:.1%}"),
    ("reference_move", "reference moved", "{:.1%}"),
]


@dataclass
class DemoInputs:
    train: Path
    eval: Path
    corpus: list[Path]
    tokenizer: Path | None
    world: bool  # ground-truth token kinds available
    warmup: Path | None = None  # the clean warm-up set (world), else None: a share of the pool


class DemoMetrics:
    """``compare``'s ``extra_metrics`` for the demo: called with each method's run and summary."""

    def __init__(self, root: Run, tables: dict, inputs: DemoInputs, max_new_tokens: int, progress: bool = False):
        self.pool, self.eval, self.world = tables["pool"], tables["eval"], inputs.world
        tokenizer, template = root.tokenizer, self.pool.meta["template"]
        if self.world:
            self.codes, self.garbled = kind_codes(self.pool, inputs.train, tokenizer, root.cfg.data)
            self.eval_codes, _ = kind_codes(self.eval, inputs.eval, tokenizer, root.cfg.data)
            save_kinds(self.pool, self.codes, root.layout.kinds)
        self.rows, self.prompts = prompt_ids(inputs.eval, tokenizer, template, root.cfg.data)
        self.checker = answer_checker(self.rows)
        # the pool's wrong-answer rows, asked again: does the final model repeat the wrong answer it was shown?
        self.noisy, self.noisy_prompts = [], []
        if self.world:
            pool_rows, pool_prompts = prompt_ids(inputs.train, tokenizer, template, root.cfg.data)
            for row, prompt, wrong in zip(pool_rows, pool_prompts, wrong_answers(pool_rows)):
                if wrong is not None:
                    self.noisy.append({**row, "answer": wrong})
                    self.noisy_prompts.append(prompt)
        self.max_new_tokens, self.progress = max_new_tokens, progress
        self.root = root
        # (method, seed) -> measure -> (prompts,) per-prompt (sum, count), for the intervals; ("base", None) too
        self.per_prompt: dict[tuple[str, int | None], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self._base_known: np.ndarray | None = None

    def informative_loss(self, heldout: Scores) -> float:
        return kind_mean(heldout.token_loss, self.eval_codes, "informative")

    def known_split(self, heldout: Scores) -> dict[str, float]:
        """Held-out loss on the informative tokens the base model already predicted (``informative_loss_known``:
        base loss < ``KNOWN_LOSS``) and on the rest (``informative_loss_new``), each a mean over its tokens; and
        ``known_share``, the share of informative tokens that are known. A group with no token is left out."""
        if self._base_known is None:
            self._base_known = Scores.load(self.root.path(HELDOUT_BASE)).token_loss < KNOWN_LOSS
        informative = self.eval_codes == KIND_CODES["informative"]
        out = {"known_share": float(self._base_known[informative].mean())}
        for name, members in (("known", informative & self._base_known), ("new", informative & ~self._base_known)):
            if members.any():
                out[f"informative_loss_{name}"] = float(heldout.token_loss[members].mean())
        return out

    def __call__(self, run: Run, summary: MethodSummary) -> dict[str, float]:
        model_stage = summary["model_stage"]
        plain = run.dir == self.root.dir  # a row of the comparison itself, not of an ablation directory
        metrics: dict[str, float] = {}
        per_prompt: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.world:
            heldout = Scores.load(run.path(Layout.next_to(model_stage, "heldout")))
            metrics["informative_loss"] = self.informative_loss(heldout)
            metrics.update({k: v for k, v in self.known_split(heldout).items() if k != "known_share"})
            per_prompt["informative_loss"] = per_prompt_loss(heldout, self.eval_codes, self.eval.offsets)
            selection = saved_selection(run)
            keep = selection.keep_mask if selection else self._full_mask(summary["method"])
            if keep is not None:
                metrics.update(selection_quality(keep, self.codes, self.garbled))
            if summary["method"] in ("fixed", "rho") and selection and selection.score is not None:
                # why a kind is kept or dropped: its mean score as the selection ranked it (Selection.score: base
                # loss - reference loss in nats under the default scorer; gated tokens left out)
                metrics.update({f"score_{k}": v for k, v in kind_means(selection.score, self.codes,
                                                                      self.garbled).items()})
        health = summary.get("selection", {}).get("score_health") or summary.get("score_health")
        if health and health.get("verdict") != "no scores":
            metrics["reference_move"] = health["relative_move"]
            metrics["healthy"] = float(health["verdict"] == "healthy")
        if self.checker is not None:
            stage = Layout.next_to(model_stage, "accuracy")
            answers = self._answers(run, run.key(model_stage), summary["model_dir"], stage)
            metrics["accuracy"] = answers["accuracy"]
            if "wrong_answer_reproduced" in answers:
                metrics["wrong_answer_reproduced"] = answers["wrong_answer_reproduced"]
            correct = correct_answers(run.path(stage))
            per_prompt["accuracy"] = (correct, np.ones_like(correct))
        if plain:
            self.per_prompt[summary["method"], summary["seed"]] = per_prompt
        return metrics

    # -- the base model before fine-tuning, and what the demo shows beside the table ------------------------------
    def base_row(self) -> dict[str, float]:
        """The base model's measures before any fine-tuning (the table's first row): held-out losses and the
        accuracy of its own greedy answers (a stage of the run's root)."""
        base = Scores.load(self.root.path(HELDOUT_BASE))
        row: dict[str, float] = {"heldout_loss": float(base.meta["mean_token_loss"])}
        per_prompt = self.per_prompt.setdefault(("base", None), {})
        if self.world:
            row["informative_loss"] = self.informative_loss(base)
            per_prompt["informative_loss"] = per_prompt_loss(base, self.eval_codes, self.eval.offsets)
        if self.checker is not None:
            answers = self._answers(self.root, self.root.base_fingerprint, self.root.cfg.run.base, ACCURACY_BASE)
            row["accuracy"] = answers["accuracy"]
            if "wrong_answer_reproduced" in answers:
                row["wrong_answer_reproduced"] = answers["wrong_answer_reproduced"]
            correct = correct_answers(self.root.path(ACCURACY_BASE))
            per_prompt["accuracy"] = (correct, np.ones_like(correct))
        return row

    def _full_mask(self, method: str) -> np.ndarray | None:
        """What a method without a saved selection trained on: every response token for full; None for slm, whose
        selection changes at every step."""
        return self.pool.flat_response_mask() if method == "full" else None

    def _answers(self, run: Run, model_key: str, model_dir: str | Path, stage: str) -> dict[str, Any]:
        """Greedy answers to the held-out prompts (graded) and to the pool's wrong-answer prompts (did the model
        repeat the wrong answer?) by the model ``model_dir`` (``model_key``: its stage key or fingerprint): a stage,
        so a re-run does not generate again. Writes ``generations.jsonl`` (one row per held-out prompt: id,
        generated text, correct). Generation stops at the end of the answer sentence (``answer_done``)."""
        inputs = {"model": model_key, "eval": self.eval.meta["tokens_fingerprint"],
                  "max_new_tokens": self.max_new_tokens, "wrong_answer_prompts": len(self.noisy_prompts),
                  "stop": "answer sentence"}

        def build(tmp: Path) -> dict[str, Any]:
            texts = generate(model_dir, self.prompts + self.noisy_prompts, self.max_new_tokens,
                             run.cfg.run.device, stop=answer_done, progress=self.progress, desc="answers")
            return graded_answers(texts, self.rows, self.noisy, self.checker, tmp / "generations.jsonl")

        return run.stage(stage, inputs, build)


def graded_answers(texts: Sequence[str], rows: Sequence[dict[str, Any]], noisy: Sequence[dict[str, Any]],
                   checker: Checker, path: Path) -> dict[str, Any]:
    """Grade greedy answers: ``texts`` answers ``rows`` (held-out prompts), then ``noisy`` (the pool's wrong-answer
    prompts, each with its wrong answer: was it repeated?). Writes ``path`` (one line per held-out prompt: id,
    generated text, correct); returns accuracy, n, per-task accuracy and ``wrong_answer_reproduced``."""
    held, repeated_texts = texts[:len(rows)], texts[len(rows):]
    correct = [bool(checker(row, text)) for row, text in zip(rows, held)]
    by_task: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, correct):
        by_task[str(row.get("task", "all"))].append(ok)
    atomic_write_text(path, "".join(json.dumps({"id": row.get("id"), "generated": text, "correct": ok}) + "\n"
                                    for row, text, ok in zip(rows, held, correct)))
    result = {"accuracy": float(np.mean(correct)), "n": len(correct),
              "per_task": {task: float(np.mean(v)) for task, v in sorted(by_task.items())}}
    if repeated_texts:
        repeated = [bool(checker(row, text)) for row, text in zip(noisy, repeated_texts)]
        result.update(wrong_answer_reproduced=float(np.mean(repeated)), wrong_answer_prompts=len(repeated_texts))
    return result


def correct_answers(stage_dir: Path) -> np.ndarray:
    """(prompts,) 1.0 where the greedy answer to a held-out prompt was right (``generations.jsonl``)."""
    lines = (stage_dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    return np.array([float(json.loads(line)["correct"]) for line in lines])


def per_prompt_loss(heldout: Scores, eval_codes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prompts,) summed loss and count of each held-out prompt's informative tokens."""
    informative = eval_codes == KIND_CODES["informative"]
    loss = np.where(informative, np.nan_to_num(heldout.token_loss), 0.0)
    starts = offsets[:-1]
    return np.add.reduceat(loss, starts), np.add.reduceat(informative.astype(float), starts)


# --- the pool's token kinds: the base's loss, the warm-up score ------------------------------------------------
def kind_groups(codes: np.ndarray, garbled: np.ndarray) -> dict[str, np.ndarray]:
    """(total_tokens,) bool masks of the pool's token kinds, noise split into its two corruptions."""
    noise = codes == KIND_CODES["noise"]
    return {"informative": codes == KIND_CODES["informative"], "generic": codes == KIND_CODES["generic"],
            "garbled": noise & garbled, "wrong_answer": noise & ~garbled}


def kind_means(values: np.ndarray, codes: np.ndarray, garbled: np.ndarray) -> dict[str, float]:
    """Mean of ``values`` ((total_tokens,): token losses, scores) over each kind of pool token (``kind_groups``),
    leaving out non-finite entries (prompt tokens, gated scores); the mean divides by the finite entries of the
    kind. A kind without one is left out. The base model's losses by kind before fine-tuning are the paper's
    premise: generic phrasing is what the base already predicts (the lowest)."""
    finite = np.isfinite(values)
    return {name: float(values[members & finite].mean())
            for name, members in kind_groups(codes, garbled).items() if (members & finite).any()}


def saved_selection(run: Run) -> Selection | None:
    """The selection the run's method saved (keep-mask and score), or None (full, slm)."""
    path = run.path(run.layout.selection)
    return Selection.load(path) if (path / Selection.FILE).is_file() else None


# --- what the demo shows beside the table ----------------------------------------------------------------------
def prompt_intervals(per_prompt: dict[tuple[str, int | None], dict[str, tuple[np.ndarray, np.ndarray]]],
                     methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """95% bootstrap intervals over held-out prompts (``demo.intervals``) from ``DemoMetrics.per_prompt``, per
    measure: ``rows`` (each method's value and interval, and the base's) and ``paired`` (fixed minus full and fixed
    minus random: difference, interval, share of resamples below 0). Several seeds: a prompt's sums add up over the
    seeds first."""
    from .intervals import paired_interval, ratio_interval

    def summed(method: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        parts = [per_prompt[method, s][key] for s in (seeds if method != "base" else [None])
                 if key in per_prompt.get((method, s), {})]
        return (sum(p[0] for p in parts), sum(p[1] for p in parts)) if parts else None

    out: dict[str, Any] = {"rows": {}, "paired": {}}
    for key in ("informative_loss", "accuracy"):
        for method in ("base", *methods):
            sums = summed(method, key)
            if sums is not None:
                out["rows"].setdefault(method, {})[key] = ratio_interval(*sums)
        fixed = summed("fixed", key)
        for other in ("full", "random"):
            against = summed(other, key) if other in methods else None
            if fixed is not None and against is not None:
                out["paired"].setdefault(f"fixed-{other}", {})[key] = paired_interval(fixed, against)
    return out


def sample_rows(root: Run, measure: DemoMetrics, methods: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """A few pool rows as the final selection saw them, for the terminal: the first clean row with a generic
    opener, the first with a garbled span and the first with a wrong answer; each token as [text, kind, kept]
    (kept: under fixed's selection at ``seed``, or None without one)."""
    from ..report.view import token_texts

    pool, codes, garbled = measure.pool, measure.codes, measure.garbled
    method = "fixed" if "fixed" in methods else None
    keep = None
    if method is not None:
        selection = root.path(Layout.variant_of(root.dir, seed, method).selection)
        keep = Selection.load(selection).keep_mask if (selection / Selection.FILE).is_file() else None
    starts, mask, ids = pool.offsets, pool.flat_response_mask(), pool.flat_input_ids()
    chosen: list[int] = []
    for wanted in ("opener", "garble", "wrong_answer"):
        for i in range(len(pool)):
            lo, hi = starts[i], starts[i + 1]
            row_codes = codes[lo:hi]
            kind = ("garble" if garbled[lo:hi].any() else "wrong_answer"
                    if (row_codes == KIND_CODES["noise"]).any() else "opener"
                    if row_codes[mask[lo:hi]][:1].tolist() == [KIND_CODES["generic"]] else None)
            if kind == wanted and i not in chosen:
                chosen.append(i)
                break
    names = {code: name for name, code in KIND_CODES.items()}
    out = []
    for i in chosen:
        lo, hi = starts[i], starts[i + 1]
        texts = token_texts(root.tokenizer, ids[lo:hi])
        tokens = [[text, names.get(int(code), "prompt"), None if keep is None else bool(keep[lo + j])]
                  for j, (text, code) in enumerate(zip(texts, codes[lo:hi])) if mask[lo + j]]
        out.append({"sample_id": pool.sample_ids[i], "selection": method, "tokens": tokens})
    return out
