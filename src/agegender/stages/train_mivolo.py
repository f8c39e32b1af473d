"""Stage `train_mivolo`: two-stage MiVOLO training on one data set's splits -> `models/mivolo/`; its checks and
fingerprints (the pretrained weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agegender.data.prepare import SAMPLES_FILE, load_prepared
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages.common import digest, fresh_dir, reset_if_changed, write_metrics

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "train_mivolo"


def run(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Train MiVOLO on `train_mivolo.dataset` (or, with no data set, write an empty output and say so).

    The output folder persists between runs so that an interrupted training resumes; a folder left by
    other settings, other data or other pretrained weights (by content) is cleared first (DVC reruns the stage
    exactly when those change).
    """
    from agegender.mivolo.train import pretrained_sha256, train_mivolo

    cfg = params.train_mivolo
    out = paths(cfg.out)
    if cfg.dataset is None:
        # this profile evaluates released checkpoints: the stage's output is an empty folder, and the metrics say so
        fresh_dir(out)
        write_metrics(paths, NAME, {"trained": False})
        reason = "train_mivolo.dataset is null: no MiVOLO is trained in this profile"
        return {"trained": False, "reason": reason, "history": []}
    config = cfg.config
    data = load_prepared(params, paths)
    samples = data.samples[data.samples["dataset"] == cfg.dataset].reset_index(drop=True)
    import agegender.mivolo

    reset_if_changed(
        out,
        {
            "config": config.to_dict(),
            "dataset": cfg.dataset,
            "samples": digest(paths(params.prepare_data.out) / SAMPLES_FILE),
            "pretrained_sha256": pretrained_sha256(config.pretrained),
        },
        code=Path(agegender.mivolo.__path__[0]),
    )
    summary = train_mivolo(samples, data.masked, data.image_roots(paths), config, out, progress=progress)
    stages = summary.get("stages", {}).values()
    # val_n: the sample size behind the val metrics, from which `agegender.tolerances` sizes their intervals
    val_n = max((int(st.get("val_samples", 0)) for st in stages), default=0)
    write_metrics(
        paths,
        NAME,
        {k: summary[k] for k in ("val_age_mae", "val_gender_acc") if summary.get(k) is not None}
        | {"steps": sum(int(st.get("steps", 0)) for st in stages), "trained": True}
        | ({"val_n": val_n} if val_n else {}),
    )
    return summary


def check(checker: Checker) -> None:
    """The data set trained on is prepared, and the pretrained weights file exists."""
    cfg = checker.params.train_mivolo
    if cfg.dataset is None:
        return  # this profile trains no MiVOLO
    checker.prepared_ref("train_mivolo.dataset", cfg.dataset)
    pretrained = cfg.config.pretrained
    if pretrained:
        checker.ran()
        path = checker.paths(str(pretrained))
        if not path.is_file():
            checker.add("train_mivolo.config.pretrained", "pretrained weights file not found", path)


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """The pretrained weights, when this profile trains."""
    from agegender.check import source_fingerprint

    train = params.train_mivolo
    pretrained = train.config.pretrained
    return {NAME: {"pretrained": source_fingerprint(paths, str(pretrained))} if train.dataset and pretrained else {}}
