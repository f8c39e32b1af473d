"""Crops: clamping, letterbox, body-without-face masking and drop rules, iter_crops order and loading."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import rewrite_keeping_stat, write_empty, write_truncated_jpeg  # noqa: E402

from agegender import fingerprint  # noqa: E402
from agegender.data import crops  # noqa: E402
from agegender.data.crops import (  # noqa: E402
    CROP_KINDS,
    BadImages,
    ImageBoxes,
    body_without_face,
    clamp_box,
    crop,
    crop_sample,
    image_size,
    image_sizes,
    iter_crops,
    letterbox,
    load_image,
)
from agegender.errors import InputError  # noqa: E402

NAN = float("nan")


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _flat(h: int, w: int, value: int | tuple[int, int, int] = 200) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- loading


def test_load_image_rgb_and_errors(tmp_path: Path) -> None:
    gray = _save(tmp_path / "g.png", np.full((6, 4), 7, dtype=np.uint8))
    img = load_image(gray)
    assert img.shape == (6, 4, 3) and img.dtype == np.uint8 and (img == 7).all()
    assert image_size(gray) == (4, 6)
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "missing.jpg")
    assert err.value.file == str(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot be decoded"):
        load_image(bad)
    with pytest.raises(InputError, match="cannot be read as an image"):
        image_size(bad)


def _noise_jpeg(width: int, height: int, **save: object) -> bytes:
    pixels = np.random.default_rng(width * height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def _fails(func, path: Path) -> bool:
    try:
        func(path)
    except InputError:
        return True
    return False


@pytest.mark.parametrize(
    "save", [{}, {"progressive": True}, {"subsampling": 0}], ids=["baseline", "progressive", "444"]
)
def test_cheap_decode_fails_exactly_where_a_full_load_fails(tmp_path: Path, save: dict) -> None:
    """`image_size(decode=True)` decodes a JPEG at 1/8 scale: it must refuse every file `load_image` refuses and
    take every file it takes (truncated anywhere, the end marker cut off, bytes of the stream corrupted)."""
    data = _noise_jpeg(80, 56, **save)
    path = tmp_path / "x.jpg"
    variants = {"whole": data, "no end marker": data[:-2], "one byte short": data[:-1]}
    variants |= {f"cut at {k}/20": data[: len(data) * k // 20] for k in range(1, 20)}
    rng = np.random.default_rng(0)
    for k in range(30):  # bytes flipped past the headers: libjpeg takes some, refuses others
        corrupt = bytearray(data)
        for at in rng.integers(len(data) // 4, len(data) - 2, size=8):
            corrupt[at] = int(rng.integers(0, 256))
        variants[f"corrupt {k}"] = bytes(corrupt)
    refused = {}
    for name, content in variants.items():
        path.write_bytes(content)
        refused[name] = _fails(load_image, path)
        assert _fails(lambda p: image_size(p, decode=True), path) == refused[name], name
    assert not refused["whole"] and all(v for k, v in refused.items() if k != "whole" and not k.startswith("corrupt"))


def test_decode_finds_what_the_header_hides(tmp_path: Path) -> None:
    cut = write_truncated_jpeg(tmp_path / "cut.jpg", 64, 48)
    assert image_size(cut) == (64, 48)  # the header alone is fine
    with pytest.raises(InputError, match="image file is truncated") as err:
        image_size(cut, decode=True)
    assert err.value.file == str(cut)
    empty = write_empty(tmp_path / "empty.jpg")
    for check in (image_size, lambda p: image_size(p, decode=True), load_image):
        with pytest.raises(InputError, match=r"image file is empty \(0 bytes\)"):
            check(empty)
    png = _save(tmp_path / "ok.png", _flat(6, 9))
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[:-20])  # into the pixel data: PNG is fully decoded
    with pytest.raises(InputError, match="cannot be decoded"):
        image_size(cut_png, decode=True)
    good = _save(tmp_path / "good.jpg", _flat(30, 40))
    sizes = image_sizes([good, cut, tmp_path / "gone.jpg", empty, good, png], decode=True, workers=3)
    assert list(sizes) == [good, cut, tmp_path / "gone.jpg", empty, png]  # in order, each once
    assert sizes[good] == (40, 30) and sizes[png] == (9, 6)
    assert [type(sizes[p]) for p in (cut, tmp_path / "gone.jpg", empty)] == [InputError] * 3
    assert "not found" in str(sizes[tmp_path / "gone.jpg"])
    assert image_sizes([good, cut], workers=1) == {good: (40, 30), cut: (64, 48)}  # headers only


def test_exif_orientation_swaps_size_like_load_image(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = _save(tmp_path / "rot.jpg", _flat(10, 30), exif=exif)
    assert image_size(path) == (10, 30)
    assert load_image(path).shape == (30, 10, 3)


# ---------------------------------------------------------------------------------------------- cache of decodes


@pytest.fixture
def decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `image_size` call (file name) while the cache lives in tmp_path/cache and files settle at once."""
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "RACY_S", 0.0)
    calls: list[str] = []
    real = crops.image_size

    def counting(path, *, decode=False):
        calls.append(Path(path).name)
        return real(path, decode=decode)

    monkeypatch.setattr(crops, "image_size", counting)
    return calls


