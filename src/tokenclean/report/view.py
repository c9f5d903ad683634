"""What a run directory shows: one method's tokens, losses and keep-mask, read from the artifacts the run wrote.

``load_run`` reads a ``tokenclean run`` directory or one method and seed of a ``tokenclean compare`` directory
into a ``RunView``: flat per-token arrays aligned with the pool's tokens, plus the run's JSON records. Nothing is
recomputed: the score is the one the selection ranked by, saved beside its keep-mask (``Selection.score``). ``report.page.write_report`` turns a view
into ``<run>/report/index.html`` with its plots (``report.html``, ``report.plots``); ``show`` (``report.show``)
prints one sample in the terminal.

>>> view = load_run("runs/cmp", method="fixed", seed=1)     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import Scores, Selection, check_same_tokens, keep_mask_for
from ..errors import MismatchError, TokencleanError
from ..io import read_json
from ..core.tokens import TokenTable, per_sample_sum
from ..runs.layout import BASE_SCORES, Layout, holds_a_run, methods_run, round_dirs, seeds_run
from ..runs.summary import MethodSummary

log = logging.getLogger("tokenclean")

DEFAULT_SAMPLES = 200


@dataclass
class RunView:
    """One method's run as the report shows it.

    Token arrays are flat over the pool, aligned with ``tokens.flat_input_ids()`` (total_tokens,); sample i is
    ``[offsets[i]:offsets[i+1]]``. Losses are in nats, NaN where not a response token or not scored.
    """

    root: Path                          # the directory given (run or compare directory)
    method_dir: Path                    # where the method's own stages live (root for a single run)
    layout: Layout                      # every path of the method's run (runs.layout)
    method: str
    seed: int | None                    # None for a single run
    base_model: str | None              # from config.yaml; its tokenizer decodes the tokens
    tokens: TokenTable                  # the pool: sample_id, input_ids, response_mask
    base_loss: np.ndarray | None        # (total_tokens,) float32
    ref_loss: np.ndarray | None         # (total_tokens,) float32
    keep_mask: np.ndarray | None        # (total_tokens,) bool; None: the method records no token selection
    score: np.ndarray | None = None     # (total_tokens,) the score the selection ranked by (its scorer's units; NaN
    #                                     not a candidate, -inf gated); None without a selection or a saved score
    selection: dict[str, Any] = field(default_factory=dict)  # selection.json (counts, threshold, config)
    summary: MethodSummary = field(default_factory=dict)  # type: ignore[assignment]  # summary.json ({} while it runs)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # self-evolving: round.json of each round
    sample_round: np.ndarray | None = None  # (n_samples,) self-evolving round that trained each sample
    comparison: dict[str, Any] | None = None  # comparison.json of a compare directory
    kinds: np.ndarray | None = None     # (total_tokens,) int8 ground-truth kinds (core.artifacts.KIND_CODES)
    conclusion: list[str] | None = None  # demo.json "conclusion": sentences (a string is one sentence)
    notes: list[str] = field(default_factory=list)  # what is missing and why, shown on the page

    # Flat arrays computed once on first use (after load_run has filled the view).
    @cached_property
    def offsets(self) -> np.ndarray:
        """(n_samples + 1,) int64."""
        return self.tokens.offsets

    @cached_property
    def sample_ids(self) -> list[str]:
        """(n_samples,)"""
        return self.tokens.sample_ids

    @cached_property
    def input_ids(self) -> np.ndarray:
        """(total_tokens,) int32."""
        return self.tokens.flat_input_ids()

    @cached_property
    def response_mask(self) -> np.ndarray:
        """(total_tokens,) bool."""
        return self.tokens.flat_response_mask()

    @property
    def threshold(self) -> float | None:
        """The lowest kept score, when the selection was made from base and reference losses (``select``), in the
        units of its scorer (``Scorer.units``); None otherwise: random (its random scores), self-evolving (one
        threshold per round)."""
        if "ref_model_fingerprint" not in self.selection:
            return None
        return self.selection.get("score_threshold")

    @property
    def scorer(self) -> str | None:
        """The scorer that made the selection (selection.json ``config.scorer``; ``excess`` for selections written
        before scorers existed); None when the selection was not made from base and reference losses."""
        if "ref_model_fingerprint" not in self.selection:
            return None
        return (self.selection.get("config") or {}).get("scorer", "excess")

    @property
    def score_health(self) -> dict[str, Any] | None:
        """summary.json ``score_health`` (``selection.health.ScoreHealth`` as a dict); None for runs written
        before it existed and for methods without a reference (full, random)."""
        health = self.summary.get("score_health")
        return health if isinstance(health, dict) else None

    def note(self, text: str) -> None:
        log.info("report: %s", text)
        self.notes.append(text)


def load_run(run_dir: str | os.PathLike, method: str | None = None, seed: int | None = None) -> RunView:
    """Read one method's run from a ``run`` directory, or method ``method`` (default ``fixed``) and seed ``seed``
    (default: the first) of a ``compare`` directory."""
    root = Path(run_dir)
    top = Layout(root)
    pool_dir = top.tokens()
    if not root.is_dir():
        raise TokencleanError(f"{root}: no such directory; expected a run directory of `tokenclean run` or "
                              "`tokenclean compare`")
    if not holds_a_run(top):
        raise TokencleanError(f"{root}: not a tokenclean run directory (no {pool_dir / TokenTable.FILE}); expected "
                              "the --out directory of `tokenclean run` or `tokenclean compare`")
    config = _read_yaml(top.config)
    comparison = read_json(top.comparison) if top.comparison.is_file() else None
    at, method, seed = _locate(top, method, seed, comparison, config)
    tokens = TokenTable.load(pool_dir)
    view = RunView(root=root, method_dir=at.path(at.ns), layout=at, method=method, seed=seed,
                   base_model=config.get("base"), tokens=tokens, base_loss=None, ref_loss=None, keep_mask=None,
                   comparison=comparison)
    view.summary = _json_or_empty(at.summary)
    view.base_loss = _losses(at.path(BASE_SCORES), tokens, pool_dir, view, "base losses")
    if round_dirs(at):
        _read_rounds(view, round_dirs(at))
    else:
        view.ref_loss = _losses(at.path(at.reference_scores), tokens, pool_dir, view, "reference losses")
    _read_selection(view, at.path(at.selection), pool_dir)
    view.kinds = _read_kinds(top.kinds, tokens)
    conclusion = _json_or_empty(top.demo).get("conclusion")
    view.conclusion = [conclusion] if isinstance(conclusion, str) else conclusion
    return view


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _json_or_empty(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _seeds(top: Layout, comparison: dict[str, Any] | None) -> list[int]:
    """Seeds of a compare directory, in the comparison's order (empty for a single run)."""
    found = set(seeds_run(top))
    ordered = [s for s in (comparison or {}).get("seeds", []) if s in found]
    return ordered + sorted(found - set(ordered))


