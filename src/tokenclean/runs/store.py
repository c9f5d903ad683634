"""The stage engine of a run directory: keys, records, resuming, atomic directories and timings.

Each stage writes its outputs into ``<run>/<stage>/`` atomically (built under a temporary name, then renamed)
together with ``stage.json``, which records the stage's *key*: a hash of its settings and of the keys of the stages
it reads. Running the same command again skips every stage whose key is unchanged; changing a setting recomputes
the stages that depend on it and nothing else. A stage that is killed resumes from its last finished unit
(scoring shards, training checkpoints), kept in ``checkpoints/<stage>/`` while it runs. The store knows nothing of
tokens or models: the stages (``runs.stages``) give it a name, the inputs and a function that fills a directory.

One process at a time works in a run directory (``Store.locked``, through ``tokenclean.lock``): a second
``tokenclean`` process on the same directory stops with one line naming the holder, so two processes never mix
their files; a lock left by a killed process is taken over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..compute.distributed import barrier, from_rank0
from ..errors import ConfigError
from ..io import atomic_dir, atomic_write_text, crash_point, disk_full_as_error, process_rank, read_json, write_json
from ..lock import Lock
from .layout import LOCK_FILE, Layout

log = logging.getLogger("tokenclean")


def key_of(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    """The stages of one run directory ``root``: run, reuse or resume them.

    ``stages`` maps the name of every stage run or reused through this store to its ``stage.json``; ``timings``
    lists each stage entered, in order, as {stage, seconds (this call), reused, computed_seconds (the call that
    ran it), dir (this store's)}. A store made with ``shared``
    shares that store's timings (a compare directory's variants add to one list).
    """

    def __init__(self, root: str | Path, shared: Store | None = None):
        self.dir = Path(root)
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"{self.dir}: is a file, expected a run directory for --out")
        with disk_full_as_error(self.dir):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except PermissionError as e:
                raise ConfigError(f"{self.dir}: cannot create the run directory ({e.strerror}); choose another "
                                  "--out") from None
        self.stages: dict[str, dict[str, Any]] = {}
        self.timings: list[dict[str, Any]] = shared.timings if shared else []

    def path(self, stage: str) -> Path:
        path = self.dir / stage
        if not path.resolve().is_relative_to(self.dir.resolve()):
            raise ConfigError(f"stage {stage!r} would write outside the run directory {self.dir}")
        return path

    def key(self, stage: str) -> str:
        return self.stages[stage]["key"]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock for the block (a command's whole run: its settings, stages and summary).
        When another process holds it, raise a ``ConfigError`` naming the holder (pid, host, since when). Under
        ``torchrun`` rank 0 holds it for every rank, and every rank raises."""
        lock = Lock(self.dir / LOCK_FILE) if process_rank() == 0 else None
        holder = from_rank0(lock.acquire(wait=False) if lock else None)
        if holder:
            raise ConfigError(f"{self.dir}: in use by another tokenclean process ({holder}); wait for it to finish "
                              "(or stop it), or choose another --out")
        try:
            yield
        finally:
            if lock:
                lock.release()

    def result(self, stage: str) -> dict[str, Any]:
        """What stage ``stage`` returned (from its ``stage.json``)."""
        return self.stages[stage]["result"]

    def work_dir(self, name: str, inputs: dict[str, Any]) -> Path:
        """``checkpoints/<name>/``: where stage ``name`` keeps its finished units (scoring shards, Trainer
        checkpoints) while it runs, so a killed run resumes there. Units left by a run of the stage with other
        inputs are discarded first."""
        path = self.path(Layout.checkpoints(name))
        stamp, key = path / "stage-key.txt", key_of(name, inputs)
        if process_rank() == 0 and path.exists() and (not stamp.exists() or stamp.read_text() != key):
            log.info("[%s] discarding the unfinished work of a run with other settings", name)
            shutil.rmtree(path)
        atomic_write_text(stamp, key)
        return path

    def stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
              complete: Callable[[Path], bool] | None = None) -> dict[str, Any]:
        """Run ``fn(tmp_dir) -> result`` as stage ``name`` unless its directory records the same inputs.

        ``inputs`` must contain everything the result depends on (settings and upstream stage keys). ``complete``:
        whether a finished stage's directory holds everything this version writes; one that does not (written by
        an earlier version) is built again under the same key, so the stages after it stay valid.
        """
        key = key_of(name, inputs)
        record = self._record(name)
        if record is not None:
            if record.get("key") == key:
                if complete is None or from_rank0(complete(self.path(name))):
                    log.info("[%s] up to date, skipped", name)
                    return self._done(name, record, reused=True)
                log.info("[%s] written by an earlier version, without all this version writes: rebuilding", name)
            else:
                changed = sorted(k for k in inputs if record.get("inputs", {}).get(k) != inputs[k])
                log.info("[%s] settings changed (%s): recomputing", name, ", ".join(changed) or "code")
        log.info("[%s] running", name)
        self._remove_leftovers(self.path(name))
        start = time.perf_counter()
        with atomic_dir(self.path(name)) as tmp:  # under torchrun every rank runs fn; rank 0's output is kept
            result = fn(tmp)
            record = {"stage": name, "key": key, "inputs": inputs, "result": result,
                      "seconds": round(time.perf_counter() - start, 3)}
            crash_point(f"stage:{name}")
            write_json(tmp / "stage.json", record)
        barrier()  # the other ranks read rank 0's files from here on
        if process_rank() == 0:
            shutil.rmtree(self.path(Layout.checkpoints(name)), ignore_errors=True)  # its finished units: not needed
        log.info("[%s] done in %.1fs", name, record["seconds"])
        return self._done(name, record, reused=False)

    def _done(self, name: str, record: dict[str, Any], reused: bool) -> dict[str, Any]:
        self.stages[name] = record
        self.timings.append({"stage": name, "seconds": 0.0 if reused else record["seconds"], "reused": reused,
                             "computed_seconds": record["seconds"], "dir": str(self.dir)})
        return record["result"]

    def _record(self, name: str) -> dict[str, Any] | None:
        """The ``stage.json`` of a finished stage ``name`` (rank 0's view under torchrun, so all ranks skip or
        run a stage together), or None."""
        done = self.path(name) / "stage.json"
        return from_rank0(read_json(done) if done.exists() else None)

    def up_to_date(self, name: str, inputs: dict[str, Any]) -> bool:
        """Whether stage ``name`` finished with these inputs (``stage`` would skip it)."""
        record = self._record(name)
        return record is not None and record.get("key") == key_of(name, inputs)

    def discard_work(self, name: str) -> None:
        """Remove ``checkpoints/<name>/`` (rank 0), once what it held is saved elsewhere."""
        if process_rank() == 0:
            shutil.rmtree(self.path(Layout.checkpoints(name)), ignore_errors=True)

    @staticmethod
    def _remove_leftovers(path: Path) -> None:
        """Remove what a killed run left of ``path``: half-built temporary directories (``.NAME.*.tmp``, and
        ``..NAME.*.tmp`` of the API call inside the stage) and a replaced one (``.NAME.old``)."""
        if process_rank() != 0 or not path.parent.is_dir():  # rank 0 owns the files under torchrun
            return
        for p in path.parent.iterdir():
            if (p.name.startswith((f".{path.name}.", f"..{path.name}.")) and p.name.endswith(".tmp")) or \
                    p.name == f".{path.name}.old":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_config(root: Path, new: dict[str, Any], defaults: dict[str, Any], overwrite: bool,
                 ignore: tuple[str, ...] = (), renamed: dict[str, str] | None = None) -> None:
    """Save the settings ``new`` as ``root/config.yaml``, after checking that ``root`` is new, empty, or a run of
    the same settings (any of them but ``ignore``, ``overwrite`` and ``out``; a setting missing from the old file
    has its value in ``defaults``, one under a former name in ``renamed`` is read under its current name); with
    ``overwrite`` the old file is kept as ``config.<time>.yaml``."""
    import yaml

    path = Layout(root).config
    if path.exists():
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        old = {**defaults, **{(renamed or {}).get(k, k): v for k, v in recorded.items()}}
        ignore = (*ignore, "overwrite", "out")
        changed = sorted(k for k in new if k not in ignore and _same(old.get(k)) != _same(new[k]))
        if changed and not overwrite:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ConfigError(f"{root} holds a run with other settings ({shown}{more}); pass --overwrite to "
                              "recompute the stages they change, or choose a new --out")
        if changed:
            atomic_write_text(Layout(root).config_kept(time.strftime("%Y%m%d-%H%M%S")), path.read_text(encoding="utf-8"))
    elif _holds_other_files(root):
        raise ConfigError(f"{root}: exists and is not empty, but holds no tokenclean run (no config.yaml); "
                          "choose a new or empty --out")
    atomic_write_text(path, yaml.safe_dump(new, sort_keys=False))


def _holds_other_files(directory: Path) -> bool:
    """Whether ``directory`` holds files that are not a tokenclean run's: visible entries (hidden ones are
    temporary files) and no stage directory (a run begun through the API, before its config was written)."""
    visible = [p for p in directory.iterdir() if not p.name.startswith(".")]
    return bool(visible) and not any(directory.glob("*/stage.json"))


def _same(value: Any) -> Any:
    """A setting as compared between runs: paths that exist by their absolute form (``./a`` and ``a`` agree)."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value
