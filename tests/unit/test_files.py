"""Atomic writes (`agegender.files`): all or nothing, and the same bytes for the same content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agegender.files import atomic_path, atomic_write_text, save_torch


def test_a_checkpoint_is_written_the_same_every_time(tmp_path: Path) -> None:
    """Given a path, `torch.save` names its archive's folder after the (temporary, random) file name: every
    checkpoint differed, and with it the DVC hash of every training output."""
    target = tmp_path / "model.pth.tar"
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    written = []
    for _ in range(2):
        save_torch(state, target, fsync=True)
        written.append(target.read_bytes())
    assert written[0] == written[1]
    assert torch.equal(torch.load(target, weights_only=True)["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth.tar"]  # no temporary file left


def test_an_error_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "t.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
