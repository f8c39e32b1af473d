"""Typed settings from plain mappings (YAML, keyword arguments, `--option k=v`), with the key path in every error.

One converter serves every configuration of the project: params.yaml's sections (`agegender.params`), the
training settings they hold (`agegender.mivolo.config.TrainConfig`, `agegender.mllm.finetune.config.
FinetuneConfig`) and the options of each MLLM backend (`agegender.mllm.backend_options`). A settings class is a
frozen dataclass whose annotations say the types and whose defaults are the only defaults; its `__post_init__`
checks values and raises `InputError(message, field=<its field>)`, which `build_settings` turns into
`<key path>.<field>: <message>`, so a bad value deep inside params.yaml is reported as
`train_mivolo.config.lr: must be a number >= 0, got -1` the moment the file is loaded, not at training time.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agegender.errors import InputError

T = TypeVar("T")


def convert(tp: Any, value: Any, where: str) -> Any:
    """Convert `value` to the annotated type `tp`.

    Raises:
        ValueError: naming the key path `where` and what was expected.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        if len(inner) == 1:
            return convert(inner[0], value, where)
        for option in inner:  # in the annotation's order: `int | str` keeps 5 an int and reads "5%" as text
            try:
                return convert(option, value, where)
            except ValueError:
                continue
        names = " or ".join(getattr(t, "__name__", str(t)) for t in inner)
        raise ValueError(f"{where}: expected {names}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_settings(tp, value, where)
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def build_settings(cls: type[T], data: Any, where: str = "") -> T:
    """Build the settings dataclass `cls` from a mapping: unknown keys, wrong types and bad values are errors.

    Args:
        cls: a dataclass; fields marked `field(metadata={"settable": False})` are for code only (objects such
            as an HTTP transport) and are refused here, as a YAML file or a command line cannot give them.
        data: setting name -> value (None: all defaults).
        where: the key path of `data` (e.g. `query_mllms.models.gpt4o.options`); "" for the top level.

    Raises:
        ValueError: `<where>.<key>: <what is wrong>`, for the first problem found (an unknown key lists the
            known ones; a check of the class's `__post_init__` that names its field gets that field's path).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    settable = [name for name, f in fields.items() if f.metadata.get("settable", True)]
    unknown = sorted(str(k) for k in data if k not in settable)
    prefix = f"{where}." if where else ""
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(settable)})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}{name}"
        if name in data:
            kwargs[name] = convert(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{path}: required key is missing")
    try:
        return cls(**kwargs)
    except InputError as exc:  # a value check of the class, naming its field
        if exc.field is None or exc.file is not None:
            raise
        raise ValueError(f"{prefix}{exc.field}: {exc.message}") from None


def settings_from_kwargs(cls: type[T], options: Mapping[str, Any], *, what: str) -> T:
    """Build settings from keyword arguments given in code (a backend's `**options`), as an `InputError`.

    Args:
        cls: the settings dataclass.
        options: the keyword arguments; unlike `build_settings`, code may set every field.
        what: whose settings they are, the start of the message (e.g. `openai backend option`).

    Raises:
        InputError: an unknown option (naming the known ones), a wrongly typed or bad value; `field` is the option.
    """
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in options if k not in fields)
    if unknown:
        raise InputError(f"unknown {what} {unknown[0]!r} (known: {', '.join(sorted(fields))})", field=unknown[0])
    hints = typing.get_type_hints(cls)
    try:
        kwargs = {name: convert(hints[name], value, name) for name, value in options.items()}
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        raise InputError(f"{what} {name}: {message}", field=name.split("[")[0].split(".")[0]) from None
    return cls(**kwargs)


def parse_assignments(items: Iterable[str], *, flag: str) -> dict[str, Any]:
    """`name=value` pairs of a command line (`--set`, `--option`) as a mapping; values are read as YAML scalars.

    `lr=3e-4` gives a float, `ema=true` a bool, `base_url=http://x` a string, `val_split=null` None.

    Raises:
        InputError: an item without `=` or without a name, naming the flag.
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{flag} {item!r}: expected name=value", field=flag.lstrip("-"))
        try:
            out[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def read_config_file(
    path: str | Path | None, section: str | None, overrides: Iterable[str], *, default_section: str | None = None
) -> tuple[dict[str, Any], str]:
    """The settings a training command reads: a YAML file's section, then its `--set name=value` overrides.

    A params.yaml works as the file: `section` (dotted, e.g. `finetune_mllm.runs.<run>`) picks its section, and a
    section (or file) holding a `config` mapping (params.yaml's layout, and the file the fine-tuning stage writes for
    its launched processes) gives that mapping.

    Args:
        path: the YAML file; None = overrides only.
        section: the section to read; None = the whole file, or `default_section` when the file has it.
        overrides: `name=value` items of `--set`.
        default_section: the section read when `section` is None and the file has it.

    Returns:
        (settings, their key path for error messages, e.g. `train_mivolo.config`).

    Raises:
        InputError: unreadable file or YAML, missing section, not a mapping, malformed override.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read the config ({exc})", file=path) from exc
        if section is None and isinstance(loaded, Mapping) and default_section in loaded:
            section = default_section
        if section:
            for part in section.split("."):
                if not isinstance(loaded, Mapping) or part not in loaded:
                    raise InputError(f"has no section {section!r}", file=path, field=section)
                loaded = loaded[part]
            where = section
        if isinstance(loaded, Mapping) and isinstance(loaded.get("config"), Mapping):  # params.yaml's layout
            loaded, where = loaded["config"], f"{section}.config" if section else "config"
        if not isinstance(loaded, Mapping):
            raise InputError("the config must be a mapping of settings", file=path)
        data.update(loaded)
    data.update(parse_assignments(overrides, flag="--set"))
    return data, where
