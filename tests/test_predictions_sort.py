"""The classify outputs' file handling alone: repairing predictions.csv/.jsonl after a kill, and the
sort journal's recovery. Plain files, no detector, no model: what test_classify.py and the kill
tests check end to end, here step by step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from facecls.errors import FaceclsError
from facecls.predictions import (
    FacePrediction, PhotoPrediction, PredictionWriter, prediction_columns, prediction_rows, repair_outputs,
)
from facecls.sort import JOURNAL_NAME, PARTIAL_PREFIX, Sorter

LABELS = ("ada", "bob")
COLUMNS = prediction_columns(LABELS)


def face(number: int, label: str) -> FacePrediction:
    return FacePrediction(number, label, 0.9, label, 0.8, 1.0, 2.0, 30.0, 30.0, 0.99, {"ada": 0.8, "bob": 0.2})


def photo_rows(path: str, faces: int) -> list[dict]:
    photo = PhotoPrediction(path, "ok" if faces else "no_face", "" if faces else "no face found", 100, 100,
                            tuple(face(number, LABELS[number % 2]) for number in range(faces)))  # fmt: skip
    return prediction_rows(photo, hashlib.sha256(path.encode()).hexdigest(), LABELS)


def written(out: Path, photos: list[tuple[str, int]]) -> list[list[dict]]:
    """Each photo's rows, appended as classify appends them (after the repair that starts each run)."""
    repair_outputs(out, COLUMNS)
    writer = PredictionWriter(out, COLUMNS)
    rows = [photo_rows(path, faces) for path, faces in photos]
    for photo in rows:
        writer.append(photo, durable=False)
    writer.close()
    return rows


def test_a_half_written_line_and_a_photo_missing_a_row_are_dropped(tmp_path):
    rows = written(tmp_path, [("a.jpg", 2), ("b.jpg", 0), ("c.jpg", 1)])
    csv_path, jsonl_path = tmp_path / "predictions.csv", tmp_path / "predictions.jsonl"
    lines = csv_path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5  # the header, then a.jpg's two faces, b.jpg's no_face row, c.jpg's face
    # a.jpg lost its second face's row (a kill between photos cannot do that, a torn copy can);
    # c.jpg's line is cut in half, as a kill during its write leaves it
    csv_path.write_bytes(lines[0] + lines[1] + lines[3] + lines[4][:20])
    done, kept = repair_outputs(tmp_path, COLUMNS)
    assert done == {("b.jpg", rows[1][0]["sha256"])}
    assert [row["path"] for row in kept] == ["b.jpg"]
    repaired = csv_path.read_text().splitlines()
    assert repaired[0] == ",".join(COLUMNS) and len(repaired) == 2
    assert [json.loads(line)["path"] for line in jsonl_path.read_text().splitlines()] == ["b.jpg"]
    assert repair_outputs(tmp_path, COLUMNS) == (done, kept)  # repairing again changes nothing


def test_a_jsonl_line_written_twice_is_kept_once(tmp_path):
    written(tmp_path, [("a.jpg", 1)])
    jsonl = tmp_path / "predictions.jsonl"
    jsonl.write_bytes(jsonl.read_bytes() * 2)  # a rerun that appended before its commit point
    repair_outputs(tmp_path, COLUMNS)
    assert len(jsonl.read_text().splitlines()) == 1


def test_predictions_of_another_model_are_refused(tmp_path):
    written(tmp_path, [("a.jpg", 1)])
    repair_outputs(tmp_path, COLUMNS)
    with pytest.raises(FaceclsError, match="has the columns of another model"):
        repair_outputs(tmp_path, prediction_columns(("ada", "carl")))


def photo(folder: Path, name: str, content: bytes) -> tuple[str, str]:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path), hashlib.sha256(content).hexdigest()


def test_a_move_is_finished_only_once_its_rows_are_committed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    source, digest = photo(tmp_path / "in", "p.jpg", b"photo")
    sorter = Sorter(out, "move")
    placed = sorter.place(source, sorter.plan(source, digest, ["ada", "bob"]))
    sorter.close()
    # killed before the rows were committed: the rerun removes the copies and keeps the source
    Sorter(out, "move").recover(committed=set())
    assert Path(source).read_bytes() == b"photo" and not any(path.exists() for path in placed)
    assert (out / JOURNAL_NAME).read_bytes() == b""

    sorter = Sorter(out, "move")
    placed = sorter.place(source, sorter.plan(source, digest, ["ada", "bob"]))
    sorter.close()
    # killed after the commit: the rerun finishes the move
    Sorter(out, "move").recover(committed={(source, digest)})
    assert not Path(source).exists()
    assert [path.read_bytes() for path in placed] == [b"photo", b"photo"]
    assert not list(out.glob(f"*/{PARTIAL_PREFIX}*"))


def test_a_source_whose_content_changed_is_never_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    source, digest = photo(tmp_path / "in", "p.jpg", b"photo")
    sorter = Sorter(out, "move")
    placed = sorter.place(source, sorter.plan(source, digest, ["ada"]))
    sorter.close()
    Path(source).write_bytes(b"new content at the same path")  # a sync client replaced it meanwhile
    recovery = Sorter(out, "move")
    recovery.recover(committed={(source, digest)})
    assert Path(source).read_bytes() == b"new content at the same path"
    assert placed[0].read_bytes() == b"photo"
    assert len(recovery.kept) == 1 and "content changed" in recovery.kept[0]


def test_names_taken_in_a_label_folder_are_never_overwritten(tmp_path):
    out = tmp_path / "out"
    (out / "ada").mkdir(parents=True)
    (out / "ada" / "p.jpg").write_bytes(b"somebody else's")
    source, digest = photo(tmp_path / "in", "p.jpg", b"photo")
    sorter = Sorter(out, "copy")
    [placed] = sorter.place(source, sorter.plan(source, digest, ["ada"]))
    sorter.committed()
    sorter.finish(source, digest, [placed])
    sorter.close()
    assert placed.name == "p-1.jpg" and placed.read_bytes() == b"photo"
    assert (out / "ada" / "p.jpg").read_bytes() == b"somebody else's" and Path(source).exists()
    with pytest.raises(FaceclsError, match="is a file, where classify sorts photos"):
        (out / "bob").write_bytes(b"a file")
        Sorter(out, "copy").check_folders(["bob"])
