"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium) to look at a page as a person would.

`page_layout` opens a page at a window width and reports what a reader would see wrong: images that did not load,
text containers whose content is wider than their box, a page that scrolls sideways; and a full-page screenshot.
Tests that need it skip with a reason where Chromium or selenium is absent (`make test` installs both as root).
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMEDRIVER = Path("/usr/bin/chromedriver")

# how the page lays out in a browser: images decoded, and no text container whose content is wider than its box.
# Table wrappers (.table-wrap) may scroll sideways (a wide table stays readable there); nothing else may, the
# page included.
_LAYOUT_SCRIPT = """
const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
const texts = document.querySelectorAll('h1, h2, p, li, th, td, figcaption, figure, section, nav');
const overflowing = [...texts].filter(e => e.scrollWidth > e.clientWidth)
    .map(e => `${e.tagName}: ${e.textContent.slice(0, 60)} (${e.scrollWidth} > ${e.clientWidth})`);
const page = document.documentElement;
return {images: document.images.length, broken: broken, overflowing: overflowing,
        page_overflows: page.scrollWidth > page.clientWidth,
        width: page.scrollWidth, height: page.scrollHeight};
"""


def chromium() -> Any:
    """A headless Chromium webdriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    if not CHROMEDRIVER.is_file() or shutil.which("chromium") is None:
        pytest.skip("Chromium is absent: install Debian's chromium and chromium-driver (`make test` does as root)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))


def page_layout(driver: Any, page: Path, width: int, screenshot: Path | None = None) -> dict[str, Any]:
    """Open `page` at a window `width` and return its layout (`images`, `broken`, `overflowing`, `page_overflows`,
    `width`, `height` in CSS pixels); with `screenshot`, also write the whole page there as PNG."""
    driver.set_window_size(width, 900)
    driver.get(page.resolve().as_uri())
    layout = driver.execute_script(_LAYOUT_SCRIPT)
    if screenshot is not None:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    return layout
