"""Settings shared by ``run`` and the stage commands are declared once, as config dataclass fields."""

import ast
import dataclasses
from pathlib import Path

import pytest

import tokenclean.cli as cli
from tokenclean.cli import _drop_empty, _settings, build_parser
from tokenclean.runs.config import RunSettings
from tokenclean.selection.select import SelectConfig

SHARED = {"device": RunSettings, "dtype": RunSettings, "trust_remote_code": RunSettings, "seed": RunSettings,
          "drop_empty": SelectConfig}


def _actions(command: str) -> dict[str, object]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions}


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


@pytest.mark.parametrize("command, names", [("score", ("device", "dtype", "trust_remote_code")),
                                            ("train", ("device", "trust_remote_code", "seed", "drop_empty")),
                                            ("export", ("trust_remote_code", "drop_empty"))])
def test_stage_flags_come_from_the_dataclass_fields(command, names):
    actions = _actions(command)
    for name in names:
        help_text = _field(SHARED[name], name).metadata["help"]
        assert actions[name].help.startswith(help_text), (command, name)
        assert actions[name].option_strings[0] == "--" + name.replace("_", "-")


def test_defaults_and_values_reach_the_commands():
    parser = build_parser(["train"])
    base = ["train", "--model", "m", "--data", "d", "--out", "o"]
    args = parser.parse_args(base)
    settings = _settings(args)
    assert (settings.seed, settings.device, settings.trust_remote_code, _drop_empty(args)) == (0, None, False, True)
    args = parser.parse_args([*base, "--seed", "7", "--device", "cpu", "--trust-remote-code", "--no-drop-empty"])
    settings = _settings(args)
    assert (settings.seed, settings.device, settings.trust_remote_code, _drop_empty(args)) == (7, "cpu", True, False)
    args = build_parser(["score"]).parse_args(["score", "--model", "m", "--data", "d", "--out", "o"])
    assert _settings(args).dtype == "auto"


def test_cli_writes_no_flag_of_a_declared_setting_by_hand():
    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    written = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", None) == "add_argument" and node.args
               and isinstance(node.args[0], ast.Constant)}
    declared = {"--" + f.name.replace("_", "-") for cls in (RunSettings, SelectConfig) for f in dataclasses.fields(cls)}
    assert not written & declared - {"--data", "--out", "--base"}, written & declared


def test_the_learning_rate_warmup_keeps_its_former_name_as_a_deprecated_alias(tmp_path, caplog):
    """--warmup-ratio (and the YAML key warmup_ratio) still set the LR warm-up, now lr_warmup_ratio, with a
    warning; stage keys spell it by its former name, so runs made before the rename keep their stages."""
    from tokenclean.compute.training import TrainConfig
    from tokenclean.config import merge_settings, stage_settings
    from tokenclean.runs.config import RunConfig
    from tokenclean.runs.store import write_config

    parser = build_parser(["run"])
    for flag in ("--lr-warmup-ratio", "--warmup-ratio"):
        caplog.clear()
        args = parser.parse_args(["run", flag, "0.25"])
        assert args.lr_warmup_ratio == 0.25 and ("deprecated" in caplog.text) is (flag == "--warmup-ratio")
    run_help = next(a for a in parser._actions if a.dest == "command").choices["run"].format_help()
    assert "--lr-warmup-ratio" in run_help and "--warmup-ratio" not in run_help  # the old name is not advertised
    (tmp_path / "old.yaml").write_text("warmup_ratio: 0.5\n")
    args = parser.parse_args(["run", "--config", str(tmp_path / "old.yaml")])
    sections = tuple(RunConfig.SECTIONS.values())
    caplog.clear()
    cfg = RunConfig.from_flat(merge_settings(args, cli.run_settings_names(), sections))
    assert cfg.train.lr_warmup_ratio == 0.5 and "old.yaml: setting warmup_ratio is deprecated" in caplog.text
    assert RunConfig.from_flat({"warmup_ratio": 0.5}).train.lr_warmup_ratio == 0.5
    settings = stage_settings(TrainConfig(lr_warmup_ratio=0.5))
    assert settings["warmup_ratio"] == 0.5 and "lr_warmup_ratio" not in settings
    # a run directory whose config.yaml was written before the rename is the same run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("warmup_ratio: 0.5\n")
    from tokenclean.config import renamed_settings

    write_config(tmp_path / "run", cfg.flat(), RunConfig().flat(), False, renamed=renamed_settings(*sections))