def _cached_paths(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "cache" / fingerprint.FACTS_DB) as db:
        rows = db.execute("SELECT path FROM facts WHERE kind = ?", (crops.DECODE_FACTS,)).fetchall()
    return sorted(Path(path).name for (path,) in rows)


def _images(folder: Path) -> list[Path]:
    paths = [_save(folder / f"{k}.jpg", _flat(20 + k, 30, (k * 40, 90, 10))) for k in range(4)]
    return [*paths, _save(folder / "p.png", _flat(7, 5))]


def test_second_check_of_unchanged_images_decodes_nothing(tmp_path: Path, decodes: list[str]) -> None:
    paths = _images(tmp_path / "img")
    first = image_sizes(paths, decode=True, workers=3)
    assert first == {p: image_size(p) for p in paths} and first[paths[-1]] == (5, 7)  # (image_size: not counted)
    assert sorted(decodes) == sorted(p.name for p in paths)  # each decoded once
    decodes.clear()
    link = tmp_path / "link.jpg"
    link.symlink_to(paths[0])  # the same file under another name: known by its real path
    again = image_sizes([*reversed(paths), link], decode=True, workers=3)
    assert decodes == [] and list(again) == [*reversed(paths), link]  # in the order asked
    assert again == {**first, link: first[paths[0]]}
    image_sizes(paths, decode=True, cache=False)  # without the cache: every image decoded
    image_sizes(paths[:2])  # headers only: the cache says nothing about them
    assert sorted(decodes) == sorted(p.name for p in [*paths, *paths[:2]])


def test_rewrite_in_place_keeping_size_and_mtime_is_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    paths = _images(tmp_path / "img")
    image_sizes(paths, decode=True)
    decodes.clear()
    target = paths[1]
    before = target.stat()
    rewrite_keeping_stat(target, b"\0" * before.st_size)  # not an image any more: same size, same mtime
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    sizes = image_sizes(paths, decode=True)
    assert decodes == [target.name]  # the ctime moved: looked at again, the others not
    assert isinstance(sizes[target], InputError) and "cannot be decoded" in str(sizes[target])
    assert all(sizes[p] == (30, 20 + k) for k, p in enumerate(paths[:4]) if p != target)


