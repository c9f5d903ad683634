"""Broken input, tried as a new user would.

Every case of the corpus goes through the public API (``tokenclean.prepare_tokens`` / ``score`` / ``select`` /
``train`` / ``export`` / ``run``) and must raise exactly one error class with a one-line message that names the
file, the row or line, and what was expected (an unknown row shape adds a few lines of hints). A second test runs one case of each error class through the CLI
(exit status 2, one line, no traceback). Under ``--skip-invalid`` bad rows are skipped and counted by reason, and
a pipeline's ``summary.json`` accounts for every row of the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_llama, write_jsonl

import tokenclean as tc
from tokenclean.cli import main
from tokenclean.errors import (
    ConfigError,
    DataError,
    MismatchError,
    ModelError,
    TokencleanError,
)

GOOD = '{"prompt": "What is 2 + 2?", "completion": "It is 4."}'
CHAT_GOOD = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}'
FIELDS = tc.DataConfig(prompt_field="question", response_field="answer")


@dataclass
class Case:
    """A broken input: ``act()`` must raise ``error`` with every string of ``expect`` in its message; ``cli`` is
    the same attempt as a command line (optional)."""

    act: Callable[[], object]
    error: type
    expect: list[str]
    cli: list[str] | None = None


@dataclass
class Env:
    """What the cases share: a tokenizer, a tiny model directory, and real score/selection directories."""

    tokenizer: object
    model: Path
    base: Path  # scores of data_a under the tiny model
    ref: Path  # scores of data_a under a second tiny model (same tokenizer)
    sel: Path  # a selection made from base and ref
    data_a: Path
    data_b: Path
    other_tok_model: Path  # the same weights with a tokenizer that renders differently (a chat template)


CASES: dict[str, Callable[[Path, Env], Case]] = {}


def case(fn: Callable[[Path, Env], Case]) -> Callable[[Path, Env], Case]:
    CASES[fn.__name__] = fn
    return fn


def lines(path: Path, *rows: str | bytes) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows))
    return path


@cache
def gpt2():
    from conftest import GPT2_DIR
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))


def prepare(path: Path, data_config: tc.DataConfig | None = None, max_seq_len: int = 256) -> Callable[[], object]:
    """What every command does first with --data: read, validate and tokenize."""
    return lambda: tc.prepare_tokens(path, gpt2(), data_config, tc.TokenizeConfig(max_seq_len=max_seq_len))


def command(argv: list[str]) -> Callable[[], object]:
    """A command line run as ``tokenclean`` runs it, but with its error raised instead of printed."""
    from tokenclean.cli import build_parser

    def act():
        args = build_parser().parse_args(argv)
        return args.func(args)

    return act


def row_case(tmp: Path, env: Env, second: str | bytes, expect: list[str], first: str = GOOD,
             name: str = "bad.jsonl") -> Case:
    """A JSON Lines file whose second line is broken: the message must point at line 2."""
    path = lines(tmp / name, first, second)
    return Case(prepare(path), DataError, [f"{path}:2:", *expect],
                cli=["export", "--tokenizer", str(env.model), "--data", str(path), "--out", str(tmp / "out")])


# -- the file itself ---------------------------------------------------------------------------------------------
@case
def malformed_json_line(tmp, env):
    return row_case(tmp, env, '{"prompt": "p", "completion": ', ["malformed JSON", "expected one JSON object per line"])


@case
def file_cut_off_mid_row(tmp, env):
    path = tmp / "cut.jsonl"
    path.write_text(GOOD + "\n" + GOOD + "\n" + GOOD[:20])
    return Case(prepare(path), DataError, [f"{path}:3:", "malformed JSON", "expected one JSON object per line"])


@case
def line_is_not_an_object(tmp, env):
    return row_case(tmp, env, '["What is 2 + 2?", "4"]', ["expected a JSON object, got list"])


@case
def invalid_utf8_bytes(tmp, env):
    return row_case(tmp, env, b'{"prompt": "caf\xe9", "completion": "x"}', ["invalid UTF-8", "expected UTF-8 text"])


@case
def utf16_file(tmp, env):
    path = tmp / "utf16.jsonl"
    path.write_bytes((GOOD + "\n").encode("utf-16"))
    return Case(prepare(path), DataError, [f"{path}:", "UTF-16", "expected UTF-8"])


@case
def malformed_json_array(tmp, env):
    path = tmp / "rows.json"
    path.write_text("[\n" + GOOD + ",\n" + GOOD + "\n")
    return Case(prepare(path), DataError, [f"{path}:", "malformed JSON", "expected an array of objects"])


@case
def json_array_element_not_an_object(tmp, env):
    path = tmp / "rows.json"
    path.write_text("[" + GOOD + ', "just text"]')
    return Case(prepare(path), DataError, [f"{path}: row 1:", "expected a JSON object, got str"])


@case
def empty_file(tmp, env):
    path = tmp / "empty.jsonl"
    path.write_text("")
    return Case(prepare(path), DataError, [f"{path}:", "the file is empty", "expected JSON rows"],
                cli=["export", "--tokenizer", str(env.model), "--data", str(path), "--out", str(tmp / "out")])


@case
def blank_lines_only(tmp, env):
    path = tmp / "blank.jsonl"
    path.write_text("\n  \n\r\n\t\n")
    return Case(prepare(path), DataError, [f"{path}:", "the file is empty"])


@case
def directory_given_as_data(tmp, env):
    (tmp / "pool").mkdir()
    return Case(prepare(tmp / "pool"), DataError, [f"{tmp / 'pool'}:", "is a directory", "expected a .json/.jsonl"])


@case
def missing_data_file(tmp, env):
    return Case(prepare(tmp / "nope.jsonl"), DataError, [f"{tmp / 'nope.jsonl'}:", "no such file"])


@case
def unsupported_file_type(tmp, env):
    path = tmp / "rows.tsv"
    path.write_text("prompt\tcompletion\nq\ta\n")
    return Case(prepare(path), DataError, [f"{path}:", "unsupported file type '.tsv'", "expected .json, .jsonl, .csv"])


@case
def corrupt_parquet(tmp, env):
    path = tmp / "rows.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    return Case(prepare(path), DataError, [f"{path}:", "not a readable Parquet file"])


@case
def unknown_row_format(tmp, env):
    path = lines(tmp / "text.jsonl", '{"text": "a document"}')
    return Case(prepare(path), DataError, [f"{path}:1:", "unknown row shape; the row has keys ['text']",
                                           "closest known shapes", "--columns messages=KEY"])


# -- rows --------------------------------------------------------------------------------------------------------
@case
def missing_field(tmp, env):
    return row_case(tmp, env, '{"prompt": "p"}', ["missing field 'completion'"])


@case
def wrong_typed_field(tmp, env):
    return row_case(tmp, env, '{"prompt": "p", "completion": 4}', ["field 'completion' must be a string, got int"])


@case
def null_content(tmp, env):
    return row_case(tmp, env, '{"prompt": "p", "completion": null}', ["is null, expected a string"])


@case
def empty_response(tmp, env):
    return row_case(tmp, env, '{"prompt": "p", "completion": ""}', ["empty or whitespace only, expected text"])


@case
def whitespace_only_response(tmp, env):
    return row_case(tmp, env, '{"prompt": "p", "completion": " \\n\\t "}', ["empty or whitespace only"])


@case
def empty_messages(tmp, env):
    return row_case(tmp, env, '{"messages": []}', ["no assistant turn", "expected at least one response"],
                    first=CHAT_GOOD)


@case
def chat_without_assistant_turn(tmp, env):
    return row_case(tmp, env, '{"messages": [{"role": "user", "content": "hi"}]}', ["no assistant turn"],
                    first=CHAT_GOOD)


@case
def unknown_role(tmp, env):
    return row_case(tmp, env, '{"messages": [{"role": "bot", "content": "hi"}]}',
                    ["unknown role 'bot'", "expected one of ['assistant', 'chatbot',", "map it with --columns 'bot=assistant'"],
                    first=CHAT_GOOD)


@case
def message_without_content(tmp, env):
    return row_case(tmp, env, '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}',
                    ["messages[1] has no 'content'"], first=CHAT_GOOD)


@case
def message_not_an_object(tmp, env):
    return row_case(tmp, env, '{"messages": ["hello"]}', ["messages[0] must be an object with 'role' and 'content'"],
                    first=CHAT_GOOD)


@case
def content_part_without_text(tmp, env):
    row = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text"}]}]}'
    return row_case(tmp, env, row, ["messages[1].content[0] must be a text part", "got keys ['type']"],
                    first=CHAT_GOOD)


@case
def duplicate_ids(tmp, env):
    path = lines(tmp / "dup.jsonl", '{"id": "a", "prompt": "p", "completion": "c"}',
                 '{"id": "b", "prompt": "p", "completion": "c"}', '{"id": "a", "prompt": "q", "completion": "d"}')
    return Case(prepare(path), DataError, [f"{path}:3:", "duplicate id 'a'", "first seen at row 0",
                                           "expected unique ids"])


@case
def wrong_typed_id(tmp, env):
    return row_case(tmp, env, '{"id": {"n": 1}, "prompt": "p", "completion": "c"}',
                    ["field 'id' must be a string or integer, got dict"])


@case
def alpaca_input_not_text(tmp, env):
    return row_case(tmp, env, '{"instruction": "i", "input": ["x"], "output": "o"}',
                    ["field 'input' must be a string"], first='{"instruction": "i", "output": "o"}')


@case
def named_field_missing(tmp, env):
    path = lines(tmp / "g.jsonl", '{"question": "q", "answer": "a"}', '{"q": "q", "answer": "a"}')
    return Case(prepare(path, FIELDS), DataError, [f"{path}:2:", "missing field 'question'"])


@case
def prompt_field_without_response_field(tmp, env):
    path = lines(tmp / "g.jsonl", '{"question": "q", "answer": "a"}')
    return Case(prepare(path, tc.DataConfig(prompt_field="question")), DataError,
                ["--prompt-field and --response-field must be given together"])


@case
def null_in_parquet(tmp, env):
    path = tmp / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["p", "q"], "completion": ["c", None]}), path)
    return Case(prepare(path), DataError, [f"{path}: row 1:", "is null, expected a string"])


@case
def every_response_cut_off_by_truncation(tmp, env):
    long_prompt = json.dumps({"prompt": "why " * 60, "completion": "because"})
    path = lines(tmp / "long.jsonl", long_prompt, long_prompt.replace("because", "since"))
    return Case(prepare(path, max_seq_len=32), DataError,
                [f"{path}: no row has a response token within max_seq_len 32", "raise --max-seq-len"])


@case
def every_row_invalid_even_when_skipping(tmp, env):
    path = lines(tmp / "bad.jsonl", '{"prompt": "p", "completion": null}', '{"prompt": 1, "completion": "c"}')
    return Case(prepare(path, tc.DataConfig(skip_invalid=True)), DataError,
                [f"{path}:", "all 2 rows are invalid", "field 'completion' is null"])


# -- settings ----------------------------------------------------------------------------------------------------
@case
def keep_ratio_zero(tmp, env):
    return Case(lambda: tc.SelectConfig(keep_ratio=0.0), ConfigError, ["keep_ratio must be in (0, 1], got 0.0"],
                cli=["select", "--base", str(env.base), "--ref", str(env.ref), "--out", str(tmp / "s"),
                     "--keep-ratio", "0"])


@case
def keep_ratio_above_one(tmp, env):
    return Case(lambda: tc.select(env.base, env.ref, tmp / "s", tc.SelectConfig(keep_ratio=1.5)), ConfigError,
                ["keep_ratio must be in (0, 1], got 1.5"])


@case
def keep_ratio_nan(tmp, env):
    return Case(lambda: tc.SelectConfig(keep_ratio=float("nan")), ConfigError, ["keep_ratio must be in (0, 1]"])


@case
def config_value_of_wrong_type(tmp, env):
    path = tmp / "run.yaml"
    path.write_text("keep_ratio: most of them\n")
    return Case(command(["run", "--config", str(path), "--out", str(tmp / "r")]), ConfigError,
                [f"{path}: setting keep_ratio", "must be a number", "'most of them'"])


@case
def config_unknown_setting(tmp, env):
    path = tmp / "run.yaml"
    path.write_text("keep_ration: 0.5\n")
    return Case(command(["run", "--config", str(path), "--out", str(tmp / "r")]), ConfigError,
                [f"{path}:", "unknown setting(s) ['keep_ration']", "allowed:"])


@case
def max_seq_len_too_small(tmp, env):
    return Case(lambda: tc.TokenizeConfig(max_seq_len=1), ConfigError, ["max_seq_len must be >= 2, got 1"])


@case
def cuda_requested_without_gpu(tmp, env):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    return Case(lambda: tc.score(env.model, env.data_a, tmp / "s", data_config=FIELDS, device="cuda"), ConfigError,
                ["device 'cuda' requested but no CUDA device is available", "use --device cpu"],
                cli=["score", "--model", str(env.model), "--data", str(env.data_a), "--prompt-field", "question",
                     "--response-field", "answer", "--out", str(tmp / "s"), "--device", "cuda"])


@case
def unknown_device(tmp, env):
    return Case(lambda: tc.score(env.model, env.data_a, tmp / "s", data_config=FIELDS, device="gpu"), ConfigError,
                ["unknown device 'gpu'", "expected cpu, cuda"])


# -- run directories ---------------------------------------------------------------------------------------------
def _run(env: Env, out: Path, **kw) -> Callable[[], object]:
    cfg = {"base": str(env.model), "data": str(env.data_a), "out": str(out), "prompt_field": "question",
           "response_field": "answer", **kw}
    return lambda: tc.run(tc.RunConfig.from_flat(cfg))


@case
def out_is_a_file(tmp, env):
    (tmp / "out").write_text("notes")
    return Case(_run(env, tmp / "out"), ConfigError, [f"{tmp / 'out'}: is a file, expected a run directory"])


@case
def out_is_someone_elses_directory(tmp, env):
    (tmp / "home").mkdir()
    (tmp / "home" / "thesis.tex").write_text("...")
    return Case(_run(env, tmp / "home"), ConfigError, [f"{tmp / 'home'}:", "holds no tokenclean run",
                                                       "choose a new or empty --out"])


@case
def run_directory_with_other_settings(tmp, env):
    from tokenclean.runs.stages import Run

    Run(tc.RunConfig.from_flat({"base": str(env.model), "data": str(env.data_a), "out": str(tmp / "r"),
                                "prompt_field": "question", "response_field": "answer"})).write_config()
    return Case(_run(env, tmp / "r", keep_ratio=0.5), ConfigError,
                [f"{tmp / 'r'} holds a run with other settings", "keep_ratio: 0.6 -> 0.5", "--overwrite", "--out"])


# -- models and tokenizers ---------------------------------------------------------------------------------------
def _model_case(tmp: Path, env: Env, model: Path, expect: list[str], error: type = ModelError) -> Case:
    return Case(lambda: tc.score(model, env.data_a, tmp / "s", data_config=FIELDS, progress=False), error,
                [str(model), *expect],
                cli=["score", "--model", str(model), "--data", str(env.data_a), "--prompt-field", "question",
                     "--response-field", "answer", "--out", str(tmp / "s")])


def _copy_model(tmp: Path, env: Env) -> Path:
    return Path(shutil.copytree(env.model, tmp / "model"))


@case
def missing_model_directory(tmp, env):
    return _model_case(tmp, env, tmp / "no-such-model", ["no such model directory"])


@case
def model_path_is_a_file(tmp, env):
    (tmp / "model.safetensors").write_bytes(b"x")
    return _model_case(tmp, env, tmp / "model.safetensors", ["is a file, expected a model directory"])


@case
def model_directory_without_config(tmp, env):
    model = _copy_model(tmp, env)
    (model / "config.json").unlink()
    return _model_case(tmp, env, model, ["no config.json", "expected a model directory"])


@case
def garbage_config_json(tmp, env):
    model = _copy_model(tmp, env)
    (model / "config.json").write_text("{this is not json")
    return _model_case(tmp, env, model, ["could not load", "config.json", "not a valid JSON"])


@case
def model_without_weights(tmp, env):
    model = _copy_model(tmp, env)
    (model / "model.safetensors").unlink()
    return _model_case(tmp, env, model, ["could not load a causal LM", "model.safetensors"])


@case
def truncated_weights(tmp, env):
    model = _copy_model(tmp, env)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return _model_case(tmp, env, model, ["safetensors weights are corrupt or truncated", "copy them again"])


@case
def pickled_weights_only(tmp, env):
    model = _copy_model(tmp, env)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    return _model_case(tmp, env, model, ["only pickled .bin weights", "expected model.safetensors", "never unpickles"])


@case
def model_directory_without_tokenizer(tmp, env):
    model = _copy_model(tmp, env)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model / f).unlink()
    return _model_case(tmp, env, model, ["no tokenizer files", "tokenizer.save_pretrained"])


@case
def tokenizer_does_not_belong_to_model(tmp, env):
    model = tmp / "small-vocab"
    tiny_llama(vocab_size=1000).save_pretrained(model)
    env.tokenizer.save_pretrained(model)  # GPT-2's 50257 tokens for an embedding of 1000 rows
    return _model_case(tmp, env, model, ["token id", "embedding has only 1000 rows", "tokenizer does not belong"])


# -- artifacts (scores and selections) ---------------------------------------------------------------------------
def _edited_scores(tmp: Path, env: Env, value: float) -> Path:
    scores = tc.Scores.load(env.ref)
    first_scored = int(np.flatnonzero(~np.isnan(scores.token_loss))[3])
    scores.token_loss[first_scored] = value
    scores.save(tmp / "edited")
    return tmp / "edited"


@case
def nan_loss_at_a_response_token(tmp, env):
    edited = _edited_scores(tmp, env, np.nan)
    return Case(lambda: tc.select(env.base, edited, tmp / "s"), DataError,
                [f"{edited}:", "token_loss is NaN at sample '0' (row 0), token", "expected a finite loss"])


@case
def nan_loss_in_both_scores(tmp, env):
    base, ref = _edited_scores(tmp / "b", env, np.nan), _edited_scores(tmp / "r", env, np.nan)
    return Case(lambda: tc.select(base, ref, tmp / "s"), DataError,
                [f"{base}:", "finite losses but", "scored tokens recorded in scores.json", "expected a finite loss"])


@case
def infinite_loss(tmp, env):
    edited = _edited_scores(tmp, env, np.inf)
    return Case(lambda: tc.select(env.base, edited, tmp / "s"), DataError,
                [f"{edited}:", "token_loss is inf at sample '0' (row 0)", "expected finite losses"])


@case
def scores_of_another_dataset(tmp, env):
    other = tmp / "other"
    tc.score(env.model, env.data_b, other, data_config=FIELDS, progress=False)
    return Case(lambda: tc.select(env.base, other, tmp / "s"), MismatchError,
                [str(env.base), str(other), "different data", "score, select and train with the same data"])


@case
def scores_made_with_another_tokenizer(tmp, env):
    other = tmp / "other"
    tc.score(env.other_tok_model, env.data_a, other, data_config=FIELDS, progress=False)
    return Case(lambda: tc.select(env.base, other, tmp / "s"), MismatchError,
                [str(env.base), str(other), "different tokenizer"])


@case
def selection_of_another_dataset(tmp, env):
    return Case(lambda: tc.export(env.data_b, tmp / "x", tokenizer=env.model, selection=env.sel, data_config=FIELDS),
                MismatchError, [f"selection ({env.sel})", f"data ({env.data_b})", "different data"],
                cli=["export", "--tokenizer", str(env.model), "--data", str(env.data_b), "--prompt-field", "question",
                     "--response-field", "answer", "--selection", str(env.sel), "--out", str(tmp / "x")])


@case
def selection_made_with_another_tokenizer(tmp, env):
    return Case(lambda: tc.export(env.data_a, tmp / "x", tokenizer=env.other_tok_model, selection=env.sel,
                                  data_config=FIELDS),
                MismatchError, [f"selection ({env.sel})", "different tokenizer"])


@case
def data_file_given_as_scores(tmp, env):
    return Case(lambda: tc.select(env.data_a, env.ref, tmp / "s"), MismatchError,
                [f"{env.data_a}: not a scores directory (no token_loss.parquet)"])


@case
def corrupt_scores_file(tmp, env):
    broken = Path(shutil.copytree(env.ref, tmp / "broken"))
    (broken / "token_loss.parquet").write_bytes(b"garbage")
    return Case(lambda: tc.select(env.base, broken, tmp / "s"), DataError,
                [f"{broken / 'token_loss.parquet'}: not a readable Parquet file"])


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, gpt2_tokenizer, gsm8k_rows) -> Env:
    tmp = tmp_path_factory.mktemp("bad-input")
    data_a = write_jsonl(tmp / "a.jsonl", gsm8k_rows[:6])
    data_b = write_jsonl(tmp / "b.jsonl", gsm8k_rows[6:12])
    ref_model = tmp / "ref-model"
    tiny_llama(seed=1).save_pretrained(ref_model)
    gpt2_tokenizer.save_pretrained(ref_model)
    tc.score(tiny_model_dir, data_a, tmp / "base", data_config=FIELDS, progress=False)
    tc.score(ref_model, data_a, tmp / "ref", data_config=FIELDS, progress=False)
    tc.select(tmp / "base", tmp / "ref", tmp / "sel")
    other = Path(shutil.copytree(tiny_model_dir, tmp / "chat-model"))
    tok = gpt2_tokenizer.__class__.from_pretrained(str(tiny_model_dir))
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(other)
    return Env(gpt2_tokenizer, tiny_model_dir, tmp / "base", tmp / "ref", tmp / "sel", data_a, data_b, other)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_input_gets_one_clear_error(name, tmp_path, env):
    c = CASES[name](tmp_path, env)
    with pytest.raises(TokencleanError) as info:
        c.act()
    assert type(info.value) is c.error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in info.value.message  # one line, then (the unknown-shape error) a few hint lines
    assert len(message.splitlines()) == 1 + len(info.value.hints) <= 5
    for part in c.expect:
        assert part in message, f"{part!r} not in {message!r}"


CLI_CASES = sorted(name for name in CASES if name in {
    "malformed_json_line", "invalid_utf8_bytes", "null_content", "empty_file", "keep_ratio_zero",
    "cuda_requested_without_gpu", "garbage_config_json", "pickled_weights_only", "selection_of_another_dataset",
    "tokenizer_does_not_belong_to_model"})


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_prints_the_same_error_in_one_line(name, tmp_path, env, capsys):
    c = CASES[name](tmp_path, env)
    capsys.readouterr()  # what making the case printed (a model's save progress bar) is not the command's output
    assert main([*c.cli, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tokenclean {c.cli[0]}: error: ")
    assert all(part in err[0] for part in c.expect)


# -- what is tolerated -------------------------------------------------------------------------------------------
def test_awkward_but_valid_files_are_read(tmp_path, gpt2_tokenizer):
    path = tmp_path / "awkward.jsonl"
    rows = [
        b'\xef\xbb\xbf{"id": "bom", "prompt": "p", "completion": "c"}\r\n',  # BOM, CRLF
        b"\r\n   \n",  # blank lines are not rows
        '{"id": "ls", "prompt": "a\u2028b", "completion": "line\u2029separators"}\n'.encode(),  # legal in JSON
        b'{"id": 7, "prompt": "p", "completion": "no newline at the end"}',
    ]
    path.write_bytes(b"".join(rows))
    tokens, report = tc.prepare_tokens(path, gpt2_tokenizer)
    assert tokens.sample_ids == ["bom", "ls", "7"]
    assert report.rows == 3 and report.used == 3 and not report.skipped


def test_a_huge_row_is_truncated_and_counted(tmp_path, gpt2_tokenizer):
    huge = {"prompt": "Summarise.", "completion": "word " * 100_000}
    path = write_jsonl(tmp_path / "huge.jsonl", [{"prompt": "p", "completion": "c"}, huge])
    tokens, report = tc.prepare_tokens(path, gpt2_tokenizer, tokenize_config=tc.TokenizeConfig(max_seq_len=64))
    assert tokens.lengths.tolist()[1] == 64 and report.truncated == 1 and report.used == 2


def test_a_row_whose_response_is_cut_off_is_skipped_counted_and_warned(tmp_path, gpt2_tokenizer, caplog):
    import logging

    long_prompt = {"prompt": "why " * 60, "completion": "because"}
    path = write_jsonl(tmp_path / "long.jsonl", [json.loads(GOOD), long_prompt, {**long_prompt, "id": "x"}])
    with caplog.at_level(logging.WARNING, logger="tokenclean"):
        tokens, report = tc.prepare_tokens(path, gpt2_tokenizer, tokenize_config=tc.TokenizeConfig(max_seq_len=32))
    assert len(tokens) == 1 and report.used == 1 and report.rows == 3  # without --skip-invalid
    assert report.skip_counts() == {"response cut off by truncation": 2}
    assert [(s["row"], s["line"]) for s in report.skipped] == [(1, 2), (2, 3)]
    assert "max_seq_len 32" in report.skipped[0]["detail"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 rows skipped" in warnings[0] and f"(first: {path}:2)" in warnings[0]


# -- skipping and accounting -------------------------------------------------------------------------------------
MIXED = [
    b'\xef\xbb\xbf{"id": "g0", "question": "What is 1 + 1?", "answer": "It is 2."}\r',
    b'{"id": "g1", "question": "Name a colour.", "answer": "Blue."}',
    b'{"id": "m0", "question": "q", "answer": ',  # malformed JSON
    b'{"id": "u0", "question": "caf\xe9?", "answer": "yes"}',  # invalid UTF-8
    b'{"id": "f0", "question": "q"}',  # missing field
    b'{"id": "n0", "question": "q", "answer": null}',  # null
    b'{"id": "t0", "question": "q", "answer": 42}',  # wrong type
    b'{"id": "e0", "question": "q", "answer": "   "}',  # empty text
    b'{"id": "g1", "question": "again?", "answer": "duplicate"}',  # duplicate id
    b'"a string"',  # not an object
    json.dumps({"id": "long", "question": "why " * 80, "answer": "because"}).encode(),  # response cut off
    json.dumps({"id": "trunc", "question": "Explain.", "answer": "step " * 80}).encode(),  # truncated, kept
    *[json.dumps({"id": f"g{i}", "question": f"What is {i} + {i}?", "answer": f"It is {2 * i}."}).encode()
      for i in range(2, 12)],
]
MIXED_REASONS = {"malformed JSON": 1, "invalid UTF-8": 1, "missing field": 1, "null": 1, "wrong type": 1,
                 "empty text": 1, "duplicate id": 1, "not an object": 1, "response cut off by truncation": 1}


def test_skip_invalid_counts_every_bad_row_with_its_reason(tmp_path, gpt2_tokenizer):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(MIXED) + b"\n")
    cfg = tc.DataConfig(prompt_field="question", response_field="answer", skip_invalid=True)
    tokens, report = tc.prepare_tokens(path, gpt2_tokenizer, cfg, tc.TokenizeConfig(max_seq_len=64))
    assert report.skip_counts() == MIXED_REASONS
    assert report.rows == len(MIXED) and report.used == len(MIXED) - sum(MIXED_REASONS.values()) == len(tokens)
    assert report.truncated == 1 and tokens.meta["truncated_samples"] == 1
    by_line = {s["line"]: s["reason"] for s in report.skipped}
    assert by_line[3] == "malformed JSON" and by_line[9] == "duplicate id" and by_line[11].startswith("response cut")
    assert [s["row"] for s in report.skipped] == sorted(s["row"] for s in report.skipped)
    assert "long" not in tokens.sample_ids and "trunc" in tokens.sample_ids
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):  # without --skip-invalid: the first one
        tc.prepare_tokens(path, gpt2_tokenizer, tc.DataConfig(prompt_field="question", response_field="answer"))


@pytest.mark.slow
def test_summary_accounts_for_every_input_row(tmp_path, tiny_model_dir):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(MIXED) + b"\n")
    cfg = tc.RunConfig.from_flat({
        "base": str(tiny_model_dir), "data": str(path), "out": str(tmp_path / "run"), "method": "full",
        "prompt_field": "question", "response_field": "answer", "skip_invalid": True, "max_seq_len": 64,
        "eval_fraction": 0.25, "max_steps": 1, "batch_size": 4, "gradient_accumulation_steps": 1, "lora_r": 4,
        "warmup_min_steps": 1})
    tc.run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    data = summary["data"]
    assert data["rows"] == len(MIXED)
    assert data["skipped_by_reason"] == MIXED_REASONS and data["skipped"] == sum(MIXED_REASONS.values())
    assert data["rows"] == data["used"] + sum(data["skipped_by_reason"].values())
    assert data["used"] == summary["pool"]["samples"] + data["heldout"] and data["heldout"] == 3
    assert data["truncated"] == 1
    assert len(data["skipped_rows"]) == data["skipped"] and all(s["detail"] for s in data["skipped_rows"])
