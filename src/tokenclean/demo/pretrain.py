"""A tiny base model from scratch: a byte-level BPE tokenizer and a small Llama pretrained on plain text.

No pretrained weights exist offline, so the demo (and anyone who wants a tiny base from their own text) makes one:

    >>> cfg = PretrainConfig.preset("quick")                                      # doctest: +SKIP
    >>> model_dir = pretrain(["corpus.txt"], "runs/base", cfg)                   # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained(model_dir)                           # doctest: +SKIP

The output directory is a standard ``transformers`` directory (safetensors weights, ``tokenizer.json``) plus a
marker file, ``pretrain.json``, holding the fingerprint of (config, tokenizer, corpus content). A second call with
the same inputs finds the marker and returns without training; any change retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from ..io import atomic_dir, read_json, write_json

if TYPE_CHECKING:  # heavy imports stay lazy: `tokenclean --help` must not load torch
    import torch
    from transformers import PreTrainedTokenizerFast

MARKER = "pretrain.json"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
TEXT_SUFFIXES = (".txt", ".jsonl")

# Renders {"role", "content"} messages; the {% generation %} markers let transformers return the assistant mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    # the space after "Assistant:" is generated (the generation prompt ends at the colon), so it is inside the block
    "{{ 'Assistant:' }}{% generation %}{{ ' ' + message['content'] }}{{ eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['role'] | capitalize }}{{ ': ' }}{{ message['content'] }}{{ '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class PretrainConfig:
    """Tokenizer, model shape and training schedule of a from-scratch base model."""

    vocab_size: int = 2048
    """Target BPE vocabulary size, special tokens included (used only when a tokenizer is trained)."""
    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads per block (key/value heads: the same; no grouped-query attention at this size)."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    max_seq_len: int = 256
    """Block length of packed pretraining sequences, and the model's maximum position (demo samples: <= 160)."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 8
    """Blocks per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay, 5% linear warm-up)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seed of weight initialisation and batch order."""
    eval_fraction: float = 0.02
    """Fraction of blocks held out to measure loss before and after training (at least one block)."""

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len",
                    "steps", "batch_size")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 300:
            raise ConfigError(f"PretrainConfig.vocab_size must be >= 300 (256 bytes + specials), got {self.vocab_size}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"PretrainConfig.hidden_size ({self.hidden_size}) must split into num_heads "
                              f"({self.num_heads}) heads of even size (rotary embeddings)")  # fmt: skip
        if not self.lr > 0:
            raise ConfigError(f"PretrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.eval_fraction < 0.5:
            raise ConfigError(f"PretrainConfig.eval_fraction must be in [0, 0.5), got {self.eval_fraction}")

    @classmethod
    def preset(cls, size: str, **overrides) -> PretrainConfig:
        """``tiny`` (the demo's base; about a minute on 2 CPU cores) or ``quick`` (seconds; for tests)."""
        if size not in PRESETS:
            raise ConfigError(f"unknown size {size!r}; allowed: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[size], **{k: v for k, v in overrides.items() if v is not None})


PRESETS = {
    "tiny": PretrainConfig(),
    "quick": PretrainConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_seq_len=64, steps=40, batch_size=8, lr=5e-3),  # fmt: skip
}


# --- reading text --------------------------------------------------------------------------------------------


def resolve_text_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their ``.txt``/``.jsonl`` files (sorted); check every file exists and is usable."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise DataError(f"{path}: directory has no {'/'.join(TEXT_SUFFIXES)} files")
            files.extend(found)
        elif not path.is_file():
            raise DataError(f"{path}: no such file or directory")
        elif path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; allowed: {', '.join(TEXT_SUFFIXES)}")
        else:
            files.append(path)
    if not files:
        raise DataError("no corpus files given")
    return files


def iter_documents(files: Sequence[str | Path]) -> Iterator[str]:
    """Documents of the corpus: blank-line-separated paragraphs of ``.txt`` files, the ``"text"`` field of each
    ``.jsonl`` row."""
    for path in map(Path, files):
        if path.suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            yield from (doc.strip() for doc in text.split("\n\n") if doc.strip())


def _jsonl_texts(path: Path) -> Iterator[str]:
    from ..core.data import read_rows  # one JSON reader: same BOM/UTF-8/malformed-line handling and messages

    for i, row in enumerate(read_rows(path)):
        if not isinstance(row.get("text"), str):
            raise DataError(f"{path}: row {i}: expected an object with a string field 'text'")
        if row["text"].strip():
            yield row["text"]


# --- tokenizer -----------------------------------------------------------------------------------------------


def train_tokenizer(
    texts_or_files: Iterable[str] | Sequence[str | Path], vocab_size: int, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (digits split one by one) and save it to ``out_dir`` if given.

    ``texts_or_files`` is either a list of file paths (``Path`` objects, or strings naming existing files) or an
    iterable of document strings. The result has ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` and a chat template, and
    ``AutoTokenizer.from_pretrained(out_dir)`` loads it offline.

    Example:
        >>> tok = train_tokenizer(["the cat sat on the mat"] * 10, vocab_size=300)
        >>> tok.decode(tok("the cat 42")["input_ids"])
        'the cat 42'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _as_texts(texts_or_files)
    bpe = Tokenizer(models.BPE())
    # Single digits keep numbers compositional (arithmetic tasks); ByteLevel makes every string encodable.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])  # fmt: skip
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tok.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def _as_texts(texts_or_files: Iterable[str] | Sequence[str | Path]) -> Iterator[str]:
    items = list(texts_or_files)
    is_files = items and all(isinstance(x, Path) or (isinstance(x, str) and "\n" not in x and _is_file(x))
                             for x in items)  # fmt: skip
    return iter_documents(resolve_text_files(items)) if is_files else iter(items)


def _is_file(text: str) -> bool:
    """Whether ``text`` names an existing file; a one-line document longer than a path can be is not one."""
    try:
        return Path(text).is_file()
    except OSError:  # ENAMETOOLONG
        return False


# --- data ----------------------------------------------------------------------------------------------------


def pack_blocks(documents: Iterable[str], tokenizer: PreTrainedTokenizerFast, block_size: int) -> torch.Tensor:
    """Tokenize documents, join them with ``eos`` between, and cut the stream into full blocks.

    Returns ``(n_blocks, block_size)`` int64; the trailing partial block is dropped.
    """
    import torch

    ids: list[int] = []
    docs = list(documents)
    for start in range(0, len(docs), 1000):
        for doc_ids in tokenizer(docs[start : start + 1000], add_special_tokens=False)["input_ids"]:
            ids.extend(doc_ids)
            ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // block_size
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


class _Blocks:
    """A map-style dataset of packed blocks for ``Trainer``: labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks  # (N, T)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


# --- model and training --------------------------------------------------------------------------------------


def build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerFast):
    """A randomly initialised ``LlamaForCausalLM`` of the config's shape (tied input/output embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def mean_loss(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token loss (nats) over all predicted tokens of ``blocks`` ``(N, T)``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(model.device)  # (B, T)
            n = batch[:, 1:].numel()
            total += model(input_ids=batch, labels=batch).loss.item() * n
            count += n
    return total / max(count, 1)


def fingerprint(files: Sequence[Path], cfg: PretrainConfig, tokenizer: str | Path | None) -> str:
    """sha256 over the config, the given tokenizer's files and every corpus file's name-free content."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    if tokenizer is not None:
        for path in sorted(Path(tokenizer).glob("tokenizer*.json")):
            h.update(path.read_bytes())
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0file\0")
    return h.hexdigest()


def is_cached(out_dir: str | Path, fp: str) -> bool:
    marker = Path(out_dir) / MARKER
    return marker.is_file() and read_json(marker).get("fingerprint") == fp


def pretrain(
    text_files: Sequence[str | Path],
    out_dir: str | Path,
    cfg: PretrainConfig,
    tokenizer: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Pretrain a tiny Llama on ``text_files`` (``.txt``/``.jsonl`` files or directories) and save it to ``out_dir``.

    Trains a tokenizer on the corpus unless ``tokenizer`` (a directory ``AutoTokenizer`` loads) is given. Returns
    ``out_dir`` at once if it already holds a model made from the same inputs. The directory is built under a
    temporary name and renamed into place, so an interrupted run leaves no half-written model.
    """
    out_dir = Path(out_dir)
    files = resolve_text_files(text_files)
    if tokenizer is not None and not (Path(tokenizer) / "tokenizer.json").is_file():
        raise DataError(f"{tokenizer}: not a tokenizer directory (no tokenizer.json)")
    fp = fingerprint(files, cfg, tokenizer)
    if is_cached(out_dir, fp):
        return out_dir
    with atomic_dir(out_dir) as tmp:
        meta = _train(files, tmp, cfg, tokenizer, progress)
        write_json(tmp / MARKER, {"fingerprint": fp, "config": dataclasses.asdict(cfg),
                                  "corpus": [str(p) for p in files], **meta})  # fmt: skip
    return out_dir


def _train(files: list[Path], out: Path, cfg: PretrainConfig, tokenizer: str | Path | None, progress: bool) -> dict:
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from ..compute.training import route_trainer_logs

    started = time.perf_counter()
    if tokenizer is None:
        tok = train_tokenizer(iter_documents(files), cfg.vocab_size)
    else:
        from ..compute.modeling import resolve_model_source

        tok = AutoTokenizer.from_pretrained(resolve_model_source(tokenizer))  # a GGUF source: its converted dir
    blocks = pack_blocks(iter_documents(files), tok, cfg.max_seq_len)  # (N, T)
    if len(blocks) < 2:
        raise DataError(f"{files[0]}: corpus too small: {len(blocks)} block(s) of {cfg.max_seq_len} tokens")
    n_eval = max(1, math.floor(len(blocks) * cfg.eval_fraction))
    train_blocks, eval_blocks = blocks[:-n_eval], blocks[-n_eval:]
    model = build_model(cfg, tok)
    initial_loss = mean_loss(model, eval_blocks)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=max(1, cfg.steps // 10),
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        disable_tqdm=not progress,
        dataloader_drop_last=True,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(train_blocks), data_collator=default_data_collator)
    route_trainer_logs(trainer)
    result = trainer.train()
    train_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    final_loss = mean_loss(model, eval_blocks)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _rmtree(out / "trainer")
    return {
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "n_tokens": blocks.numel(),
        "n_train_blocks": len(train_blocks),
        "n_eval_blocks": n_eval,
        "epochs": cfg.steps * cfg.batch_size / len(train_blocks),
        "initial_eval_loss": initial_loss,
        "final_eval_loss": final_loss,
        "final_train_loss": train_losses[-1] if train_losses else result.training_loss,
        "train_seconds": time.perf_counter() - started,
    }


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
