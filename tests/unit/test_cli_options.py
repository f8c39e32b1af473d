"""The image folder option every command shares (`agegender.cli.options.parse_image_roots`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agegender.cli.options import parse_image_roots
from agegender.errors import InputError


def test_one_folder_or_dataset_pairs(tmp_path: Path) -> None:
    assert parse_image_roots([str(tmp_path)]) == tmp_path
    assert parse_image_roots(["a=/x", "b= /y "]) == {"a": Path("/x"), "b": Path("/y")}


def test_an_existing_folder_with_an_equals_sign_is_a_folder(tmp_path: Path) -> None:
    odd = tmp_path / "run=1"
    odd.mkdir()
    assert parse_image_roots([str(odd)]) == odd


@pytest.mark.parametrize("bad", [["/x", "a=/y"], ["/x", "/y"], ["=/x"], ["a="], []])
def test_bad_values_name_the_option(bad: list[str]) -> None:
    with pytest.raises(InputError, match="--image-root") as info:
        parse_image_roots(bad, "--image-root")
    assert info.value.field == "image_root"
