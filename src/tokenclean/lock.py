"""Locks between tokenclean processes: one process at a time in a run directory, one per score cache entry.

A lock is ``fcntl.flock`` on a small file whose content names the holder: ``pid 1234 on host NAME since TIME``.
Why flock, and not a lock file made with ``O_EXCL`` or the ``filelock`` package: the kernel releases a flock when
its process ends, however it ends (SIGKILL included), so a lock left by a killed process is never mistaken for a
live one (no guessing from a pid, which another process may have reused); and ``filelock`` truncates the file when
it opens it, which would erase the holder's name that a second process needs to say who holds the lock. A lock
file that still names a process which no longer holds it was left by a killed process: it is taken over, with a
notice. flock works between processes of one machine (over NFS it depends on the mount), where a run directory is.

Within one process a lock is re-entrant (``_HELD`` counts the holds): flock locks taken through two descriptors of
one file exclude each other even in the same process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("tokenclean")
_HELD: dict[str, tuple[int, int]] = {}  # resolved path -> (file descriptor, holds)


def holder_text() -> str:
    """How this process names itself in a lock file: ``pid 1234 on host NAME since 2026-12-03 10:00:00 UTC``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"pid {os.getpid()} on host {socket.gethostname()} since {since}"


class Lock:
    """An exclusive lock on the file ``path`` (created when missing; its directory must exist)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._key = str(self.path.resolve())

    def acquire(self, wait: bool, on_wait: str = "") -> str | None:
        """Take the lock. When another process holds it: with ``wait``, log ``on_wait`` (a phrase after the
        holder's name) once and wait for it; without, return the holder's name and hold nothing. Returns None once
        held."""
        if self._key in _HELD:
            fd, holds = _HELD[self._key]
            _HELD[self._key] = (fd, holds + 1)
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_lock(fd):
                holder = _read_holder(fd)
                if not wait:
                    os.close(fd)
                    return holder
                log.warning("waiting for %s, %s", holder, on_wait or f"which holds {self.path}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            left = _read_holder(fd, retries=0)
            if left != "an unknown process":  # named, yet not held: its process was killed
                log.warning("%s: took over the lock left by %s, which has ended", self.path, left)
            _write(fd, holder_text())
        except BaseException:
            os.close(fd)
            raise
        _HELD[self._key] = (fd, 1)
        return None

    def release(self) -> None:
        """Give the lock back (after as many releases as acquisitions, in one process)."""
        fd, holds = _HELD[self._key]
        if holds > 1:
            _HELD[self._key] = (fd, holds - 1)
            return
        del _HELD[self._key]
        try:
            _write(fd, "")  # a lock file that names nobody: released, not left by a killed process
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int, retries: int = 20) -> str:
    """The holder's name in the lock file; the holder writes it just after taking the lock, so an empty file is
    read again a few times (10 ms apart) before the holder is called unknown."""
    for attempt in range(retries + 1):
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        if text:
            return text
        if attempt < retries:
            time.sleep(0.01)
    return "an unknown process"


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)
    os.fsync(fd)
