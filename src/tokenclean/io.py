"""Atomic file writes and small JSON helpers.

Every file tokenclean writes goes through these functions: content is written to a temporary file in the same
directory and renamed into place, so a crash never leaves a half-written file behind. A full disk becomes a
one-line ``ResourceError`` naming the path (and the temporary file is removed).

Under ``torchrun`` / ``accelerate launch`` only rank 0 writes: on the other ranks ``atomic_write_bytes`` does
nothing and ``atomic_dir`` yields a private temporary directory that is deleted afterwards, so code that every
rank runs (training, scoring, whole pipelines) writes each output once. Readers on other ranks must wait for
rank 0 (a barrier) before reading what it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ResourceError

# errno values that mean "the disk (or the user's quota) is full", and how libraries that wrap the OS error
# (safetensors, torch's zip writer) spell it.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "os error 28")


def process_rank() -> int:
    """This process's global rank, from the ``RANK`` variable that ``torchrun`` sets (0 without it). Read from the
    environment alone, so writing files (and the command line) needs no torch."""
    return int(os.environ.get("RANK", "0"))


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    return isinstance(e, Exception) and any(t in str(e) for t in _NO_SPACE_TEXT)


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn "no space left on device" (or a full quota) in the block into a one-line ``ResourceError``."""
    try:
        yield
    except Exception as e:
        if isinstance(e, ResourceError) or not is_disk_full(e):
            raise
        raise ResourceError(f"{path}: no space left on the device while writing; free some disk space or choose "
                            "another --out, then run the same command again") from None


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename); a no-op on ranks other than 0."""
    if process_rank() != 0:
        return
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode open() would give it
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only when the block succeeds.

    An existing ``path`` is replaced. Yields the temporary directory to write into. A full disk while the block
    writes becomes a ``ResourceError`` naming ``path``; the temporary directory is removed either way. On ranks
    other than 0 it yields a private temporary directory, deleted when the block ends, and ``path`` is left alone.
    """
    if process_rank() != 0:
        private = Path(tempfile.mkdtemp(prefix=f"tokenclean-rank{process_rank()}-"))
        try:
            yield private
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; others may read a run directory as with mkdir
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def crash_point(where: str) -> None:
    """Test hook for the crash-safety tests: SIGKILL this process when ``$TOKENCLEAN_TEST_KILL_AT`` equals
    ``where`` (e.g. ``score:base:shard1``, ``train:model:step2``, ``stage:selection``). A no-op otherwise."""
    if os.environ.get("TOKENCLEAN_TEST_KILL_AT") == where:
        os.kill(os.getpid(), signal.SIGKILL)
