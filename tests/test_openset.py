"""The open-set 'unknown' model: threshold maths, persistence in the model dir, and a real calibration."""

import json

import numpy as np
import pytest

from celebrity_crops import SHARED
from facecls import modeldir
from facecls.errors import FaceclsError, ModelDirError
from facecls.openset import (
    OpenSetModel,
    calibrate,
    fit_open_set,
    load_open_set,
    threshold_for_recall,
)


def test_threshold_keeps_exactly_the_target_share_of_known_scores():
    scores = np.arange(1, 21) / 20.0  # 0.05 ... 1.0
    threshold = threshold_for_recall(scores, 0.95)
    assert threshold == pytest.approx(0.10)
    assert np.mean(scores >= threshold) == pytest.approx(0.95)
    assert threshold_for_recall(scores, 1.0) == pytest.approx(0.05)
    with pytest.raises(FaceclsError, match="target_recall"):
        threshold_for_recall(scores, 1.5)
    with pytest.raises(FaceclsError, match="held-out"):
        threshold_for_recall(np.array([]), 0.95)


def clusters(rng, centres, count, spread=0.3):
    return np.concatenate([centre + spread * rng.standard_normal((count, centres.shape[1])) for centre in centres])


def test_faces_far_from_every_centroid_fall_under_the_calibrated_threshold():
    rng = np.random.default_rng(0)
    centres = np.abs(rng.standard_normal((4, 16))) * 3  # 2 known people, then 2 strangers
    train = clusters(rng, centres[:2], 30)
    people = np.repeat([0, 1], 30)
    held_out = clusters(rng, centres[:2], 20)
    held_truth = np.repeat([0, 1], 20)
    strangers = clusters(rng, centres[2:], 20)

    def probabilities(features, model):  # a softmax that always names one of the known people
        similarity = (features - model.feature_mean) @ model.centroids.T
        exp = np.exp(similarity - similarity.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    model = fit_open_set(train, people, ("a", "b"))
    model, calibration = calibrate(
        ("a", "b"),
        (train, people),
        (held_out, probabilities(held_out, model), held_truth),
        (strangers, probabilities(strangers, model)),
    )
    assert calibration.known_recall >= 0.95
    assert calibration.stranger_rejection > 0.9
    assert calibration.known_count == 40 and calibration.stranger_count == 40
    assert 0.0 <= calibration.threshold <= 1.0


def test_fit_needs_faces_of_every_person():
    with pytest.raises(FaceclsError, match="Received none for: b"):
        fit_open_set(np.ones((3, 4)), np.array([0, 0, 0]), ("a", "b"))


def test_arrays_of_another_model_are_refused():
    model = fit_open_set(np.random.default_rng(1).random((6, 4)), np.array([0, 0, 0, 1, 1, 1]), ("a", "b"))
    arrays = model.to_arrays()
    assert OpenSetModel.from_arrays(arrays, ("a", "b"), "x").centroids.shape == (2, 4)
    with pytest.raises(ModelDirError, match="do not match"):
        OpenSetModel.from_arrays(arrays, ("a", "c"), "x")
    with pytest.raises(ModelDirError, match="score must be"):
        OpenSetModel.from_arrays({**arrays, "score": np.array("softmax")}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="missing arrays centroids"):
        OpenSetModel.from_arrays({key: value for key, value in arrays.items() if key != "centroids"}, ("a", "b"), "x")


@pytest.fixture(scope="module")
def calibrated():
    if not SHARED.is_dir():
        pytest.skip(f"shared photos and weights not found at {SHARED}")
    from classify_model import open_set_model

    return open_set_model()


def test_calibration_on_real_faces_keeps_known_people_and_rejects_more_strangers(calibrated):
    model_dir, calibration, _, known, stranger = calibrated
    assert calibration.calibrated_on == "val+test"
    assert calibration.known_count == sum(1 for item in known if item.split == "val")
    assert calibration.stranger_count == len(stranger) > 0
    assert calibration.known_recall >= 0.95
    # Better than chance: the threshold rejects a larger share of strangers than of known people.
    assert calibration.stranger_rejection > 1.0 - calibration.known_recall


def test_calibration_is_stored_in_the_model_dir_without_pickle(calibrated):
    model_dir, calibration, *_ = calibrated
    info = json.loads((model_dir / modeldir.INFO_FILE).read_text())
    assert info["unknown_threshold"] == pytest.approx(calibration.threshold)
    loaded = modeldir.load_model_dir(model_dir)  # facecls.json still passes the strict checks
    assert loaded.info.unknown_threshold == pytest.approx(calibration.threshold)
    with np.load(model_dir / modeldir.OPEN_SET_FILE, allow_pickle=False) as data:
        assert set(data.files) == {"score", "labels", "feature_mean", "centroids"}
    model = load_open_set(model_dir, loaded.labels)
    assert model.centroids.shape[0] == len(loaded.labels)
    assert np.allclose(np.linalg.norm(model.centroids, axis=1), 1.0, atol=1e-5)


def test_write_open_set_refuses_a_threshold_outside_zero_one(calibrated, tmp_path):
    model_dir, *_ = calibrated
    with pytest.raises(FaceclsError, match="between 0 and 1"):
        modeldir.write_open_set(model_dir, {}, 1.5)
    with pytest.raises(ModelDirError, match="not a model dir"):
        modeldir.write_open_set(tmp_path / "missing", {}, 0.5)
