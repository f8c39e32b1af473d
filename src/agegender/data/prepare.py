"""The `prepare_data` stage: generate the demo set, read every data set, draw subsets, write the sample table."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from agegender.data.schema import validate_samples
from agegender.params import Params
from agegender.paths import ProjectPaths

if TYPE_CHECKING:
    from agegender.mivolo.detect import Detector

SAMPLES_FILE = "samples.parquet"
MASKED_FILE = "masked.parquet"
DATASETS_FILE = "datasets.json"


@dataclass
class PreparedData:
    """What `prepare_data` wrote, as loaded back by the later stages."""

    samples: pd.DataFrame
    masked: pd.DataFrame
    #: dataset -> {"root": folder relative to the project root, "source": parent data set or None, ...}
    datasets: dict[str, dict] = field(default_factory=dict)

    def image_roots(self, paths: ProjectPaths) -> dict[str, Path]:
        """Data set -> absolute image folder (a subset's images live under its source's root)."""
        return {name: paths(info["root"]) for name, info in self.datasets.items()}


def prepare_data(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Run the stage: fully rewrites `prepare_data.out` (and the demo folder, if configured, usually inside it).

    Args:
        params: validated params.
        paths: project paths (relative params paths hang off its root).
        progress: show progress bars.

    Returns:
        A summary (JSON-ready): samples per data set and split, masked people, reader counts, and for a data set
        with a `face_detector` its detection counts (`info[name]["faces"]`, see `agegender.faces.detect_faces`).
    """
    from agegender.data.demo import DemoConfig, generate_demo
    from agegender.data.registry import read_dataset
    from agegender.data.sampling import nano_sample
    from agegender.faces import detect_faces, resolve_face_detector

    cfg = params.prepare_data
    summary: dict = {"datasets": {}}
    out = paths(cfg.out)
    # cleared first: the demo profile generates its images inside it (`prepare_data.demo.root`)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if cfg.demo is not None:
        demo = asdict(cfg.demo)
        root = paths(demo.pop("root"))
        summary["demo"] = generate_demo(root, DemoConfig.from_dict(demo), progress=progress)

    samples, masked, info = [], [], {}
    detectors: dict[str, Detector] = {}
    for name, ds in cfg.datasets.items():
        result = read_dataset(name, ds.reader, paths(ds.root), **ds.options)
        read = result.samples
        info[name] = {"root": ds.root, "reader": ds.reader, "source": None, "read": dict(result.report)}
        if ds.face_detector is not None:
            key = json.dumps([ds.face_detector, ds.face_detector_options], sort_keys=True, default=str)
            if key not in detectors:  # built once per configuration, however many data sets use it
                detectors[key] = resolve_face_detector(ds.face_detector, **ds.face_detector_options)
            read, counts = detect_faces(read, {name: paths(ds.root)}, detectors[key], progress=progress)
            info[name]["faces"] = {"detector": ds.face_detector, **counts}
        samples.append(read)
        masked.append(result.masked)
    table = (
        pd.concat(samples, ignore_index=True)
        if samples
        else validate_samples(pd.DataFrame(columns=["sample_id", "dataset", "split", "image_path"]))
    )
    for name, sub in cfg.subsets.items():
        pool = table[(table["dataset"] == sub.source) & (table["split"] == sub.split)]
        exclude = str(paths(sub.exclude)) if sub.exclude else None
        drawn = nano_sample(
            pool,
            per_bin=sub.per_bin,
            seed=sub.seed,
            bin_width=sub.bin_width,
            max_age=sub.max_age,
            exclude=exclude,
            name=name,
        )
        table = pd.concat([table, drawn], ignore_index=True)
        info[name] = {"root": cfg.datasets[sub.source].root, "reader": None, "source": sub.source, "drawn": len(drawn)}
    table = validate_samples(table, source="prepare_data")

    table.to_parquet(out / SAMPLES_FILE, index=False)
    masked_table = pd.concat(masked, ignore_index=True) if masked else pd.DataFrame()
    masked_table.to_parquet(out / MASKED_FILE, index=False)
    counts = table.groupby(["dataset", "split"]).size()
    for name in info:
        info[name]["samples"] = {split: int(n) for (ds, split), n in counts.items() if ds == name}
    (out / DATASETS_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    summary["datasets"] = info
    summary["n_samples"] = len(table)
    summary["n_masked"] = len(masked_table)
    return summary


def load_prepared(params: Params, paths: ProjectPaths) -> PreparedData:
    """Load what `prepare_data` wrote (validated again: the files are a stage boundary)."""
    out = paths(params.prepare_data.out)
    samples_file = out / SAMPLES_FILE
    from agegender.data.schema import read_table

    samples = validate_samples(read_table(samples_file), source=samples_file)
    masked = read_table(out / MASKED_FILE)
    datasets = json.loads((out / DATASETS_FILE).read_text())
    return PreparedData(samples=samples, masked=masked, datasets=datasets)
