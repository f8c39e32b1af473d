"""The HTML report: composed from the table and figure files in their order, self-contained, same bytes twice;
rendered in headless Chromium, every figure loads and no text overflows its box."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser import chromium, page_layout  # noqa: E402

from agegender.report.figures import _save, learning_curve_figure
from agegender.report.html import render_report, section_heading, write_report
from agegender.report.tables import write_tables


def _report_files(folder: Path) -> list[Path]:
    """The paper-only tables (long captions, wide tables) and one figure, as the report stage writes them."""
    tables = write_tables(None, folder / "tables", caption_note="test data")
    history = pd.DataFrame(
        {"stage": [1, 1, 2], "epoch": [1, 2, 1], "val_age_mae": [9.0, 8.0, 7.5], "val_gender_acc": [0.7, 0.8, 0.9]}
    )
    (folder / "figures").mkdir()
    figures = _save(learning_curve_figure(history, caption_note="test data"), folder / "figures", "learning_curve")
    return [*tables, *figures]


def test_section_heading():
    assert section_heading(Path("table10.md")) == "Table 10"
    assert section_heading(Path("age_group_mae.png")) == "Age group mae"
    assert section_heading(Path("summary.md")) == "Summary"


def test_page_holds_every_table_and_figure_in_order_and_nothing_from_outside(tmp_path):
    files = _report_files(tmp_path)
    page = render_report(files, title="agegender report (test data)", note="a note")
    markdown_files = [f for f in files if f.suffix == ".md"]
    assert page.count("<table>") == len(markdown_files) == 11
    assert page.count('<div class="table-wrap">') == 11
    anchors = re.findall(r'<section id="([^"]+)">', page)
    assert anchors == [f.name.replace(".", "-") for f in files if f.suffix in (".md", ".png")]
    # the figure is the PNG file itself, embedded
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(png) == (tmp_path / "figures" / "learning_curve.png").read_bytes()
    # no file, script or style sheet is fetched: every src is a data URI, every link an anchor on the page
    assert re.findall(r'src="(?!data:)', page) == [] and "<script" not in page and "<link" not in page
    assert set(re.findall(r'href="([^"]+)"', page)) == {f"#{a}" for a in anchors}
    assert "<p>a note</p>" in page and "<title>agegender report (test data)</title>" in page
    # the caption paragraph of table 1 precedes its table
    first = page[page.index('id="table1-md"') :]
    assert first.index("<p>Table 1 layout") < first.index("<table>")


def test_same_files_same_bytes(tmp_path):
    files = _report_files(tmp_path)
    first = write_report(files, tmp_path / "a.html", title="t").read_bytes()
    assert write_report(files, tmp_path / "b.html", title="t").read_bytes() == first


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 800])
def test_page_renders_in_chromium_with_every_figure_loaded_and_no_text_overflowing(tmp_path, width):
    files = _report_files(tmp_path)
    page = write_report(files, tmp_path / "report.html", title="agegender report (test data)")
    driver = chromium()
    screenshot = tmp_path / f"report-{width}.png"
    try:
        layout = page_layout(driver, page, width, screenshot)
        # the check itself sees overflow and a broken image where there are some
        control = tmp_path / "control.html"
        words = "word " * 40
        control.write_text(f'<p style="white-space: nowrap; width: 50px">{words}</p><img alt="x" src="x.png">')
        failing = page_layout(driver, control, width)
    finally:
        driver.quit()
    print(f"screenshot {screenshot}: page {layout['width']} x {layout['height']} px, {layout['images']} image(s)")
    assert layout["images"] == 1 and layout["broken"] == []
    assert layout["overflowing"] == []
    assert not layout["page_overflows"]
    assert failing["broken"] == ["x"] and len(failing["overflowing"]) == 1
