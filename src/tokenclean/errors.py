"""User-facing errors.

A ``TokencleanError`` is bad input or a bad setting the user can fix. The CLI prints its message as one line
(no traceback), then its ``hints`` one per line when it has some, and exits with status 2. Internal invariants
use ``assert`` instead.
"""

from collections.abc import Sequence


class TokencleanError(Exception):
    """An error the user can fix; the message names the file, row and what was expected. ``hints``: a few short
    lines after it (e.g. the closest known shapes of an unknown row, each with the flag that maps it)."""

    def __init__(self, message: str, hints: Sequence[str] = ()):
        self.message, self.hints = message, tuple(hints)
        super().__init__("\n".join([message, *(f"  {h}" for h in self.hints)]))


class DataError(TokencleanError):
    """A data file or row does not have the expected structure."""


class ConfigError(TokencleanError):
    """A setting is out of range or settings contradict each other."""


class MismatchError(TokencleanError):
    """Artifacts were made from different data, tokenizer or ``max_seq_len`` than the ones they are used with."""


class ModelError(TokencleanError):
    """A model or tokenizer is missing, incomplete or corrupt, or does not fit the data it is used with."""


class ResourceError(TokencleanError):
    """The machine ran out of something: disk space, memory, or the requested device is not there."""
