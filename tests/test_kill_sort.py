"""kill -9 of ``facecls classify --sort move`` at every step of moving a photo, and a full disk in
crop, train and classify: every photo's content exists exactly once afterwards, and every rerun
recovers. Apart from test_kill.py so the two can run side by side (pytest-xdist gives each file
to one worker); they share its small real scrape and reference run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from shared_data import CELEBRITIES
from facecls.cli import main
from facecls.modeldir import load_model_dir
from test_kill import CROP_OPTIONS, PEOPLE, TRAIN_OPTIONS, facecls, reference, scrape  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- classify --sort move, killed at every step


@pytest.fixture(scope="module")
def plain_model(reference, tmp_path_factory) -> Path:
    """The reference model without its open set: no identity network to load in each killed process."""
    folder = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(reference / "model", folder)
    (folder / "openset.npz").unlink()
    info = json.loads((folder / "facecls.json").read_text())
    info["unknown_threshold"] = None
    (folder / "facecls.json").write_text(json.dumps(info))
    return folder


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def last_intent(out: Path) -> str | None:
    """The source of the last photo the sort journal says was being placed."""
    journal = out / ".facecls-sort-journal.jsonl"
    lines = journal.read_bytes().splitlines() if journal.exists() else []
    sources = [json.loads(line)["source"] for line in lines if line.strip().startswith(b'{"op": "intent"')]
    return sources[-1] if sources else None


def test_sort_move_killed_at_every_step_leaves_every_photo_exactly_once(plain_model, tmp_path, capsys):
    """A chain of runs, each SIGKILLed at one step of moving a photo (FACECLS_KILL_AT), its source
    replaced by new content or not before the next run, which recovers and goes on to the next
    kill; then a run to the end. Every photo's content (original or new) exists exactly once,
    in the label folders its rows name, and no input is left behind."""
    from facecls.sort import KILL_AT_VARIABLE, SORT_STEPS

    photos = tmp_path / "photos"
    photos.mkdir()
    for person in PEOPLE:
        for photo in sorted((CELEBRITIES / "val" / person).iterdir())[:4]:
            shutil.copy2(photo, photos / f"{person}-{photo.name}")
    for number in range(14):  # decodable photos without a face: cheap to detect, sorted into no_face/
        (photos / f"blocks-{number:02d}.jpg").write_bytes(_blocks(number))
    contents = {sha(path) for path in photos.iterdir()}
    out = tmp_path / "out"
    command = facecls("classify", str(plain_model), str(photos), "--out", str(out), "--workers", "1", "--sort", "move")
    kills = 0
    for replaced in (False, True):
        for step in SORT_STEPS:
            finished = subprocess.run(command, env={**os.environ, KILL_AT_VARIABLE: step}, capture_output=True, timeout=600)
            assert finished.returncode == -signal.SIGKILL, (step, finished.returncode, finished.stderr[-2000:])
            kills += 1
            source = last_intent(out)
            if replaced and source is not None:  # a sync client (or the user) puts new content at the path
                if Path(source).exists() and step in ("intent", "write", "fsync"):
                    contents.discard(sha(Path(source)))  # overwritten before any whole copy existed: the user's loss
                Path(source).write_bytes(_blocks(100 + kills))
                contents.add(sha(Path(source)))
    assert kills == 2 * len(SORT_STEPS)
    capsys.readouterr()
    assert main(["--quiet", "--json", "classify", str(plain_model), str(photos), "--out", str(out), "--workers", "1",
                 "--sort", "move"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)

    assert not list(photos.iterdir())  # every photo moved out (a kept source was classified as new content)
    placed = [path for path in out.rglob("*") if path.is_file() and path.parent != out and "report_files" not in path.parts]
    found = Counter(sha(path) for path in placed)
    assert set(found) == contents  # nothing lost, nothing foreign
    expected: Counter = Counter()
    with open(out / "predictions.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row["face"] in ("", "0"):  # a photo's first row
                destinations = json.loads(row["sorted_to"] or "[]")
                assert destinations and all(sha(out / name) == row["sha256"] for name in destinations), row
                expected[row["sha256"]] += len(destinations)
    without_row = [note for note in summary["kept_sources"] if "has no prediction row" in note]
    extra = {content: found[content] - expected[content] for content in found if found[content] != expected[content]}
    assert all(expected[content] == 0 and count == 1 for content, count in extra.items()) and len(extra) <= len(without_row), (
        extra, summary["kept_sources"]
    )  # fmt: skip
    assert not list(out.glob("*/.facecls-partial-*"))
    print(f"--sort move: {kills} kills survived, {len(contents)} photo contents each exactly once; "
          f"kept: {summary['kept_sources']}")  # fmt: skip


def _blocks(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    blocks = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks, "RGB").resize((120, 90), Image.Resampling.NEAREST).save(buffer, format="JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------- a full disk: one line, and the rerun recovers


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs; ``grow(size)`` makes room, as a user freeing space would."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", "-l", str(mount)], check=False)


def used_kb(mount: Path) -> int:
    usage = os.statvfs(mount)
    return (usage.f_blocks - usage.f_bfree) * usage.f_frsize // 1024


def full_disk_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(["--quiet", *argv]) == 1
    error = capsys.readouterr().err
    # In this process tqdm was imported before --quiet could turn it off: its bars may surround the line.
    lines = [line for line in error.replace("\r", "\n").splitlines() if "facecls: error" in line]
    assert len(lines) == 1 and "Traceback" not in error, error
    assert "facecls: error: no space left on the device" in lines[0] and "rerun the same command" in lines[0], error
    return lines[0]


def test_disk_full_in_crop_classify_and_train_is_one_line_and_the_rerun_recovers(scrape, reference, small_disk, tmp_path, capsys):
    disk, grow = small_disk
    run = disk / "run"
    assert main(["--quiet", "ingest", str(scrape), "--out", str(run)]) == 0  # the manifest fits, the crops do not
    crop = ["crop", str(scrape), "--out", str(run), *CROP_OPTIONS]
    full_disk_error(capsys, crop)
    grow("64m")
    assert main(["--quiet", *crop]) == 0
    assert (run / "crop" / "crops.csv").read_bytes() == (reference / "crop" / "crops.csv").read_bytes()

    grow(f"{used_kb(disk) + 600}k")
    shutil.copytree(reference / "curate", run / "curate")
    train = ["train", "--out", str(run), *TRAIN_OPTIONS]
    full_disk_error(capsys, train)  # the model dir (about 2 MB) does not fit
    assert not (run / "model").exists() and not list(run.glob(".model.*"))
    grow("64m")
    assert main(["--quiet", *train]) == 0
    assert load_model_dir(run / "model").labels == PEOPLE

    photos = sorted((CELEBRITIES / "val" / PEOPLE[0]).iterdir())[:3]
    grow(f"{used_kb(disk) + 12}k")  # the predictions fit, not the sorted copies of the photos
    classify = ["classify", str(reference / "model"), *map(str, photos), "--out", str(disk / "sorted"), "--workers", "1"]
    full_disk_error(capsys, classify)
    grow("64m")
    assert main(["--quiet", *classify]) == 0
    rows = list(csv.DictReader(open(disk / "sorted" / "predictions.csv", newline="", encoding="utf-8")))
    assert sorted({row["path"] for row in rows}) == sorted(map(str, photos))
    sorted_copies = [path for path in (disk / "sorted").glob("*/*") if path.is_file() and "report_files" not in path.parts]
    assert {sha(path) for path in sorted_copies} == {sha(path) for path in photos}
