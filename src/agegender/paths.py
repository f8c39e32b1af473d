"""Every path of the project is built from the project root here.

The root is the folder that holds `dvc.yaml` (or `pyproject.toml`); notebooks run by papermill,
by DVC or interactively from `notebooks/` all resolve the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_MARKERS = ("dvc.yaml", "pyproject.toml")


def find_root(start: str | Path | None = None) -> Path:
    """Return the nearest folder at or above `start` (default: the working directory) holding dvc.yaml.

    Falls back to a folder holding pyproject.toml, so a fresh checkout works before `dvc init`.

    Raises:
        FileNotFoundError: when no such folder exists above `start`.
    """
    here = Path(start or Path.cwd()).resolve()
    for marker in _MARKERS:
        for folder in (here, *here.parents):
            if (folder / marker).is_file():
                return folder
    raise FileNotFoundError(f"no project root (a folder with dvc.yaml) at or above {here}")


@dataclass(frozen=True)
class ProjectPaths:
    """Paths of one project checkout (or of a test's temporary copy).

    Args:
        root: the project root; relative paths in params.yaml are relative to it.
    """

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> ProjectPaths:
        """Paths for `root`, or for the root found above the working directory when None."""
        return cls(Path(root).resolve() if root is not None else find_root())

    def __call__(self, relative: str | Path) -> Path:
        """Resolve a path from params.yaml: absolute paths stay, relative ones hang off the root."""
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def gallery(self) -> Path:
        """The gallery of crops: photos of people, so a git-ignored DVC output, never committed."""
        return self.reports / "gallery"
