"""One self-contained HTML page from a study report's parts: plain HTML and inline CSS, images and
links relative to the report folder, no script and nothing fetched from the network."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222;
       line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.banner { background: #b00020; color: white; font-weight: bold; padding: .6em 1em; }
.partial { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; }
.grid { display: grid; gap: .6em; grid-template-columns: repeat(var(--cols), minmax(0, 1fr)); }
.grid figure { margin: 0; } figcaption { font-size: .8em; color: #555; }
.note { color: #444; font-size: .9em; max-width: 60em; }
nav a { margin-right: 1em; } .scroll { overflow-x: auto; }
figure img { max-width: min(100%, 1000px); }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "—" if np.isnan(value) else f"{value:.4g}"
    if value is None or (isinstance(value, str) and not value):
        return "—"
    return str(value)


def table_html(table: pd.DataFrame, max_rows: int | None = None) -> str:
    """A DataFrame as an HTML table (numbers to 4 significant digits, NaN as —)."""
    if table.empty:
        return "<p class='note'>(empty)</p>"
    shown = table.head(max_rows) if max_rows else table
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    more = ""
    if max_rows and len(table) > max_rows:
        more = f"<p class='note'>... and {len(table) - max_rows} more rows.</p>"
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table></div>{more}")  # fmt: skip


def image_html(path: str, caption: str = "") -> str:
    """An image (a path relative to the report folder) linking to itself, with its SVG twin
    linked where there is one."""
    svg = path[: -len(".png")] + ".svg" if path.endswith(".png") else ""
    links = f" <a href='{esc(svg)}'>SVG</a>" if svg else ""
    caption_html = f"<figcaption>{esc(caption)}{links}</figcaption>" if caption or links else ""
    return (f"<figure><a href='{esc(path)}'><img src='{esc(path)}' alt='{esc(caption or path)}'>"
            f"</a>{caption_html}</figure>")  # fmt: skip


def grid_html(cells: Sequence[str], cols: int) -> str:
    return f"<div class='grid' style='--cols: {max(cols, 1)}'>{''.join(cells)}</div>"


def list_html(items: Mapping[str, str]) -> str:
    """A definition-like list; values are HTML already."""
    return "<ul>" + "".join(f"<li><b>{esc(k)}</b>: {v}</li>" for k, v in items.items()) + "</ul>"


@dataclass
class Page:
    title: str
    synthetic: bool
    warnings: list[str] = field(default_factory=list)  # shown on top (e.g. missing stages)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (heading, HTML body)

    def add(self, heading: str, *parts: str) -> None:
        self.sections.append((heading, "".join(parts)))

    def render(self) -> str:
        anchors = [f"s{i}" for i in range(len(self.sections))]
        nav = "".join(f"<a href='#{a}'>{esc(h)}</a>" for a, (h, _) in zip(anchors, self.sections))
        banner = ""
        if self.synthetic:
            banner = ("<div class='banner'>SYNTHETIC DATA: built-in generator, not a real "
                      "dataset. Numbers show how the methods behave on the synthetic task, not on "
                      "a real one.</div>")  # fmt: skip
        warnings = "".join(f"<p class='partial'>{w}</p>" for w in self.warnings)
        body = "".join(
            f"<h2 id='{a}'>{esc(h)}</h2>{b}" for a, (h, b) in zip(anchors, self.sections)
        )
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            f"{banner}<h1>{esc(self.title)}</h1>{warnings}<nav>{nav}</nav>{body}</body></html>\n"
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.render(), encoding="utf-8")
        return path
