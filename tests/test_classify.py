"""classify on real photos: one row per face, a status for every file, resumable, sorting that loses nothing."""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from shared_data import SHARED
from fakes import FakeDetector
from facecls import sort as sort_module
from facecls.classifier import NO_FACE, UNKNOWN, UNREADABLE, Classifier, classify
from facecls.cli import main
from facecls.errors import FaceclsError, ImageDecodeError, ModelDirError
from facecls.images import decode_image

HARD = SHARED / "data" / "hard-cases"


@pytest.fixture(scope="module")
def model(open_set_model):
    return open_set_model


@pytest.fixture(scope="module")
def classifier(model):
    with Classifier(model[0]) as loaded:
        yield loaded


def read_rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as file:
        return list(csv.DictReader(file))


def by_photo(rows: list[dict]) -> dict[str, list[dict]]:
    photos = defaultdict(list)
    for row in rows:
        photos[row["path"]].append(row)
    return photos


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def small_set(folder: Path) -> dict[str, Path]:
    """Photos with 0, 1 and several faces, and a corrupt file, copied into ``folder``."""
    from classify_model import val_photos

    chosen = {
        "one_face_a.jpg": val_photos("elton_john")[0],
        "one_face_b.jpg": val_photos("jerry_seinfeld")[1],
        "no_face.jpg": HARD / "no_face" / "rocket.jpg",
        "two_faces.jpg": HARD / "multiple_faces" / "two_people.jpg",
        "broken.jpg": HARD / "corrupt" / "truncated.jpg",
    }
    folder.mkdir(parents=True)
    for name, source in chosen.items():
        shutil.copy2(source, folder / name)
    return {name: folder / name for name in chosen}


def test_rows_for_photos_with_zero_one_and_several_faces(model, tmp_path):
    photos = small_set(tmp_path / "in")
    result = classify(model[0], [tmp_path / "in"], tmp_path / "out", sort="none", workers=1)
    rows = read_rows(tmp_path / "out")
    photo_rows = by_photo(rows)
    assert set(photo_rows) == {str(path) for path in photos.values()}
    labels = set(classifier_labels(model)) | {UNKNOWN}

    [no_face] = photo_rows[str(photos["no_face.jpg"])]
    assert (no_face["status"], no_face["label"], no_face["face"]) == (NO_FACE, "", "")
    [broken] = photo_rows[str(photos["broken.jpg"])]
    assert broken["status"] == UNREADABLE and broken["reason"]
    two = photo_rows[str(photos["two_faces.jpg"])]
    assert [row["face"] for row in two] == ["0", "1"] and {row["faces"] for row in two} == {"2"}
    for name in ("one_face_a.jpg", "one_face_b.jpg"):
        [row] = photo_rows[str(photos[name])]
        assert row["status"] == "ok" and row["label"] in labels
        assert float(row["w"]) > 20 and float(row["h"]) > 20
        probabilities = [float(row[f"p_{label}"]) for label in classifier_labels(model)]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
        assert row["best_match"] == classifier_labels(model)[int(np.argmax(probabilities))]
    with Classifier(model[0]) as api:  # the stage and the Python API crop and classify alike
        for name in ("one_face_a.jpg", "one_face_b.jpg", "two_faces.jpg"):
            faces = api.classify_path(photos[name]).faces
            expected = photo_rows[str(photos[name])]
            assert [(face.label, face.best_match) for face in faces] == [(row["label"], row["best_match"]) for row in expected]
            assert [face.score for face in faces] == pytest.approx([float(row["score"]) for row in expected], abs=1e-4)
    assert (result.photos, result.faces, result.no_face, result.unreadable) == (5, 4, 1, 1)
    assert sum(result.label_counts.values()) == 4
    with open(tmp_path / "out" / "predictions.jsonl") as file:
        records = [json.loads(line) for line in file]
    assert [(record["path"], record["face"]) for record in records] == [
        (row["path"], int(row["face"]) if row["face"] else None) for row in rows
    ]
    summary = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert summary["state"] == "finished" and summary["photos"] == 5


def classifier_labels(model) -> list[str]:
    return sorted({item.person for item in model[3]})


