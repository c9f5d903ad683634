"""Safety (nothing unpickled, no remote code unless asked, outputs inside the run directory, no silent overwrite of
another run) and clear resource errors (disk full, out of memory, no GPU)."""

from __future__ import annotations

import ast
import errno
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from conftest import chat_table, tiny_llama, write_jsonl

import tokenclean as tc
from tokenclean.cli import main
from tokenclean.errors import ConfigError, ResourceError
from tokenclean.io import atomic_dir, write_json
from tokenclean.runs.config import RunConfig
from tokenclean.runs.stages import Run

PACKAGE = Path(tc.__file__).parent
FIELDS = tc.DataConfig(prompt_field="question", response_field="answer")
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_calls(source: str) -> list[str]:
    """Lines of ``source`` that unpickle, load weights other than safetensors, run remote code or eval strings."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in UNPICKLERS for m in modules):
                problems.append(f"{node.lineno}: imports {modules}")
        if not isinstance(node, ast.Call):
            continue
        name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}

        def const(key, kw=kw):
            return kw[key].value if isinstance(kw.get(key), ast.Constant) else None

        if name.endswith("torch.load") and const("weights_only") is not True:
            problems.append(f"{node.lineno}: torch.load without weights_only=True")
        if name.endswith(("np.load", "numpy.load")) and const("allow_pickle") is True:
            problems.append(f"{node.lineno}: np.load(allow_pickle=True)")
        if const("trust_remote_code") is True:
            problems.append(f"{node.lineno}: trust_remote_code=True")
        if (name.endswith("AutoModelForCausalLM.from_pretrained") and const("use_safetensors") is not True
                and "gguf_file" not in kw):  # GGUF files are read by the gguf parser, never unpickled
            problems.append(f"{node.lineno}: a model loaded without use_safetensors=True")
        if name in ("eval", "exec"):
            problems.append(f"{node.lineno}: {name}()")
    return problems


def test_the_scanner_finds_unsafe_code():
    bad = ("import pickle\nimport torch\nfrom transformers import AutoModelForCausalLM\ntorch.load(f)\n"
           "AutoModelForCausalLM.from_pretrained(p)\nAutoTokenizer.from_pretrained(p, trust_remote_code=True)\n")
    assert len(unsafe_calls(bad)) == 4
    assert not unsafe_calls("torch.load(f, weights_only=True)\nAutoModelForCausalLM.from_pretrained(p, "
                            "use_safetensors=True, trust_remote_code=flag)\n"
                            "AutoModelForCausalLM.from_pretrained(d, gguf_file=name)\n")


def test_the_package_never_unpickles_nor_runs_remote_code_by_itself():
    problems = {str(p.relative_to(PACKAGE)): unsafe_calls(p.read_text(encoding="utf-8"))
                for p in sorted(PACKAGE.rglob("*.py"))}
    assert not {k: v for k, v in problems.items() if v}


@pytest.mark.slow
def test_resuming_training_unpickles_nothing(tmp_path, gpt2_tokenizer, monkeypatch):
    """A resume reads the Trainer's checkpoint (optimizer, scheduler, RNG state) and the model: with every pickle
    entry point disabled it must still work."""
    from tokenclean.compute.training import TrainConfig, train_model

    table = chat_table(gpt2_tokenizer, [(f"Say {i}", f"{i} " * (2 + i)) for i in range(8)])
    cfg = TrainConfig(batch_size=2, gradient_accumulation_steps=1, max_steps=4, save_steps=2, lora_r=4)
    monkeypatch.setenv("TOKENCLEAN_TEST_KILL_AT", "train:ckpt:step2")

    def interrupted(where: str) -> None:
        if where == "train:ckpt:step2":
            raise KeyboardInterrupt

    monkeypatch.setattr("tokenclean.io.crash_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_llama(), gpt2_tokenizer, table, tmp_path / "m1", cfg, checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint-2").is_dir()
    monkeypatch.delenv("TOKENCLEAN_TEST_KILL_AT")

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    result = train_model(tiny_llama(), gpt2_tokenizer, table, tmp_path / "m2", cfg, checkpoint_dir=tmp_path / "ckpt")
    assert result["resumed_from"].endswith("checkpoint-2") and result["optimizer_steps"] == 4
    tc.score(tmp_path / "m2", table, progress=False)  # the saved model loads without unpickling too


def _record_kwargs(monkeypatch, cls) -> list[dict]:
    seen: list[dict] = []
    original = cls.from_pretrained
    monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: seen.append(k) or original(*a, **k))
    return seen


def test_remote_code_runs_only_when_asked(tmp_path, tiny_model_dir, gsm8k_rows, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:2])
    models, tokenizers = _record_kwargs(monkeypatch, AutoModelForCausalLM), _record_kwargs(monkeypatch, AutoTokenizer)
    common = ["score", "--model", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
              "--response-field", "answer", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert [k["trust_remote_code"] for k in models + tokenizers] == [False, False]
    assert models[0]["use_safetensors"] is True
    assert main([*common, "--out", str(tmp_path / "b"), "--trust-remote-code"]) == 0
    assert [k["trust_remote_code"] for k in models[1:] + tokenizers[1:]] == [True, True]
    assert tc.RunSettings().trust_remote_code is False


# -- paths ---------------------------------------------------------------------------------------------------------
def _config(tmp_path: Path, tiny_model_dir: Path, **kw) -> RunConfig:
    data = tmp_path / "d.jsonl"
    if not data.exists():
        write_jsonl(data, [{"question": "q", "answer": "a"}])
    return RunConfig.from_flat({"base": str(tiny_model_dir), "data": str(data), "out": str(tmp_path / "run"),
                                "prompt_field": "question", "response_field": "answer", **kw})


def test_stage_paths_cannot_leave_the_run_directory(tmp_path, tiny_model_dir):
    run = Run(_config(tmp_path, tiny_model_dir))
    assert run.path("seed-0/fixed/model") == tmp_path / "run" / "seed-0" / "fixed" / "model"
    for name in ("../outside", "seed-0/../../outside", "/etc/tokenclean"):
        with pytest.raises(ConfigError, match="outside the run directory"):
            run.path(name)


def test_sample_ids_never_become_paths(tmp_path, tiny_model_dir):
    rows = [{"id": "../../escaped", "prompt": "p", "completion": "c"}, {"id": "/etc/passwd", "prompt": "q",
                                                                         "completion": "d"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    before = set(tmp_path.parent.iterdir())
    tc.export(data, tmp_path / "out", tokenizer=tiny_model_dir)
    assert set(tmp_path.parent.iterdir()) == before
    assert {p.name for p in tmp_path.iterdir()} == {"d.jsonl", "out", "out.parquet"}


def test_an_existing_run_is_resumed_only_with_the_same_settings(tmp_path, tiny_model_dir, monkeypatch):
    Run(_config(tmp_path, tiny_model_dir)).write_config()
    monkeypatch.chdir(tmp_path)
    same = _config(tmp_path, tiny_model_dir)
    same.run.data = "d.jsonl"  # the same file, named relative to the working directory
    Run(same).write_config()
    with pytest.raises(ConfigError, match=r"other settings \(keep_ratio: 0.6 -> 0.4, seed: 0 -> 1\)"):
        Run(_config(tmp_path, tiny_model_dir, keep_ratio=0.4, seed=1)).write_config()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["keep_ratio"] == 0.6
    Run(_config(tmp_path, tiny_model_dir, keep_ratio=0.4, overwrite=True)).write_config()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["keep_ratio"] == 0.4
    kept = list((tmp_path / "run").glob("config.*.yaml"))
    assert len(kept) == 1 and yaml.safe_load(kept[0].read_text())["keep_ratio"] == 0.6


def test_compare_and_older_runs_are_not_refused(tmp_path, tiny_model_dir):
    Run(_config(tmp_path, tiny_model_dir, method="full")).write_config(ignore=("method",))
    Run(_config(tmp_path, tiny_model_dir, method="rho")).write_config(ignore=("method",))  # compare's other order
    config = tmp_path / "run" / "config.yaml"
    older = {k: v for k, v in yaml.safe_load(config.read_text()).items() if k not in ("shard_tokens", "overwrite")}
    config.write_text(yaml.safe_dump(older))  # written before those settings existed
    Run(_config(tmp_path, tiny_model_dir, method="rho")).write_config()


def test_settings_of_speed_only_do_not_refuse_a_run(tmp_path, tiny_model_dir):
    """A run made with another scoring batch budget (e.g. the former default, 16384) is the same run: the budget
    changes speed and memory, not the losses; a setting that changes results still refuses."""
    Run(_config(tmp_path, tiny_model_dir, batch_tokens=16384, shard_tokens=500)).write_config()
    Run(_config(tmp_path, tiny_model_dir)).write_config()  # batch_tokens None (the device's default), shard 10^6
    with pytest.raises(ConfigError, match=r"other settings \(keep_ratio: 0.6 -> 0.4\)"):
        Run(_config(tmp_path, tiny_model_dir, keep_ratio=0.4, batch_tokens=64)).write_config()


def test_a_speed_only_training_setting_keys_no_stage():
    """The micro-batch changes only how a step's samples pass through the model: a training stage made with any
    micro-batch (or before the setting existed) has the same key; a setting that changes results changes it."""
    from tokenclean.compute.training import TrainConfig
    from tokenclean.config import stage_settings

    default = stage_settings(TrainConfig())
    assert "micro_batch_size" not in default and default["batch_size"] == 4
    assert stage_settings(TrainConfig(micro_batch_size=2)) == default
    assert stage_settings(TrainConfig(batch_size=2)) != default


# -- resources -----------------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_file_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_json(target, {"old": True})
    monkeypatch.setattr("tokenclean.io.os.fsync", _disk_full)
    with pytest.raises(ResourceError) as info:
        write_json(target, {"new": True})
    message = str(info.value)
    assert message.startswith(str(target)) and "no space left" in message and "another --out" in message
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert json.loads(target.read_text()) == {"old": True}


def test_disk_full_inside_a_stage_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, gsm8k_rows, monkeypatch,
                                                                  capsys):
    import datasets

    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:3])
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", _disk_full)
    code = main(["export", "--tokenizer", str(tiny_model_dir), "--data", str(data), "--prompt-field", "question",
                 "--response-field", "answer", "--out", str(tmp_path / "cleaned"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{tmp_path / 'cleaned'}: no space left on the device" in err[0] and "free some disk space" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_disk_full_reported_by_a_library_in_words(tmp_path):
    with pytest.raises(ResourceError, match="no space left"), atomic_dir(tmp_path / "model"):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           '"No space left on device" })')
    assert not list(tmp_path.iterdir())


def test_a_model_too_large_for_memory(tmp_path, tiny_model_dir, gsm8k_rows, monkeypatch):
    from transformers import AutoModelForCausalLM

    def too_large(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 68719476736 bytes.")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", too_large)
    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:2])
    with pytest.raises(ResourceError) as info:
        tc.score(tiny_model_dir, data, tmp_path / "s", data_config=FIELDS, progress=False)
    message = str(info.value)
    assert message.startswith(f"{tiny_model_dir}: loading the model on cpu: out of memory")
    assert "--dtype bfloat16" in message and "\n" not in message


def test_out_of_memory_while_scoring_and_training(tmp_path, tiny_model_dir, gsm8k_rows, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows[:4])
    monkeypatch.setattr("tokenclean.compute.scoring.token_losses", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")))
    with pytest.raises(ResourceError, match="scoring with .*: out of memory .*lower --batch-tokens"):
        tc.score(tiny_model_dir, data, tmp_path / "s", data_config=FIELDS, progress=False)
    assert not (tmp_path / "s").exists()
    monkeypatch.setattr("tokenclean.compute.training.kept_token_loss_sum", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes")))
    with pytest.raises(ResourceError, match="training .*: out of memory .*--micro-batch-size.*--gradient-checkpointing"):
        tc.train(tiny_model_dir, data, tmp_path / "m", data_config=FIELDS,
                 train_config=tc.TrainConfig(max_steps=1, batch_size=2, gradient_accumulation_steps=1, lora_r=4))
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_one_fails_before_any_work(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    code = main(["run", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--prompt-field", "question", "--response-field", "answer", "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no CUDA device is available" in err and "use --device cpu" in err
    assert not (tmp_path / "run").exists()


def test_written_files_and_directories_get_the_usual_permissions(tmp_path):
    """Temporary files are created private (0600/0700); what is renamed into place must be readable by others as
    if written with open()/mkdir() under the user's umask, e.g. a model directory on a shared cluster."""
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "stage") as tmp:
            write_json(tmp / "b.json", {"y": 2})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "stage").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "stage" / "b.json").stat().st_mode & 0o777 == 0o644
