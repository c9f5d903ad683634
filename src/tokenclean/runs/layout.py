"""Every path of a run directory, in one place: the stages, the run's records and what a report reads.

A stage's name is its path under the run directory. Stages that depend only on the data and the base model
(``tokens``, ``scores/base``) live at the top; those that depend on the seed under ``seed-<s>/`` and those of one
method under ``seed-<s>/<method>/``. A single ``tokenclean run`` uses no sub-directories: its layout is the
``variant`` with empty namespaces, so ``selection`` is ``<run>/selection`` there and
``<run>/seed-1/fixed/selection`` in a ``compare`` directory::

    <run>/config.yaml  tokens/{pool,warmup,eval}/  scores/base/  heldout-base/  comparison.{json,md}
    <run>/[seed-<s>/]reference/  [seed-<s>/]scores/reference/
    <run>/[seed-<s>/<method>/]{selection,model,heldout,export,benchmarks,accuracy}/  summary.json
    <run>/[seed-<s>/<method>/]rounds/<t>/{model,scores,selection,heldout}/  round.json   (self-evolving)
    <run>/checkpoints/<stage>/   (a stage's finished units while it runs)
    <run>/.tokenclean.lock       (held by the process working in the run directory)
    <run>/ablations/<name>/      (a compare row run with other run settings: a compare directory of its own)

``<method>`` is a method's name, or ``<method>[<scorer>]`` for a ``compare --scorers`` row (``variant_name``).

This file is the format of a run directory: runs written before keep resuming only while these names stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.artifacts import ADAPTER_DIR
from ..core.tokens import TokenTable

TOKENS = "tokens"
BASE_SCORES = "scores/base"
HELDOUT_BASE = "heldout-base"  # the base model's held-out loss (compare)
ACCURACY_BASE = "accuracy-base"  # the base model's greedy answers to the held-out prompts (the demo)
CONFIG = "config.yaml"
SUMMARY = "summary.json"
COMPARISON = "comparison.json"
COMPARISON_MD = "comparison.md"
DEMO = "demo.json"
REPORT = "report"
KINDS_FILE = "pool_kinds.parquet"  # a demo's ground-truth token kinds, next to the pool's tokens
CHECKPOINTS = "checkpoints"
LOCK_FILE = ".tokenclean.lock"  # one process at a time (runs.store.Store.locked); hidden, so it stays a run's dir
ABLATIONS = "ablations"
EXPORT_PARQUET = "parquet/train.parquet"  # in the export stage: the cleaned dataset as one Parquet file


SEED_STAGES = ("reference", "scores")  # the first part of a stage every method of a seed shares


@dataclass(frozen=True)
class StageName:
    """A stage's name read back into its parts (``Layout.parse``): ``seed-<s>/<method>/rounds/<t>/<name>``, each
    part but the name optional."""

    name: str  # what the stage is: "tokens", "scores/base", "reference", "scores/reference", "selection", "model", ...
    seed: int | None = None  # None: a stage every seed shares (or a single run's)
    method: str | None = None  # the method's directory (a variant such as ``fixed[small-loss]`` too); None: shared
    round: int | None = None  # a self-evolving round


def parse_stage(stage: str) -> StageName:
    """The parts of a stage name a ``Layout`` made (of a single run or a compare directory):
    ``parse_stage("seed-1/fixed/rounds/2/model") == StageName("model", 1, "fixed", 2)``."""
    parts, seed, method, t = stage.split("/"), None, None, None
    if parts[0].startswith("seed-") and parts[0][5:].lstrip("-").isdigit():
        seed, parts = int(parts[0][5:]), parts[1:]
        if len(parts) > 1 and parts[0] not in SEED_STAGES:
            method, parts = parts[0], parts[1:]
    if len(parts) > 2 and parts[0] == "rounds" and parts[1].isdigit():
        t, parts = int(parts[1]), parts[2:]
    return StageName("/".join(parts), seed, method, t)


@dataclass(frozen=True)
class Layout:
    """The paths of one method and seed in the run directory ``root`` (``seed_ns``/``method_ns``: "" for a
    single run, ``seed-<s>/`` and ``<method>/`` in a compare directory). Stage names are strings relative to
    ``root``; ``path`` turns one into a ``Path``."""

    root: Path
    seed_ns: str = ""
    method_ns: str = ""

    @classmethod
    def variant_of(cls, root: str | Path, seed: int, method: str) -> Layout:
        """Method ``method`` at seed ``seed`` of a compare directory."""
        return cls(Path(root), f"seed-{seed}/", f"{method}/")

    @property
    def ns(self) -> str:
        """The prefix of this method's own stages."""
        return self.seed_ns + self.method_ns

    def path(self, stage: str = "") -> Path:
        return self.root / stage

    # -- stages shared by every method of a seed --------------------------------------------------------------------
    @property
    def reference(self) -> str:
        """The warm-up reference model."""
        return f"{self.seed_ns}reference"

    @property
    def reference_scores(self) -> str:
        return f"{self.seed_ns}scores/reference"

    @property
    def prompt_free_scores(self) -> str:
        """The reference's losses of the pool's responses without their prompts (the prompt scorers)."""
        return f"{self.seed_ns}scores/prompt_free"

    @property
    def pair_scores(self) -> str:
        """Where the one-model base + reference scoring keeps its shards (under ``checkpoints/``)."""
        return f"{self.seed_ns}scores/pair"

    # -- one method's stages ----------------------------------------------------------------------------------------
    @property
    def selection(self) -> str:
        return f"{self.ns}selection"

    @property
    def model(self) -> str:
        return f"{self.ns}model"

    @property
    def export(self) -> str:
        return f"{self.ns}export"

    def round(self, t: int) -> str:
        """Self-evolving round ``t``'s directory; its stages are ``round_stage(t, "model" | "scores" | ...)``."""
        return f"{self.ns}rounds/{t}"

    def round_stage(self, t: int, name: str) -> str:
        return f"{self.round(t)}/{name}"

    @staticmethod
    def next_to(model_stage: str, name: str) -> str:
        """The stage ``name`` beside a model stage (``model`` or ``rounds/<t>/model``): its held-out loss,
        benchmarks, generated answers."""
        return f"{model_stage.rsplit('model', 1)[0]}{name}"

    @staticmethod
    def adapter(model_stage: str) -> str:
        """Where a model stage keeps its unmerged LoRA adapter, when it keeps one (the warm-up reference)."""
        return f"{model_stage}/{ADAPTER_DIR}"

    @staticmethod
    def checkpoints(stage: str) -> str:
        """Where stage ``stage`` keeps its finished units (scoring shards, Trainer checkpoints) while it runs."""
        return f"{CHECKPOINTS}/{stage}"

    # -- records --------------------------------------------------------------------------------------------------
    @property
    def summary(self) -> Path:
        return self.root / self.ns / SUMMARY

    def round_record(self, t: int) -> Path:
        return self.root / self.round(t) / "round.json"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    def config_kept(self, stamp: str) -> Path:
        """Where ``--overwrite`` keeps the settings it replaces, ``config.<stamp>.yaml``."""
        return self.root / f"config.{stamp}.yaml"

    @property
    def comparison(self) -> Path:
        return self.root / COMPARISON

    @property
    def comparison_md(self) -> Path:
        return self.root / COMPARISON_MD

    @property
    def demo(self) -> Path:
        return self.root / DEMO

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def tokens(self, split: str = "pool") -> Path:
        """The token table of ``pool``, ``warmup`` or ``eval``."""
        return self.root / TOKENS / split

    @property
    def kinds(self) -> Path:
        return self.root / TOKENS / KINDS_FILE

    def ablation(self, name: str) -> Path:
        """The run directory of a comparison's ablation row ``name`` (``compare``'s ``ablations``): a compare
        directory of its own, since its run settings (e.g. the warm-up data) change stages every method shares."""
        return self.root / ABLATIONS / name

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"


