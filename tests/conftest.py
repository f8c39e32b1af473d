"""Shared test set-up: offline, headless, no GPU required."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _digest_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Cached file digests (agegender.fingerprint) go to a temporary folder, not the user's ~/.cache."""
    os.environ.setdefault("AGEGENDER_CACHE_DIR", str(tmp_path_factory.mktemp("digest-cache")))


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests not marked `gpu` compare against CPU results: keep "auto" on the CPU on a GPU machine too."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("AGEGENDER_DEVICE", "cpu")


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on the shared 2-core machine OpenMP's spinning threads make tiny models many times slower.

    Modules of small-model tests use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
