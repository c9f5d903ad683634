"""Loading models and tokenizers, choosing device and dtype, and the fingerprint of a model source.

Any ``AutoModelForCausalLM`` directory or hub id works. ``trust_remote_code`` stays off unless the user asks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..core.fingerprints import path_fingerprint
from ..errors import ConfigError, ModelError, ResourceError

# Any of these in a model directory means a tokenizer was saved with it.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else CPU; asking for CUDA without one is an error. ``cuda``
    without an index is GPU ``LOCAL_RANK`` (under ``torchrun`` each process has its own GPU; 0 otherwise)."""
    from .distributed import local_rank

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}, expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA device is available (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu, or "
                          "install a CUDA build of torch on a machine with a GPU")
    visible = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.index is not None and 0 < visible <= dev.index:
        raise ConfigError(f"device {device!r} requested but only {visible} CUDA device(s) are visible; use --device "
                          "cuda:0 or check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank()) if dev.type == "cuda" and dev.index is None else dev


def is_out_of_memory(e: BaseException) -> bool:
    """True for the ways torch and Python report an allocation that failed (GPU or CPU)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory", "Cannot allocate memory"))


@contextlib.contextmanager
def out_of_memory_as_error(what: str, advice: str) -> Iterator[None]:
    """Turn an allocation failure in the block into a one-line ``ResourceError``: ``what`` ran out of memory,
    then ``advice``."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise ResourceError(f"{what}: out of memory ({_first_line(e)}); {advice}") from None


def release_memory() -> None:
    """Give the memory of models and optimizers no longer referenced back: collect reference cycles (the Trainer
    and its callbacks hold some), empty the CUDA cache, and on glibc ask malloc to return its free pages to the
    system, without which a process's RSS stays at its high-water mark after the tensors are freed."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def freeze_library_objects() -> None:
    """Import the training stack and move every object alive now into the garbage collector's permanent generation
    (``gc.freeze``): for a command-line process about to train. Each later full collection (``release_memory``'s
    after every fine-tune and scoring, accelerate's at every Trainer start) then walks only the objects the run
    made. Measured: ~440k objects after these imports, 0.23-0.37 s per collection; ``tokenclean demo --tiny``
    collects ~100 times. What is alive now (modules, classes, functions: they live as long as the process) is still
    freed by reference counting, just never collected as part of a cycle. Only ``cli.main`` calls it: the library's
    functions never freeze a Python caller's own objects."""
    import gc

    import accelerate  # noqa: F401  (imported for their module objects, frozen with the rest)
    import datasets  # noqa: F401
    import transformers.trainer  # noqa: F401

    gc.collect()
    gc.freeze()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 where ``device`` computes it natively (a GPU that supports it, a CPU with AVX512-BF16, AMX
    or Arm BF16) and fp32 elsewhere: see ``hardware.auto_dtype``."""
    if dtype == "auto":
        from .hardware import auto_dtype

        return auto_dtype(device)
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}, expected one of auto, {', '.join(table)}")
    return table[dtype]


# --- GGUF sources (compute.gguf): a .gguf file, a directory holding one, or pkg:NAME ----------------------------
def resolve_model_source(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The converted model directory of a GGUF source (converted once, cached), else ``name_or_path`` unchanged."""
    from . import gguf

    return gguf.converted_dir(name_or_path) if gguf.is_gguf_source(name_or_path) else name_or_path
# --- end GGUF sources ----------------------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name_or_path = resolve_model_source(name_or_path)  # GGUF hook
    _check_model_path(name_or_path, need_config=False)  # a tokenizer saved on its own is a tokenizer directory too
    path = Path(name_or_path)
    if path.is_dir() and not any((path / f).exists() for f in _TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...), expected a model "
                         "directory saved with its tokenizer (tokenizer.save_pretrained(DIR))")
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{name_or_path}: could not load a tokenizer ({_first_line(e)})") from None


def load_model(
    name_or_path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM for inference or training on ``device`` in ``dtype`` (see ``resolve_dtype``).

    Weights are read from safetensors only: pickled ``.bin`` checkpoints are refused, never unpickled. Under
    ``accelerate launch --use_fsdp`` the model stays on the CPU (or, with Accelerate's CPU-RAM-efficient loading,
    on the meta device outside rank 0): FSDP moves each rank's shard to its device when it wraps the model.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from .distributed import fsdp_requested

    name_or_path = resolve_model_source(name_or_path)  # GGUF hook
    _check_model_path(name_or_path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    advice = ("use --dtype bfloat16, a machine or GPU with more memory, or a smaller model" if device.type == "cpu"
              else "use --dtype bfloat16, a GPU with more memory, or a smaller model")
    with out_of_memory_as_error(f"{name_or_path}: loading the model on {device}", advice):
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(name_or_path), dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code,
                use_safetensors=True,
            )
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise ModelError(_load_failure(name_or_path, e)) from None
        return model if fsdp_requested() else model.to(device)


def _load_failure(name_or_path: str | os.PathLike, e: Exception) -> str:
    path = Path(name_or_path)
    if path.is_dir() and not list(path.glob("*.safetensors")) and list(path.glob("*.bin")):
        return (f"{path}: only pickled .bin weights, expected model.safetensors (tokenclean never unpickles "
                "weights); convert them once with AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR)")
    if type(e).__name__ == "SafetensorError":
        return f"{name_or_path}: the safetensors weights are corrupt or truncated ({_first_line(e)}); copy them again"
    return f"{name_or_path}: could not load a causal LM ({_first_line(e)})"


def _check_model_path(name_or_path: str | os.PathLike, need_config: bool = True) -> None:
    """A local path must be a model directory (``config.json``), or, for a tokenizer (``need_config=False``), a
    directory saved with ``tokenizer.save_pretrained``; hub ids pass."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: is a file, expected a model directory (with config.json)")
        if need_config and not (path / "config.json").exists():
            raise ModelError(f"{path}: no config.json, expected a model directory saved with save_pretrained")
    elif str(name_or_path).startswith((".", "/", "~")):
        raise ModelError(f"{name_or_path}: no such model directory")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def source_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Fingerprint of a model source: of a GGUF source (see ``tokenclean.compute.gguf``), the sha256 of the GGUF
    file; else ``core.fingerprints.path_fingerprint`` (a model directory's config and weight files, or the hub id)."""
    from . import gguf

    if gguf.is_gguf_source(name_or_path):  # GGUF hook
        return gguf.gguf_sha256(name_or_path)
    return path_fingerprint(name_or_path)


def model_summary(model) -> dict[str, Any]:
    n = sum(p.numel() for p in model.parameters())
    return {"parameters": n, "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


def check_vocab(model: Any, tokens: Any, model_name: Any) -> None:
    """Refuse tokens (a ``TokenTable``) the model's embedding has no row for: the tokenizer does not belong to the
    model."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    ids = tokens.flat_input_ids()
    if rows is not None and len(ids) and int(ids.max()) >= rows:
        raise ModelError(f"{model_name}: the data was tokenized into token id {int(ids.max())} but the model's "
                         f"embedding has only {rows} rows; the tokenizer does not belong to this model (use the "
                         "model's own tokenizer)")
