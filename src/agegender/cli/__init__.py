"""The command lines of agegender: every argparse parser and `_cmd_*` handler of the package lives here.

The handlers turn parsed arguments into calls of plain, typed package functions, so the package itself never sees
an `argparse.Namespace`. Modules:

- `app`: the `agegender` command (`main`, `build_parser`), assembled from the command groups below;
- `data`: evaluate, stage, sample, stage-deps, compare-metrics, check, profile;
- `mivolo`: export, train-mivolo, mivolo-predict;
- `mllm`: query, merge, cost, convert-llava, and the backend options every MLLM command shares;
- `annotate`: annotate (with a specialized model or an MLLM);
- `report`: paper-rows (which paper row comes from where);
- `mivolo_train`, `mllm_finetune`, `mllm_server`: the parsers of the `python -m` entry points of
  `agegender.mivolo.train`, `agegender.mllm.finetune` and `agegender.mllm.tools.server`.

`main` and `build_parser` are imported on first use: a `python -m` entry point imports only its own module of
this package, so the code a pipeline stage runs (`agegender stage-deps`) does not grow by every command.
"""

import importlib
from typing import Any

_EXPORTS = {"main": "app", "build_parser": "app"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"agegender.cli.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'agegender.cli' has no attribute {name!r}")
