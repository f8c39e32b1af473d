"""`agegender annotate FOLDER --backend ...`: an MLLM labels a folder of photos, resumably."""

import numpy as np
import pandas as pd
from PIL import Image

from agegender.cli import main


def photos(folder, n=3):
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 30, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")


def test_annotate_with_an_mllm_and_rerun_sends_nothing(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photos(folder)
    out = tmp_path / "labels.csv"
    args = ["annotate", str(folder), "--backend", "constant", "--model", "const", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    table = pd.read_csv(out)
    assert list(table["image"]) == ["p0.png", "p1.png", "p2.png"]
    assert (table["status"] == "ok").all() and (table["gender"] == "female").all() and (table["age"] == 40).all()
    first = capsys.readouterr().out
    assert "3 requests" in first and "1 unreadable" in first
    assert main(args) == 0
    assert "0 requests, 3 cached" in capsys.readouterr().out


def test_annotate_needs_exactly_one_model(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photos(folder, 1)
    out = str(tmp_path / "o.csv")
    assert main(["annotate", str(folder), "--out", out]) == 2
    assert "either --predictor NAME (or --mivolo CKPT)" in capsys.readouterr().err
    assert main(["annotate", str(folder), "--out", out, "--mivolo", "x.pth", "--backend", "constant"]) == 2