# -- what a run directory holds (read from disk) ---------------------------------------------------------------------
def holds_a_run(layout: Layout) -> bool:
    """Whether ``layout.root`` holds a run's pool tokens."""
    return (layout.tokens() / TokenTable.FILE).is_file()


def seeds_run(layout: Layout) -> list[int]:
    """The seeds of a compare directory (``seed-<s>/``), unordered; empty for a single run."""
    return [int(d.name[5:]) for d in layout.root.glob("seed-*") if d.is_dir() and d.name[5:].lstrip("-").isdigit()]


def methods_run(layout: Layout, seed: int, known: set[str] | list[str]) -> list[str]:
    """Methods of ``known`` and their scorer variants (``fixed[small-loss]``) that have a directory at ``seed``,
    sorted."""
    seed_dir = layout.seed_dir(seed)
    return sorted(d.name for d in seed_dir.iterdir() if d.is_dir() and split_variant(d.name)[0] in known) \
        if seed_dir.is_dir() else []


def round_dirs(layout: Layout) -> list[tuple[int, Path]]:
    """Self-evolving: (t, directory) of every round of ``layout``'s method present, in order."""
    rounds = layout.root / layout.ns / "rounds"
    if not rounds.is_dir():
        return []
    return sorted((int(d.name), d) for d in rounds.iterdir() if d.is_dir() and d.name.isdigit())


def variant_name(method: str, scorer: str) -> str:
    """The name (row of a comparison, directory under ``seed-<s>/``) of ``method`` run with scorer ``scorer``
    instead of the run's own: ``fixed[small-loss]``."""
    return f"{method}[{scorer}]"


def split_variant(name: str) -> tuple[str, str | None]:
    """(method, scorer) of a ``variant_name``; (name, None) for a plain method."""
    method, bracket, rest = name.partition("[")
    return (method, rest[:-1]) if bracket and rest.endswith("]") else (name, None)
