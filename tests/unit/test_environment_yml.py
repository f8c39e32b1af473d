"""environment.yml installs what `make install` does (so `make repro` works in the conda environment), without conda.

pyproject.toml is the one list of dependencies; environment.yml, like the Makefile, only names extras of it, and the
`all` extra has to cover every extra that runs here, so a new extra cannot be left out of the conda environment.
"""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
#: extras that only a GPU machine installs: neither `make install` nor the conda environment takes them
GPU_ONLY_EXTRAS = {"detect", "vllm"}


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _environment() -> tuple[dict, str]:
    text = (ROOT / "environment.yml").read_text()
    return yaml.safe_load(text), text


def test_make_install_takes_the_all_extra_and_the_no_deps_file():
    make = _makefile()
    assert re.search(r"^EXTRAS \?= all$", make, re.MULTILINE)
    assert "pip install -q -e '.[$(EXTRAS)]'" in make
    assert "pip install -q --no-deps -r requirements-nodeps.txt" in make


def test_all_extra_covers_every_extra_but_the_gpu_only_ones():
    extras = _extras()
    (spec,) = extras["all"]
    named = set(re.fullmatch(r"agegender\[(.+)\]", spec).group(1).split(","))
    assert named == set(extras) - GPU_ONLY_EXTRAS - {"all"}
    assert any(d.startswith("jupyterlab") for d in extras["explore"])
    assert any(d.startswith("nbval") for d in extras["dev"])


def test_environment_installs_what_make_install_does():
    env, text = _environment()
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python=")]
    assert pythons == ["python=3.11"] and "python3.11" in _makefile()
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    assert pip == ["-e .[all]"]  # the Makefile's `-e '.[$(EXTRAS)]'` with EXTRAS=all
    # the Makefile's --no-deps step, which a conda pip list cannot express: documented as the post-create step
    assert "conda run -n agegender pip install --no-deps -r requirements-nodeps.txt" in text
    assert env["name"] == "agegender"
    assert (ROOT / "requirements-nodeps.txt").is_file()
