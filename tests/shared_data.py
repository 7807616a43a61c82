"""Where the read-only ../shared folder (photos and weights) is, and the one skip when it is absent.

A user's fresh clone has no ../shared: tests that need it skip, saying so; CI has it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
CELEBRITIES = DATA / "5-celebrity-faces"
HARD_CASES = DATA / "hard-cases"
SCRAPED = DATA / "scraped-celebs-6"
WEIGHTS_035_H5 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
WEIGHTS_035_KERAS3 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
WEIGHTS_100_H5 = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"


def require_shared() -> Path:
    """The ../shared folder; skips the calling test (or fixture) when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent (a fresh clone): {SHARED} holds the photos and weights these tests use")
    return SHARED


def copy_celebrities(folder: Path, people: tuple[str, ...], photos_per_person: int, split: str = "val") -> Path:
    """A scrape in ``folder``: the first photos of each person of the 5-celebrity set's ``split``."""
    for person in people:
        (folder / person).mkdir(parents=True)
        for photo in sorted((CELEBRITIES / split / person).iterdir())[:photos_per_person]:
            shutil.copy2(photo, folder / person / photo.name)
    return folder
