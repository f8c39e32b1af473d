"""Shared test set-up: offline, headless, no GPU required."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests not marked `gpu` compare against CPU results: keep "auto" on the CPU on a GPU machine too."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("AGEGENDER_DEVICE", "cpu")
