"""Classes named by import path (`"package.module:Class"`): backends and specialized models kept outside agegender."""

from __future__ import annotations

import importlib
from typing import TypeVar

from agegender.errors import InputError

T = TypeVar("T")


def import_subclass(spec: str, base: type[T], *, what: str) -> type[T]:
    """The class an import path `"package.module:Class"` names, checked to be a subclass of `base`.

    Args:
        spec: the import path.
        base: the class it must derive from.
        what: what params call it (`backend`, `model`): the start of every message and the error's field.

    Raises:
        InputError: the module does not import, has no such attribute, or it is not a `base` subclass.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a third-party module may fail to import with anything
        message = f"{what} {spec!r}: module {module_name!r} does not import ({type(exc).__name__}: {exc})"
        raise InputError(message, field=what) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InputError(f"{what} {spec!r}: {attr!r} is not a {base.__name__} subclass in {module_name}", field=what)
    return cls
