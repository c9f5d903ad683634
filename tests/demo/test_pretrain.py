import argparse
import json
import time

import pytest
import torch

from tokenclean.errors import ConfigError, DataError
from tokenclean.demo.pretrain import (
    MARKER,
    PretrainConfig,
    build_model,
    iter_documents,
    mean_loss,
    pack_blocks,
    pretrain,
    resolve_text_files,
    train_tokenizer,
)
from tokenclean.demo.world import WorldConfig, make_corpus, make_sft, write_world

QUICK = PretrainConfig.preset("quick")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_world(WorldConfig(seed=1, n_train=20, n_eval=4, corpus_docs=800), tmp_path_factory.mktemp("w"))[
        "corpus"
    ]


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory):
    """A quick model pretrained once for the whole module, with how long it took."""
    out = tmp_path_factory.mktemp("runs") / "base"
    started = time.perf_counter()
    pretrain([corpus], out, QUICK, progress=False)
    return out, time.perf_counter() - started


def test_tokenizer_round_trips_and_loads_offline(tmp_path):
    from transformers import AutoTokenizer

    docs = make_corpus(WorldConfig(corpus_docs=200))
    train_tokenizer(docs, vocab_size=500, out_dir=tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for text in docs[:20] + ["Reverse \"lamp\": p, m, a, l. 1234 + 99 = 1333. kK&;y>v|eA é ✓"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]  # digits one by one
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert 256 < len(tok) <= 500


def test_tokenizer_from_files_and_chat_template(tmp_path, corpus):
    tok = train_tokenizer([corpus], vocab_size=500)
    row = make_sft(WorldConfig(n_train=1, corpus_docs=0), "train")[0]
    out = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    # the space after "Assistant:" merges into the first response token, as it does in the corpus's chats
    assert tok.decode(masked) == " " + row["messages"][1]["content"] + tok.eos_token
    text = tok.apply_chat_template(row["messages"], tokenize=False)
    assert text.startswith(f"{tok.bos_token}User: ") and "\nAssistant: " in text


def test_pretraining_lowers_held_out_loss(base, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = base
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    held_out = make_corpus(WorldConfig(seed=99, corpus_docs=60))  # new documents from the same world
    blocks = pack_blocks(held_out, tok, QUICK.max_seq_len)
    untrained = build_model(QUICK, tok)
    assert mean_loss(model, blocks) < mean_loss(untrained, blocks) - 1.0
    meta = json.loads((out / MARKER).read_text())
    assert meta["final_eval_loss"] < meta["initial_eval_loss"]
    assert model.config.model_type == "llama" and (out / "model.safetensors").is_file()
    assert meta["n_parameters"] == sum(p.numel() for p in model.parameters())


def test_same_inputs_hit_the_cache_and_changes_retrain(base, corpus):
    out, _ = base
    marker = out / MARKER
    before = marker.stat().st_mtime_ns
    assert pretrain([corpus], out, QUICK, progress=False) == out
    assert marker.stat().st_mtime_ns == before  # nothing retrained or rewritten

    fingerprint = json.loads(marker.read_text())["fingerprint"]
    pretrain([corpus], out, PretrainConfig.preset("quick", steps=2), progress=False)
    assert json.loads(marker.read_text())["fingerprint"] != fingerprint
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())


def test_given_tokenizer_is_reused(base, corpus, tmp_path):
    from transformers import AutoTokenizer

    out, _ = base
    model_dir = pretrain([corpus], tmp_path / "m", PretrainConfig.preset("quick", steps=2), tokenizer=out,
                         progress=False)  # fmt: skip
    assert AutoTokenizer.from_pretrained(model_dir).get_vocab() == AutoTokenizer.from_pretrained(out).get_vocab()


def test_reads_txt_jsonl_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "third doc"}) + "\n\n" + json.dumps({"text": ""}) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    files = resolve_text_files([tmp_path])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert list(iter_documents(files)) == ["first doc\nstill first", "second doc", "third doc"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', "bad.jsonl: row 1: expected an object"),
        ("bad.jsonl", "{not json\n", "bad.jsonl:1: malformed JSON"),
        ("bad.csv", "a,b\n", "unsupported file type '.csv'"),
    ],
)
def test_bad_corpus_files_name_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        list(iter_documents(resolve_text_files([tmp_path / name])))


def test_missing_corpus_and_tiny_corpus(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        pretrain([tmp_path / "nope.txt"], tmp_path / "out", QUICK)
    (tmp_path / "small.txt").write_text("too short")
    with pytest.raises(DataError, match="corpus too small"):
        pretrain([tmp_path / "small.txt"], tmp_path / "out", QUICK, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [dict(hidden_size=30, num_heads=4), dict(vocab_size=100), dict(steps=0)])
def test_bad_config_raises(bad):
    with pytest.raises(ConfigError):
        PretrainConfig(**bad)
    with pytest.raises(ConfigError, match="allowed"):
        PretrainConfig.preset("huge")


def test_cli(corpus, tmp_path, capsys):
    from tokenclean.demo.pretrain_cli import add_parser

    parser = argparse.ArgumentParser(prog="tokenclean")
    add_parser(parser.add_subparsers(dest="command"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "corpus.txt").write_bytes(corpus.read_bytes())
    argv = ["pretrain", "--corpus", str(tmp_path / "texts"), "--out", str(tmp_path / "m"), "--size", "quick",
            "--steps", "3", "--seed", "2"]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "parameters" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / MARKER).read_text())["config"]["seed"] == 2
    assert args.func(parser.parse_args(argv)) == 0
    assert "cached" in capsys.readouterr().out


def test_mean_loss_is_per_token():
    tok = train_tokenizer(["a b c d e f g"] * 5, vocab_size=300)
    model = build_model(PretrainConfig.preset("quick"), tok)
    blocks = torch.randint(0, len(tok), (3, 16))
    direct = model(input_ids=blocks, labels=blocks).loss.item()
    assert mean_loss(model, blocks) == pytest.approx(direct, rel=1e-5)


def test_one_line_documents_longer_than_a_path_are_texts_not_files():
    from tokenclean.demo.pretrain import _as_texts

    docs = ["word " * 2000, "short one-line document"]
    assert list(_as_texts(docs)) == docs
