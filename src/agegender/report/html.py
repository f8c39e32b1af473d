"""The report a person reads: one self-contained HTML page made of the report stage's tables and figures.

The page is composed from the files the report stage wrote, in their order: each markdown table (its caption
paragraph and table, converted by python-markdown's `tables` extension) and each PNG figure (embedded as a base64
data URI). A table or figure that a later change adds to `write_tables` or `write_figures` therefore appears on
the page without code here. Other formats of the same content (LaTeX, PDF) are skipped. The page needs no network:
its style sheet is inline and it loads no script, font or image from elsewhere. The same files give the same
bytes (no date, no software version, no random ids), so DVC sees no change on a rerun.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

import markdown

from agegender.files import atomic_write_text

#: the page's file name, in `reports/` beside the tables and figures folders.
REPORT_FILE = "report.html"
#: suffix -> kind of section: what the page shows; every other suffix (.tex, .pdf) repeats one of these.
SECTION_KINDS: dict[str, str] = {".md": "table", ".png": "figure"}

# Wide tables scroll inside their own box (.table-wrap) instead of pushing text out of the page; cell text wraps
# only at word breaks (break-word keeps a column at least as wide as its longest word, so nothing spills).
_STYLE = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; font-size: 14px; line-height: 1.45;
       color: #1a1a1a; margin: 0 auto; padding: 1.5em; max-width: 1400px; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
nav ol { columns: 3; }
p, li, figcaption, h1, h2 { overflow-wrap: break-word; }
.table-wrap { overflow-x: auto; margin: 0.5em 0 1em 0; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
thead th { background: #eee; }
tbody tr:nth-child(even) { background: #f7f7f7; }
figure { margin: 0.5em 0 1em 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.4em; }
""".strip()


def section_id(path: Path) -> str:
    """The anchor of a file's section: its name, with anything but letters, digits, '-' and '_' replaced."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", path.name)


def section_heading(path: Path) -> str:
    """A heading from a file name: `table10.md` -> "Table 10", `age_group_mae.png` -> "Age group mae"."""
    words = re.sub(r"(?<=[A-Za-z])(?=\d)", " ", path.stem).replace("_", " ")
    return words[:1].upper() + words[1:]


def table_html(text: str) -> str:
    """A markdown table file (caption paragraph, then a pipe table) as HTML, each table in a scrolling box."""
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return body.replace("<table>", '<div class="table-wrap">\n<table>').replace("</table>", "</table>\n</div>")


def figure_html(png: bytes, path: Path) -> str:
    """A PNG figure embedded as a data URI, captioned with where its file (and the PDF beside it) lies."""
    data = base64.b64encode(png).decode("ascii")
    name = html.escape(path.name)
    caption = f"{html.escape(section_heading(path))}: {name} (a PDF of the same figure lies beside it)."
    return (
        f'<figure>\n<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption>{caption}</figcaption>\n</figure>"
    )


def render_report(files: Sequence[Path], *, title: str, note: str | None = None) -> str:
    """The HTML page for the given table and figure files, in their order, with a table of contents.

    Args:
        files: files the report stage wrote; `.md` become tables, `.png` figures, other suffixes are skipped.
        title: the page's title and top heading.
        note: a paragraph under the heading (e.g. where the crops gallery lies and why it is not embedded).

    Returns:
        The page's text.
    """
    shown = [Path(f) for f in files if Path(f).suffix in SECTION_KINDS]
    contents, sections = [], []
    for path in shown:
        anchor, heading = section_id(path), html.escape(section_heading(path))
        contents.append(f'<li><a href="#{anchor}">{heading}</a></li>')
        if SECTION_KINDS[path.suffix] == "table":
            body = table_html(path.read_text(encoding="utf-8"))
        else:
            body = figure_html(path.read_bytes(), path)
        sections.append(f'<section id="{anchor}">\n<h2>{heading}</h2>\n{body}\n</section>')
    head = f"<h1>{html.escape(title)}</h1>\n" + (f"<p>{html.escape(note)}</p>\n" if note else "")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n{head}"
        f"<nav>\n<ol>\n" + "\n".join(contents) + "\n</ol>\n</nav>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def write_report(files: Sequence[Path], out: str | Path, *, title: str, note: str | None = None) -> Path:
    """Write `render_report`'s page to `out` (atomically); returns `out`."""
    return atomic_write_text(out, render_report(files, title=title, note=note))