def _locate(top: Layout, method: str | None, seed: int | None, comparison: dict[str, Any] | None,
            config: dict[str, Any]) -> tuple[Layout, str, int | None]:
    """(layout, method, seed) of the run to show."""
    root = top.root
    seeds = _seeds(top, comparison)
    if not seeds:  # a single run: its stages are at the top
        own = _json_or_empty(top.summary).get("method") or config.get("method") or "fixed"
        if method not in (None, own):
            raise TokencleanError(f"{root}: a single run of method {own!r}; --method {method} needs a compare "
                                  "directory")
        if seed is not None:
            raise TokencleanError(f"{root}: a single run; --seed needs a compare directory")
        return top, own, None
    if seed is None:
        seed = seeds[0]
    elif seed not in seeds:
        raise TokencleanError(f"{root}: no seed {seed}; seeds here: {', '.join(map(str, seeds))}")
    seed_dir = top.seed_dir(seed)
    from ..runs.methods import METHODS

    order = list((comparison or {}).get("methods", []))  # empty while the comparison runs
    ran = methods_run(top, seed, set(METHODS))
    present = [m for m in order if m in ran] + [m for m in ran if m not in order]
    if method is None:
        if not present:
            raise TokencleanError(f"{seed_dir}: no method has run here yet")
        method = "fixed" if "fixed" in present else present[0]
    elif method not in present:
        raise TokencleanError(f"{seed_dir}: no method {method!r}; methods here: {', '.join(present) or 'none'}")
    return Layout.variant_of(root, seed, method), method, seed


