"""facecls run end to end on a real scrape: real MTCNN, real ImageNet weights, a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facecls.cli import main
from facecls.crop import read_crops_manifest
from facecls.curate import read_splits
from facecls.ingest import read_ingest_manifest
from facecls.modeldir import load_model_dir



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir: Path, weights_dir: Path, folder_snapshot):
    scrape = data_dir / "scraped-celebs-6"
    before = folder_snapshot(scrape)
    run_dir = tmp_path_factory.mktemp("run") / "celebs"
    argv = [
        "run", str(scrape), "--out", str(run_dir),
        "--weights", str(weights_dir / "mobilenet_v2_0.35_224_no_top_imagenet.h5"),
        "--image-size", "128", "--fine-tune-epochs", "4", "--seed", "1",
    ]
    assert main(argv) == 0
    return scrape, run_dir, before, argv


def test_run_folder_holds_every_stage_output(finished_run):
    _, run_dir, _, _ = finished_run
    for name in ("ingest.csv", "crop/photos.csv", "crop/crops.csv", "crop/others.csv", "curate/splits.csv",
                 "evaluation/metrics.json", "evaluation/confusion_matrix.png", "run.json"):
        assert (run_dir / name).is_file(), name
    sheets = sorted(path.stem for path in (run_dir / "crop" / "sheets").glob("*.png"))
    assert sheets == ["angelina_jolie", "brad_pitt", "jennifer_lawrence", "messi", "scarlett_johansson", "sydney_sweeney"]


def test_model_dir_describes_itself(finished_run):
    _, run_dir, _, _ = finished_run
    loaded = load_model_dir(run_dir / "model")
    info = loaded.info
    assert list(info.labels) == sorted(info.labels) and len(info.labels) == 6
    assert info.image_size == 128 and info.crop_settings.image_size == 128
    assert info.alpha == 0.35 and info.crop_settings.face_policy == "consensus"
    assert {"tensorflow", "keras", "mtcnn", "numpy", "facecls"} <= set(info.versions)
    assert json.loads((run_dir / "model" / "history.json").read_text())["head"]["loss"]
    assert loaded.model.input_shape[1:] == (128, 128, 3)


def test_test_split_shares_no_photo_crop_or_group_with_training(finished_run):
    _, run_dir, _, _ = finished_run
    items = read_splits(run_dir / "curate" / "splits.csv")
    by_split = {split: [item for item in items if item.split == split] for split in ("train", "val", "test")}
    assert all(by_split.values())
    for other in ("train", "val"):
        for key in ("source_path", "crop_path", "group"):
            shared = {getattr(item, key) for item in by_split["test"]} & {getattr(item, key) for item in by_split[other]}
            assert not shared, (other, key, shared)
    # near-duplicate groups from ingest are what the split follows
    records = {record.path: record for record in read_ingest_manifest(run_dir / "ingest.csv")}
    for item in items:
        assert records[item.source_path].group == item.group
    assert not any(item.flipped for item in by_split["test"] + by_split["val"])
    crops = read_crops_manifest(run_dir / "crop" / "crops.csv")
    assert {item.crop_path for item in items} == {crop.crop_path for crop in crops}


def test_reloaded_model_reproduces_the_reported_test_accuracy(finished_run):
    """The saved model, run by hand on the test crops (Pillow to read them, Keras to call it: none of
    the evaluate stage's code), gives the accuracy and confusion matrix the run reported."""
    from PIL import Image

    _, run_dir, _, _ = finished_run
    summary = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    loaded = load_model_dir(run_dir / "model")
    test = [item for item in read_splits(run_dir / "curate" / "splits.csv") if item.split == "test" and not item.flipped]
    pixels = np.stack([np.asarray(Image.open(run_dir / "crop" / item.crop_path).convert("RGB")) for item in test])
    predicted = np.asarray(loaded.model(pixels.astype(np.float32), training=False)).argmax(axis=1)
    truth = np.array([loaded.labels.index(item.person) for item in test])
    assert len(test) == sum(counts["test"] for counts in summary["crops_per_person_and_split"].values())
    assert float(np.mean(predicted == truth)) == pytest.approx(summary["test_accuracy"], abs=1e-9)
    confusion = np.zeros((len(loaded.labels),) * 2, int)
    np.add.at(confusion, (truth, predicted), 1)
    assert metrics["labels"] == list(loaded.labels)
    assert confusion.tolist() == metrics["confusion_matrix"]
    assert summary["test_accuracy"] > 1 / len(loaded.labels) + 0.3  # far above chance over six people


def test_rerun_reuses_finished_work_and_the_scrape_is_untouched(finished_run, folder_snapshot, capsys):
    scrape, run_dir, before, argv = finished_run
    model_mtime = (run_dir / "model" / "model.keras").stat().st_mtime_ns
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "model reused, whole run" in out
    assert (run_dir / "model" / "model.keras").stat().st_mtime_ns == model_mtime
    # how many of the other people's faces 'unknown' rejects: in the summary and run.json, kept on reuse
    open_set = json.loads((run_dir / "run.json").read_text())["open_set"]
    # the other faces of the photos outside the test split: the test split stays unseen
    test_photos = {item.source_path for item in read_splits(run_dir / "curate" / "splits.csv") if item.split == "test"}
    others = [record for record in read_crops_manifest(run_dir / "crop" / "others.csv")
              if record.source_path not in test_photos]
    assert open_set["stranger_count"] == len(others) > 0
    rejected = round(open_set["stranger_rejection"] * len(others))
    assert (f"unknown (threshold {open_set['unknown_threshold']:.3f}) rejects {rejected} of {len(others)} "
            "other people's faces; model reused") in out
    crop_summary = json.loads((run_dir / "crop" / "crop.json").read_text())
    assert crop_summary["reused"] == crop_summary["photos"]
    assert folder_snapshot(scrape) == before


def test_rerun_recalibrates_unknown_of_a_model_calibrated_by_an_older_facecls(finished_run, capsys):
    import numpy as np

    from facecls.modeldir import OPEN_SET_FILE
    from facecls.openset import SCORE_NAME, load_open_set

    _, run_dir, _, argv = finished_run
    model_dir = run_dir / "model"
    model_mtime = (model_dir / "model.keras").stat().st_mtime_ns
    labels = load_model_dir(model_dir).labels
    current = load_open_set(model_dir, labels)
    # an open-set file of an earlier format: classify would refuse it
    np.savez(model_dir / OPEN_SET_FILE, score=np.array("identity_distance_share"), labels=np.array(labels))
    assert main(argv) == 0
    assert "model reused" in capsys.readouterr().out
    assert (model_dir / "model.keras").stat().st_mtime_ns == model_mtime  # not retrained
    again = load_open_set(model_dir, labels)
    with np.load(model_dir / OPEN_SET_FILE) as data:
        assert str(data["score"]) == SCORE_NAME
    assert np.array_equal(again.references, current.references)
    assert np.array_equal(again.person_distances, current.person_distances)