def test_truncated_after_a_cached_success_is_found_and_bad_images_never_cached(
    tmp_path: Path, decodes: list[str]
) -> None:
    paths = _images(tmp_path / "img")
    good = paths[0].read_bytes()
    image_sizes(paths, decode=True)
    assert _cached_paths(tmp_path) == sorted(p.name for p in paths)
    write_truncated_jpeg(paths[0], 64, 48)  # cut in its pixel data: its header still reads
    bad_from_start = write_truncated_jpeg(tmp_path / "img" / "cut.jpg", 40, 40)
    every = [*paths, bad_from_start]
    for _ in range(2):  # a bad image is examined every time
        decodes.clear()
        sizes = image_sizes(every, decode=True)
        assert sorted(decodes) == sorted([paths[0].name, bad_from_start.name])
        assert [p for p in every if isinstance(sizes[p], InputError)] == [paths[0], bad_from_start]
        assert "truncated" in str(sizes[paths[0]])
        assert _cached_paths(tmp_path) == sorted(p.name for p in paths[1:])  # the old success of the cut file: gone
    paths[0].write_bytes(good)  # mended: seen at once, and kept again
    assert image_sizes(every, decode=True)[paths[0]] == (30, 20)
    assert _cached_paths(tmp_path) == sorted(p.name for p in paths)


def test_cache_that_cannot_be_used_only_costs_time(
    tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _images(tmp_path / "img")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(blocker / "cache"))  # cannot be created, not even by root
    truth = {p: image_size(p) for p in paths}
    decodes.clear()
    assert image_sizes(paths, decode=True) == truth and image_sizes(paths, decode=True) == truth
    assert sorted(decodes) == sorted(p.name for p in paths * 2)  # decoded every time, nothing raised
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / fingerprint.FACTS_DB).write_bytes(b"this is not a database" * 300)
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(corrupt))
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger="agegender.fingerprint"):
        assert image_sizes(paths, decode=True) == truth
    assert sorted(decodes) == sorted(p.name for p in paths)
    assert str(corrupt / fingerprint.FACTS_DB) in caplog.text  # named, so that it can be deleted


def test_files_written_just_now_are_not_cached(tmp_path: Path, decodes: list[str], monkeypatch) -> None:
    monkeypatch.setattr(fingerprint, "RACY_S", 3600.0)  # everything here was written within the hour
    paths = _images(tmp_path / "img")
    image_sizes(paths, decode=True)
    decodes.clear()
    image_sizes(paths, decode=True)
    assert sorted(decodes) == sorted(p.name for p in paths)
    assert _cached_paths(tmp_path) == []


def test_cached_size_is_the_displayed_size(tmp_path: Path, decodes: list[str]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rot.jpg", _flat(10, 30), exif=exif)
    os.utime(path, ns=(0, 0))
    assert image_sizes([path], decode=True) == image_sizes([path], decode=True) == {path: (10, 30)}
    assert decodes == ["rot.jpg"]


# ---------------------------------------------------------------------------------------------- boxes


def test_clamp_box() -> None:
    assert clamp_box((-5, 2.4, 12.6, 30), 10, 20) == (0, 2, 10, 20)
    assert clamp_box((0.5, 1.5, 3.49, 4.5), 10, 20) == (1, 2, 3, 5)  # half up, not half to even
    assert clamp_box((12, 0, 20, 5), 10, 20) is None  # entirely right of the image
    assert clamp_box((3, 3, 3, 8), 10, 20) is None
    assert clamp_box((1, NAN, 3, 4), 10, 20) is None
    assert clamp_box(None, 10, 20) is None
    assert all(isinstance(v, int) for v in clamp_box(np.array([1.0, 2.0, 3.0, 4.0]), 10, 20))


def test_crop_clamps_without_margin_and_copies() -> None:
    image = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
    out = crop(image, (-3, -3, 4, 5))
    np.testing.assert_array_equal(out, image[0:5, 0:4])
    out[:] = 0
    assert image[0, 0, 1] == 1  # the source is untouched
    np.testing.assert_array_equal(crop(image, (7, 6, 50, 50)), image[6:8, 7:10])
    assert crop(image, None) is None
    assert crop(image, (NAN, 0, 3, 3)) is None
    assert crop(image, (20, 20, 30, 30)) is None


# ---------------------------------------------------------------------------------------------- letterbox


def test_letterbox_wide_is_centred_vertically() -> None:
    out = letterbox(_flat(50, 100, 255), 64)  # scale 0.64 -> 64 x 32, 16 rows of padding each side
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[16:48] == 255).all()
    assert (out[:16] == 0).all() and (out[48:] == 0).all()


