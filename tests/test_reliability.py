"""Hostile input for every command, inputs left untouched, one writer per output folder,
untrusted model dirs that cannot run code, and one-line errors for everything a user can get wrong.

The hostile files come from ``corpus.build_corpus`` (generated in tmp_path); the shared hard
cases are covered file by file in test_ingest.py and test_classify.py. Tests run as root in CI,
where file permissions do not stop a read: the real ``chmod 000`` file is then expected to be
read, a non-root-only test checks the real denial, and a simulated PermissionError (``open`` and
``os.open`` patched for that one path) checks the code path everywhere.
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shared_data import CELEBRITIES, SHARED, WEIGHTS_035_H5, require_shared
from corpus import build_corpus, restore_permissions, tree_state
from facecls import classifier as classify_module
from facecls import ingest as ingest_module
from facecls.cli import main
from facecls.ingest import ingest

AS_ROOT = os.geteuid() == 0
HARD = SHARED / "data" / "hard-cases"


def expected_ingest_status(case) -> set[str]:
    if case.kind == "permission_denied" and AS_ROOT:
        return {"ok"}
    return {case.expected_ingest} if case.expected_ingest else {"ok", "unreadable"}


@pytest.fixture
def hostile_scrape(tmp_path):
    """``alice`` holds the corpus, ``bob`` two real photos."""
    require_shared()
    scrape = tmp_path / "scrape"
    cases = build_corpus(scrape / "alice")
    (scrape / "bob").mkdir()
    for photo in sorted((CELEBRITIES / "val" / "elton_john").iterdir())[:2]:
        shutil.copy2(photo, scrape / "bob" / photo.name)
    yield scrape, cases
    restore_permissions(scrape / "alice")


def test_ingest_gives_every_hostile_file_a_status_and_reason(hostile_scrape, tmp_path):
    scrape, cases = hostile_scrape
    before = tree_state(scrape)
    result = ingest(scrape, tmp_path / "out")
    assert tree_state(scrape) == before
    records = {record.path: record for record in result.records}
    assert set(records) == {f"alice/{name}" for name in cases} | {f"bob/{path.name}" for path in (scrape / "bob").iterdir()}
    for name, case in cases.items():
        record = records[f"alice/{name}"]
        assert record.status in expected_ingest_status(case), (name, record)
        if record.status != "ok":
            assert record.reason, name
        if case.reason_contains and record.status == case.expected_ingest:
            assert case.reason_contains in record.reason.lower(), (name, record.reason)
    # the manifest on disk round-trips the odd names (spaces, unicode, a newline)
    with open(tmp_path / "out" / "ingest.csv", newline="", encoding="utf-8") as file:
        assert {row["path"] for row in csv.DictReader(file)} == set(records)


def deny(monkeypatch, denied: str) -> None:
    """Make opening ``denied`` fail as a chmod-000 file does for a normal user."""
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(file, *args, **kwargs)

    def guarded_os_open(path, *args, **kwargs):
        if os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


def test_permission_denied_simulated_is_unreadable_with_the_reason(hostile_scrape, tmp_path, monkeypatch):
    scrape, _ = hostile_scrape
    deny(monkeypatch, str(scrape / "alice" / "no_permission.jpg"))
    records = {record.path: record for record in ingest(scrape, tmp_path / "out", workers=1).records}
    record = records["alice/no_permission.jpg"]
    assert (record.status, record.reason) == ("unreadable", "Permission denied")
    assert records["alice/cmyk.jpg"].status == "ok"  # only that one file is denied


@pytest.mark.skipif(AS_ROOT, reason="root reads chmod-000 files; the simulated test covers the code path")
def test_permission_denied_for_real_is_unreadable(hostile_scrape, tmp_path):
    scrape, _ = hostile_scrape
    records = {record.path: record for record in ingest(scrape, tmp_path / "out").records}
    assert (records["alice/no_permission.jpg"].status, records["alice/no_permission.jpg"].reason) == (
        "unreadable", "Permission denied"
    )  # fmt: skip


def test_a_file_deleted_between_listing_and_decoding_is_unreadable_in_ingest(hostile_scrape, tmp_path, monkeypatch):
    scrape, _ = hostile_scrape
    victim = scrape / "alice" / "cmyk.jpg"
    real = ingest_module.sha256_file

    def hash_then_delete(path, *limits):
        digest = real(path, *limits)
        if Path(path) == victim:
            victim.unlink()  # gone after it was listed and hashed, before it is decoded
        return digest

    monkeypatch.setattr(ingest_module, "sha256_file", hash_then_delete)
    record = {record.path: record for record in ingest(scrape, tmp_path / "out", workers=1).records}["alice/cmyk.jpg"]
    assert (record.status, record.reason) == ("unreadable", "No such file or directory")


# ---------------------------------------------------------------- classify and evaluate, with a real model


@pytest.fixture(scope="module")
def model(open_set_model):
    return open_set_model


def read_rows(out: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with open(out / "predictions.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            rows.setdefault(row["path"], []).append(row)
    return rows


def test_classify_gives_every_hostile_file_a_row(model, hostile_scrape, tmp_path):
    scrape, cases = hostile_scrape
    photos = scrape / "alice"
    for photo in sorted((scrape / "bob").iterdir()):
        shutil.copy2(photo, photos / photo.name)
    before = tree_state(photos)
    result = classify_module.classify(model[0], [photos], tmp_path / "out", sort="copy", workers=2)
    assert tree_state(photos) == before
    rows = read_rows(tmp_path / "out")
    assert set(rows) == {str(photos / name) for name in cases} | {str(photos / path.name) for path in (scrape / "bob").iterdir()}
    for name, case in cases.items():
        [row] = rows[str(photos / name)]
        readable = case.readable or (case.kind == "permission_denied" and AS_ROOT)
        if case.kind == "bit_flipped":
            assert row["status"] in ("no_face", "unreadable") and row["reason"], name
        elif readable:
            assert row["status"] == "no_face", (name, row)
        else:
            assert row["status"] == "unreadable" and row["reason"], (name, row)
    assert "not a regular file" in rows[str(photos / "fifo.jpg")][0]["reason"]
    assert "over the limit" in rows[str(photos / "bomb_100mp.png")][0]["reason"]
    for photo in (scrape / "bob").iterdir():
        assert rows[str(photos / photo.name)][0]["status"] == "ok"
    unreadable = sum(1 for photo_rows in rows.values() if photo_rows[0]["status"] == "unreadable")
    assert result.unreadable == unreadable >= 12
    out = tmp_path / "out"
    sorted_copies = [path for path in out.rglob("*") if path.is_file() and path.parent != out and "report_files" not in path.parts]
    assert len(sorted_copies) == result.sorted_files >= len(rows) - unreadable
    unreadable_hashes = {photo_rows[0]["sha256"] for photo_rows in rows.values() if photo_rows[0]["status"] == "unreadable"} - {""}
    assert not [path for path in sorted_copies if hashlib.sha256(path.read_bytes()).hexdigest() in unreadable_hashes]
    again = classify_module.classify(model[0], [photos], tmp_path / "out", sort="copy", workers=1)
    assert (again.classified, again.skipped) == (0, len(rows))  # unicode and newline names resume too


def test_a_file_deleted_mid_classify_is_unreadable_and_never_sorted(model, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted((CELEBRITIES / "val" / "elton_john").iterdir())[:3]:
        shutil.copy2(photo, photos / photo.name)
    victim = sorted(photos.iterdir())[1]
    real = classify_module.sha256_or_empty

    def hash_then_delete(path, *limits):
        digest = real(path, *limits)
        if path == str(victim):
            victim.unlink()  # listed and hashed, gone before it is decoded
        return digest

    monkeypatch.setattr(classify_module, "sha256_or_empty", hash_then_delete)
    result = classify_module.classify(model[0], [photos], tmp_path / "out", sort="copy", workers=1)
    rows = read_rows(tmp_path / "out")
    [row] = rows[str(victim)]
    assert (row["status"], row["reason"]) == ("unreadable", "No such file or directory")
    assert result.photos == 3 and result.unreadable == 1 and result.sorted_files == 2


def test_report_of_huge_photos_decodes_them_reduced_and_shows_the_same_faces(model, tmp_path):
    """The classify report cuts thumbnails from photos of any size without holding one whole in RGB:
    a JPEG 30000 pixels wide, and a face photo upscaled 12 times (an EXIF-rotated JPEG) and 8 times
    (a PNG, which Pillow cannot decode reduced). tracemalloc sees numpy arrays, not Pillow's own
    buffers: a full-size RGB array (54 MB for the wide photo; 107 MiB traced before) shows, 1 MiB now."""
    import tracemalloc

    from PIL import Image

    from corpus import file_cases
    from facecls.images import decode_image, read_rgb, resize_longest_side, resize_square
    from facecls.report import FACE_THUMB_MARGIN, FACE_THUMB_SIDE, write_report

    photos = tmp_path / "photos"
    photos.mkdir()
    face = Image.open(sorted((CELEBRITIES / "val" / "elton_john").iterdir())[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated 90 degrees clockwise
    upscaled = face.resize((face.width * 12, face.height * 12))
    upscaled.rotate(90, expand=True).save(photos / "rotated.jpg", exif=exif.tobytes(), quality=92)
    face.resize((face.width * 8, face.height * 8)).save(photos / "large.png")
    (photos / "wide_30000.jpg").write_bytes(file_cases()["wide_30000.jpg"][1])
    out = tmp_path / "out"
    classify_module.classify(model[0], [photos], out, sort="none", workers=1)
    rows = read_rows(out)
    assert rows[str(photos / "wide_30000.jpg")][0]["status"] == "no_face"
    shutil.rmtree(out / "report_files")

    tracemalloc.start()
    try:
        write_report(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB traced while writing the report"

    def difference(thumbnail: Path, expected) -> float:
        shown = read_rgb(thumbnail).astype(float)
        assert shown.shape == expected.shape
        return float(abs(shown - expected).mean())

    for name in ("rotated.jpg", "large.png"):
        faces = [row for row in rows[str(photos / name)] if row["label"]]
        assert faces, rows[str(photos / name)]
        full = decode_image(photos / name).pixels
        height, width = full.shape[:2]
        for row in faces:
            x, y, w, h = (float(row[key]) for key in ("x", "y", "w", "h"))
            side = min(max(w, h) * (1 + 2 * FACE_THUMB_MARGIN), width, height)
            left = int(round(min(max(x + w / 2 - side / 2, 0), width - side)))
            top = int(round(min(max(y + h / 2 - side / 2, 0), height - side)))
            side = max(1, int(round(side)))
            expected = resize_square(full[top : top + side, left : left + side], FACE_THUMB_SIDE)
            thumbnail = out / "report_files" / "faces" / row["sha256"][:2] / f"{row['sha256'][:16]}-{row['face']}.jpg"
            assert difference(thumbnail, expected) < 6, (name, row["face"])  # JPEG noise; a wrong cut is tens
    [wide] = rows[str(photos / "wide_30000.jpg")]
    expected = resize_longest_side(decode_image(photos / "wide_30000.jpg").pixels, 200)[0]
    assert difference(out / "report_files" / "photos" / f"{wide['sha256'][:16]}.jpg", expected) < 6


def test_crop_of_a_photo_deleted_after_ingest_is_unreadable_then_redone_once_back(tmp_path, capsys):
    require_shared()
    scrape, out = tmp_path / "scrape", tmp_path / "run"
    for person in ("elton_john", "jerry_seinfeld"):
        (scrape / person).mkdir(parents=True)
        for photo in sorted((CELEBRITIES / "val" / person).iterdir())[:2]:
            shutil.copy2(photo, scrape / person / photo.name)
    assert main(["--quiet", "ingest", str(scrape), "--out", str(out)]) == 0
    victim = sorted((scrape / "elton_john").iterdir())[0]
    saved = tmp_path / "saved.jpg"
    shutil.move(victim, saved)
    crop = ["--quiet", "crop", str(scrape), "--out", str(out), "--image-size", "64", "--workers", "1"]
    assert main(crop) == 0
    with open(out / "crop" / "photos.csv", newline="") as file:
        photos = {row["path"]: row for row in csv.DictReader(file)}
    gone = photos[f"elton_john/{victim.name}"]
    assert (gone["status"], gone["reason"]) == ("unreadable", "No such file or directory")
    assert not [row for path, row in photos.items() if row["status"] == "unreadable" and row is not gone]
    shutil.move(saved, victim)  # back: the rerun must detect it, not reuse the unreadable result
    assert main(crop) == 0
    with open(out / "crop" / "photos.csv", newline="") as file:
        again = {row["path"]: row for row in csv.DictReader(file)}
    assert again[f"elton_john/{victim.name}"]["status"] != "unreadable"
    assert int(again[f"elton_john/{victim.name}"]["faces"]) >= 1


def test_evaluate_lists_every_hostile_photo_with_its_status(model, tmp_path, capsys):
    labels = sorted({item.person for item in model[3]})
    folder = tmp_path / "labelled"
    build_corpus(folder / labels[0], special=False)
    for label in labels[:2]:
        (folder / label).mkdir(exist_ok=True)
        for photo in sorted((CELEBRITIES / "val" / label).iterdir())[:2]:
            shutil.copy2(photo, folder / label / photo.name)
    before = tree_state(folder)
    out = tmp_path / "evaluation"
    assert main(["--quiet", "evaluate", str(model[0]), str(folder), "--out", str(out), "--workers", "1"]) == 0
    assert tree_state(folder) == before
    with open(out / "photos_without_face.csv", newline="", encoding="utf-8") as file:
        without = {Path(row["path"]).name: row for row in csv.DictReader(file)}
    for name in ("zero_bytes.jpg", "page.jpg", "bomb.png", "truncated.png", "header_only.jpg"):
        assert without[name]["status"] == "unreadable" and without[name]["reason"], name
    for name in ("one_pixel.png", "cmyk.jpg", "wide_30000.jpg"):
        assert without[name]["status"] == "no_face", name
    assert "4 faces" in capsys.readouterr().out


# ---------------------------------------------------------------- one writer per output folder


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s facecls lock, as a running facecls would."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, sys, time\n"
        f"lock = open({str(folder / '.facecls.lock')!r}, 'a+')\n"
        "fcntl.flock(lock, fcntl.LOCK_EX)\n"
        "lock.truncate(0); lock.write(str(__import__('os').getpid())); lock.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def fake_curated_run(out: Path) -> None:
    """crop.json and splits.csv of two people: enough for train to reach its lock and its weights."""
    (out / "crop").mkdir(parents=True)
    (out / "curate").mkdir()
    (out / "crop" / "crop.json").write_text(json.dumps({
        "detect_settings": {}, "crop_settings": {"image_size": 96},
    }))  # fmt: skip
    rows = ["crop_path,person,source_path,group,split,flipped,weight"]
    for person in ("ann", "bob"):
        rows += [f"faces/{person}/{n}.jpg,{person},{person}/{n}.jpg,{person}{n},train,false,1.0" for n in range(2)]
    (out / "curate" / "splits.csv").write_text("\n".join(rows) + "\n")


def test_second_writer_of_an_output_folder_is_refused_with_a_clear_message(model, tmp_path, capsys):
    scrape = tmp_path / "scrape"
    for person in ("ann", "bob"):
        (scrape / person).mkdir(parents=True)
        for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):  # as many files as run's check before the lock asks
            shutil.copy2(HARD / "no_face" / "rocket.jpg", scrape / person / name)
    run = tmp_path / "run"
    fake_curated_run(run)
    (run / "ingest.csv").write_text(
        "path,person,sha256,format,width,height,status,reason,group,duplicate_of,dhash,dhash_mirror\n"
        "ann/a.jpg,ann,c2dd0de7,JPEG,640,427,ok,,c2dd0de7,,0,0\n"
    )
    commands = {
        "ingest": (run, ["ingest", str(scrape), "--out", str(run)]),
        "crop": (run / "crop", ["crop", str(scrape), "--out", str(run)]),
        "train": (run, ["train", "--out", str(run), "--weights", str(WEIGHTS_035_H5)]),
        "run": (run, ["run", str(scrape), "--out", str(run), "--weights", str(WEIGHTS_035_H5)]),
        "classify": (tmp_path / "classified", ["classify", str(model[0]), str(scrape), "--out", str(tmp_path / "classified")]),
    }
    for command, (locked, argv) in commands.items():
        holder = hold_lock(locked)
        try:
            capsys.readouterr()
            assert main(argv) == 1, command
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and "Traceback" not in error, (command, error)
            assert "in use by another facecls process" in error and f"pid {holder.pid}" in error, (command, error)
        finally:
            holder.kill()
            holder.wait()
    assert not (run / "model").exists() and not list(tmp_path.rglob("predictions.csv"))


# ---------------------------------------------------------------- untrusted model dirs


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith("facecls: error: ")
    return captured.err


def copied_model_dir(model, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model[0], target)
    return target


def test_a_lambda_layer_in_model_keras_never_runs(model, tmp_path, capsys):
    import keras

    marker = tmp_path / "code-ran"
    folder = copied_model_dir(model, tmp_path)
    size = json.loads((folder / "facecls.json").read_text())["image_size"]
    pixels = keras.Input(shape=(size, size, 3))
    sneaky = keras.layers.Lambda(lambda tensor, path=str(marker): (open(path, "w").close(), tensor)[1])(pixels)
    outputs = keras.layers.Dense(len(json.loads((folder / "facecls.json").read_text())["labels"]), activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(sneaky)
    )
    marker.unlink(missing_ok=True)  # building the model ran the lambda once here, in the test
    keras.Model(pixels, outputs).save(folder / "model.keras")
    marker.unlink(missing_ok=True)
    (folder / "openset.npz").unlink()
    info = json.loads((folder / "facecls.json").read_text())
    info["unknown_threshold"] = None
    (folder / "facecls.json").write_text(json.dumps(info))
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(HARD / "no_face" / "rocket.jpg", photos)
    error = one_line_error(capsys, ["classify", str(folder), str(photos), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert "model.keras cannot be loaded" in error and "Retrain" in error
    assert not marker.exists()
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_a_model_config_naming_a_module_outside_keras_is_refused(model, tmp_path, capsys):
    folder = copied_model_dir(model, tmp_path)
    with zipfile.ZipFile(folder / "model.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    layer = config["config"]["layers"][-1]
    layer.update(module="os", class_name="system", registered_name=None, config={"command": "touch /tmp/facecls-pwned"})
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(folder / "model.keras", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    error = one_line_error(capsys, ["evaluate", str(folder), str(CELEBRITIES / "val"), "--out", str(tmp_path / "e")])
    assert "model.keras cannot be loaded" in error
    assert not Path("/tmp/facecls-pwned").exists()


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda folder: edit_info(folder, lambda info: info.update(extra_key=1, on_load="rm -rf /")), "unknown key 'extra_key'"),
        (lambda folder: (folder / "model.keras").unlink(), "model.keras is missing"),
        (lambda folder: (folder / "model.keras").write_bytes(b"not a zip"), "model.keras cannot be loaded"),
        (lambda folder: pickled_open_set(folder), "openset.npz cannot be read"),
        (lambda folder: edit_info(folder, lambda info: info.update(labels=["ann"])), "labels must be a list of at least 2"),
    ],
)
def test_tampered_model_dirs_are_one_line_errors_from_the_cli(model, tmp_path, capsys, tamper, expected):
    folder = copied_model_dir(model, tmp_path)
    tamper(folder)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(HARD / "no_face" / "rocket.jpg", photos)
    error = one_line_error(capsys, ["classify", str(folder), str(photos), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert expected in error, error


def edit_info(folder: Path, change) -> None:
    info = json.loads((folder / "facecls.json").read_text())
    change(info)
    (folder / "facecls.json").write_text(json.dumps(info))


def pickled_open_set(folder: Path) -> None:
    import numpy as np

    with np.load(folder / "openset.npz") as data:
        arrays = {name: data[name] for name in data.files}
    first = sorted(arrays)[0]
    arrays[first] = np.array([{"payload": "__import__('os').system('true')"}], dtype=object)
    with open(folder / "openset.npz", "wb") as file:
        np.savez(file, **arrays)


# ---------------------------------------------------------------- one-line errors


def error_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_person = tmp_path / "one"
    (one_person / "ann").mkdir(parents=True)
    shutil.copy2(HARD / "no_face" / "rocket.jpg", one_person / "ann")
    few = tmp_path / "few"
    (few / "crop").mkdir(parents=True)
    (few / "crop" / "crops.csv").write_text(
        "crop_path,source_path,person,group,sha256,face_index,x,y,width,height,confidence,photo_status\n"
        + "".join(f"faces/{p}/{n}.jpg,{p}/{n}.jpg,{p},{p}{n},{p}{n},0,1,1,9,9,0.99,ok\n" for p in ("ann", "bob") for n in range(2))
    )
    wrong_alpha = tmp_path / "wrong_alpha"
    fake_curated_run(wrong_alpha)
    photos = tmp_path / "photos"
    photos.mkdir()
    return [
        (["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1")], "Scrape folder not found"),
        (["ingest", str(empty), "--out", str(tmp_path / "o2")], "No photos found"),
        (["ingest", str(one_person), "--out", str(tmp_path / "o3")], "one person only"),
        (["ingest", str(one_person), "--out", str(tmp_path / "o3"), "--min-side", "-4"], "min_side"),
        (["crop", str(empty), "--out", str(tmp_path / "o4")], "Ingest manifest not found"),
        (["curate", "--out", str(few)], "Too few distinct face photos"),
        (["train", "--out", str(tmp_path / "o5"), "--weights", str(WEIGHTS_035_H5)], "crop.json not found"),
        (["train", "--out", str(wrong_alpha), "--alpha", "1.0", "--weights", str(WEIGHTS_035_H5)], "alpha"),
        (["run", str(one_person), "--out", str(tmp_path / "o6"), "--weights", str(tmp_path / "missing.h5")], "no such file"),
        (["evaluate", str(tmp_path / "no_model"), str(empty)], "is not a model dir"),
        (["classify", str(tmp_path / "no_model"), str(photos), "--out", str(tmp_path / "o7")], "is not a model dir"),
        (["classify", str(tmp_path / "no_model"), str(tmp_path / "no_photos"), "--out", str(tmp_path / "o8")], "Input not found"),
        (["crop", str(empty), "--out", str(tmp_path / "o9"), "--workers", "0"], "--workers must be at least 1"),
        (["run", str(one_person), "--out", str(tmp_path / "o9"), "--margin", "3"], "margin must be between"),
    ]


def test_clear_one_line_errors_for_what_a_user_gets_wrong(tmp_path, capsys):
    require_shared()
    for argv, expected in error_cases(tmp_path):
        error = one_line_error(capsys, argv)
        assert expected in error, (argv, error)


def test_classify_threshold_out_of_range_names_the_range(model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    error = one_line_error(
        capsys, ["classify", str(model[0]), str(photos), "--out", str(tmp_path / "o"), "--unknown-threshold", "1.5"]
    )
    assert "unknown_threshold must be between 0 and 1. Received: 1.5" in error


def test_taking_a_lock_clears_only_our_temporary_files_and_never_follows_links(tmp_path):
    from facecls.manifest import TEMPORARY_SUFFIX, atomic_write_bytes, output_lock

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "crop" / "faces").mkdir(parents=True)
    elsewhere.mkdir()
    ours = out / "crop" / "faces" / f".a.png.k3j2h1g0{TEMPORARY_SUFFIX}"  # a write killed before its rename
    ours.write_bytes(b"half")
    theirs = out / ".download.partial"  # another program's temporary file
    theirs.write_bytes(b"keep")
    linked = elsewhere / f".b.png.abcdefgh{TEMPORARY_SUFFIX}"
    linked.write_bytes(b"not under out")
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    atomic_write_bytes(out / "done.txt", b"whole")

    with output_lock(out):
        pass

    assert not ours.exists()
    assert theirs.read_bytes() == b"keep" and linked.read_bytes() == b"not under out"
    assert (out / "done.txt").read_bytes() == b"whole"
    assert sorted(path.name for path in out.iterdir()) == [".download.partial", ".facecls.lock", "crop", "done.txt", "link"]


# ---------------------------------------------------------------- --out of every command


def out_check_cases(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    """(what, argv, expected part of the error) for every command and every refused --out."""
    scrape = tmp_path / "scrape"
    for person in ("ann", "bob"):
        (scrape / person).mkdir(parents=True)
        shutil.copy2(HARD / "no_face" / "rocket.jpg", scrape / person / "a.jpg")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    model = tmp_path / "model"  # never read: the --out check comes first
    model.mkdir()
    weights = ["--weights", str(WEIGHTS_035_H5)]
    outs = {
        "an existing file": (a_file, "is a file"),
        "under a file": (a_file / "out", "which is a file"),
        "a broken link": (tmp_path / "dangling", "broken symbolic link"),
        "the scrape": (scrape, "the input folder"),
        "inside the scrape": (scrape / "ann" / "run", "lies inside the input folder"),
    }
    cases = []
    for what, (out, expected) in outs.items():
        commands = {
            "ingest": ["ingest", str(scrape), "--out", str(out)],
            "crop": ["crop", str(scrape), "--out", str(out), "--ingest-manifest", str(a_file)],
            "run": ["run", str(scrape), "--out", str(out), *weights],
            "run --model-dir": ["run", str(scrape), "--out", str(tmp_path / "run"), "--model-dir", str(out), *weights],
            "classify": ["classify", str(model), str(scrape), "--out", str(out)],
            "evaluate": ["evaluate", str(model), str(scrape), "--out", str(out)],
        }
        if what in ("an existing file", "under a file", "a broken link"):
            commands["demo"] = ["demo", "--out", str(out), *weights]
            commands["report"] = ["report", str(out)]
        else:
            commands["export"] = ["export", str(scrape), "--out", str(out)]  # a "model dir" that holds the out
        cases += [(f"{command}: {what}", argv, expected) for command, argv in commands.items()]
    return cases


def test_every_command_refuses_an_unusable_out_in_one_line_and_leaves_nothing(tmp_path, capsys):
    require_shared()
    cases = out_check_cases(tmp_path)
    before = tree_state(tmp_path)
    for what, argv, expected in cases:
        error = one_line_error(capsys, argv)
        if argv[0] != "report":  # report names no --out: its folder is not a folder
            assert expected in error, (what, error)
        assert tree_state(tmp_path) == before, what  # no folder, lock or manifest left behind
    assert len(cases) >= 36
    # a folder that cannot be made at all (not even by root): one line too
    error = one_line_error(capsys, ["ingest", str(tmp_path / "scrape"), "--out", "/proc/facecls-out"])
    assert "cannot create this output folder" in error


# ---------------------------------------------------------------- every field of a model dir, checked up front


def write_info_text(folder: Path, text: str) -> None:
    (folder / "facecls.json").write_text(text)


def edit_open_set(folder: Path, change) -> None:
    import numpy as np

    with np.load(folder / "openset.npz") as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    with open(folder / "openset.npz", "wb") as file:
        np.savez(file, **arrays)


def pad_model_config(folder: Path, size: int) -> None:
    with zipfile.ZipFile(folder / "model.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["padding"] = " " * size
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(folder / "model.keras", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def set_label(folder: Path, label: str) -> None:
    edit_info(folder, lambda info: info["labels"].__setitem__(0, label))


MODEL_DIR_TAMPERING = [
    (lambda folder: write_info_text(folder, "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (lambda folder: edit_info(folder, lambda info: info.update(versions={"padding": "x" * (2 << 20)})), "larger than"),
    (lambda folder: edit_info(folder, lambda info: info.update(train_settings=None)), "train_settings must be a JSON object"),
    (lambda folder: edit_info(folder, lambda info: info.update(train_settings=[1, 2])), "train_settings must be a JSON object"),
    (lambda folder: edit_info(folder, lambda info: info["train_settings"].update(batch_size=32.5)), "batch_size must be an integer"),
    (lambda folder: edit_info(folder, lambda info: info.update(image_size=float(info["image_size"]))), "image_size must be an integer"),
    (lambda folder: edit_info(folder, lambda info: info["detect_settings"].update(min_confidence="0.9")), "min_confidence must be a number"),
    (lambda folder: edit_info(folder, lambda info: info["crop_settings"].update(align="yes")), "align must be true or false"),
    (lambda folder: edit_info(folder, lambda info: info.update(format_version=True)), "format_version must be"),
    (lambda folder: edit_info(folder, lambda info: info.update(unknown_threshold="0.5")), "unknown_threshold must be"),
    (lambda folder: set_label(folder, "../x"), "holds a path separator"),
    (lambda folder: set_label(folder, "/etc"), "holds a path separator"),
    (lambda folder: set_label(folder, ".."), "starts with a dot"),
    (lambda folder: set_label(folder, ".facecls.lock"), "starts with a dot"),
    (lambda folder: set_label(folder, "unknown"), "is reserved"),
    (lambda folder: set_label(folder, "no_face"), "is reserved"),
    (lambda folder: set_label(folder, "line\rbreak"), "control character"),
    (lambda folder: set_label(folder, "x" * 230), "bytes long"),
    (lambda folder: edit_open_set(folder, lambda arrays: arrays.update(labels=arrays["labels"][0])), "labels must be a list"),
    (lambda folder: edit_open_set(folder, lambda arrays: arrays.update(references=arrays["references"][:, :3])), "must have 128 columns"),
    (lambda folder: (folder / "openset.npz").write_bytes(b"PK\x03\x04 not really"), "openset.npz cannot be"),
    (lambda folder: pad_model_config(folder, 20 << 20), "config.json is"),
]


@pytest.mark.parametrize("tamper, expected", MODEL_DIR_TAMPERING)
def test_every_model_dir_field_is_checked_before_any_network_loads(model, tmp_path, capsys, tamper, expected):
    folder = copied_model_dir(model, tmp_path)
    tamper(folder)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(HARD / "no_face" / "rocket.jpg", photos)
    error = one_line_error(capsys, ["classify", str(folder), str(photos), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert expected in error and str(folder) in error, error
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_quiet_silences_the_libraries_warnings(tmp_path, recwarn):
    from corpus import exif_past_end_jpeg

    scrape = tmp_path / "scrape"
    for person in ("ann", "bob"):
        (scrape / person).mkdir(parents=True)
        (scrape / person / "odd_exif.jpg").write_bytes(exif_past_end_jpeg(seed=len(person) + ord(person[0])))

    def pillow_warnings() -> list[str]:
        return [str(warning.message) for warning in recwarn if "Tag data larger than file" in str(warning.message)]

    assert main(["ingest", str(scrape), "--out", str(tmp_path / "loud")]) == 0
    assert pillow_warnings()
    recwarn.clear()
    assert main(["--quiet", "ingest", str(scrape), "--out", str(tmp_path / "quiet")]) == 0
    assert pillow_warnings() == []
    assert os.environ.get("PYTHONWARNINGS") != "ignore"  # only for that command and its worker processes


def test_reserved_person_names_cover_every_name_classify_writes_beside_the_label_folders():
    from facecls import layout, outputs
    from facecls.paths import RESERVED_PERSON_NAMES, person_name_problem

    written = {outputs.UNKNOWN, outputs.NO_FACE, outputs.UNREADABLE, outputs.ANNOTATED_FOLDER, outputs.PREDICTIONS_CSV,
               outputs.PREDICTIONS_JSONL, outputs.SUMMARY_NAME, layout.REPORT_NAME, layout.REPORT_FILES_FOLDER}  # fmt: skip
    assert written <= set(RESERVED_PERSON_NAMES)
    assert all(person_name_problem(name.upper()) for name in written)  # case-insensitive file systems too


def test_a_file_where_a_label_folder_goes_is_one_line_and_is_left_alone(model, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy2(HARD / "no_face" / "rocket.jpg", photos)
    out.mkdir()
    (out / "no_face").write_bytes(b"the user's own file")
    error = one_line_error(capsys, ["classify", str(model[0]), str(photos), "--out", str(out), "--workers", "1"])
    assert "no_face is a file" in error
    assert (out / "no_face").read_bytes() == b"the user's own file" and (photos / "rocket.jpg").is_file()