def test_known_people_are_named_and_the_stranger_mostly_is_unknown(model, classifier):
    from classify_model import STRANGER, val_photos

    known = [(person, path) for person in classifier.labels for path in val_photos(person)]
    predictions = list(classifier.classify_paths(path for _, path in known))
    named = [photo.faces[0].best_match == person for (person, _), photo in zip(known, predictions) if photo.faces]
    assert len(named) >= 18 and np.mean(named) >= 0.75
    kept = [photo.faces[0].label != UNKNOWN for photo in predictions if photo.faces]
    stranger = [photo for photo in classifier.classify_paths(val_photos(STRANGER)) if photo.faces]
    known_scores = [photo.faces[0].score for photo in predictions if photo.faces]
    stranger_scores = [photo.faces[0].score for photo in stranger]
    assert np.mean(kept) >= 0.8
    assert np.median(stranger_scores) < np.median(known_scores)
    assert len(stranger) >= 4 and np.mean([photo.faces[0].label == UNKNOWN for photo in stranger]) >= 0.8


def test_every_hard_case_gets_a_row_and_inputs_stay_byte_identical(model, tmp_path, folder_snapshot):
    before = folder_snapshot(HARD)
    result = classify(model[0], [HARD], tmp_path / "out", sort="copy", annotate=True, workers=2)
    assert folder_snapshot(HARD) == before
    rows = read_rows(tmp_path / "out")
    photo_rows = by_photo(rows)
    files = sorted(str(path) for path in HARD.rglob("*") if path.is_file())
    assert sorted(photo_rows) == files
    status = {Path(path).name: photo[0]["status"] for path, photo in photo_rows.items()}
    assert status["truncated.jpg"] == UNREADABLE
    assert status["manifest.csv"] == UNREADABLE and "not an image" in photo_rows[str(HARD / "manifest.csv")][0]["reason"]
    for name in ("rocket.jpg", "coffee.png", "hubble_deep_field.jpg"):
        assert status[name] == NO_FACE
    for name in ("122908829.jpg", ".jpg", "250.jpg", "camera.png", "AFP_337E9GT.jpg"):  # AVIF as .jpg, dotfile, ...
        assert status[name] == "ok", name
    assert len(photo_rows[str(HARD / "multiple_faces" / "selfie-many-people.jpg")]) >= 4
    for row in rows:
        assert row["status"] in ("ok", NO_FACE, UNREADABLE)
        if row["status"] == "ok":
            assert row["label"] in classifier_labels(model) + [UNKNOWN]
    # sorted copies: each photo in the folder of each recognised person, else unknown/ or no_face/
    for path, photo in photo_rows.items():
        wanted = {row["label"] for row in photo if row["label"] not in ("", UNKNOWN)} or (
            {UNKNOWN} if photo[0]["status"] == "ok" else {NO_FACE} if photo[0]["status"] == NO_FACE else set()
        )
        for folder in wanted:
            copies = [candidate for candidate in (tmp_path / "out" / folder).iterdir() if sha(candidate) == photo[0]["sha256"]]
            assert len(copies) == 1, (path, folder)
    assert not list((tmp_path / "out").glob("unreadable*"))
    assert len(list((tmp_path / "out" / "annotated").iterdir())) == sum(1 for photo in photo_rows.values() if photo[0]["status"] == "ok")
    summary = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert summary["photos"] == len(files) == result.photos
    assert summary["unreadable"] == sum(1 for photo in photo_rows.values() if photo[0]["status"] == UNREADABLE)

    # A rerun finds everything done: no new rows, no new copies.
    csv_before = (tmp_path / "out" / "predictions.csv").read_bytes()
    copies_before = sorted(str(path) for path in (tmp_path / "out").rglob("*") if path.is_file() and path.parent.name != "out")
    again = classify(model[0], [HARD], tmp_path / "out", sort="copy", workers=1)
    assert (again.classified, again.skipped) == (0, len(files))
    assert (tmp_path / "out" / "predictions.csv").read_bytes() == csv_before
    assert sorted(str(path) for path in (tmp_path / "out").rglob("*") if path.is_file() and path.parent.name != "out") == copies_before


def test_a_half_written_row_is_dropped_and_its_photo_redone(model, tmp_path):
    """(The fake detector: what is checked is how the rows are repaired, not who is found.)"""
    photos = small_set(tmp_path / "in")
    out = tmp_path / "out"
    classify(model[0], [tmp_path / "in"], out, sort="none", workers=1, detector_factory=FakeDetector)
    complete = read_rows(out)
    data = (out / "predictions.csv").read_bytes()
    lines = data.splitlines(keepends=True)
    # keep the header and the first photo, then half of the next line, as a kill -9 would leave
    first_photo = [line for line in lines[1:] if line.startswith(lines[1].split(b",")[0] + b",")]
    (out / "predictions.csv").write_bytes(lines[0] + b"".join(first_photo) + lines[1 + len(first_photo)][:30])
    result = classify(model[0], [tmp_path / "in"], out, sort="none", workers=1, detector_factory=FakeDetector)
    assert result.skipped == 1 and result.classified == len(photos) - 1
    rows = read_rows(out)
    key = lambda row: (row["path"], row["face"], row["label"], row["status"])  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, complete))
    assert (out / "predictions.csv").read_bytes().endswith(b"\n")


