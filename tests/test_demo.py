"""facecls demo from a local LFW-layout cache built in tmp_path: scikit-learn's real loader, no network.

The cache holds what ``fetch_lfw_people(funneled=False)`` looks for under its data home:
``lfw_home/`` with the three pairs files and ``lfw/<Person_Name>/<Person_Name>_0001.jpg``,
filled with real face photos of the shared 5-celebrity set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facecls.cli import main
from facecls.demo import prepare_scrape
from facecls.errors import FaceclsError

# Person folder -> photos in the cache: two people clear the bar of 8 photos by more than a third.
CACHE_PEOPLE = {"Mindy_Kaling": ("mindy_kaling", 10), "Madonna": ("madonna", 9), "Jerry_Seinfeld": ("jerry_seinfeld", 8),
                "Elton_John": ("elton_john", 5)}


@pytest.fixture(scope="module")
def lfw_cache(tmp_path_factory, data_dir) -> Path:
    data_home = tmp_path_factory.mktemp("scikit_learn_data")
    lfw_home = data_home / "lfw_home"
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt"):
        (lfw_home / name).parent.mkdir(parents=True, exist_ok=True)
        (lfw_home / name).write_text("")
    for person, (folder, count) in CACHE_PEOPLE.items():
        photos = sorted((data_dir / "5-celebrity-faces" / "train" / folder).glob("*.jpg"))[:count]
        assert len(photos) == count
        (lfw_home / "lfw" / person).mkdir(parents=True)
        for number, photo in enumerate(photos, start=1):
            shutil.copy2(photo, lfw_home / "lfw" / person / f"{person}_{number:04d}.jpg")
    return data_home


def test_scrape_layout_copies_the_people_with_the_most_photos(lfw_cache, tmp_path, folder_snapshot):
    before = folder_snapshot(lfw_cache / "lfw_home" / "lfw")
    scrape = prepare_scrape(tmp_path / "scrape", lfw_home=lfw_cache, people=2, photos_per_person=8)
    assert scrape.people == ("Mindy_Kaling", "Madonna")
    assert scrape.photos == {"Mindy_Kaling": 8, "Madonna": 8}
    assert sorted(path.name for path in (tmp_path / "scrape").iterdir()) == ["Madonna", "Mindy_Kaling"]
    copied = sorted(path.name for path in (tmp_path / "scrape" / "Madonna").iterdir())
    assert copied == [f"Madonna_{number:04d}.jpg" for number in range(1, 9)]
    # copies of the originals, byte for byte, and the cache is left as it was
    original = lfw_cache / "lfw_home" / "lfw" / "Madonna" / "Madonna_0001.jpg"
    assert (tmp_path / "scrape" / "Madonna" / "Madonna_0001.jpg").read_bytes() == original.read_bytes()
    assert folder_snapshot(lfw_cache / "lfw_home" / "lfw") == before


def test_too_few_people_with_enough_photos_says_what_to_lower(lfw_cache, tmp_path):
    with pytest.raises(FaceclsError, match="LFW has 3 people with at least 8 photos; --people 4 needs more"):
        prepare_scrape(tmp_path / "scrape", lfw_home=lfw_cache, people=4, photos_per_person=8)
    with pytest.raises(FaceclsError, match="No person in LFW has 50 photos"):
        prepare_scrape(tmp_path / "scrape", lfw_home=lfw_cache, people=2, photos_per_person=50)


def test_a_folder_without_lfw_is_one_line_saying_what_is_needed(tmp_path, capsys, monkeypatch):
    from facecls.config import imagenet_weights_file_name

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    # The weights are checked first; here Keras's cache holds them (the check only looks for the file).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / imagenet_weights_file_name(0.35)).write_bytes(b"")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--lfw-home", str(empty)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert f"--lfw-home {empty} holds no LFW download" in error and "pairs.txt" in error
    assert "leave out --lfw-home to download it (~200 MB)" in error
    assert not (tmp_path / "demo" / "run").exists()


@pytest.mark.slow
def test_demo_runs_the_whole_chain_into_a_run_folder_with_its_report(lfw_cache, tmp_path, weights_dir, capsys):
    out = tmp_path / "demo"
    argv = [
        "--quiet", "demo", "--out", str(out), "--lfw-home", str(lfw_cache), "--photos-per-person", "8",
        "--image-size", "96", "--weights", str(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5"),
        "--head-epochs", "4", "--fine-tune-epochs", "0", "--workers", "1", "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["command"] == "demo" and summary["people"] == ["Mindy_Kaling", "Madonna"]
    assert summary["files"] == 16 and summary["faces"] >= 14
    assert summary["report"] == str(out / "run" / "report.html")
    run_summary = json.loads((out / "run" / "run.json").read_text())
    assert run_summary["scrape"] == str((out / "scrape").resolve())
    info = json.loads((out / "run" / "model" / "facecls.json").read_text())
    assert info["labels"] == ["Madonna", "Mindy_Kaling"] and info["image_size"] == 96
    page = (out / "run" / "report.html").read_text()
    assert 'data-person="Madonna" data-stage="files">8<' in page
    assert 'data-person="Mindy_Kaling" data-stage="files">8<' in page
