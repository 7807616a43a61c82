"""kill -9 of a real ``python -m facecls`` at several points, then a rerun: the same outputs as an
uninterrupted run, finished work reused, and a model dir that is complete or absent.

One uninterrupted ``facecls run`` on a small real scrape (two people of the 5-celebrity photos
plus hostile files; 96-pixel crops, 3 head epochs) is the reference every rerun is compared with.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celebrity_crops import CELEBRITIES, SHARED, WEIGHTS_035_H5
from corpus import file_cases
from facecls.cli import main
from facecls.modeldir import load_model_dir

pytestmark = pytest.mark.slow

PEOPLE = ("elton_john", "jerry_seinfeld")
PHOTOS_PER_PERSON = 8
# Batches of 2 photos, tasks of 4: a resumed crop redoes whole tasks, so small tasks show the reuse.
CROP_OPTIONS = ["--image-size", "96", "--detect-batch", "2", "--workers", "1"]
TRAIN_OPTIONS = ["--head-epochs", "3", "--fine-tune-epochs", "0", "--weights", str(WEIGHTS_035_H5)]
HOSTILE = ("zero_bytes.jpg", "truncated.jpg", "page.jpg", "bomb.png", "one_pixel.png")


def facecls(*args: str) -> list[str]:
    return [sys.executable, "-m", "facecls", "--quiet", *args]


def run_to_end(command: list[str]) -> None:
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]


def kill_when(command: list[str], ready, timeout: float = 400) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` is true; fails if it ended first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and not ready():
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.01)
        assert process.poll() is None, "the command finished before the kill point: " + process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def tree_bytes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def cache_entries(crop_dir: Path) -> list[Path]:
    return list((crop_dir / "cache").glob("*/*/*.json"))


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared photos and weights not found at {SHARED}")
    folder = tmp_path_factory.mktemp("kill") / "scrape"
    for person in PEOPLE:
        (folder / person).mkdir(parents=True)
        for photo in sorted((CELEBRITIES / "train" / person).iterdir())[:PHOTOS_PER_PERSON]:
            shutil.copy2(photo, folder / person / photo.name)
    cases = file_cases()
    for name in HOSTILE:
        (folder / PEOPLE[0] / name).write_bytes(cases[name][1])
    return folder


@pytest.fixture(scope="module")
def reference(scrape) -> Path:
    """An uninterrupted ``facecls run`` of the scrape."""
    out = scrape.parent / "reference"
    run_to_end(facecls("run", str(scrape), "--out", str(out), *CROP_OPTIONS, *TRAIN_OPTIONS))
    return out


def test_crop_killed_then_rerun_gives_the_same_crops_and_reuses_work(scrape, reference, tmp_path):
    out = tmp_path / "run"
    run_to_end(facecls("ingest", str(scrape), "--out", str(out)))
    crop = facecls("crop", str(scrape), "--out", str(out), *CROP_OPTIONS)
    kill_when(crop, lambda: len(cache_entries(out / "crop")) >= 5)
    done_before_rerun = len(cache_entries(out / "crop"))
    assert 5 <= done_before_rerun < 2 * PHOTOS_PER_PERSON
    assert not (out / "crop" / "crops.csv").exists()  # manifests come at the end: none half-written

    run_to_end(crop)
    summary = json.loads((out / "crop" / "crop.json").read_text())
    assert summary["reused"] >= 4 and summary["reused"] % 4 == 0  # whole tasks of 4 photos
    assert tree_bytes(out / "crop" / "faces") == tree_bytes(reference / "crop" / "faces")
    for manifest in ("crops.csv", "photos.csv", "others.csv"):
        assert (out / "crop" / manifest).read_bytes() == (reference / "crop" / manifest).read_bytes(), manifest
    assert not [path for path in (out / "crop").rglob("*.partial")]


def test_train_killed_leaves_a_complete_or_absent_model_dir(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "crop", out / "crop")
    shutil.copytree(reference / "curate", out / "curate")
    train = facecls("train", "--out", str(out), *TRAIN_OPTIONS)  # the image size comes from crop.json
    kill_when(train, lambda: any(out.glob(".model.partial-*")))
    assert not (out / "model").exists()  # killed while saving: no half-written model dir under the real name
    assert any(out.glob(".model.partial-*"))

    run_to_end(train)
    loaded = load_model_dir(out / "model")
    expected = load_model_dir(reference / "model")
    assert loaded.labels == expected.labels == PEOPLE
    assert (loaded.info.crop_settings, loaded.info.train_settings) == (expected.info.crop_settings, expected.info.train_settings)
    assert not list(out.glob(".model.partial-*")) and not list(out.glob(".model.old-*"))


def test_run_killed_during_training_then_rerun_matches_an_uninterrupted_run(scrape, reference, tmp_path):
    out = tmp_path / "run"
    command = facecls("run", str(scrape), "--out", str(out), *CROP_OPTIONS, *TRAIN_OPTIONS)
    kill_when(command, lambda: (out / "curate" / "splits.csv").exists())
    assert not (out / "model").exists() and not (out / "run.json").exists()

    run_to_end(command)
    assert json.loads((out / "crop" / "crop.json").read_text())["reused"] == 2 * PHOTOS_PER_PERSON
    for manifest in ("ingest.csv", "crop/crops.csv", "curate/splits.csv"):
        assert (out / manifest).read_bytes() == (reference / manifest).read_bytes(), manifest
    assert tree_bytes(out / "crop" / "faces") == tree_bytes(reference / "crop" / "faces")
    summary, expected = (json.loads((folder / "run.json").read_text()) for folder in (out, reference))
    assert (summary["files"], summary["faces"], summary["crop_counts"]) == (
        expected["files"], expected["faces"], expected["crop_counts"]
    )  # fmt: skip
    assert load_model_dir(out / "model").labels == PEOPLE


def prediction_lines(out: Path) -> list[bytes]:
    data = (out / "predictions.csv").read_bytes()
    assert data.endswith(b"\n")
    return data.splitlines(keepends=True)


def copies(out: Path) -> list[tuple[str, str]]:
    return sorted(
        (path.parent.name, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in out.rglob("*")
        if path.is_file() and path.parent != out and "report_files" not in path.parts
    )


def test_classify_killed_after_some_rows_then_rerun_gives_the_same_rows_once(reference, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for person in PEOPLE:
        for photo in sorted((CELEBRITIES / "val" / person).iterdir())[:4]:
            shutil.copy2(photo, photos / f"{person}-{photo.name}")
    shutil.copy2(SHARED / "data" / "hard-cases" / "no_face" / "rocket.jpg", photos / "rocket.jpg")
    for name in HOSTILE:
        (photos / name).write_bytes(file_cases()[name][1])
    files = len(list(photos.iterdir()))

    uninterrupted = tmp_path / "uninterrupted"
    assert main(["--quiet", "classify", str(reference / "model"), str(photos), "--out", str(uninterrupted), "--workers", "1"]) == 0
    expected = prediction_lines(uninterrupted)

    out = tmp_path / "out"
    command = facecls("classify", str(reference / "model"), str(photos), "--out", str(out), "--workers", "1")

    def some_rows() -> bool:
        path = out / "predictions.csv"
        return path.exists() and path.read_bytes().count(b"\n") >= 4

    kill_when(command, some_rows)
    capsys.readouterr()
    assert main(["--quiet", "--json", "classify", str(reference / "model"), str(photos), "--out", str(out), "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] >= 3 and summary["skipped"] + summary["classified"] == files

    lines = prediction_lines(out)
    assert lines[0] == expected[0]
    assert len(lines) == len(set(lines))  # no duplicates
    assert sorted(lines) == sorted(expected)
    with open(out / "predictions.jsonl", "rb") as file:
        records = [json.loads(line) for line in file]
    assert len(records) == len(lines) - 1
    assert copies(out) == copies(uninterrupted)
    assert not list(out.glob("*/.facecls-partial-*"))
