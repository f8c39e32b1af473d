"""The pipeline's stages, one module per stage, and their registry.

Each stage module holds everything about its stage: `run(params, paths, ...)`, what the stage's notebook calls
(it reads only the stage's declared inputs, fully rewrites its outputs and writes `metrics/<stage>.json`);
`check(checker)`, the checks of what the stage reads from outside the project, run by the `check` stage before
any work starts; and `fingerprint(params, paths)`, the fingerprints of those inputs, one per consumer, which the
`check` stage writes to `data/sources/` so that DVC reruns the stage exactly when one of them changed. `NAME` is
the stage's name in `dvc.yaml` and its params section. Helpers more than one stage uses live in
`agegender.stages.common`; the machinery that runs the checks and writes the fingerprints in `agegender.check`.

`STAGES` lists the registered stages in pipeline order (the `check` stage, `agegender.stages.check`, runs the
others' checks and is not one of them). Adding a stage: its module here, its name in `STAGES`, its params section,
its notebook and its `dvc.yaml` entry.

Stage modules are imported by name, on first use, so that importing one stage does not import the others (nor
make them part of its code deps, `agegender.stage_deps`); no module imports a stage module but through `stage`
or `registered`. For the same reason a stage module imports `agegender.check` (which imports the registry) only
inside its `check` and `fingerprint` functions, or for annotations under `TYPE_CHECKING`: its `run` then depends
on its own code alone, while the `check` stage depends on every stage's checks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from agegender.check import Checker
    from agegender.params import Params
    from agegender.paths import ProjectPaths

#: the registered stages' module names (below this package), in pipeline order
STAGES: tuple[str, ...] = (
    "prepare_data",
    "train_mivolo",
    "finetune_mllm",
    "query_mllms",
    "predict",
    "evaluate",
    "report",
)


class Stage(Protocol):
    """What a registered stage module provides (the module docstring says what each part does)."""

    NAME: str
    run: Callable[..., Any]

    def check(self, checker: Checker) -> None:
        """Add the problems of what the stage reads to `checker`."""

    def fingerprint(self, params: Params, paths: ProjectPaths) -> dict[str, dict]:
        """Consumer name (the stage's name, or `<stage>/<part>`) -> fingerprint of what it reads from outside."""
        return {}


def stage(name: str) -> Stage:
    """The module of registered stage `name` (imported now).

    Raises:
        ValueError: `name` is not a registered stage.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {list(STAGES)}")
    module: ModuleType = importlib.import_module(f"{__name__}.{name}")
    return cast("Stage", module)


def registered() -> list[Stage]:
    """Every registered stage's module, in pipeline order."""
    return [stage(name) for name in STAGES]


__all__ = ["STAGES", "Stage", "registered", "stage"]
