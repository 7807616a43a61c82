"""The report's thumbnails: small JPEGs in ``report_files/``, of photos and of the faces cut from them."""

from __future__ import annotations

import html
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from facecls.align import square_box
from facecls.images import decode_image, encode_image, resize_longest_side, resize_square
from facecls.layout import REPORT_FILES_FOLDER
from facecls.manifest import TEMPORARY_SUFFIX
from facecls.report.html import _NO_IMAGE, _url

logger = logging.getLogger(__name__)

FILES_FOLDER = REPORT_FILES_FOLDER  # thumbnails beside report.html
PHOTO_THUMB_SIDE = 200  # longest side of a photo thumbnail
FACE_THUMB_SIDE = 112  # side of a face thumbnail cut from a classified photo
# Of the box's side, on each side of a face thumbnail: hair, ears and chin in view, for a person
# to recognise at a glance (wider than a training crop's margin, which the model dir sets).
FACE_THUMB_MARGIN = 0.25


@dataclass(frozen=True)
class FaceBox:
    """A face's box in photo pixels, as predictions.csv holds it."""

    x: float
    y: float
    width: float
    height: float


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


def _face_thumbnails(path: Path, boxes: Sequence[FaceBox]) -> Iterator:
    """Squares around each face box of one photo (``square_box`` with FACE_THUMB_MARGIN), decoded
    once, at no more than the resolution the smallest needs; yielded one at a time (a photo may
    hold many faces)."""

    def scale_of(width: int, height: int) -> float:
        smallest = min((square_box(box, FACE_THUMB_MARGIN, width, height)[2] for box in boxes), default=1)
        return FACE_THUMB_SIDE / smallest

    decoded = decode_image(path, least_scale=scale_of)
    pixels, scale_x, scale_y = decoded.pixels, decoded.scale_x, decoded.scale_y
    height, width = pixels.shape[:2]
    for box in boxes:
        reduced = FaceBox(box.x * scale_x, box.y * scale_y, box.width * scale_x, box.height * scale_y)
        left, top, side = square_box(reduced, FACE_THUMB_MARGIN, width, height)
        yield resize_square(pixels[top : top + side, left : left + side], FACE_THUMB_SIDE)
