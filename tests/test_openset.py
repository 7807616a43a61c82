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


def gaussian_people(rng, count, means, spread):
    """``count`` faces around each of ``means``, with standard deviation ``spread`` in every dimension."""
    return np.concatenate([mean + spread * rng.standard_normal((count, means.shape[1])) for mean in means])


def one_hot(indices, classes=2):
    return np.eye(classes)[indices]


def two_people(seed, dimensions, held_out_count):
    """Two people 1 apart on their own axes, descriptors scattered 0.1 per dimension: 40 training
    faces each, ``held_out_count`` held out each. Returns (rng, train, person indices, held out, truth)."""
    rng = np.random.default_rng(seed)
    means = np.zeros((2, dimensions))
    means[0, 0], means[1, 1] = 1.0, 1.0
    train, held_out = gaussian_people(rng, 40, means, 0.1), gaussian_people(rng, held_out_count, means, 0.1)
    return rng, train, np.repeat([0, 1], 40), held_out, np.repeat([0, 1], held_out_count)


def test_strangers_far_from_every_known_person_fall_under_the_threshold():
    # Two people whose descriptors scatter 0.1 per dimension around their means; strangers
    # scatter as much around means of their own, as far from both as the two are apart.
    rng, train, people, held_out, truth = two_people(0, 16, 30)
    stranger_means = np.zeros((2, 16))
    stranger_means[0, 2], stranger_means[1, 3] = 1.0, 1.0
    strangers = gaussian_people(rng, 30, stranger_means, 0.1)
    model, calibration = calibrate(
        ("a", "b"), (train, people), (held_out, one_hot(truth), truth), (strangers, one_hot(np.zeros(60, int)))
    )
    assert calibration.known_recall >= 0.95 and calibration.known_accuracy == calibration.known_recall
    assert calibration.stranger_rejection == 1.0
    assert calibration.known_count == 60 and calibration.stranger_count == 60 and calibration.train_count == 80
    assert 0.0 <= calibration.threshold <= 1.0


def test_a_known_face_the_classifier_misnames_gets_the_person_it_plainly_is():
    _, train, people, held_out, truth = two_people(5, 8, 20)
    named = truth.copy()
    named[:4] = 1  # the classifier finds four of the first person more like the second
    probabilities = np.where(one_hot(named) == 1, 0.9, 0.1)
    model, calibration = calibrate(("a", "b"), (train, people), (held_out, probabilities, truth), None)
    _, correct_only = calibrate(("a", "b"), (train, people), (held_out, one_hot(truth), truth), None)
    assert calibration.threshold == correct_only.threshold  # set on each face's own person
    decided, scores = model.decide(held_out[:4], probabilities[:4], calibration.threshold)
    assert decided.tolist() == [0, 0, 0, 0] and np.all(scores >= calibration.threshold)
    assert calibration.known_accuracy == calibration.known_recall >= 0.95
    # with a threshold of 0 every person is possible: the classifier's choice stands
    assert model.decide(held_out[:4], probabilities[:4], 0.0)[0].tolist() == [1, 1, 1, 1]
    # a stranger is unknown however sure the classifier is, and scores the best it reached
    stranger = np.zeros((1, 8))
    stranger[0, 2] = 1.0
    decided, scores = model.decide(stranger, np.array([[1.0, 0.0]]), calibration.threshold)
    assert decided.tolist() == [-1] and scores[0] == pytest.approx(model.person_scores(stranger).max())


def test_the_score_is_the_share_of_calibration_faces_at_least_as_far():
    rng = np.random.default_rng(1)
    means = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    train = gaussian_people(rng, 20, means, 1.0)
    reference = gaussian_people(rng, 5, means, 1.0)
    model = fit_open_set(train, np.repeat([0, 1], 20), ("a", "b"), (reference, np.repeat([0, 1], 5)))
    scores = model.scores(reference, np.repeat([0, 1], 5))
    assert sorted(scores) == pytest.approx(np.arange(1, 11) / 10)  # the farthest keeps 1/10, the nearest all
    first = np.array([0])
    assert model.scores(model.class_means[:1], first) == pytest.approx([1.0])  # a face at a person's mean
    assert model.scores(np.full((1, 3), 40.0), first) == pytest.approx([0.0])  # farther than every known face
    assert np.allclose(model.class_means, [train[:20].mean(axis=0), train[20:].mean(axis=0)], atol=1e-6)
    # Halfway between the 4th and 5th nearest calibration faces (shares 0.7 and 0.6):
    direction = np.array([[0.6, -0.0, 0.8]])  # a unit vector
    halfway = (model.reference_distances[3] + model.reference_distances[4]) / 2
    assert model.scores(model.class_means[:1] + direction * halfway, first) == pytest.approx([0.65])