def _losses(directory: Path, tokens: TokenTable, pool_dir: Path, view: RunView, what: str) -> np.ndarray | None:
    """(total_tokens,) token losses of ``directory``, checked against the pool; None (with a note) when absent."""
    if not (directory / Scores.FILE).is_file():
        view.note(f"no {what} ({directory / Scores.FILE} not found)")
        return None
    scores = Scores.load(directory)
    _check_aligned(scores, str(directory), tokens, pool_dir)
    return scores.token_loss


def _check_aligned(artifact: Scores | Selection, name: str, tokens: TokenTable, pool_dir: Path) -> None:
    check_same_tokens(artifact.meta, name, tokens.meta, str(pool_dir))
    if artifact.sample_ids != tokens.sample_ids or not np.array_equal(artifact.offsets, tokens.offsets):
        raise MismatchError(f"{name} covers different samples than {pool_dir}")


def _read_selection(view: RunView, directory: Path, pool_dir: Path) -> None:
    """The keep-mask, the score it ranked by and selection.json of ``directory``, checked against the pool."""
    if not (directory / Selection.FILE).is_file():
        view.selection = view.summary.get("selection", {})
        view.note(f"method {view.method} records no token selection ({directory / Selection.FILE} not found): "
                  "tokens are shown without scores or kept/dropped marks")
        return
    selection = Selection.load(directory)
    view.keep_mask = keep_mask_for(view.tokens, selection, str(pool_dir))
    view.score, view.selection = selection.score, selection.meta
    if view.score is None:
        view.note(f"{directory} holds no score (written before selections saved the score they ranked by): tokens "
                  "are shown without scores; run the same command again to add it")


def _read_rounds(view: RunView, rounds: list[tuple[int, Path]]) -> None:
    """Self-evolving: each round's round.json, and its chunk's reference losses placed into the pool-wide
    ``ref_loss`` by sample id (round 0 trains on all response tokens of its chunk and has no score)."""
    offsets = view.offsets
    position = {sid: i for i, sid in enumerate(view.tokens.sample_ids)}
    view.ref_loss = np.full(len(view.response_mask), np.nan, np.float32)
    view.sample_round = np.zeros(len(view.tokens), np.int64)
    for t, d in rounds:
        record, scores_dir = view.layout.round_record(t), view.layout.path(view.layout.round_stage(t, "scores"))
        if record.is_file():
            view.rounds.append(read_json(record))
        if not (scores_dir / Scores.FILE).is_file():
            continue
        scores = Scores.load(scores_dir)
        chunk_meta = {k: v for k, v in scores.meta.items() if k != "tokens_fingerprint"}  # a chunk of the pool
        check_same_tokens(chunk_meta, str(scores_dir), view.tokens.meta, str(view.layout.tokens()))
        for j, sid in enumerate(scores.sample_ids):
            i = position.get(sid)
            lo, hi = scores.offsets[j], scores.offsets[j + 1]
            if i is None or offsets[i + 1] - offsets[i] != hi - lo:
                raise MismatchError(f"{scores_dir}: sample {sid!r} does not match the pool's tokens")
            view.ref_loss[offsets[i]:offsets[i + 1]] = scores.token_loss[lo:hi]
            view.sample_round[i] = t
    view.note("self-evolving: each round's score uses that round's model as the reference; round 0 is trained on "
              "all its response tokens and has no score")
    if not view.summary:
        view.note(f"{view.method_dir} has no summary.json yet: samples of rounds still to run are shown as round 0")


