"""Profiles: whole params files kept in `profiles/<name>.yaml`; one of them is the active `params.yaml`.

`agegender profile paper` makes the paper profile active: it renders `profiles/paper.yaml` (with any
`--set key.path=value` overrides applied, comments kept), validates it and writes it to `params.yaml` under a
header that records the profile and a digest of what was written. A `params.yaml` edited by hand since (its digest
no longer matches) is not overwritten without `force`, so no experiment is lost by switching.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agegender.errors import InputError
from agegender.params import params_from_text
from agegender.paths import ProjectPaths

PROFILES_DIR = "profiles"
PARAMS_FILE = "params.yaml"
_HEADER = re.compile(r"^# active profile: (?P<name>[\w.-]+) .*digest (?P<digest>[0-9a-f]{16})\)\n")


def available(paths: ProjectPaths) -> list[str]:
    """Names of the profiles in `profiles/`."""
    folder = paths(PROFILES_DIR)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments and key order survive an override
    yaml.width = 120
    yaml.preserve_quotes = True
    return yaml


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"a.b.c=value"` -> (["a", "b", "c"], value parsed as YAML: numbers, booleans, null, lists, mappings).

    Raises:
        InputError: no `=`, or an empty key.
    """
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise InputError(f"override {text!r} is not of the form key.path=value", field="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"override {text!r}: the value is not YAML ({exc})", field="--set") from None
    return key.strip().split("."), value


def _next_key(node: Any, parts: list[str]) -> tuple[str, list[str]]:
    """The next key of a dotted path: the longest run of parts that names an existing key (a key may hold dots,
    e.g. a file name), else one part."""
    for n in range(len(parts), 1, -1):
        joined = ".".join(parts[:n])
        if joined in node:
            return joined, parts[n:]
    return parts[0], parts[1:]


def render(paths: ProjectPaths, name: str, overrides: Sequence[str] = ()) -> str:
    """The text of profile `name` with the overrides applied, validated as params.

    Args:
        paths: project paths (profiles live in `<root>/profiles/`).
        name: profile name (`demo`, `paper`, or any `profiles/<name>.yaml`).
        overrides: `key.path=value` strings; a missing intermediate mapping is created.

    Returns:
        The YAML text (the profile's own comments kept).

    Raises:
        InputError: unknown profile, a bad override, or params that do not validate (file and key path named).
    """
    source = paths(PROFILES_DIR) / f"{name}.yaml"
    if not source.is_file():
        raise InputError(f"no profile {name!r}; available: {available(paths)}", file=source)
    yaml = _yaml()
    text = source.read_text()
    if overrides:
        data = yaml.load(text)
        for item in overrides:
            parts, value = parse_override(item)
            node, done = data, []
            while parts:
                key, parts = _next_key(node, parts)
                done.append(key)
                if not parts:
                    node[key] = value
                    break
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
                if not hasattr(node, "get"):
                    raise InputError(f"override {item!r}: {'.'.join(done)} is not a mapping", field="--set")
        buffer = io.StringIO()
        yaml.dump(data, buffer)
        text = buffer.getvalue()
    params_from_text(text, source)
    return text


def active(paths: ProjectPaths) -> tuple[str | None, bool]:
    """(profile name from params.yaml's header or None, whether the file was edited since it was written)."""
    target = paths(PARAMS_FILE)
    if not target.is_file():
        return None, False
    text = target.read_text()
    match = _HEADER.match(text)
    if match is None:
        return None, True
    return match["name"], _digest(text[match.end() :]) != match["digest"]


def use(paths: ProjectPaths, name: str, overrides: Sequence[str] = (), *, force: bool = False) -> Path:
    """Make profile `name` (with overrides) the active params.yaml.

    Raises:
        InputError: see `render`; or params.yaml has hand edits (no `force`): nothing is overwritten.
    """
    body = render(paths, name, overrides)
    target = paths(PARAMS_FILE)
    _, edited = active(paths)
    if edited and not force:
        raise InputError(
            "has edits that no profile holds; keep them in profiles/<name>.yaml, or pass --force to overwrite",
            file=target,
        )
    command = " ".join(["agegender profile", name, *(f"--set {o}" for o in overrides)])
    header = (
        f"# active profile: {name} (written by `{command}` from {PROFILES_DIR}/{name}.yaml; digest {_digest(body)})\n"
    )
    target.write_text(header + body)
    return target
