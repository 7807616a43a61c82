"""Page building blocks (escaping, links, tables, galleries), the page shell (CSS, pager script), writing it."""

from __future__ import annotations

import html
import json
import logging
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from facecls.layout import REPORT_NAME
from facecls.manifest import atomic_write_text

logger = logging.getLogger(__name__)

PAGE_SIZE = 120  # thumbnails per gallery page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _url(target: Path, base: Path) -> str:
    """A relative URL from folder ``base`` to ``target`` (percent-encoded, so odd names work)."""
    return urllib.parse.quote(os.path.relpath(target, base).replace(os.sep, "/"))


def _file_uri(path: Path) -> str:
    return Path(os.path.abspath(path)).as_uri()


_NO_IMAGE = '<div class="noimg">cannot be shown</div>'


@dataclass(frozen=True)
class Thumb:
    """One tile of a gallery."""

    src: str  # relative URL of the image; "" when there is nothing to show
    caption: str = ""
    title: str = ""  # tooltip
    href: str = ""  # where a click goes (the photo)
    flag: str = ""  # css class that marks the tile: "several", "noface", "unknown", ...


def _thumb_html(thumb: Thumb) -> str:
    if thumb.src:
        image = f'<img src="{_e(thumb.src)}" alt="{_e(thumb.title or thumb.caption)}" loading="lazy">'
    else:
        image = _NO_IMAGE
    if thumb.href:
        image = f'<a href="{_e(thumb.href)}">{image}</a>'
    caption = f"<figcaption>{_e(thumb.caption)}</figcaption>" if thumb.caption else ""
    return f'<figure class="thumb {_e(thumb.flag)}" title="{_e(thumb.title)}">{image}{caption}</figure>'


def _gallery(thumbs: Sequence[Thumb], name: str, empty: str = "none") -> str:
    """Tiles in pages of PAGE_SIZE; pages after the first are hidden until the pager shows them."""
    if not thumbs:
        return f'<p class="muted" data-gallery="{_e(name)}" data-count="0">{_e(empty)}</p>'
    pages = [thumbs[start : start + PAGE_SIZE] for start in range(0, len(thumbs), PAGE_SIZE)]
    parts = [f'<div class="gallery" data-gallery="{_e(name)}" data-count="{len(thumbs)}" data-pages="{len(pages)}">']
    if len(pages) > 1:
        parts.append(
            '<nav class="pager" hidden><button type="button" class="prev">&larr; previous</button>'
            f'<span class="pager-label">page 1 of {len(pages)}</span>'
            '<button type="button" class="next">next &rarr;</button></nav>'
        )
    for number, page in enumerate(pages):
        hidden = " hidden" if number else ""
        parts.append(f'<div class="page"{hidden}>' + "".join(_thumb_html(thumb) for thumb in page) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], classes: str = "") -> str:
    """A table; cells are given as HTML (escape text with _e first)."""
    head = "<thead><tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{classes}">{head}<tbody>{body}</tbody></table>'


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _value(value) -> str:
    """A setting as it reads in JSON (true, null), strings as they are."""
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(successes: int, count: int) -> str:
    from facecls.evaluate import wilson_interval

    if count <= 0:
        return "—"
    low, high = wilson_interval(successes, count)
    return f'{successes / count:.2f} <span class="muted">({low:.2f}–{high:.2f})</span>'


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#d0d7de}nav.toc{background:#fff;border-bottom:1px solid #d0d7de;padding:8px 24px;
position:sticky;top:0;z-index:2}nav.toc a{margin-right:16px;color:#0969da;text-decoration:none}
main{padding:8px 24px 48px;max-width:1400px}section{background:#fff;border:1px solid #d0d7de;border-radius:6px;
padding:12px 16px;margin:16px 0}h2{margin:4px 0 8px;font-size:18px}h3{margin:16px 0 6px;font-size:15px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.muted{color:#656d76}
.gallery .page{display:flex;flex-wrap:wrap;gap:4px}.thumb{margin:0;width:104px;border:3px solid transparent}
.thumb img{width:100%;height:auto;display:block;background:#eee}.thumb figcaption{font-size:11px;line-height:1.25;
overflow-wrap:anywhere}.thumb.wide{width:160px}.thumb.several{border-color:#fb8500}.thumb.noface{border-color:#cf222e}
.thumb.unknown{border-color:#8c959f}.thumb.overridden{border-color:#bf3989}.thumb.otherperson{border-color:#9a6700}.thumb.train{border-bottom-color:#8c959f}.thumb.val{border-bottom-color:#0969da}
.thumb.test{border-bottom-color:#8250df}.noimg{width:100%;height:80px;display:flex;align-items:center;
justify-content:center;background:#eee;color:#656d76;font-size:11px;text-align:center}
.thumb a{text-decoration:none}.pager{margin:4px 0}.pager button{margin:0 8px}.key span{display:inline-block;border:3px solid;padding:0 6px;
margin-right:8px;font-size:12px}.bar{height:4px;background:#2da44e;margin-top:2px}.chips span{display:inline-block;
background:#eaeef2;border-radius:10px;padding:1px 10px;margin:2px 4px 2px 0}details{margin:4px 0}
summary{cursor:pointer}header .chips span{background:#57606a;color:#fff}table.text td,table.text th{text-align:left}svg{background:#fff;margin:4px 16px 4px 0}td.cell{text-align:center;min-width:34px}
td.diagonal{outline:2px solid #2da44e;outline-offset:-2px}.wrap{display:flex;flex-wrap:wrap}
svg.chart,svg.histogram{max-width:100%;height:auto}
table{display:block;max-width:100%;overflow-x:auto}
@media (max-width:600px){header{padding:12px}nav.toc{padding:6px 12px}nav.toc a{margin-right:10px}
main{padding:4px 8px 32px}section{padding:10px;margin:10px 0}}
"""

_PAGER_SCRIPT = """
document.querySelectorAll('.gallery').forEach(function (gallery) {
  var pages = gallery.querySelectorAll(':scope > .page');
  var pager = gallery.querySelector(':scope > .pager');
  if (!pager || pages.length < 2) return;
  var label = pager.querySelector('.pager-label');
  var current = 0;
  function show(index) {
    current = Math.max(0, Math.min(pages.length - 1, index));
    pages.forEach(function (page, number) { page.hidden = number !== current; });
    label.textContent = 'page ' + (current + 1) + ' of ' + pages.length;
  }
  pager.querySelector('.prev').addEventListener('click', function () { show(current - 1); });
  pager.querySelector('.next').addEventListener('click', function () { show(current + 1); });
  pager.hidden = false;
});
"""


def _page(title: str, header: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are (id, heading, body HTML)."""
    toc = "".join(f'<a href="#{_e(anchor)}">{_e(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{_e(anchor)}"><h2>{_e(heading)}</h2>{content}</section>' for anchor, heading, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{_CSS}</style>'
        "<noscript><style>.gallery .page[hidden]{display:flex}</style></noscript></head>"
        f'<body><header>{header}</header><nav class="toc">{toc}</nav><main>{body}</main>'
        f"<script>{_PAGER_SCRIPT}</script></body></html>\n"
    )


def _write_page(folder: Path, title: str, header: str, sections, thumbnails) -> Path:
    """Write the thumbnails, then ``folder/report.html`` pointing at them."""
    thumbnails.write()
    page = thumbnails.resolve(_page(title, header, sections))
    path = folder / REPORT_NAME
    atomic_write_text(path, page)
    logger.info("Wrote %s", path)
    return path