def snapshot_contents(folder: Path) -> Counter:
    return Counter(sha(path) for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".facecls"))


def check_nothing_lost(photos: dict[str, Path], out: Path, originals: dict[str, str]) -> None:
    """Every photo is in the output folders exactly once per label folder, or still in place."""
    rows = by_photo(read_rows(out))
    assert set(rows) == {str(path) for path in photos.values()}
    for name, path in photos.items():
        photo = rows[str(path)]
        if photo[0]["status"] == UNREADABLE:
            assert path.exists() and sha(path) == originals[name]  # never moved
            continue
        assert not path.exists(), name
        wanted = {row["label"] for row in photo if row["label"] not in ("", UNKNOWN)} or (
            {UNKNOWN} if photo[0]["status"] == "ok" else {NO_FACE}
        )
        for folder in wanted:
            copies = [candidate for candidate in (out / folder).iterdir() if sha(candidate) == originals[name]]
            assert len(copies) == 1, (name, folder)
        elsewhere = [p for p in out.rglob("*") if p.is_file() and p.parent.name not in wanted and sha(p) == originals[name]]
        assert not elsewhere, (name, elsewhere)
    assert not list(out.glob("*/.facecls-partial-*"))


@pytest.mark.parametrize("interrupt_in", ["place", "finish"])
def test_move_interrupted_then_rerun_loses_nothing(model, tmp_path, monkeypatch, interrupt_in):
    """(The fake detector finds 0-2 faces a photo: the photos go to no_face/, unknown/ and the people's folders.)"""
    photos = small_set(tmp_path / "in")
    originals = {name: sha(path) for name, path in photos.items()}
    out = tmp_path / "out"
    calls = {"count": 0}
    real = getattr(sort_module.Sorter, interrupt_in)

    def interrupted(self, *args):
        calls["count"] += 1
        if calls["count"] == 3:
            if interrupt_in == "place":  # after the first copy is in place, before the rows are written
                real(self, args[0], args[1][:1])
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(sort_module.Sorter, interrupt_in, interrupted)
    with pytest.raises(KeyboardInterrupt):
        classify(model[0], [tmp_path / "in"], out, sort="move", workers=1, detector_factory=FakeDetector)
    monkeypatch.undo()
    # nothing is lost midway: every photo is still in the input or fully in the output
    for name, digest in originals.items():
        assert photos[name].exists() or digest in snapshot_contents(out), name
    classify(model[0], [tmp_path / "in"], out, sort="move", workers=1, detector_factory=FakeDetector)
    check_nothing_lost(photos, out, originals)


def test_name_collisions_never_overwrite(model, tmp_path):
    first, second = tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg"
    first.parent.mkdir()
    second.parent.mkdir()
    shutil.copy2(HARD / "no_face" / "rocket.jpg", first)
    shutil.copy2(HARD / "no_face" / "coffee.png", second)
    out = tmp_path / "out"
    (out / NO_FACE).mkdir(parents=True)
    (out / NO_FACE / "photo.jpg").write_bytes(b"somebody else's file")
    classify(model[0], [first.parent, second.parent], out, sort="link", workers=1)
    assert (out / NO_FACE / "photo.jpg").read_bytes() == b"somebody else's file"
    names = sorted(path.name for path in (out / NO_FACE).iterdir())
    assert names == ["photo-1.jpg", "photo-2.jpg", "photo.jpg"]
    assert {sha(out / NO_FACE / name) for name in names[:2]} == {sha(first), sha(second)}
    assert os.path.samefile(out / NO_FACE / "photo-1.jpg", first)  # a hard link, not a copy


def test_python_api_classifies_arrays_and_paths(classifier):
    from classify_model import val_photos

    pixels = decode_image(val_photos("ben_afflek")[0]).pixels
    faces = classifier.classify_array(pixels)
    assert len(faces) == 1
    face = faces[0]
    assert face.label in classifier.labels + (UNKNOWN,)
    assert 0 <= face.x < pixels.shape[1] and 0 <= face.y < pixels.shape[0]
    assert set(face.probabilities) == set(classifier.labels)
    assert (face.label == UNKNOWN) == (face.score < classifier.unknown_threshold)
    photo = classifier.classify_path(val_photos("ben_afflek")[0])
    assert photo.status == "ok" and photo.faces[0].best_match == face.best_match
    assert list(photo.seconds) == ["decode", "detect", "crop", "classify"] and all(photo.seconds.values())
    assert classifier.classify_array(decode_image(HARD / "no_face" / "rocket.jpg").pixels) == []
    with pytest.raises(ImageDecodeError):
        classifier.classify_path(HARD / "corrupt" / "truncated.jpg")
    with pytest.raises(FaceclsError, match=r"RGB uint8 array of shape \(H, W, 3\)"):
        classifier.classify_array(pixels[:, :, 0])


