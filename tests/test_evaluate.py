"""Evaluation reports on real crops, and the Wilson interval."""

import dataclasses
import json

import numpy as np
import pytest

from shared_data import WEIGHTS_035_H5
from facecls.config import CropSettings, DetectSettings, TrainSettings
from facecls.errors import FaceclsError
from facecls.evaluate import LabelledCrops, evaluate_crops, load_split_crops, wilson_interval
from facecls.modeldir import load_model_dir
from facecls.train import train_model

SIZE = 96


@pytest.fixture(scope="module")
def setup(celebrity_crops, tmp_path_factory):
    crops_dir, items = celebrity_crops
    model_dir = tmp_path_factory.mktemp("evaluate") / "model"
    head_only = TrainSettings(weights=str(WEIGHTS_035_H5), head_epochs=15, fine_tune_from="")
    train_model(items, crops_dir, head_only, model_dir, CropSettings(image_size=SIZE), DetectSettings(),
                calibrate=False)
    return load_model_dir(model_dir), crops_dir, items


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(23, 25)
    assert (round(low, 4), round(high, 4)) == (0.7503, 0.9778)
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.28
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(FaceclsError):
        wilson_interval(0, 0)


def test_report_on_the_val_split(setup, tmp_path):
    loaded, crops_dir, items = setup
    crops = load_split_crops(items, crops_dir, "val")
    report = evaluate_crops(loaded, crops, tmp_path)
    assert report.count == 25 and report.accuracy > 0.5
    assert report.accuracy_low < report.accuracy < report.accuracy_high
    matrix = np.array(report.confusion_matrix)
    assert matrix.sum() == 25 and np.trace(matrix) == report.correct
    assert [person.support for person in report.per_person] == [5] * 5
    assert len(report.mistakes) == 25 - report.correct
    for mistake in report.mistakes:
        assert mistake.true_label != mistake.predicted_label and mistake.predicted_score > mistake.true_score
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == report.accuracy and metrics["confusion_matrix"] == matrix.tolist()
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_in_memory_crops_with_wrong_labels_are_all_mistakes(setup, tmp_path):
    loaded, crops_dir, items = setup
    val = load_split_crops(items, crops_dir, "val")
    # Every madonna crop labelled elton_john: those all become mistakes named by identifier.
    labels = tuple("elton_john" if label == "madonna" else label for label in val.labels)
    relabelled = LabelledCrops(val.pixels, labels, tuple(f"photo-{index}" for index in range(len(labels))))
    report = evaluate_crops(loaded, relabelled, tmp_path)
    wrongly_labelled = {f"photo-{index}" for index, label in enumerate(val.labels) if label == "madonna"}
    mistaken = {mistake.identifier for mistake in report.mistakes}
    predicted_madonna = {m.identifier for m in report.mistakes if m.predicted_label == "madonna"}
    assert predicted_madonna <= wrongly_labelled <= mistaken | {
        f"photo-{index}" for index in range(len(labels)) if labels[index] == "elton_john"
    }
    assert report.per_person[loaded.labels.index("madonna")].support == 0


def test_no_mistakes_gives_a_clear_image(setup, tmp_path):
    loaded, crops_dir, items = setup
    val = load_split_crops(items, crops_dir, "val")
    from facecls.model import predict_batched

    predicted = predict_batched(loaded.model, val.pixels).argmax(axis=1)
    as_predicted = LabelledCrops(val.pixels, tuple(loaded.labels[index] for index in predicted), val.identifiers)
    report = evaluate_crops(loaded, as_predicted, tmp_path)
    assert report.accuracy == 1.0 and report.mistakes == ()
    assert (tmp_path / "misclassified.png").read_bytes().startswith(b"\x89PNG")


def test_bad_inputs(setup, tmp_path):
    loaded, crops_dir, items = setup
    val = load_split_crops(items, crops_dir, "val")
    stranger = dataclasses.replace(val, labels=("tom_hanks",) + val.labels[1:])
    with pytest.raises(FaceclsError, match="people the model knows.*Received: tom_hanks"):
        evaluate_crops(loaded, stranger, tmp_path)
    with pytest.raises(FaceclsError, match="must be 96x96"):
        evaluate_crops(loaded, LabelledCrops(np.zeros((1, 64, 64, 3), np.uint8), ("madonna",), ("x",)), tmp_path)
    with pytest.raises(FaceclsError, match="same length"):
        LabelledCrops(val.pixels, val.labels[:3], val.identifiers)
    with pytest.raises(FaceclsError, match="test split holds no crops"):
        load_split_crops(items, crops_dir, "test")
