"""Stage `check`: every configured file and folder exists and has the expected format, before any work starts.

It runs every registered stage's checks and writes their fingerprints (`agegender.check`, over
`agegender.stages.registered`); DVC runs it every time.
"""

from __future__ import annotations

from pathlib import Path

from agegender.errors import InputError
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages.common import write_metrics

NAME = "check"
#: where the `check` stage writes the fingerprints of what each stage reads from outside the project
SOURCES_DIR = "data/sources"


def run(params: Params, paths: ProjectPaths, *, params_file: str | Path = "params.yaml") -> dict:
    """Check all stages' inputs, then write their fingerprints.

    All problems are listed at once (an `InputError` whose message is the numbered list). Then the fingerprints of
    what each stage reads from outside the project (data sets, checkpoints, model folders) are written to
    `data/sources/<stage>.json`; DVC reruns a later stage exactly when its fingerprint changed.

    Returns:
        The number of problems (0) and the fingerprint files written.
    """
    from agegender.check import check_params, format_problems, write_fingerprints

    problems = check_params(params, paths)
    if problems:
        raise InputError(
            f"{len(problems)} problem(s) in the configuration:\n{format_problems(problems)}", file=paths(params_file)
        )
    written = write_fingerprints(params, paths, paths(SOURCES_DIR))
    summary = {"checks": problems.n_checks, "problems": 0, "fingerprints": len(written)}
    write_metrics(paths, NAME, summary)
    return summary | {"files": [str(p.relative_to(paths.root)) for p in written]}