def test_letterbox_tall_is_centred_horizontally_and_upscales() -> None:
    out = letterbox(_flat(90, 30, (10, 20, 30)), 60)  # scale 2/3 -> 20 wide x 60 high, 20 columns each side
    assert out.shape == (60, 60, 3)
    np.testing.assert_array_equal(out[:, 20:40], np.broadcast_to(np.array([10, 20, 30], np.uint8), (60, 20, 3)))
    assert (out[:, :20] == 0).all() and (out[:, 40:] == 0).all()
    up = letterbox(_flat(3, 6, 9), 12)  # scale 2 -> 12 x 6, 3 rows of padding each side
    assert (up[3:9] == 9).all() and (up[:3] == 0).all() and (up[9:] == 0).all()


def test_letterbox_odd_padding_and_identity() -> None:
    out = letterbox(_flat(7, 10, 50), 10)  # no resize; 3 rows of padding: 1 on top, 2 below
    assert (out[1:8] == 50).all() and (out[0] == 0).all() and (out[8:] == 0).all()
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(image, 16), image)
    with pytest.raises(ValueError):
        letterbox(np.zeros((0, 5, 3), np.uint8), 8)


# ---------------------------------------------------------------------------------------------- body without face


def test_body_without_face_masks_own_face_and_overlapping_person() -> None:
    image = _flat(200, 200, 200)
    person = (0, 0, 100, 200)
    faces = np.array([[30, 10, 70, 50], [150, 10, 190, 50]])  # own face, and a face far outside the crop
    # The second person overlaps the crop; its bottom (150) is within 30% of the crop's bottom edge
    # (200 - 0.3 * 200 = 140), so it is extended to 200; its left (60) is not within 30 px of the left edge.
    persons = np.array([person, [60, 80, 150, 150]])
    out = body_without_face(image, person, faces, persons)
    assert out is not None and out.shape == (200, 100, 3)
    expected = _flat(200, 100, 200)
    expected[10:50, 30:70] = 0
    expected[80:200, 60:100] = 0
    np.testing.assert_array_equal(out, expected)
    assert (image == 200).all()  # source untouched


def test_body_without_face_extends_near_left_and_top_edges() -> None:
    image = _flat(100, 100, 200)
    # Other person's box starts at x=20 (< 0.3 * 100) and y=25 (< 30) inside the crop: snapped to 0 and 0.
    out = body_without_face(image, (0, 0, 100, 100), None, np.array([[20, 25, 40, 60]]), min_nonzero=0.0)
    expected = _flat(100, 100, 200)
    expected[0:60, 0:40] = 0
    np.testing.assert_array_equal(out, expected)


def test_body_without_face_drop_rules() -> None:
    image = _flat(200, 200, 200)
    other = np.array([[50, 0, 200, 100]])  # masks columns 50..99 of a 100 x 100 crop: 50% stays non-zero
    kept = body_without_face(image, (0, 0, 100, 100), None, other)
    assert kept is not None and np.count_nonzero(kept.any(axis=2)) == 5000
    assert body_without_face(image, (0, 0, 100, 100), None, other, min_nonzero=0.6) is None
    # Shorter side 40 < 50.
    assert body_without_face(image, (0, 0, 40, 100), None, None) is None
    assert body_without_face(image, (0, 0, 40, 100), None, None, min_size=40) is not None
    # Black pixels of the photo itself count as zero too.
    assert body_without_face(_flat(100, 100, 0), (0, 0, 100, 100), None, None) is None
    assert body_without_face(image, None, None, None) is None
    # A neighbour that only touches the crop (IoU 0) is not masked.
    touching = body_without_face(image, (0, 0, 100, 100), None, np.array([[100, 0, 200, 100]]))
    assert (touching == 200).all()