def test_fit_refuses_what_cannot_make_a_model():
    reference = (np.ones((2, 4)), np.array([0, 1]))
    with pytest.raises(FaceclsError, match="Received none for: b"):
        fit_open_set(np.ones((3, 4)), np.array([0, 0, 0]), ("a", "b"), reference)
    with pytest.raises(FaceclsError, match="one person index each"):
        fit_open_set(np.ones((3, 4)), np.array([0, 1]), ("a", "b"), reference)
    varied = np.random.default_rng(2).random((4, 4))
    with pytest.raises(FaceclsError, match="held-out faces"):
        fit_open_set(varied, np.array([0, 0, 1, 1]), ("a", "b"), (np.zeros((0, 4)), np.zeros(0, int)))


def small_model() -> OpenSetModel:
    rng = np.random.default_rng(3)
    descriptors = rng.random((6, 4))
    return fit_open_set(descriptors, np.array([0, 0, 0, 1, 1, 1]), ("a", "b"), (descriptors[:3], np.array([0, 0, 1])))


def test_arrays_round_trip_and_those_of_another_model_or_score_are_refused():
    model = small_model()
    arrays = model.to_arrays()
    again = OpenSetModel.from_arrays(arrays, ("a", "b"), "x")
    faces, persons = np.random.default_rng(4).random((5, 4)), np.array([0, 1, 0, 1, 1])
    assert np.array_equal(again.scores(faces, persons), model.scores(faces, persons))
    with pytest.raises(ModelDirError, match="do not match"):
        OpenSetModel.from_arrays(arrays, ("a", "c"), "x")
    # a model dir calibrated with an earlier score: a clear request to recalibrate, not a misread
    old = {"score": np.array("mahalanobis_share"), "labels": np.array(["a", "b"]), "class_means": np.zeros((2, 4))}
    with pytest.raises(ModelDirError, match="score must be 'identity_distance_share'. Received: 'mahalanobis_share'. Recalibrate"):
        OpenSetModel.from_arrays(old, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="identity_network must be"):
        OpenSetModel.from_arrays({**arrays, "identity_network": np.array("another_network")}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="missing arrays reference_distances"):
        OpenSetModel.from_arrays({key: value for key, value in arrays.items() if key != "reference_distances"}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match=r"class_means must be \(2, D\)"):
        OpenSetModel.from_arrays({**arrays, "class_means": arrays["class_means"][:1]}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="ascending"):
        OpenSetModel.from_arrays({**arrays, "reference_distances": arrays["reference_distances"][::-1] - 5}, ("a", "b"), "x")
    with pytest.raises(FaceclsError, match=r"identity descriptors must have shape \(N, 4\)"):
        model.scores(np.ones((2, 5)), np.array([0, 1]))
    with pytest.raises(FaceclsError, match="one index per face"):
        model.scores(np.ones((2, 4)), np.array([0]))


def test_scores_need_numpy_only():
    # classify may score faces in a process without TensorFlow
    import subprocess
    import sys

    code = "import sys, facecls.openset; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def calibrated():
    if not SHARED.is_dir():
        pytest.skip(f"shared photos and weights not found at {SHARED}")
    from classify_model import open_set_model

    return open_set_model()


def test_calibration_on_real_faces_keeps_known_people_and_rejects_the_stranger(calibrated):
    model_dir, calibration, _, known, stranger = calibrated
    assert calibration.calibrated_on == "val+test"
    assert calibration.known_count == sum(1 for item in known if item.split == "val")
    assert calibration.stranger_count == len(stranger) > 0
    assert calibration.known_recall >= 0.95
    # The stranger (a person the model never saw) mostly comes out unknown.
    assert calibration.stranger_rejection >= 0.9


def test_calibration_is_stored_in_the_model_dir_without_pickle(calibrated):
    model_dir, calibration, *_ = calibrated
    info = json.loads((model_dir / modeldir.INFO_FILE).read_text())
    assert info["unknown_threshold"] == pytest.approx(calibration.threshold)
    loaded = modeldir.load_model_dir(model_dir)  # facecls.json still passes the strict checks
    assert loaded.info.unknown_threshold == pytest.approx(calibration.threshold)
    with np.load(model_dir / modeldir.OPEN_SET_FILE, allow_pickle=False) as data:
        assert set(data.files) == {"score", "identity_network", "labels", "class_means", "reference_distances"}
        assert str(data["score"]) == "identity_distance_share"
    model = load_open_set(model_dir, loaded.labels)
    assert model.class_means.shape == (len(loaded.labels), 128)
    assert len(model.reference_distances) == calibration.known_count


def test_write_open_set_refuses_a_threshold_outside_zero_one(calibrated, tmp_path):
    model_dir, *_ = calibrated
    with pytest.raises(FaceclsError, match="between 0 and 1"):
        modeldir.write_open_set(model_dir, {}, 1.5)
    with pytest.raises(ModelDirError, match="not a model dir"):
        modeldir.write_open_set(tmp_path / "missing", {}, 0.5)