def _read_kinds(path: Path, tokens: TokenTable) -> np.ndarray | None:
    """(total_tokens,) int8 ground-truth token kinds aligned with the pool, or None when absent or not aligned."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if set(table.column_names) < {"sample_id", "kind"}:
        log.warning("report: %s has no sample_id/kind columns; token kinds not shown", path)
        return None
    ids = table.column("sample_id").to_pylist()
    if ids != tokens.sample_ids:
        if sorted(ids) != sorted(tokens.sample_ids):
            log.warning("report: %s covers other samples than the pool; token kinds not shown", path)
            return None
        position = {sid: i for i, sid in enumerate(ids)}
        table = table.take([position[sid] for sid in tokens.sample_ids])
    col = table.column("kind").combine_chunks()
    kinds = col.flatten().to_numpy(zero_copy_only=False).astype(np.int8)
    lengths = np.diff(col.offsets.to_numpy())
    if not np.array_equal(lengths, tokens.lengths):
        log.warning("report: %s is not aligned with the pool's tokens; token kinds not shown", path)
        return None
    return kinds


# -- per-sample numbers and token text ------------------------------------------------------------------------------
@dataclass
class SampleStats:
    """Per-sample counts, each (n_samples,). ``kept_share`` = kept / response tokens (NaN without a selection or
    response tokens); ``mean_score`` divides by the number of tokens with a finite score (gated tokens, -inf, are
    left out; NaN when none)."""

    length: np.ndarray
    response: np.ndarray
    kept: np.ndarray | None
    kept_share: np.ndarray
    mean_score: np.ndarray


def sample_stats(view: RunView) -> SampleStats:
    offsets = view.offsets
    response = per_sample_sum(view.response_mask, offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = None if view.keep_mask is None else per_sample_sum(view.keep_mask, offsets)
        share = np.full(len(response), np.nan) if kept is None else np.where(response > 0, kept / response, np.nan)
        score = view.score
        if score is None:
            mean = np.full(len(response), np.nan)
        else:
            scored = np.isfinite(score)
            mean = per_sample_sum(np.where(scored, score, 0.0), offsets) / per_sample_sum(scored, offsets)
    return SampleStats(np.diff(offsets), response, kept, share, mean)


def token_texts(tokenizer, ids: np.ndarray) -> list[str]:
    """The text of each token of one sample, (len(ids),), special tokens included.

    A character split over several byte-level tokens is given to the first of them whole (the others get "");
    each token alone would decode to U+FFFD.
    """
    unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    decoded = tokenizer.batch_decode([[int(i)] for i in unique], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    texts = [decoded[j] for j in inverse.ravel()]
    i = 0
    while i < len(texts):
        if "\ufffd" not in texts[i]:
            i += 1
            continue
        for end in range(i + 2, min(i + 4, len(texts)) + 1):  # a UTF-8 character has at most 4 bytes
            joint = tokenizer.decode([int(t) for t in ids[i:end]], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
            if "\ufffd" not in joint:
                texts[i:end] = [joint] + [""] * (end - i - 1)
                i = end - 1
                break
        i += 1
    return texts


def find_sample(view: RunView, key: str | int) -> int:
    """The pool index of sample ``key``: a sample id, else an index (negative counts from the end)."""
    ids = view.sample_ids
    if str(key) in ids:
        return ids.index(str(key))
    try:
        index = int(key)
    except ValueError:
        index = None
    if index is None or not -len(ids) <= index < len(ids):
        raise TokencleanError(f"{view.root}: no sample {key!r}; give a sample id or an index in 0..{len(ids) - 1}")
    return index % len(ids)


def load_view_tokenizer(view: RunView, tokenizer: str | os.PathLike | None = None):
    """The tokenizer that decodes the run's tokens: ``tokenizer`` or the run's base model (config.yaml ``base``)."""
    from ..compute.modeling import load_tokenizer

    source = tokenizer or view.base_model
    if source is None:
        raise TokencleanError(f"{view.layout.config}: no 'base' setting to take the tokenizer from; pass "
                              "--tokenizer")
    return load_tokenizer(source)
