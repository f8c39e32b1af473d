"""The one settings converter: types, unknown keys, value checks and code-only fields, each named by its key path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agegender.errors import InputError
from agegender.settings import build_settings, parse_assignments, settings_from_kwargs


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise InputError(f"must lie in [0, 1], got {self.rate}", field="rate")


@dataclass(frozen=True)
class Outer:
    size: int
    inner: Inner = field(default_factory=Inner)
    label: str | None = None
    hook: Any = field(default=None, metadata={"settable": False})


def test_build_settings_converts_and_keeps_defaults():
    built = build_settings(Outer, {"size": 3, "inner": {"rate": 1, "names": ["a"]}}, "sec")
    assert built == Outer(size=3, inner=Inner(rate=1.0, names=("a",)))
    assert isinstance(built.inner.rate, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "sec.size: required key is missing"),
        ({"size": 1, "sise": 2}, "sec.sise: unknown key (known: size, inner, label)"),
        ({"size": True}, "sec.size: expected an integer, got True"),
        ({"size": 1, "inner": {"rate": 2}}, "sec.inner.rate: must lie in [0, 1], got 2.0"),
        ({"size": 1, "inner": {"names": "a"}}, "sec.inner.names: expected a list, got str"),
        ({"size": 1, "hook": 1}, "sec.hook: unknown key"),  # code only
    ],
)
def test_build_settings_names_the_key_path(data, message):
    with pytest.raises(ValueError) as info:
        build_settings(Outer, data, "sec")
    assert str(info.value).startswith(message)


def test_settings_from_kwargs_takes_code_only_fields_and_raises_input_errors():
    assert settings_from_kwargs(Outer, {"size": 2, "hook": print}, what="test option").hook is print
    with pytest.raises(InputError, match="unknown test option 'sise' \\(known: hook, inner, label, size\\)") as info:
        settings_from_kwargs(Outer, {"sise": 2}, what="test option")
    assert info.value.field == "sise"
    with pytest.raises(InputError, match="test option size: expected an integer") as info:
        settings_from_kwargs(Outer, {"size": "2"}, what="test option")
    assert info.value.field == "size"
    with pytest.raises(InputError, match="must lie in") as info:
        settings_from_kwargs(Inner, {"rate": -1}, what="test option")
    assert info.value.field == "rate"


def test_parse_assignments_reads_yaml_scalars():
    assert parse_assignments(["lr=3.0e-4", "ema=true", "url=http://x:1/v1", "split=null", "n=3"], flag="--set") == {
        "lr": 3e-4,
        "ema": True,
        "url": "http://x:1/v1",
        "split": None,
        "n": 3,
    }
    with pytest.raises(InputError, match="--set 'lr': expected name=value"):
        parse_assignments(["lr"], flag="--set")
