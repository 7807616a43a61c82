"""kill -9 of a real ``python -m facecls`` at several points, then a rerun: the same outputs as an
uninterrupted run, finished work reused, and a model dir that is complete or absent.

One uninterrupted ``facecls run`` on a small real scrape (two people of the 5-celebrity photos
plus hostile files; 96-pixel crops, 3 head epochs) is the reference every rerun is compared with.
Kill points are found by watching the output folder (crop cache entries, manifests, the state
run.json records), never by sleeping, so a loaded machine only makes them come later.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import file_cases
from processes import kill_when
from shared_data import CELEBRITIES, SHARED, WEIGHTS_035_H5, require_shared
from facecls.cli import main
from facecls.modeldir import load_model_dir

pytestmark = pytest.mark.slow

PEOPLE = ("elton_john", "jerry_seinfeld")
PHOTOS_PER_PERSON = 8
# Tasks of 4 photos: a resumed crop redoes whole tasks, so small tasks show the reuse. One photo per
# MTCNN call (the default): with batches, a photo's boxes depend on the photos batched with it, and a
# resumed run batches differently.
CROP_OPTIONS = ["--image-size", "96", "--workers", "1"]
TRAIN_OPTIONS = ["--head-epochs", "3", "--fine-tune-epochs", "0", "--weights", str(WEIGHTS_035_H5)]
HOSTILE = ("zero_bytes.jpg", "truncated.jpg", "page.jpg", "bomb.png", "one_pixel.png")


def facecls(*args: str) -> list[str]:
    return [sys.executable, "-m", "facecls", "--quiet", *args]


def run_to_end(command: list[str]) -> str:
    """Run ``command`` to the end; returns its standard output."""
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


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
    require_shared()
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
    assert not [path for path in (out / "crop").rglob("*partial*")]


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


def run_state(out: Path) -> str | None:
    """The ``state`` run.json records (trained, finished), or None before training is done."""
    try:
        return json.loads((out / "run.json").read_text()).get("state")
    except (OSError, ValueError):  # absent, or read while being replaced
        return None


def file_names(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden ones included: a stray temporary file shows up here."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:  # between the two renames that replace a model dir
        return None


def mtimes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_run_killed_in_every_stage_then_rerun_matches_an_uninterrupted_run(scrape, reference, tmp_path):
    """One run folder, killed during crop, training, evaluation and the report, each rerun resuming
    the last: what it ends with is what an uninterrupted run writes, and no finished stage is redone."""
    out = tmp_path / "run"
    command = facecls("--json", "run", str(scrape), "--out", str(out), *CROP_OPTIONS, *TRAIN_OPTIONS)

    # during crop: some photos done, no manifest written yet
    kill_when(command, lambda: len(cache_entries(out / "crop")) >= 5)
    assert not (out / "crop" / "crops.csv").exists() and not (out / "curate").exists()

    # during training: the rerun finished the crop reusing whole tasks of the first, and curated
    kill_when(command, lambda: (out / "curate" / "splits.csv").exists())
    reused = json.loads((out / "crop" / "crop.json").read_text())["reused"]
    assert 4 <= reused < 2 * PHOTOS_PER_PERSON and reused % 4 == 0
    assert not (out / "model").exists() and run_state(out) is None
    faces = mtimes(out / "crop" / "faces")

    # during evaluation: the model dir is complete, calibrated, and recorded as trained
    kill_when(command, lambda: run_state(out) == "trained")
    assert json.loads((out / "crop" / "crop.json").read_text())["reused"] == 2 * PHOTOS_PER_PERSON
    assert run_state(out) == "trained" and not (out / "report.html").exists()
    assert load_model_dir(out / "model").info.unknown_threshold is not None
    model = mtimes(out / "model")

    # during the report (or just after it): training is not redone
    kill_when(command, lambda: run_state(out) == "finished")
    assert mtimes(out / "model") == model

    summary = json.loads(run_to_end(command))
    assert summary["trained"] is False
    assert mtimes(out / "model") == model and mtimes(out / "crop" / "faces") == faces

    for manifest in ("ingest.csv", "crop/photos.csv", "crop/crops.csv", "crop/others.csv", "curate/splits.csv"):
        assert (out / manifest).read_bytes() == (reference / manifest).read_bytes(), manifest
    assert tree_bytes(out / "crop" / "faces") == tree_bytes(reference / "crop" / "faces")
    assert tree_bytes(out / "report_files") == tree_bytes(reference / "report_files")
    recorded, expected = (json.loads((folder / "run.json").read_text()) for folder in (out, reference))
    for key in ("state", "training_fingerprint", "files", "usable_photos", "faces", "ingest_counts", "crop_counts",
                "crops_per_person_and_split"):
        assert recorded[key] == expected[key], key
    loaded, reference_model = load_model_dir(out / "model"), load_model_dir(reference / "model")
    assert loaded.labels == reference_model.labels == PEOPLE
    assert (loaded.info.crop_settings, loaded.info.train_settings) == (
        reference_model.info.crop_settings, reference_model.info.train_settings
    )  # fmt: skip
    metrics, expected_metrics = (json.loads((folder / "evaluation" / "metrics.json").read_text()) for folder in (out, reference))
    assert (metrics["count"], metrics["labels"]) == (expected_metrics["count"], expected_metrics["labels"])
    # the same files as the uninterrupted run: no temporary file, partial model dir or retired one left
    assert file_names(out) == file_names(reference)


def test_run_with_other_settings_killed_after_its_save_then_rerun_does_not_reuse_its_model(scrape, reference, tmp_path):
    """run.json vouches for the model dir its run trained, not for whatever was saved there since."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    first = inode(out / "model")
    other = facecls("run", str(scrape), "--out", str(out), *CROP_OPTIONS, "--head-epochs", "4",
                    *TRAIN_OPTIONS[2:])  # fmt: skip

    # killed while saving: the first model dir is untouched beside the partial one
    kill_when(other, lambda: any(out.glob(".model.partial-*")))
    assert inode(out / "model") == first and any(out.glob(".model.partial-*"))
    command = facecls("--json", "run", str(scrape), "--out", str(out), *CROP_OPTIONS, *TRAIN_OPTIONS)
    assert json.loads(run_to_end(command))["trained"] is False
    assert inode(out / "model") == first
    assert file_names(out) == file_names(reference)  # the partial model dir is cleared though nothing was saved

    # killed once its model replaced the first, before run.json names it: the rerun must train again.
    # The model dir it left was saved calibrated in one step: never a model without its open set.
    kill_when(other, lambda: inode(out / "model") not in (first, None))
    info = load_model_dir(out / "model").info
    assert info.train_settings.head_epochs == 4 and info.unknown_threshold is not None
    assert json.loads(run_to_end(command))["trained"] is True
    info = load_model_dir(out / "model").info
    assert info.train_settings.head_epochs == 3 and info.unknown_threshold is not None


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
