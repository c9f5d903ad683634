"""Configuration: typed dataclasses per stage, one flat YAML file, command-line overrides.

Each stage's settings live in a dataclass next to the code that uses them (``DataConfig`` in ``data.py``,
``TokenizeConfig`` in ``tokens.py``, ``ScoreConfig``, ``SelectConfig``, ``TrainConfig``). Fields are declared
with ``option(default, help)``, so the command-line flags, their help and the YAML keys all come from one place:
field ``keep_ratio`` is flag ``--keep-ratio`` and YAML key ``keep_ratio``. Precedence: defaults < YAML < flags.
A renamed setting keeps its former name (``option(..., renamed_from=...)``) as a deprecated flag and YAML key that
warn, and as its name in stage keys (``stage_settings``), so runs made before the rename keep resuming.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger("tokenclean")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (used for ``--help`` and the docs). ``renamed_from``: the setting's
    former name, still accepted (with a warning). ``speed_only=True``: the setting changes speed or memory, never a
    result, so a run directory made with another value resumes (``speed_settings``)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, is_list) of an annotation like ``int``, ``str | None``, ``list[int]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def add_config_args(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                    skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> Any:
    """Add one ``--flag`` per field of dataclass ``cls`` (or per field named in ``only``) to a new argument group
    of ``parser``, and return the group; unset flags stay ``None`` so YAML values survive."""
    group = parser.add_argument_group(title or cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    add_fields(group, cls, skip, only)
    return group


def add_fields(group: Any, cls: type, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """The flags of ``add_config_args``, added to an existing parser or argument group."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only) or "help" not in f.metadata:
            continue
        scalar, is_list = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata["help"] + ("" if default in (None, dataclasses.MISSING) else f" (default: {default})")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if scalar is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif is_list:
            group.add_argument(flag, nargs="+", type=scalar, **kwargs)
        else:
            group.add_argument(flag, type=scalar, **kwargs)
        if "renamed_from" in f.metadata:
            assert scalar is not bool and not is_list, "a renamed flag takes one value"
            former = "--" + f.metadata["renamed_from"].replace("_", "-")
            group.add_argument(former, type=scalar, dest=f.name, default=None, help=argparse.SUPPRESS,
                               action=_Deprecated, current=flag)


class _Deprecated(argparse.Action):
    """A renamed flag's former name: sets the setting and warns."""

    def __init__(self, *args: Any, current: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.current = current

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        log.warning("%s is deprecated: use %s", option_string, self.current)
        setattr(namespace, self.dest, values)


def renamed_settings(*classes: type) -> dict[str, str]:
    """Former setting name -> current name, for the renamed fields of ``classes``."""
    return {f.metadata["renamed_from"]: f.name for cls in classes for f in dataclasses.fields(cls)
            if "renamed_from" in f.metadata}


def speed_settings(*classes: type) -> tuple[str, ...]:
    """The fields of ``classes`` marked ``speed_only``: a run made with other values of these is the same run."""
    return tuple(f.name for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("speed_only"))


def current_names(values: dict[str, Any], classes: tuple[type, ...], where: str = "") -> dict[str, Any]:
    """``values`` with each setting given under a former name moved to its current name, with a warning (``where``:
    the file, for the message)."""
    values = dict(values)
    for former, current in renamed_settings(*classes).items():
        if former in values:
            log.warning("%ssetting %s is deprecated: use %s", f"{where}: " if where else "", former, current)
            value = values.pop(former)
            values.setdefault(current, value)
    return values


def stage_settings(obj: Any) -> dict[str, Any]:
    """A config dataclass as the stage keys hold it: ``asdict``, with a renamed setting under its former name, so a
    rename leaves the keys (and the stages of runs made before it) as they were, and without the settings that
    change only speed or memory (``speed_settings``), so those neither redo a stage nor key a new one."""
    former = {current: old for old, current in renamed_settings(type(obj)).items()}
    speed = speed_settings(type(obj))
    return {former.get(k, k): v for k, v in dataclasses.asdict(obj).items() if k not in speed}


def build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from the keys of ``values`` that are its fields (unknown keys ignored here); a value of
    the wrong type (e.g. from YAML) is a ``ConfigError`` naming the setting."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _checked(k, v, hints[k]) for k, v in values.items() if k in names and v is not None})


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type: ints are accepted for floats, one string for a list of strings."""
    scalar, is_list = _base_type(hint)
    if is_list and not isinstance(value, list):
        value = [value]
    for v in value if is_list else [value]:
        ok = isinstance(v, scalar) and not (scalar is int and isinstance(v, bool))
        ok = ok or (scalar is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok and scalar in _KINDS:
            raise ConfigError(f"setting {name} (--{name.replace('_', '-')}) must be {_KINDS[scalar]}"
                              f"{' or a list of them' if is_list else ''}, got {v!r}")
    if scalar is float and not is_list:
        return float(value)
    return value


def field_names(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def load_yaml(path: str | Path, allowed: set[str], classes: tuple[type, ...] = ()) -> dict[str, Any]:
    """Read a flat YAML mapping of settings; unknown keys are an error naming the allowed ones, and so is a value
    of the wrong type for a field of ``classes``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value, got {type(values).__name__}")
    values = current_names({str(k).replace("-", "_"): v for k, v in values.items()}, classes, str(path))
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
    hints = {k: v for cls in classes for k, v in typing.get_type_hints(cls).items()}
    for name, value in values.items():
        if name in hints and value is not None:
            try:
                values[name] = _checked(name, value, hints[name])
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    return values


def merge_settings(args: argparse.Namespace, allowed: set[str], classes: tuple[type, ...] = ()) -> dict[str, Any]:
    """Defaults < ``--config`` YAML < flags given on the command line. ``classes``: check the YAML values' types
    against these dataclasses' fields."""
    values = load_yaml(args.config, allowed, classes) if getattr(args, "config", None) else {}
    for name in allowed:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return values


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
