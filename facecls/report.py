"""HTML reports: what a run did (``<run>/report.html``) and what classify found (``<out>/report.html``).

A report is one HTML file that opens from disk in any browser, with no network: images are
relative links to files beside it (the run's own crops, or small JPEG thumbnails of photos
written to ``report_files/``), charts are inline SVG, and the only script is a small inline
pager that shows each gallery a page of thumbnails at a time (without JavaScript every page
shows). Everything on the page is read from the folder's manifests, so ``facecls report`` can
rebuild it at any time, also for a run folder that is only partly done (after ``facecls crop``,
say, to review the faces before training).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import re
import urllib.parse
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from facecls.errors import FaceclsError
from facecls.manifest import TEMPORARY_SUFFIX, atomic_write_text, read_csv, read_json

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FILES_FOLDER = "report_files"  # thumbnails beside report.html
PAGE_SIZE = 120  # thumbnails per gallery page
PHOTO_THUMB_SIDE = 200  # longest side of a photo thumbnail
FACE_THUMB_SIDE = 112  # side of a face thumbnail cut from a classified photo
FACE_THUMB_MARGIN = 0.25  # around the detected box, as in the crop stage's default
READABLE_DROPS = ("unreadable", "not_image", "too_small", "too_large")
DUPLICATE_DROPS = ("duplicate", "near_duplicate")


# ---------------------------------------------------------------- page building blocks


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


# ---------------------------------------------------------------- charts (inline SVG)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * index / (count - 1) for index in range(count)]


def _epoch_ticks(length: int, most: int = 8) -> list[int]:
    """Epoch labels for an x-axis of ``length`` epochs: 1, then a round step (1, 2, 5 x 10^k), at most ``most``."""
    step = 1
    while length / step > most - 1:
        for factor in (2, 2.5, 2):  # 1, 2, 5, 10, 20, 50, ...
            step = int(step * factor)
            if length / step <= most - 1:
                break
    ticks = [1, *range(step, length + 1, step)]
    if length - ticks[-1] >= step / 2:
        ticks.append(length)
    return sorted(set(ticks))


def _line_chart(title: str, series: Sequence[tuple[str, Sequence[float], str, bool]], marks: Sequence[int] = ()) -> str:
    """Per-epoch curves: ``series`` are (name, values, colour, dashed); ``marks`` are phase starts."""
    width, height, left, right, top, bottom = 440, 230, 48, 12, 24, 58
    length = max((len(values) for _, values, _, _ in series), default=0)
    values_all = [value for _, values, _, _ in series for value in values if math.isfinite(value)]
    if not length or not values_all:
        return ""
    low, high = min(0.0, min(values_all)), max(values_all)
    high = 1.0 if high <= 1.0 and low >= 0.0 and "accuracy" in title else (high or 1.0)

    def x(epoch: float) -> float:
        return left + (width - left - right) * ((epoch - 1) / max(length - 1, 1))

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - (value - low) / ((high - low) or 1.0))

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
             'class="chart">',
             f'<text x="{left}" y="16" font-weight="bold" font-size="13">{_e(title)}</text>']
    for tick in _ticks(low, high):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">{tick:.2f}</text>')
    for epoch in _epoch_ticks(length):
        parts.append(f'<text class="x-tick" x="{x(epoch):.1f}" y="{height - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{epoch}</text>')
    parts.append(f'<text x="{(left + width) / 2:.0f}" y="{height - bottom + 28}" font-size="11" text-anchor="middle">epoch</text>')
    for mark in marks:
        parts.append(f'<line x1="{x(mark - 0.5):.1f}" x2="{x(mark - 0.5):.1f}" y1="{top}" y2="{height - bottom}" '
                     'stroke="#8c959f" stroke-dasharray="2,3"/>')
    for position, (name, values, colour, dashed) in enumerate(series):
        points = " ".join(f"{x(index + 1):.1f},{y(value):.1f}" for index, value in enumerate(values) if math.isfinite(value))
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{points}"/>')
        legend_x, legend_y = left + position * 170, height - 12
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/><text x="{legend_x + 22}" y="{legend_y}" font-size="11">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(title: str, groups: Sequence[tuple[str, Sequence[float], str]], low: float, high: float,
               threshold: float | None, bins: int = 20) -> str:
    """Stacked histogram of scores in [low, high]; ``groups`` are (name, values, colour)."""
    width, height, left, right, top, bottom = 300, 170, 34, 8, 22, 44
    step = (high - low) / bins
    counts = []
    for _, values, _ in groups:
        row = [0] * bins
        for value in values:
            row[min(bins - 1, max(0, int((value - low) / step)))] += 1
        counts.append(row)
    tallest = max((sum(column) for column in zip(*counts)), default=0) or 1
    plot_width, plot_height = width - left - right, height - top - bottom
    height += 14 * (len(groups) - 1)

    def x(value: float) -> float:
        return left + plot_width * (value - low) / (high - low)

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
             'class="histogram">',
             f'<text x="{left}" y="15" font-weight="bold" font-size="12">{_e(title)}</text>']
    for index in range(bins):
        stacked = 0
        for (name, _, colour), row in zip(groups, counts):
            if not row[index]:
                continue
            bar_height = plot_height * row[index] / tallest
            bar_top = top + plot_height * (1 - stacked / tallest) - bar_height
            parts.append(f'<rect x="{x(low + index * step) + 0.5:.1f}" y="{bar_top:.1f}" width="{plot_width / bins - 1:.1f}" '
                         f'height="{bar_height:.1f}" fill="{colour}"><title>{_e(name)}: {row[index]}</title></rect>')
            stacked += row[index]
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_height}" y2="{top + plot_height}" stroke="#57606a"/>')
    for tick in _ticks(low, high, 3):
        parts.append(f'<text x="{x(tick):.1f}" y="{top + plot_height + 12}" font-size="10" text-anchor="middle">{tick:.1f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{tallest}</text>')
    if threshold is not None and low <= threshold <= high:
        parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{top}" y2="{top + plot_height}" '
                     f'stroke="#cf222e" stroke-dasharray="3,2"><title>unknown threshold {threshold:.3f}</title></line>')
    for row, (name, values, colour) in enumerate(groups):  # one legend line per group: long names never overlap
        legend_y = top + plot_height + 20 + 14 * row
        parts.append(f'<rect x="{left}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 14}" y="{legend_y + 9}" font-size="11" data-legend="{_e(name)}" '
                     f'data-count="{len(values)}">{_e(name)} {len(values)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- thumbnails


class _Thumbnails:
    """Writes small JPEGs into ``report_files/``; reuses those already there, removes stale ones."""

    def __init__(self, report_dir: Path):
        self.report_dir = report_dir
        self.folder = report_dir / FILES_FOLDER
        self.wanted: set[Path] = set()
        self.jobs: list[tuple[tuple[Path, ...], Callable[[], Sequence]]] = []
        self.failed: set[str] = set()  # URLs of thumbnails that could not be made

    def request(self, name: str, make: Callable[[], object]) -> str:
        """One thumbnail; ``make`` returns its RGB pixels. Returns its relative URL."""
        return self.request_group([name], lambda: [make()])[0]

    def request_group(self, names: Sequence[str], make: Callable[[], Sequence]) -> list[str]:
        """Thumbnails made together (the faces of one photo, decoded once); ``make`` returns their pixels."""
        paths = tuple(self.folder / name for name in names)
        self.wanted.update(paths)
        if not all(path.exists() for path in paths):
            self.jobs.append((paths, make))
        return [_url(path, self.report_dir) for path in paths]

    def write(self) -> None:
        """Make the missing thumbnails and remove those no longer shown."""
        from facecls.images import encode_image

        def run(job) -> None:
            paths, make = job
            try:
                for path, pixels in zip(paths, make(), strict=True):
                    # Renamed into place (never half written) but not fsynced: a lost thumbnail is
                    # remade by the next build, and thousands of fsyncs would dominate the time.
                    path.parent.mkdir(parents=True, exist_ok=True)
                    temporary = path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")
                    temporary.write_bytes(encode_image(pixels, "jpg", quality=85))
                    os.replace(temporary, path)
            except Exception as error:  # an unreadable or vanished photo: its tiles say so
                logger.info("No thumbnail for %s: %s", paths[0].name, error)
                self.failed.update(_url(path, self.report_dir) for path in paths if not path.exists())

        if self.jobs:
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(tqdm(pool.map(run, self.jobs), total=len(self.jobs), desc="report thumbnails", unit="photo"))
        if self.folder.is_dir():
            for path in self.folder.rglob("*"):
                if path.is_file() and path not in self.wanted:
                    path.unlink()

    def resolve(self, page: str) -> str:
        """Swap images that could not be made for a 'cannot be shown' tile, so no image is broken."""
        if not self.failed:
            return page
        return re.sub(
            r'<img src="([^"]*)"[^>]*>',
            lambda match: _NO_IMAGE if html.unescape(match.group(1)) in self.failed else match.group(0),
            page,
        )


# Modes Pillow's reduce() averages correctly (not palette indices, not 1-bit, not 16-bit).
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")


def _decode_reduced(path: Path, scale_of: Callable[[int, int], float], max_pixels: int | None = None):
    """Decode a photo at no less than ``scale_of(width, height)`` of its full size, for thumbnails.

    A report decodes thousands of photos while classify's detector workers are still alive:
    decoding each at full size (a 30000-pixel-wide photo is 54 MB of RGB, and the conversions
    copy it) made the end of a classify run its memory peak. JPEG is decoded straight at 1/2,
    1/4 or 1/8 of its size (Pillow's draft); other formats are reduced right after decoding,
    before the RGB conversion. Opening and RGB conversion are images.py's own, so a thumbnail
    shows what the stages decoded.

    Returns:
        (EXIF-oriented RGB pixels, their scale along x, along y) relative to the oriented full size.

    Raises:
        ImageDecodeError: the file cannot be decoded (or is larger than ``max_pixels``).
    """
    from PIL import ImageOps

    from facecls.errors import ImageDecodeError
    from facecls.images import ImageTooLargeError, _open, _to_rgb

    with _open(path) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(path, f"{width}x{height} is over the limit of {max_pixels / 1e6:.0f} megapixels")
        # Twice the size asked for, as Pillow's thumbnail() does: the area resize that follows
        # then sets the final size, so rounding in the coarse steps does not skew a thin photo.
        scale = min(1.0, 2 * max(scale_of(width, height), 1e-6))
        wanted = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        try:
            image.seek(0)  # the first frame of an animation
            image.draft(image.mode, wanted)  # JPEG only: never smaller than ``wanted``
            image.load()
            try:
                orientation = image.getexif().get(0x0112, 1)
                ImageOps.exif_transpose(image, in_place=True)
            except Exception:  # an unusable EXIF block: keep the pixels as stored, as decode_image does
                orientation = 1
            if orientation in (5, 6, 7, 8):
                width, height, wanted = height, width, wanted[::-1]
            reduced = image
            factor = min(image.width // wanted[0], image.height // wanted[1])
            if factor > 1 and image.mode in _REDUCIBLE_MODES:
                reduced = image.reduce(factor)
            pixels = _to_rgb(reduced)
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
            raise ImageDecodeError(path, str(error) or type(error).__name__) from None
    return pixels, pixels.shape[1] / width, pixels.shape[0] / height


def _photo_thumbnail(path: Path, max_pixels: int | None = None):
    from facecls.images import resize_longest_side

    pixels, _, _ = _decode_reduced(path, lambda width, height: PHOTO_THUMB_SIDE / max(width, height), max_pixels)
    return resize_longest_side(pixels, PHOTO_THUMB_SIDE)[0]


def _face_square(box: tuple[float, float, float, float], width: float, height: float) -> tuple[float, float, float]:
    """(left, top, side) of the square thumbnail around a box (x, y, w, h), inside the photo."""
    x, y, w, h = box
    side = min(max(w, h) * (1 + 2 * FACE_THUMB_MARGIN), width, height)
    left = min(max(x + w / 2 - side / 2, 0), width - side)
    top = min(max(y + h / 2 - side / 2, 0), height - side)
    return left, top, side


def _face_thumbnails(path: Path, boxes: Sequence[tuple[float, float, float, float]]) -> Iterator:
    """Square cuts around each box (x, y, w, h) of one photo, decoded once, at no more than the
    resolution the smallest cut needs; yielded one at a time (a photo may hold many faces)."""
    from facecls.images import resize_square

    def scale_of(width: int, height: int) -> float:
        smallest = min((_face_square(box, width, height)[2] for box in boxes), default=1.0)
        return FACE_THUMB_SIDE / max(smallest, 1.0)

    pixels, scale_x, scale_y = _decode_reduced(path, scale_of)
    height, width = pixels.shape[:2]
    for x, y, w, h in boxes:
        left, top, side = _face_square((x * scale_x, y * scale_y, w * scale_x, h * scale_y), width, height)
        left, top, side = int(round(left)), int(round(top)), max(1, int(round(side)))
        yield resize_square(pixels[top : top + side, left : left + side], FACE_THUMB_SIDE)


# ---------------------------------------------------------------- the run report


def _read_optional_csv(path: Path) -> list[dict[str, str]] | None:
    return read_csv(path) if path.is_file() else None


def _read_optional_json(path: Path):
    return read_json(path) if path.is_file() else None


def write_run_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report.html`` from the run folder's manifests; returns its path.

    Raises:
        FaceclsError: ``run_dir`` holds no ``ingest.csv`` (not a run folder).
    """
    from facecls import modeldir

    run_dir = Path(run_dir)
    if not (run_dir / "ingest.csv").is_file():
        raise FaceclsError(f"{run_dir} is not a run folder: ingest.csv is missing. Pass the --out folder of facecls run.")
    run_summary = _read_optional_json(run_dir / "run.json") or {}
    ingest_summary = _read_optional_json(run_dir / "ingest.json") or {}
    scrape = Path(run_summary.get("scrape") or ingest_summary.get("scrape") or ".")
    # The run's own model/ first: run.json holds absolute paths, stale once a run folder is moved.
    model_dir = run_dir / "model"
    if not (model_dir / modeldir.INFO_FILE).is_file() and run_summary.get("model_dir"):
        model_dir = Path(run_summary["model_dir"])
    ingest_rows = read_csv(run_dir / "ingest.csv")
    photos = _read_optional_csv(run_dir / "crop" / "photos.csv")
    crops = _read_optional_csv(run_dir / "crop" / "crops.csv")
    others = _read_optional_csv(run_dir / "crop" / "others.csv") or []
    splits = _read_optional_csv(run_dir / "curate" / "splits.csv")
    curate_summary = _read_optional_json(run_dir / "curate" / "curate.json")
    metrics = _read_optional_json(run_dir / "evaluation" / "metrics.json")
    info = _read_optional_json(model_dir / modeldir.INFO_FILE)
    history = _read_optional_json(model_dir / modeldir.HISTORY_FILE)
    crop_warnings = (_read_optional_json(run_dir / "crop" / "crop.json") or {}).get("warnings") or []

    thumbnails = _Thumbnails(run_dir)
    max_pixels = int(float((ingest_summary.get("settings") or {}).get("max_megapixels", 50)) * 1e6)

    def photo_thumb(relative: str, sha256: str) -> str:
        source = scrape / relative
        key = sha256[:16] or hashlib.sha256(relative.encode()).hexdigest()[:16]
        return thumbnails.request(f"photos/{key}.jpg", lambda: _photo_thumbnail(source, max_pixels))

    people = sorted({row["person"] for row in ingest_rows if row["person"]})
    split_of = {row["crop_path"]: row["split"] for row in splits or [] if row["flipped"] != "true"}
    person_of_crop = {row["crop_path"]: row["person"] for row in splits or []}
    kept = Counter(person_of_crop[crop_path] for crop_path in split_of) if splits is not None else None
    sections = [
        ("funnel", "Scrape funnel", _funnel_section(people, ingest_rows, photos, kept, scrape, photo_thumb)),
        ("faces", "Faces per person", _faces_section(run_dir, people, photos, crops, others, split_of, scrape, photo_thumb)),
        ("splits", "Split and balance", _splits_section(people, splits, curate_summary)),
        ("training", "Training", _training_section(history, info) + _open_set_text(run_summary.get("open_set"))),
        ("test", "Test results", _test_section(metrics)),
        ("mistakes", "Misclassified test faces", _mistakes_section(run_dir, metrics)),
        ("settings", "Settings and versions", _settings_section(
            _stage_settings(run_dir, run_summary, ingest_summary, curate_summary, info), run_summary, info, model_dir)),
    ]
    faces_kept = len(split_of) if splits is not None else (len(crops) if crops is not None else None)
    accuracy = ""
    if metrics:
        low, high = metrics["accuracy_95_interval"]
        accuracy = (f'<span data-summary="accuracy">test accuracy {metrics["accuracy"]:.3f} '
                    f"(95% CI {low:.3f}–{high:.3f}) on {metrics['count']} faces</span>")
    header = (
        f"<h1>facecls run report: {_e(run_dir.name)}</h1>"
        f"<p>scrape {_e(scrape)} &middot; run folder {_e(run_dir.resolve())}</p>"
        f'<p class="chips"><span>{len(people)} people</span><span data-summary="files">{len(ingest_rows)} files</span>'
        + (f'<span data-summary="faces">{faces_kept} faces kept</span>' if faces_kept is not None else "")
        + (f"<span>{accuracy}</span>" if accuracy else "")
        + (f'<span data-summary="stranger-rejection">{_rejection(run_summary["open_set"])}</span>'
           if run_summary.get("open_set") else "")
        + "</p>"
        + "".join(f'<p data-warning="crop">warning: {_e(warning)}</p>' for warning in crop_warnings)
    )
    return _write_page(run_dir, f"facecls run {run_dir.name}", header, sections, thumbnails)


def _write_page(folder: Path, title: str, header: str, sections, thumbnails) -> Path:
    """Write the thumbnails, then ``folder/report.html`` pointing at them."""
    thumbnails.write()
    page = thumbnails.resolve(_page(title, header, sections))
    path = folder / REPORT_NAME
    atomic_write_text(path, page)
    logger.info("Wrote %s", path)
    return path


def _funnel_section(people, ingest_rows, photos, kept_by_person: Counter | None, scrape: Path, photo_thumb) -> str:
    faces_by_photo = {row["path"]: int(row["crops"]) for row in photos or []}
    stages = ("files", "readable", "unique", "face", "kept")
    totals: Counter = Counter()
    rows = []
    drops = defaultdict(list)  # person -> [(stage, path, status, reason, sha256)]
    for person in people:
        mine = [row for row in ingest_rows if row["person"] == person]
        readable = [row for row in mine if row["status"] not in READABLE_DROPS]
        unique = [row for row in readable if row["status"] == "ok"]
        counts = {"files": len(mine), "readable": len(readable), "unique": len(unique)}
        for row in mine:
            if row["status"] != "ok":
                drops[person].append(("ingest", row["path"], row["status"], row["reason"], row["sha256"]))
        if photos is not None:
            counts["face"] = sum(1 for row in unique if faces_by_photo.get(row["path"], 0) > 0)
            for row in photos:
                if row["person"] == person and int(row["crops"]) == 0:
                    drops[person].append(("crop", row["path"], row["status"], row["reason"], row["sha256"]))
        if kept_by_person is not None:
            counts["kept"] = kept_by_person[person]
        totals.update(counts)
        cells = [f'<a href="#person-{_e(person)}">{_e(person)}</a>']
        for stage in stages:
            value = counts.get(stage)
            if value is None:
                cells.append('<span class="muted">not run</span>')
                continue
            share = 100 * value / max(counts["files"], 1)
            cells.append(f'<span data-person="{_e(person)}" data-stage="{stage}">{value}</span>'
                         f'<div class="bar" style="width:{share:.0f}%"></div>')
        rows.append(cells)
    rows.append(["<b>all people</b>"] + [f'<b data-stage-total="{stage}">{totals[stage]}</b>' if stage in totals
                                          else "" for stage in stages])
    outside = [row for row in ingest_rows if not row["person"]]
    table = _table(["person", "files", "readable photos", "unique photos", "photos with a face", "faces kept"], rows,
                   "funnel")
    explain = (
        '<p class="muted">readable: decodes as an image of a usable size (drops: unreadable, not_image, too_small, '
        "too_large). unique: not a copy of another photo (drops: duplicate, near_duplicate; the largest copy is kept). "
        "with a face: MTCNN found a face that passed the confidence, size and shape filters and agrees with the person's "
        "other photos (drops: no_face, low_confidence, wrong_person, excluded by you). "
        "kept: face crops in the train, val or test split.</p>"
    )
    if outside:
        explain += (f'<p data-outside="{len(outside)}">{len(outside)} files lie outside any person\'s folder and are '
                    f"ignored: {_e(', '.join(row['path'] for row in outside[:10]))}{' …' if len(outside) > 10 else ''}</p>")
    parts = [table, explain, "<h3>Every dropped file and why</h3>"]
    for person in people:
        listed = drops[person]
        if not listed:
            continue
        tiles = []
        for stage, relative, status, reason, sha256 in listed:
            decodable = status not in ("unreadable", "not_image", "too_large")
            tiles.append(Thumb(
                src=photo_thumb(relative, sha256) if decodable else "",
                caption=f"{status}: {reason}",
                title=f"{relative} ({stage} stage)",
                href=_file_uri(scrape / relative),
                flag="wide " + ("noface" if stage == "crop" else ""),
            ))
        by_status = Counter(status for _, _, status, _, _ in listed)
        label = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        parts.append(f'<details open data-drops="{_e(person)}" data-count="{len(listed)}"><summary>{_e(person)}: '
                     f"{len(listed)} dropped ({_e(label)})</summary>{_gallery(tiles, 'drops-' + person)}</details>")
    return "".join(parts)


def _faces_section(run_dir, people, photos, crops, others, split_of, scrape, photo_thumb) -> str:
    if crops is None or photos is None:
        return '<p class="muted">The crop stage has not run yet: `facecls crop` writes the faces shown here.</p>'
    crop_dir = run_dir / "crop"
    faces_in_photo = {row["path"]: int(row["faces"]) for row in photos}
    photo_row = {row["path"]: row for row in photos}

    def overridden(row) -> bool:
        """The training face of a multi-face photo is not its largest (older photos.csv: never)."""
        photo = photo_row.get(row["source_path"], {})
        return bool(photo.get("largest_face")) and photo.get("chosen_face") != photo.get("largest_face")

    parts = [
        '<p class="key"><span style="border-color:#fb8500">photo with several faces: check the right one was taken</span>'
        '<span style="border-color:#bf3989">not the largest face: the one that agrees with the person\'s other photos</span>'
        '<span style="border-color:#9a6700">rejected: no face agrees with the person\'s other photos</span>'
        '<span style="border-color:#cf222e">photo that gave no face</span>'
        '<span style="border-color:transparent;border-bottom-color:#8c959f">train</span>'
        '<span style="border-color:transparent;border-bottom-color:#0969da">val</span>'
        '<span style="border-color:transparent;border-bottom-color:#8250df">test</span></p>'
        '<p class="muted">Least certain first: faces from photos with several faces, then by detector confidence. '
        "Hover a face for why it was chosen; click it to open its photo.</p>"
        f'<p data-corrections="how">To correct a choice, write <code>{_e(crop_dir / "corrections.csv")}</code> with the '
        "header <code>path,face</code> and one line per photo: its path as shown here, then the face number to "
        "train on (shown on each face) or <code>none</code> to leave the photo out, e.g. "
        "<code>messi/a1b2.jpg,none</code>. The next <code>facecls run</code> with the same arguments honours it "
        "without detecting again.</p>"
    ]
    for person in people:
        mine = [row for row in crops if row["person"] == person]
        mine.sort(key=lambda row: (row["photo_status"] == "ok", not overridden(row), float(row["confidence"]), row["crop_path"]))
        tiles = [
            Thumb(
                src=_url(crop_dir / row["crop_path"], run_dir),
                caption=f"face {row['face_index']}" + (" · not the largest" if overridden(row) else ""),
                title=f"{row['source_path']} · confidence {float(row['confidence']):.3f} · "
                f"{faces_in_photo.get(row['source_path'], 1)} face(s) in the photo · {split_of.get(row['crop_path'], 'no split')}"
                + (f" · chosen by {photo_row[row['source_path']].get('chosen_by')}" if photo_row.get(row["source_path"], {}).get("chosen_by") else "")
                + (f" · {photo_row[row['source_path']]['reason']}" if photo_row.get(row["source_path"], {}).get("reason") else ""),
                href=_file_uri(scrape / row["source_path"]),
                flag=" ".join(filter(None, ["several" if row["photo_status"] != "ok" else "",
                                            "overridden" if overridden(row) else "",
                                            split_of.get(row["crop_path"], "")])),
            )
            for row in mine
        ]
        missing = [row for row in photos if row["person"] == person and int(row["crops"]) == 0]
        missing_tiles = [
            Thumb(src=photo_thumb(row["path"], row["sha256"]), caption=f"{row['status']}: {row['reason']}",
                  title=row["path"], href=_file_uri(scrape / row["path"]),
                  flag="wide noface" + (" otherperson" if row["status"] == "wrong_person" else ""))
            for row in missing
        ]
        strangers = [row for row in others if row["person"] == person]
        stranger_tiles = [
            Thumb(src=_url(crop_dir / row["crop_path"], run_dir), title=f"another face in {row['source_path']}",
                  href=_file_uri(scrape / row["source_path"]))
            for row in strangers
        ]
        several = sum(1 for row in mine if row["photo_status"] != "ok")
        not_largest = sum(1 for row in mine if overridden(row))
        rejected = sum(1 for row in missing if row["status"] == "wrong_person")
        parts.append(
            f'<h3 id="person-{_e(person)}" data-not-largest="{not_largest}" data-rejected="{rejected}">{_e(person)}: {len(mine)} faces'
            f"{f', {several} from photos with several faces' if several else ''}"
            f"{f', {not_largest} not the largest' if not_largest else ''}"
            f"{f', {rejected} rejected as another person' if rejected else ''}"
            f"{', ' + _plural(len(missing), 'photo') + ' without a face' if missing else ''}</h3>"
            + _gallery(tiles, "faces-" + person)
            + (f"<p>Photos that gave no face:</p>{_gallery(missing_tiles, 'noface-' + person)}" if missing else "")
            + (f'<details><summary>{_plural(len(strangers), "other face")} in the same photos (not trained on; they calibrate '
               f"unknown)</summary>{_gallery(stranger_tiles, 'others-' + person)}</details>" if strangers else "")
        )
    return "".join(parts)


def _splits_section(people, splits, curate_summary) -> str:
    if splits is None or curate_summary is None:
        return '<p class="muted">The curate stage has not run yet.</p>'
    counts = curate_summary["crops_per_person_and_split"]
    training = curate_summary.get("training_items_per_person", {})
    weight = {}
    for row in splits:
        if row["split"] == "train":
            weight.setdefault(row["person"], float(row["weight"]))
    person_of_crop = {row["crop_path"]: row["person"] for row in splits}
    dropped = Counter(person_of_crop.get(path, "") for path in curate_summary.get("dropped_by_undersampling", []))
    repeated: Counter = Counter()
    for path, extra in curate_summary.get("repeated_by_oversampling", {}).items():
        repeated[person_of_crop.get(path, "")] += extra
    rows = []
    for person in people:
        split_counts = counts.get(person, {})
        rows.append([_e(person)] + [f'<span data-person="{_e(person)}" data-split="{split}">{split_counts.get(split, 0)}</span>'
                                    for split in ("train", "val", "test")]
                    + [str(training.get(person, "")), f"{weight.get(person, 1.0):.3f}", str(dropped[person] or ""),
                       str(repeated[person] or "")])
    settings = curate_summary.get("settings", {})
    note = (f'<p class="muted">Split by duplicate group (a photo, its near-duplicates and flips share one split), '
            f"seed {_e(settings.get('seed'))}; balance policy <b>{_e(settings.get('balance'))}</b>; "
            f"flips {'added to train' if settings.get('flip') else 'off'}.</p>")
    return _table(["person", "train crops", "val crops", "test crops", "training items (flips, balance)",
                   "sample weight", "dropped by undersampling", "extra copies (oversampling)"], rows) + note


def _training_section(history, info) -> str:
    if not history or not info:
        return '<p class="muted">No model yet: `facecls train` writes the curves shown here.</p>'
    phases = [(name, history[name]) for name in ("head", "fine_tune") if history.get(name)]
    charts = []
    marks = []
    offset = 0
    for name, curves in phases[:-1]:
        offset += len(curves.get("loss", []))
        marks.append(offset + 1)
    for metric in ("loss", "accuracy"):
        train = [value for _, curves in phases for value in curves.get(metric, [])]
        val = [value for _, curves in phases for value in curves.get(f"val_{metric}", [])]
        series = [(f"train {metric}", train, "#0969da", False)]
        if val:
            series.append((f"val {metric}", val, "#cf222e", True))
        charts.append(_line_chart(metric, series, marks))
    metrics = info.get("metrics", {})
    epochs = ", ".join(f"{name.replace('_', '-')} {len(curves.get('loss', []))} epochs" for name, curves in phases)
    kept = metrics.get("fine_tune_kept")
    text = (f"<p>{_e(epochs)}; val accuracy {_number(metrics.get('val_accuracy'))} on {metrics.get('val_count', 0)} "
            f"faces{'' if kept is None or len(phases) < 2 else '; fine-tuning kept' if kept else '; fine-tuning did not lower the val loss, head-only weights kept'}. "
            '<span class="muted">The dotted line marks the start of fine-tuning.</span></p>')
    return text + f'<div class="wrap">{"".join(charts)}</div>'


def _rejection(open_set: dict) -> str:
    if open_set.get("stranger_rejection") is None:
        return "unknown: no other people's faces in the scrape to measure it on"
    rejected = round(open_set["stranger_rejection"] * open_set["stranger_count"])
    return f"unknown rejects {rejected} of {open_set['stranger_count']} other people's faces"


def _open_set_text(open_set) -> str:
    if not open_set:
        return ""
    return (f"<p><b>Unknown</b>: threshold {_number(open_set.get('unknown_threshold'))} keeps "
            f"{_number(open_set.get('known_recall'))} of the held-out faces of the model's people; "
            f"{_e(_rejection(open_set))} (faces cut from photos of several people, <a href=\"#faces\">shown with "
            "each person</a>).</p>")


def _test_section(metrics) -> str:
    if not metrics:
        return '<p class="muted">No evaluation yet (facecls run evaluates the test split).</p>'
    labels = metrics["labels"]
    matrix = metrics["confusion_matrix"]
    low, high = metrics["accuracy_95_interval"]
    parts = [f'<p>Accuracy <b>{metrics["accuracy"]:.3f}</b> (95% Wilson interval {low:.3f}–{high:.3f}): '
             f'{metrics["correct"]} of {metrics["count"]} test faces right.</p>']
    column_totals = [sum(row[column] for row in matrix) for column in range(len(labels))]
    header = ["true \\ predicted"] + [_e(label) for label in labels] + ["faces"]
    rows = []
    for index, (label, row) in enumerate(zip(labels, matrix)):
        total = sum(row)
        cells = [_e(label)]
        for column, value in enumerate(row):
            alpha = value / total if total else 0
            colour = "#fff" if alpha > 0.6 else "#1f2328"
            cells.append(f'<span data-true="{_e(label)}" data-predicted="{_e(labels[column])}">{value}</span>')
            cells[-1] = (f'<div style="background:rgba(9,105,218,{alpha:.2f});color:{colour};margin:-3px -8px;'
                         f'padding:3px 8px">{cells[-1]}</div>')
        cells.append(str(total))
        rows.append(cells)
    table = _table(header, rows, "confusion")
    parts.append("<h3>Confusion matrix</h3>" + table.replace("<td><div", '<td class="cell"><div'))
    per_person_rows = []
    for index, label in enumerate(labels):
        true_positive = matrix[index][index]
        support = sum(matrix[index])
        f1 = next((person["f1"] for person in metrics["per_person"] if person["person"] == label), None)
        per_person_rows.append([
            _e(label),
            _interval(true_positive, column_totals[index]),
            _interval(true_positive, support),
            _number(f1, 2),
            f'<span data-support="{_e(label)}">{support}</span>',
        ])
    parts.append("<h3>Per person</h3>" + _table(["person", "precision (95% CI)", "recall (95% CI)", "F1", "test faces"],
                                                per_person_rows)
                 + '<p class="muted">Intervals are Wilson score intervals: with a handful of test faces per person '
                   "they are wide, so small differences between people mean little.</p>")
    return "".join(parts)


def _mistakes_section(run_dir, metrics) -> str:
    if not metrics:
        return '<p class="muted">No evaluation yet.</p>'
    crop_dir = run_dir / "crop"
    tiles = []
    for mistake in metrics["mistakes"]:
        image = crop_dir / mistake["identifier"]
        tiles.append(Thumb(
            src=_url(image, run_dir) if image.is_file() else "",
            caption=f"true {mistake['true_label']} ({mistake['true_score']:.2f}) → "
            f"{mistake['predicted_label']} ({mistake['predicted_score']:.2f})",
            title=mistake["identifier"],
            flag="wide",
        ))
    return ('<p class="muted">Most confident mistakes first; the numbers are the probabilities of the true and the '
            "predicted person.</p>" + _gallery(tiles, "mistakes", empty="No test face was misclassified."))


def _settings_section(settings: dict, run_summary, info, model_dir) -> str:
    parts = [_settings_table(settings)]
    if info:
        versions = info.get("versions", {})
        parts.append("<h3>Model</h3>" + _table(
            None,
            [["model dir", _e(model_dir)], ["labels (output order)", _e(", ".join(info["labels"]))],
             ["created", _e(info.get("created", ""))],
             ["unknown threshold", _number(info.get("unknown_threshold"))]]
            + [[_e(name), f'<span data-version="{_e(name)}">{_e(version)}</span>'] for name, version in versions.items()],
            "text",
        ))
    if run_summary.get("seconds") is not None:
        parts.append(f'<p class="muted">The run took {run_summary["seconds"]:.0f} s; rerunning the same command reuses '
                     "finished work.</p>")
    return "".join(parts)


def _stage_settings(run_dir: Path, run_summary, ingest_summary, curate_summary, info) -> dict:
    """Each stage's settings: from run.json, else from what each stage done so far recorded."""
    if run_summary.get("settings"):
        return run_summary["settings"]
    crop_summary = _read_optional_json(run_dir / "crop" / "crop.json") or {}
    found = {
        "ingest": ingest_summary.get("settings"),
        "detect": crop_summary.get("detect_settings"),
        "crop": crop_summary.get("crop_settings"),
        "curate": (curate_summary or {}).get("settings"),
        "train": (info or {}).get("train_settings"),
    }
    return {stage: values for stage, values in found.items() if values}


def _settings_table(settings: dict) -> str:
    rows = []
    for stage, values in settings.items():
        for key, value in (values or {}).items():
            rows.append([_e(stage), _e(key), f'<span data-setting="{_e(stage)}.{_e(key)}">{_e(_value(value))}</span>'])
    return _table(["stage", "setting", "value"], rows, "text")


# ---------------------------------------------------------------- the classify report


def write_classify_report(out_dir: Path) -> Path:
    """Write ``<out_dir>/report.html`` for a classify output folder; returns its path.

    Raises:
        FaceclsError: ``out_dir`` holds no predictions.csv.
    """
    from facecls.outputs import NO_FACE, PREDICTIONS_CSV, SUMMARY_NAME, UNKNOWN, UNREADABLE

    out_dir = Path(out_dir)
    if not (out_dir / PREDICTIONS_CSV).is_file():
        raise FaceclsError(f"{out_dir} holds no {PREDICTIONS_CSV}. Pass the --out folder of facecls classify.")
    rows = read_csv(out_dir / PREDICTIONS_CSV)
    summary = _read_optional_json(out_dir / SUMMARY_NAME) or {}
    labels = list(summary.get("labels") or sorted({row["best_match"] for row in rows if row["best_match"]}))
    threshold = summary.get("unknown_threshold")
    faces = [row for row in rows if row["label"]]
    no_face = [row for row in rows if row["status"] == NO_FACE]
    unreadable = [row for row in rows if row["status"] == UNREADABLE]
    thumbnails = _Thumbnails(out_dir)

    def source(row) -> Path:
        """The photo, or its sorted copy when the original was moved away."""
        original = Path(row["path"])
        if original.exists():
            return original
        for folder in [row["label"] or NO_FACE, UNKNOWN, NO_FACE, *labels]:
            copy = out_dir / folder / original.name
            if copy.is_file():
                return copy
        return original

    face_urls: dict[tuple[str, str], str] = {}
    by_photo: dict[str, list[dict]] = defaultdict(list)
    for row in faces:
        by_photo[row["path"]].append(row)
    for path, photo_rows in by_photo.items():
        photo_rows.sort(key=lambda row: int(row["face"]))
        names = [f"faces/{row['sha256'][:2]}/{row['sha256'][:16]}-{row['face']}.jpg" for row in photo_rows]
        boxes = [(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"])) for row in photo_rows]
        urls = thumbnails.request_group(
            names, lambda photo=source(photo_rows[0]), boxes=boxes: _face_thumbnails(photo, boxes)
        )
        for row, url in zip(photo_rows, urls):
            face_urls[(path, row["face"])] = url

    def face_tile(row, caption: str) -> Thumb:
        return Thumb(
            src=face_urls[(row["path"], row["face"])],
            caption=caption,
            title=f"{row['path']} · face {int(row['face']) + 1} of {row['faces']} · score {float(row['score']):.3f} · "
            f"best match {row['best_match']} (p {float(row['probability']):.2f})",
            href=_file_uri(source(row)),
            flag="unknown" if row["label"] == UNKNOWN else "",
        )

    galleries = []
    for label in labels + [UNKNOWN]:
        mine = sorted((row for row in faces if row["label"] == label), key=lambda row: float(row["score"]))
        caption = (lambda row: f"{row['best_match']}? {float(row['score']):.2f}") if label == UNKNOWN else \
            (lambda row: f"{float(row['score']):.2f}")
        tiles = [face_tile(row, caption(row)) for row in mine]
        photos_count = len({row["path"] for row in mine})
        galleries.append(
            f'<h3 id="label-{_e(label)}">{_e(label)}: {len(mine)} faces in {photos_count} photos</h3>'
            + _gallery(tiles, "label-" + label,
                       empty="no face was called unknown" if label == UNKNOWN else f"no face was named {label}")
        )
    no_face_tiles = [
        Thumb(src=thumbnails.request(f"photos/{row['sha256'][:16]}.jpg", lambda row=row: _photo_thumbnail(source(row))),
              caption=row["reason"], title=row["path"], href=_file_uri(source(row)), flag="wide noface")
        for row in no_face
    ]
    unreadable_rows = [[_e(row["path"]), _e(row["reason"])] for row in unreadable]
    sections = [
        ("summary", "Summary", _classify_summary(summary, labels, faces, no_face, unreadable, rows)),
        ("scores", "Score distributions", _score_section(labels, faces, summary, threshold)),
        ("faces", "Faces by label", '<p class="muted">Least certain first (lowest score). Click a face to open its '
                                    "photo.</p>" + "".join(galleries)),
        ("no-face", "Photos without a face", _gallery(no_face_tiles, "no_face", empty="none")),
        ("unreadable", "Unreadable files",
         (_table(["file", "reason"], unreadable_rows, "unreadable text") if unreadable_rows else '<p class="muted">none</p>')),
    ]
    header = (
        f"<h1>facecls classify report: {_e(out_dir.name)}</h1>"
        f"<p>model {_e(summary.get('model_dir', ''))} &middot; output {_e(out_dir.resolve())}</p>"
        f'<p class="chips"><span data-summary="photos">{len({row["path"] for row in rows})} photos</span>'
        f'<span data-summary="faces">{len(faces)} faces</span><span>{len(no_face)} without a face</span>'
        f"<span>{len(unreadable)} unreadable</span></p>"
    )
    return _write_page(out_dir, f"facecls classify {out_dir.name}", header, sections, thumbnails)


def _classify_summary(summary, labels, faces, no_face, unreadable, rows) -> str:
    counts = Counter(row["label"] for row in faces)
    photos = defaultdict(set)
    for row in faces:
        photos[row["label"]].add(row["path"])
    table_rows = [[f'<a href="#label-{_e(label)}">{_e(label)}</a>', f'<span data-label-count="{_e(label)}">{counts[label]}</span>',
                   str(len(photos[label]))] for label in labels + ["unknown"]]
    table_rows.append(["no_face (photos)", f'<span data-label-count="no_face">{len(no_face)}</span>', str(len(no_face))])
    table_rows.append(["unreadable (files)", f'<span data-label-count="unreadable">{len(unreadable)}</span>',
                       str(len(unreadable))])
    threshold = summary.get("unknown_threshold")
    score = summary.get("score", "probability")
    explain = (
        f"<p>Score: <b>{_e(score)}</b>"
        + (" (softmax probability of the predicted person)" if score == "probability"
           else " (how typical the face is of the predicted person, by its identity descriptor: the share of"
                " held-out faces of known people lying farther from their own person)")
        + (f"; faces scoring under <b>{threshold:.3f}</b> are <i>unknown</i>." if threshold is not None
           else "; no threshold: no face is called unknown.")
        + (f" Photos were sorted into the label folders ({_e(summary.get('sort'))})." if summary.get("sort") not in (None, "none") else "")
        + "</p>"
    )
    if summary.get("seconds") is not None and not summary.get("classified") and summary.get("skipped"):
        explain += f'<p class="muted">Last run: all {summary["skipped"]} photos were already classified.</p>'
    elif summary.get("seconds") is not None:
        explain += (f'<p class="muted">Last run: {summary.get("classified", 0)} photos classified, '
                    f"{summary.get('skipped', 0)} already done, {summary.get('photos_per_second', 0)} photos/s.</p>")
    return _table(["label", "faces", "photos"], table_rows, "summary") + explain


def _score_section(labels, faces, summary, threshold) -> str:
    """One chart per label of predictions.csv: its faces' scores, the legend counting its rows."""
    from facecls.outputs import UNKNOWN

    if not faces:
        return '<p class="muted">No faces found.</p>'
    scores = [float(row["score"]) for row in faces]
    low = min([0.0, *scores] + ([threshold] if threshold is not None else []))
    low = -1.0 if low < 0 else 0.0
    charts, notes = [], []
    for label in labels:
        named = [row for row in faces if row["label"] == label]
        if not named:
            continue
        first = [float(row["score"]) for row in named if row["best_match"] == label]
        other = [float(row["score"]) for row in named if row["best_match"] != label]
        groups = [(label, first, "#0969da")] + ([("MobileNetV2 preferred another", other, "#bf8700")] if other else [])
        charts.append(_histogram(f"named {label}: {len(named)}", groups, low, 1.0, threshold))
    unknown = [float(row["score"]) for row in faces if row["label"] == UNKNOWN]
    if unknown:
        charts.append(_histogram(f"unknown: {len(unknown)}", [(UNKNOWN, unknown, "#8c959f")], low, 1.0, threshold))
        if threshold is not None:
            notes.append(f"{'All' if len(unknown) == len(faces) else 'The'} {_plural(len(unknown), 'face')} called unknown "
                         f"scored under the threshold {threshold:.3f} against every person the model knows: "
                         + (f"all {min(unknown):.3f}" if min(unknown) == max(unknown)
                            else f"from {min(unknown):.3f} to {max(unknown):.3f}")
                         + (" (0: farther from that person than all of their held-out faces)." if min(unknown) == 0 else "."))
    return ('<p class="muted">One chart per label: the score of each face named that person (blue; amber where '
            "MobileNetV2's own first choice was another person) and of each face called unknown (grey, scored "
            "against its nearest person); the red dashed line is the unknown threshold.</p>"
            f'<div class="wrap">{"".join(charts)}</div>'
            + "".join(f'<p data-note="unknown">{_e(note)}</p>' for note in notes))


# ---------------------------------------------------------------- either kind


def write_report(folder: Path) -> Path:
    """(Re)build the report of a run folder or a classify output folder.

    Raises:
        FaceclsError: the folder is neither.
    """
    from facecls.outputs import PREDICTIONS_CSV

    folder = Path(folder)
    if not folder.is_dir():
        raise FaceclsError(f"{folder} is not a folder. Pass a run folder (facecls run --out) or a classify output folder.")
    if (folder / "ingest.csv").is_file():
        return write_run_report(folder)
    if (folder / PREDICTIONS_CSV).is_file():
        return write_classify_report(folder)
    raise FaceclsError(
        f"{folder} is neither a run folder (ingest.csv) nor a classify output folder ({PREDICTIONS_CSV}). "
        "Pass the --out folder of facecls run or facecls classify."
    )