def test_crop_sample_kinds() -> None:
    image = np.arange(60 * 80 * 3, dtype=np.uint32).reshape(60, 80, 3).astype(np.uint8)
    row = pd.Series(
        {"face_x0": 10.0, "face_y0": 5.0, "face_x1": 20.0, "face_y1": 25.0}
        | {"person_x0": 0.0, "person_y0": 0.0, "person_x1": 60.0, "person_y1": 60.0}
    ).astype("Float64")
    np.testing.assert_array_equal(crop_sample(image, row, "face"), image[5:25, 10:20])
    np.testing.assert_array_equal(crop_sample(image, row, "body"), image[0:60, 0:60])
    body = crop_sample(image, row, "body_wo_face", ImageBoxes(np.array([[10, 5, 20, 25]]), np.zeros((0, 4))))
    expected = image[0:60, 0:60].copy()
    expected[5:25, 10:20] = 0
    np.testing.assert_array_equal(body, expected)
    # Without neighbours the own face is still masked.
    np.testing.assert_array_equal(crop_sample(image, row, "body_wo_face"), expected)
    no_face = row.copy()
    no_face["face_x0"] = pd.NA
    assert crop_sample(image, no_face, "face") is None
    with pytest.raises(InputError, match="unknown crop kind"):
        crop_sample(image, row, "face_body")
    assert CROP_KINDS == ("face", "body", "body_wo_face")


# ---------------------------------------------------------------------------------------------- iter_crops


def _table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for c in ("face_x0", "face_y0", "face_x1", "face_y1", "person_x0", "person_y0", "person_x1", "person_y1"):
        frame[c] = frame.get(c, pd.Series(pd.NA, index=frame.index)).astype("Float64")
    return frame


def _row(sid: str, image: str, face=None, person=None, dataset: str = "ds") -> dict:
    out = {"sample_id": sid, "dataset": dataset, "image_path": image}
    for prefix, box in (("face", face), ("person", person)):
        for name, v in zip(("x0", "y0", "x1", "y1"), box or (None,) * 4, strict=True):
            out[f"{prefix}_{name}"] = v
    return out


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    _save(tmp_path / "a.png", _flat(100, 100, (255, 0, 0)))
    _save(tmp_path / "sub" / "b.png", _flat(100, 100, (0, 255, 0)))
    _save(tmp_path / "c.png", _flat(100, 100, (0, 0, 255)))
    return tmp_path


