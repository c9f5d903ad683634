"""Fingerprints: short hashes of what decides a result (a tokenizer, the files of a model or data set), so stages
and artifacts can tell whether they were made from the same inputs. Plain hashing: no torch, no model loading."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how text becomes ids: vocabulary, merges, normaliser, special tokens and
    chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()[:16]


_FILE_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _FILE_HASH_CACHE[key] = h.hexdigest()
    return _FILE_HASH_CACHE[key]


def path_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Fingerprint of the files under a path (a model directory's config and weights, a data file or directory),
    or ``hub:<name>`` for a name that is not on disk (a hub id). A GGUF model source is fingerprinted by
    ``compute.modeling.source_fingerprint``."""
    path = Path(name_or_path)
    if not path.exists():
        return f"hub:{name_or_path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _counts(p))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(file_fingerprint(f).encode())
    return h.hexdigest()[:16]


def _counts(p: Path) -> bool:
    """Files that decide a model's or dataset's content (not logs, READMEs or hidden files)."""
    return not p.name.startswith(".") and p.suffix not in (".md", ".log")
