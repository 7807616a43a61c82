"""The report's thumbnails: small JPEGs in ``report_files/``, of photos and of the faces cut from them."""

from __future__ import annotations

import html
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from facecls.images import decode_image, encode_image, resize_longest_side, resize_square
from facecls.manifest import TEMPORARY_SUFFIX
from facecls.report.html import _NO_IMAGE, _url

logger = logging.getLogger(__name__)

FILES_FOLDER = "report_files"  # thumbnails beside report.html
PHOTO_THUMB_SIDE = 200  # longest side of a photo thumbnail
FACE_THUMB_SIDE = 112  # side of a face thumbnail cut from a classified photo
FACE_THUMB_MARGIN = 0.25  # around the detected box, as in the crop stage's default


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


def _photo_thumbnail(path: Path, max_pixels: int | None = None):
    decoded = decode_image(path, max_pixels, least_scale=lambda width, height: PHOTO_THUMB_SIDE / max(width, height))
    return resize_longest_side(decoded.pixels, PHOTO_THUMB_SIDE)[0]


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

    def scale_of(width: int, height: int) -> float:
        smallest = min((_face_square(box, width, height)[2] for box in boxes), default=1.0)
        return FACE_THUMB_SIDE / max(smallest, 1.0)

    decoded = decode_image(path, least_scale=scale_of)
    pixels, scale_x, scale_y = decoded.pixels, decoded.scale_x, decoded.scale_y
    height, width = pixels.shape[:2]
    for x, y, w, h in boxes:
        left, top, side = _face_square((x * scale_x, y * scale_y, w * scale_x, h * scale_y), width, height)
        left, top, side = int(round(left)), int(round(top)), max(1, int(round(side)))
        yield resize_square(pixels[top : top + side, left : left + side], FACE_THUMB_SIDE)
