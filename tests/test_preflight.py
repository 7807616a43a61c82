"""What `facecls run` checks before any heavy work, and what a failed command leaves behind.

Each check fails with one line naming the fix and exit status 1, before a photo is decoded or
a face cropped, and a command that fails before writing anything leaves no output folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facecls.cli import main
from shared_data import copy_celebrities

KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + KERAS_FILE
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def scrape(data_dir: Path, tmp_path: Path) -> Path:
    """Four real photos each of two people: as few as a run can split."""
    return copy_celebrities(tmp_path / "scrape", ("jerry_seinfeld", "mindy_kaling"), 4)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """An empty Keras cache and every HTTPS request refused, as on a machine without internet."""
    environment = {"KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
                   "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


def error_line(capsys, after_progress: bool = False) -> str:
    """The one line on stderr (the last, after progress bars, when ``after_progress``)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 or after_progress, captured.err
    assert sum(line.startswith("facecls: error:") for line in lines) == 1, captured.err
    return lines[-1]


def test_offline_run_names_the_keras_file_and_url_at_once_and_prints_only_that_line(scrape, tmp_path, offline):
    out = tmp_path / "runs" / "first"
    environment = {**os.environ, **offline}
    completed = subprocess.run([sys.executable, "-m", "facecls", "run", str(scrape), "--out", str(out)],
                               capture_output=True, text=True, env=environment)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1, completed.stderr  # no TensorFlow start-up lines, the error once
    assert completed.stderr.startswith(f"facecls: error: --weights imagenet: cannot download {KERAS_URL} (")
    assert f"pass --weights PATH/TO/{KERAS_FILE} (alpha 0.35), or put it into {tmp_path / 'keras' / 'models'}." \
        in completed.stderr
    assert not (tmp_path / "runs").exists()  # nothing ingested, no folder left behind
    assert KERAS_FILE in README.read_text(encoding="utf-8") and KERAS_URL in README.read_text(encoding="utf-8")


def test_offline_run_finds_the_weights_in_the_keras_cache(scrape, tmp_path, offline, weights_dir, monkeypatch):
    import facecls.pipeline as run_module

    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5", tmp_path / "keras" / "models" / KERAS_FILE)
    calls = []
    monkeypatch.setattr(run_module, "_unreachable", lambda url: calls.append(url) or "refused")
    run_module.check_weights(run_module.TrainSettings())  # no error, and no download attempted
    assert calls == []
    with pytest.raises(run_module.FaceclsError, match="kernels_1.0_224_no_top.h5 "):
        run_module.check_weights(run_module.TrainSettings(alpha=1.0))  # another alpha, another file


def test_weights_file_that_is_not_hdf5_fails_before_ingest(scrape, tmp_path, capsys):
    fake = tmp_path / "weights.h5"
    fake.write_text("not weights")
    out = tmp_path / "out"
    assert main(["run", str(scrape), "--out", str(out), "--weights", str(fake)]) == 1
    assert error_line(capsys) == (
        f"facecls: error: --weights {fake} is not an HDF5 weights file (.h5 or .weights.h5). Pass --weights PATH "
        f"to a no-top MobileNetV2 weights file for alpha 0.35 (.h5 or .weights.h5), e.g. {KERAS_FILE} from {KERAS_URL}."
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "ingest"])
def test_photos_directly_in_the_scrape_folder_say_what_was_found_and_how_to_lay_it_out(
    command, scrape, tmp_path, capsys, weights_dir
):
    flat = tmp_path / "flat"
    flat.mkdir()
    for photo in sorted(scrape.rglob("*.jpg")):
        shutil.copy2(photo, flat / photo.name)
    names = sorted(path.name for path in flat.iterdir())
    out = tmp_path / "out"
    weights = ["--weights", str(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5")] if command == "run" else []
    assert main([command, str(flat), "--out", str(out), *weights]) == 1
    assert error_line(capsys) == (
        f"facecls: error: {flat} needs photos of at least two people, one folder per person ({flat}/<person>/<photos>, "
        f"the folder name is the label). Received: 8 files directly in it ({names[0]}, {names[1]}, ...), which "
        f"belong to no person. Move each person's photos into a folder named after them, e.g. {flat / 'alice' / names[0]}."
    )
    assert not out.exists()


def test_a_person_with_too_few_files_fails_before_ingest(scrape, tmp_path, capsys, weights_dir):
    for photo in sorted((scrape / "mindy_kaling").iterdir())[:2]:
        photo.unlink()
    out = tmp_path / "out"
    assert main(["run", str(scrape), "--out", str(out),
                 "--weights", str(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5")]) == 1
    assert error_line(capsys) == (
        "facecls: error: Too few files to split: mindy_kaling has 2; each person needs at least 4 distinct face photos "
        "(2 train, 1 val, 1 test). Add photos of them, or remove their folders from the scrape."
    )
    assert not out.exists()


def test_a_person_with_too_few_usable_photos_fails_after_ingest_before_any_crop(scrape, tmp_path, capsys, weights_dir):
    for photo in sorted((scrape / "mindy_kaling").iterdir())[:2]:
        photo.write_text("<html>a web page saved as .jpg</html>")
    out = tmp_path / "out"
    assert main(["--quiet", "run", str(scrape), "--out", str(out),
                 "--weights", str(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5")]) == 1
    assert error_line(capsys, after_progress=True) == (
        f"facecls: error: Too few usable photos (see {out / 'ingest.csv'}) to split: mindy_kaling has 2; each person "
        "needs at least 4 distinct face photos (2 train, 1 val, 1 test). Add photos of them, or remove their folders "
        "from the scrape."
    )
    assert (out / "ingest.csv").is_file()  # what ingest found stays, for the user to read
    assert not (out / "crop").exists()


def test_a_failed_command_leaves_no_folder_it_created(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    out = tmp_path / "new" / "party"
    assert main(["classify", str(tmp_path / "no_model"), str(photos), "--out", str(out)]) == 1
    assert "is not a model dir" in error_line(capsys)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"  # a folder that was there before is never removed
    kept.mkdir()
    assert main(["classify", str(tmp_path / "no_model"), str(photos), "--out", str(kept)]) == 1
    assert kept.is_dir()


def test_an_error_after_tensorflow_is_loaded_is_still_the_only_line_on_stderr(tmp_path: Path, weights_dir: Path):
    """Photos without a face pass every pre-flight check, so crop loads TensorFlow and MTCNN before curate fails."""
    import numpy as np
    from PIL import Image

    scrape = tmp_path / "scrape"
    rng = np.random.default_rng(0)
    for person in ("alice", "bob"):
        (scrape / person).mkdir(parents=True)
        for index in range(4):
            blocks = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            Image.fromarray(blocks).resize((160, 120), Image.Resampling.NEAREST).save(scrape / person / f"{index}.png")
    weights = weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
    finished = subprocess.run(
        [sys.executable, "-m", "facecls", "--quiet", "run", str(scrape), "--out", str(tmp_path / "run"),
         "--weights", str(weights), "--workers", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 1, finished.stderr
    assert (tmp_path / "run" / "crop" / "photos.csv").is_file()  # the crop stage ran: TensorFlow was loaded
    lines = finished.stderr.splitlines()
    # facecls's own warnings may come first (no face in any photo of a person); nothing of TensorFlow's.
    assert [line for line in lines if line.startswith("facecls: error: ")] == lines[-1:], finished.stderr
    assert all(line.startswith(("facecls: error: ", "WARNING facecls.")) for line in lines), finished.stderr