def test_iter_crops_order_and_single_load(photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    real = crops.load_image

    def counting(path):
        loads.append(Path(path))
        return real(path)

    monkeypatch.setattr(crops, "load_image", counting)
    samples = _table(
        [
            _row("s1", "a.png", face=(0, 0, 10, 20)),
            _row("s2", "sub/b.png", face=(0, 0, 30, 10)),
            _row("s3", "a.png", face=(5, 5, 15, 15)),
            _row("s4", "c.png"),  # no face box -> None
            _row("s5", "sub/b.png", face=(10, 10, 20, 20)),
        ]
    )
    out = list(iter_crops(samples, None, photo_dir, "face"))
    assert [sid for sid, _ in out] == ["s1", "s2", "s3", "s4", "s5"]
    assert sorted(p.name for p in loads) == ["a.png", "b.png", "c.png"]  # each image decoded once
    shapes = {sid: None if c is None else c.shape for sid, c in out}
    assert shapes == {"s1": (20, 10, 3), "s2": (10, 30, 3), "s3": (10, 10, 3), "s4": None, "s5": (10, 10, 3)}
    assert tuple(out[0][1][0, 0]) == (255, 0, 0) and tuple(out[1][1][0, 0]) == (0, 255, 0)

    sized = dict(iter_crops(samples, None, photo_dir, "face", size=32))
    assert sized["s4"] is None and all(c.shape == (32, 32, 3) for k, c in sized.items() if k != "s4")
    # s2 is 30 x 10 -> 32 wide x 11 high (10 * 32/30 = 10.67 -> 11), 10 padding rows on top.
    assert (sized["s2"][:10] == 0).all() and tuple(sized["s2"][10, 0]) == (0, 255, 0)


def test_iter_crops_masks_side_table_and_subset_neighbours(photo_dir: Path) -> None:
    full = _table(
        [
            _row("ds/a1", "a.png", face=(10, 10, 30, 30), person=(0, 0, 60, 100)),
            _row("ds/a2", "a.png", face=(70, 10, 90, 30), person=(50, 0, 100, 100)),
        ]
    )
    masked = _table([_row("", "a.png", face=(40, 60, 50, 70))]).drop(columns="sample_id")
    # A subset: a new data set name over the same image folder; ds/a2 is not in it but is a neighbour.
    subset = full.iloc[[0]].assign(dataset="nano", sample_id="nano/ds/a1")
    roots = {"ds": photo_dir, "nano": photo_dir}
    ((sid, body),) = list(iter_crops(subset, masked, roots, "body_wo_face", context=full))
    assert sid == "nano/ds/a1" and body.shape == (100, 60, 3)
    expected = _flat(100, 60, (255, 0, 0))
    expected[10:30, 10:30] = 0  # own face
    expected[60:70, 40:50] = 0  # masked-only person's face
    expected[0:100, 50:60] = 0  # ds/a2's body: x0 = 50 is not within 18 px of the left edge
    np.testing.assert_array_equal(body, expected)
    # Without the context the neighbour is unknown and only the faces are masked.
    ((_, alone),) = list(iter_crops(subset, masked, roots, "body_wo_face"))
    assert alone[:, 50:60].any(axis=2).all()
    with pytest.raises(InputError, match="no image folder"):
        list(iter_crops(subset, masked, {"ds": photo_dir}, "face"))
    with pytest.raises(InputError, match="unknown crop kind"):
        list(iter_crops(subset, masked, photo_dir, "whole"))


def test_iter_crops_missing_image_names_file(tmp_path: Path) -> None:
    samples = _table([_row("x", "nope.png", face=(0, 0, 5, 5))])
    with pytest.raises(InputError) as err:
        list(iter_crops(samples, None, tmp_path, "face"))
    assert err.value.file == str(tmp_path / "nope.png")


def test_iter_crops_records_bad_images_and_goes_on(photo_dir: Path) -> None:
    write_truncated_jpeg(photo_dir / "cut.jpg", 100, 100)
    write_empty(photo_dir / "empty.jpg")
    samples = _table(
        [
            _row("s1", "a.png", face=(0, 0, 10, 20)),
            _row("s2", "cut.jpg", face=(0, 0, 30, 10)),
            _row("s3", "empty.jpg", face=(5, 5, 15, 15)),
            _row("s4", "cut.jpg", face=(10, 10, 20, 20)),
            _row("s5", "c.png", face=(10, 10, 20, 20)),
        ]
    )
    with pytest.raises(InputError, match="truncated"):  # without a collector: as before
        list(iter_crops(samples, None, photo_dir, "face"))
    bad = BadImages()
    out = list(iter_crops(samples, None, photo_dir, "face", bad_images=bad))
    assert [sid for sid, _ in out] == ["s1", "s2", "s3", "s4", "s5"]
    assert [c is None for _, c in out] == [False, True, True, True, False]
    assert bad.samples == {
        "s2": str(photo_dir / "cut.jpg"),
        "s3": str(photo_dir / "empty.jpg"),
        "s4": bad.samples["s2"],
    }
    assert list(bad.images) == [str(photo_dir / "cut.jpg"), str(photo_dir / "empty.jpg")]
    summary = bad.summary(limit=1)
    assert summary["images"] == 2 and summary["samples"] == 3 and list(summary["examples"]) == [bad.samples["s2"]]
