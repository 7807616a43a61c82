"""Shared fixtures: where ../shared is, and a snapshot of a folder to prove it was not modified."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Session fixtures kept in a module of their own (small_run, small_classify): registered here once,
# so a worker that runs several of the files using them builds each once.
pytest_plugins = ["report_fixtures"]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder beside the project; tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent (a fresh clone): {SHARED} holds the photos and weights these tests use")
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "weights"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under ``folder``, hidden ones included."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def folder_snapshot():
    """The ``snapshot`` function, for tests that check a stage left its input untouched."""
    return snapshot


@pytest.fixture
def two_person_scrape(data_dir: Path, tmp_path: Path) -> Path:
    """A small scrape in tmp_path: two real photos each of two people from 5-celebrity val."""
    folder = tmp_path / "scrape"
    for person in ("jerry_seinfeld", "mindy_kaling"):
        (folder / person).mkdir(parents=True)
        for photo in sorted((data_dir / "5-celebrity-faces" / "val" / person).iterdir())[:2]:
            shutil.copy2(photo, folder / person / photo.name)
    return folder