def test_worker_processes_run_the_model_and_agree_with_this_process(model, classifier, tmp_path):
    photos = small_set(tmp_path / "in")
    paths = [photos[name] for name in sorted(photos)]
    with Classifier(model[0], workers=2) as parallel:
        assert parallel.face_model._model is None  # this process never loaded the model
        in_workers = list(parallel.classify_paths(paths))
        assert parallel.face_model._model is None
    in_process = list(classifier.classify_paths(paths))
    assert [photo.status for photo in in_workers] == [photo.status for photo in in_process]
    for mine, theirs in zip(in_workers, in_process):
        assert [face.label for face in mine.faces] == [face.label for face in theirs.faces]
        assert [face.score for face in mine.faces] == pytest.approx([face.score for face in theirs.faces], abs=1e-4)


def test_a_model_file_that_cannot_be_loaded_fails_with_one_line_in_either_mode(model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model[0], broken)
    (broken / "model.keras").write_bytes((broken / "model.keras").read_bytes()[:5000])
    photos = small_set(tmp_path / "in")
    for workers in (1, 2):  # a truncated archive is refused up front, before any worker starts
        with pytest.raises(ModelDirError, match="model.keras cannot be loaded") as caught:
            Classifier(broken, workers=workers)
        assert "\n" not in str(caught.value)
    with zipfile.ZipFile(model[0] / "model.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(broken / "model.keras", "w") as archive:  # a whole archive Keras cannot read
        for name, data in members.items():
            archive.writestr(name, b"{not json" if name == "config.json" else data)
    with Classifier(broken, workers=2) as parallel:  # the workers load it: the first photos report it
        with pytest.raises(ModelDirError, match="model.keras cannot be loaded") as caught:
            list(parallel.classify_paths(photos.values()))
    assert "\n" not in str(caught.value)


def test_threshold_override_and_a_model_dir_without_open_set(model, tmp_path):
    from classify_model import val_photos

    photo = val_photos("elton_john")[2]
    with Classifier(model[0], unknown_threshold=1.0) as strict:
        assert [face.label for face in strict.classify_path(photo).faces] == [UNKNOWN]
    plain = tmp_path / "plain"
    shutil.copytree(model[0], plain)
    (plain / "openset.npz").unlink()
    with pytest.raises(ModelDirError, match="open-set file is missing"):
        Classifier(plain)
    info = json.loads((plain / "facecls.json").read_text())
    (plain / "facecls.json").write_text(json.dumps({**info, "unknown_threshold": None}))
    with Classifier(plain) as softmax_only:
        [face] = softmax_only.classify_path(photo).faces
        assert softmax_only.score_name == "probability"
        assert face.label == face.best_match and face.score == pytest.approx(face.probability)
        stranger = softmax_only.classify_path(HARD / "multiple_faces" / "two_people.jpg").faces[0]
    assert stranger.probability < 0.9999  # the model does not know these people
    # a threshold just above the stranger's probability makes it unknown; the known face stays named
    with Classifier(plain, unknown_threshold=stranger.probability + 2e-5) as with_threshold:
        assert with_threshold.classify_path(HARD / "multiple_faces" / "two_people.jpg").faces[0].label == UNKNOWN
        if face.probability > stranger.probability + 2e-5:
            assert with_threshold.classify_path(photo).faces[0].label == face.best_match


def test_output_of_another_model_or_in_use_is_refused(model, tmp_path):
    photos = small_set(tmp_path / "in")
    out = tmp_path / "out"
    holder = subprocess.Popen(  # another process holds the output folder
        [sys.executable, "-c", "import sys, time; from facecls.manifest import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FaceclsError, match="in use"):
            classify(model[0], [tmp_path / "in"], out, sort="none", workers=1)
    finally:
        holder.kill()
        holder.wait()
    classify(model[0], [photos["no_face.jpg"]], out, sort="none", workers=1)
    with pytest.raises(FaceclsError, match="another model or threshold"):
        classify(model[0], [tmp_path / "in"], out, sort="none", unknown_threshold=0.7, workers=1)


def test_cli_reports_a_summary_and_fails_clearly_on_bad_input(model, tmp_path, capsys):
    photos = small_set(tmp_path / "in")
    assert main(["classify", str(model[0]), str(photos["no_face.jpg"]), str(photos["broken.jpg"]),
                 "--out", str(tmp_path / "out"), "--sort", "none"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 photos" in printed and "no_face 1" in printed and "unreadable 1" in printed
    # each phase timed, as a mean per photo; detecting a decoded photo takes time, classifying no face none
    assert re.search(r"^per photo: decode \d+ ms, detect \d+ ms, crop \d+ ms, classify \d+ ms$", printed, re.M), printed
    phases = json.loads((tmp_path / "out" / "classify.json").read_text())["phase_seconds"]
    assert list(phases) == ["decode", "detect", "crop", "classify"]
    assert phases["detect"] > 0 and phases["decode"] > 0 and phases["classify"] == 0
    assert main(["classify", str(model[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "out2")]) == 1
    assert "Input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(model[0]), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--sort", "shuffle"])
    assert exit_info.value.code == 2


def test_a_stranger_the_classifier_is_sure_of_is_still_unknown(classifier):
    from classify_model import STRANGER, val_photos

    faces = [photo.faces[0] for photo in classifier.classify_paths(val_photos(STRANGER)) if photo.faces]
    sure = [face for face in faces if face.probability >= 0.9]
    assert sure, "the classifier is sure of none of the stranger's faces: the test proves nothing"
    assert [face.label for face in sure] == [UNKNOWN] * len(sure)
    assert all(face.score < classifier.unknown_threshold for face in sure)


def test_a_bystander_in_a_known_persons_photo_is_unknown(classifier):
    from PIL import Image

    from classify_model import STRANGER, val_photos

    def photo(path, height=320):
        image = Image.fromarray(decode_image(path).pixels)
        return np.asarray(image.resize((round(image.width * height / image.height), height)))

    known, bystander = photo(val_photos("jerry_seinfeld")[0]), photo(val_photos(STRANGER)[0])
    faces = classifier.classify_array(np.concatenate([known, bystander], axis=1))  # the two side by side
    sides = {("known" if face.x + face.width / 2 < known.shape[1] else "bystander"): face for face in faces}
    assert set(sides) == {"known", "bystander"} and len(faces) == 2
    assert sides["known"].label == "jerry_seinfeld"
    assert sides["bystander"].label == UNKNOWN


def test_calibrate_rewrites_an_outdated_model_dir_that_classify_refuses(model, tmp_path, capsys):
    from facecls.curate import SplitItem
    from facecls.manifest import field_names, write_csv
    from facecls.modeldir import read_model_info
    from facecls.openset import OPEN_SET_FORMAT, load_open_set

    model_dir, calibration, crops_dir, known, _ = model
    run = tmp_path / "run"  # a run folder: model/, crop/ and curate/splits.csv
    shutil.copytree(model_dir, run / "model")
    (run / "crop").symlink_to(crops_dir)
    write_csv(run / "curate" / "splits.csv", known, field_names(SplitItem))
    # the open set of an older facecls: a mean per person and a share threshold, no format
    labels = classifier_labels(model)
    np.savez(run / "model" / "openset.npz", score=np.array("identity_distance_share"), labels=np.array(labels),
             identity_network=np.array("dlib_face_recognition_resnet_model_v1"), class_means=np.zeros((4, 128)),
             reference_distances=np.linspace(0.1, 0.5, 9))
    info = json.loads((run / "model" / "facecls.json").read_text())
    del info["open_set_format"]
    (run / "model" / "facecls.json").write_text(json.dumps({**info, "unknown_threshold": 0.053}))
    with pytest.raises(ModelDirError, match=f"open-set format must be 2.*facecls calibrate {run / 'model'}"):
        Classifier(run / "model")
    assert main(["calibrate", str(run / "model")]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("calibrate: acceptance distances") and "known recall" in summary
    assert json.loads((run / "model" / "facecls.json").read_text())["open_set_format"] == OPEN_SET_FORMAT
    again = load_open_set(run / "model", labels)
    assert np.allclose(again.person_distances, list(calibration.person_distances.values()))
    assert read_model_info(run / "model").unknown_threshold == 0.5
    # without the run's crops beside it, the error says where it looked and how to pass them
    shutil.copytree(run / "model", tmp_path / "alone" / "model")
    assert main(["calibrate", str(tmp_path / "alone" / "model")]) == 1
    assert "--crops RUN/crop" in capsys.readouterr().err
