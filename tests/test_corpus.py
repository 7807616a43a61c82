"""The generated hostile corpus (tests/corpus.py: 300 cases and more) through ingest, crop, run and
classify as a user runs them: zero tracebacks, a status and a reason for every file, inputs
byte-identical, nothing written outside --out, and every command completes.

One ``facecls run`` trains a tiny model on two real people whose folders also hold the corpus
(detection at 160 pixels: one cheap MTCNN pass per small photo); ``facecls classify`` then sorts
the whole scrape with that model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from shared_data import CELEBRITIES, WEIGHTS_035_H5, require_shared
from corpus import hostile_scrape, restore_permissions, tree_state
from facecls.cli import main
from facecls.paths import display_name


PEOPLE = ("elton_john", "jerry_seinfeld")
AS_ROOT = os.geteuid() == 0  # root reads the chmod-000 file: it is then a photo like any other
OPTIONS = ["--detect-side", "160", "--image-size", "96", "--workers", "1", "--head-epochs", "3",
           "--fine-tune-epochs", "0", "--weights", str(WEIGHTS_035_H5)]  # fmt: skip


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def input_files(scrape: Path) -> list[str]:
    """Every non-folder entry under the scrape, as classify lists them (links to folders included)."""
    found = []
    for root, folders, names in os.walk(scrape, followlinks=False):
        linked = [name for name in folders if os.path.islink(os.path.join(root, name))]
        found += [os.path.join(root, name) for name in names + linked]
    return found


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    require_shared()
    root = tmp_path_factory.mktemp("soak")
    scrape = root / "scrape"
    cases = hostile_scrape(scrape, PEOPLE)
    for person in PEOPLE:
        for photo in sorted((CELEBRITIES / "train" / person).iterdir())[:8]:
            shutil.copy2(photo, scrape / person / photo.name)
    before = tree_state(root)
    results = {}
    for command, argv in (
        ("run", ["run", str(scrape), "--out", str(root / "run"), *OPTIONS]),
        ("classify", ["classify", str(root / "run" / "model"), str(scrape), "--out", str(root / "classified"),
                      "--workers", "1"]),
    ):  # fmt: skip
        results[command] = main(["--quiet", "--json", *argv])
    yield root, scrape, cases, before, results
    restore_permissions(scrape / PEOPLE[1])


def test_every_command_completes_and_writes_only_under_its_out(soak, capsys):
    root, scrape, cases, before, results = soak
    assert len(cases) >= 300
    assert results == {"run": 0, "classify": 0}
    after = tree_state(root)
    outside = {path: state for path, state in after.items() if path.split(os.sep)[0] not in ("run", "classified")}
    assert outside == before  # the scrape byte-identical (and its modes and times); nothing new beside it
    assert json.loads((root / "classified" / "classify.json").read_text())["state"] == "finished"
    assert json.loads((root / "run" / "run.json").read_text())["state"] == "finished"


def test_ingest_gives_every_case_its_status_and_a_reason(soak):
    root, scrape, cases, _, _ = soak
    rows = {row["path"]: row for row in csv_rows(root / "run" / "ingest.csv")}
    listed = {display_name(os.path.relpath(path, scrape)) for path in input_files(scrape)}
    assert set(rows) == listed
    for relative, case in cases.items():
        if case.kind == "permission_denied" and AS_ROOT:
            continue
        row = rows[display_name(relative)]
        assert row["status"] != "ok" or row["reason"] == "", relative
        assert row["status"] == "ok" or row["reason"], (relative, row)
        if case.expected_ingest:
            assert row["status"] == case.expected_ingest or (
                case.expected_ingest == "ok" and row["status"] in ("duplicate", "near_duplicate", "too_small")
            ), (relative, row["status"], row["reason"])
        if case.reason_contains and row["status"] == case.expected_ingest:
            assert case.reason_contains in row["reason"].lower(), (relative, row["reason"])


def test_crop_and_training_use_the_two_real_people_only(soak):
    root, _, cases, _, _ = soak
    photos = csv_rows(root / "run" / "crop" / "photos.csv")
    ingested = [row for row in csv_rows(root / "run" / "ingest.csv") if row["status"] == "ok"]
    assert sorted(row["path"] for row in photos) == sorted(row["path"] for row in ingested)
    assert all(row["status"] == "ok" or row["reason"] for row in photos)
    info = json.loads((root / "run" / "model" / "facecls.json").read_text())
    assert info["labels"] == list(PEOPLE)
    summary = json.loads((root / "run" / "crop" / "crop.json").read_text())
    usable_people = {row["person"] for row in ingested}
    assert set(summary["people_without_faces"]) == usable_people - set(PEOPLE)  # every hostile person: no face


def test_classify_gives_every_file_one_photo_row_and_sorts_only_decodable_photos(soak):
    root, scrape, cases, _, _ = soak
    out = root / "classified"
    rows: dict[str, list[dict]] = {}
    for row in csv_rows(out / "predictions.csv"):
        rows.setdefault(row["path"], []).append(row)
    assert set(rows) == {display_name(path) for path in input_files(scrape)}
    for path, photo_rows in rows.items():
        assert len(photo_rows) == max(1, int(photo_rows[0]["faces"] or 0)), path
        status, reason = photo_rows[0]["status"], photo_rows[0]["reason"]
        assert status in ("ok", "no_face", "unreadable") and (status == "ok" or reason), (path, status, reason)
        for row in photo_rows:
            for destination in json.loads(row["sorted_to"] or "[]"):
                assert (out / destination).is_file() and status != "unreadable", (path, destination)
    for relative, case in cases.items():
        if case.kind == "permission_denied" and AS_ROOT:
            continue
        status = rows[display_name(str(scrape / relative))][0]["status"]
        if case.kind == "non_utf8_name":
            assert status == "unreadable"
        elif not case.readable:
            assert status == "unreadable", (relative, status)
    labels = {path.name for path in out.iterdir() if path.is_dir()} - {"report_files"}
    assert labels <= {*PEOPLE, "unknown", "no_face"}
    kinds = Counter((case.kind, rows[display_name(str(scrape / relative))][0]["status"]) for relative, case in cases.items())
    print("classify statuses by kind:", dict(sorted(kinds.items())))
