"""Shared fixtures: ../shared, the expensive real artefacts (built once per test run), and a
snapshot of a folder to prove it was not modified."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from shared_data import copy_celebrities, require_shared

T = TypeVar("T")

# Session fixtures kept in a module of their own (small_run, small_classify): registered here once,
# so a worker that runs several of the files using them builds each once.
pytest_plugins = ["report_fixtures"]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder beside the project; tests that need it skip without it."""
    return require_shared()


def built_once(tmp_path_factory, name: str, build: Callable[[Path], T]) -> T:
    """``build(folder)``'s result, built once per test run for every pytest-xdist worker.

    The first worker to ask builds it into a folder of the run's temporary root, under a lock;
    the others wait for it and read its result back (``build`` returns something picklable that
    may name files in the folder). A build that failed is redone by the next to ask.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's root, shared by its workers
    folder, result = root / name, root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            value = build(folder)
            result.write_bytes(pickle.dumps(value))
            return value
    return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def celebrity_crops(shared_dir, tmp_path_factory):
    """(crops folder, items): every 5-celebrity photo's largest face cropped at 96 pixels (celebrity_crops.py)."""
    from celebrity_crops import make_celebrity_crops

    return built_once(tmp_path_factory, "celebrity-crops-96", lambda folder: (folder, make_celebrity_crops(folder, 96)))


@pytest.fixture(scope="session")
def open_set_model(celebrity_crops, tmp_path_factory):
    """The small calibrated model of four 5-celebrity people (classify_model.py), and the fifth as stranger."""
    from classify_model import make_open_set_model

    crops_dir, items = celebrity_crops
    return built_once(tmp_path_factory, "open-set-model", lambda folder: make_open_set_model(folder, crops_dir, items))


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
    return copy_celebrities(tmp_path / "scrape", ("jerry_seinfeld", "mindy_kaling"), 2)
