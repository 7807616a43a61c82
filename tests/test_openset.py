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
    """``count`` faces around each of ``means``, with per-dimension standard deviations ``spread``."""
    return np.concatenate([mean + spread * rng.standard_normal((count, len(spread))) for mean in means])


def softmax_of_nearest(features, means):  # a softmax that always names one of the known people
    closeness = -np.linalg.norm(features[:, None] - means[None], axis=2)
    exp = np.exp(closeness - closeness.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_strangers_off_the_directions_a_person_varies_in_fall_under_the_threshold():
    # Two people 6 apart on dimension 0; their photos vary a lot in dimensions 1-3 (pose, light)
    # and little in 4-7. Strangers sit next to a known person but 1 off in dimensions 4-7: not much
    # farther than that person's own photos, yet unlike any of them.
    rng = np.random.default_rng(0)
    means = np.zeros((2, 8))
    means[0, 0], means[1, 0] = 3.0, -3.0
    spread = np.array([0.5, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 0.1])
    train = gaussian_people(rng, 60, means, spread)
    people = np.repeat([0, 1], 60)
    held_out = gaussian_people(rng, 30, means, spread)
    held_truth = np.repeat([0, 1], 30)
    strangers = gaussian_people(rng, 30, means + np.array([0, 0, 0, 0, 1.0, -1.0, 1.0, -1.0]), spread)
    model, calibration = calibrate(
        ("a", "b"),
        (train, people),
        (held_out, softmax_of_nearest(held_out, means), held_truth),
        (strangers, softmax_of_nearest(strangers, means)),
    )
    assert calibration.known_recall >= 0.95
    assert calibration.stranger_rejection > 0.95
    assert calibration.known_count == 60 and calibration.stranger_count == 60
    assert 0.0 <= calibration.threshold <= 1.0
    # A plain distance to the person, with a threshold keeping 95% of known faces, keeps most strangers.
    plain_known = np.linalg.norm(held_out - means[held_truth], axis=1)
    plain_strangers = np.linalg.norm(strangers - means[np.argmax(softmax_of_nearest(strangers, means), axis=1)], axis=1)
    assert np.mean(plain_strangers > np.quantile(plain_known, 0.95)) < 0.5


def test_the_score_is_the_share_of_calibration_faces_at_least_as_far():
    rng = np.random.default_rng(1)
    means = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    train = gaussian_people(rng, 20, means, np.ones(3))
    reference = gaussian_people(rng, 5, means, np.ones(3))
    model = fit_open_set(train, np.repeat([0, 1], 20), ("a", "b"), (reference, softmax_of_nearest(reference, means)))
    scores = model.scores(reference, softmax_of_nearest(reference, means))
    assert sorted(scores) == pytest.approx(np.arange(1, 11) / 10)  # the farthest keeps 1/10, the nearest all
    first = np.array([[1.0, 0.0]])
    assert model.scores(model.class_means[:1], first) == pytest.approx([1.0])  # a face at a person's mean
    assert model.scores(np.full((1, 3), 40.0), first) == pytest.approx([0.0])  # farther than every known face
    # A Mahalanobis distance grows linearly along a ray from the mean: put a face halfway between
    # the 4th and 5th nearest calibration faces (shares 0.7 and 0.6).
    direction = np.array([[0.3, -0.5, 0.8]])
    unit_distance = model.distances(model.class_means[:1] + direction, first)[0]
    halfway = (model.reference_distances[3] + model.reference_distances[4]) / 2
    face = model.class_means[:1] + direction * halfway / unit_distance
    assert model.scores(face, first) == pytest.approx([0.65])


def test_fit_refuses_what_cannot_make_a_model():
    reference = (np.ones((2, 4)), np.array([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(FaceclsError, match="Received none for: b"):
        fit_open_set(np.ones((3, 4)), np.array([0, 0, 0]), ("a", "b"), reference)
    with pytest.raises(FaceclsError, match="differ within a person"):
        fit_open_set(np.ones((4, 4)), np.array([0, 0, 1, 1]), ("a", "b"), reference)
    varied = np.random.default_rng(2).random((4, 4))
    with pytest.raises(FaceclsError, match="held-out faces"):
        fit_open_set(varied, np.array([0, 0, 1, 1]), ("a", "b"), (np.zeros((0, 4)), np.zeros((0, 2))))


def small_model() -> OpenSetModel:
    rng = np.random.default_rng(3)
    features = rng.random((6, 4))
    return fit_open_set(features, np.array([0, 0, 0, 1, 1, 1]), ("a", "b"), (features[:3], np.eye(2)[[0, 0, 1]]))


def test_arrays_round_trip_and_those_of_another_model_or_score_are_refused():
    model = small_model()
    arrays = model.to_arrays()
    again = OpenSetModel.from_arrays(arrays, ("a", "b"), "x")
    faces, probabilities = np.random.default_rng(4).random((5, 4)), np.eye(2)[[0, 1, 0, 1, 1]]
    assert np.array_equal(again.scores(faces, probabilities), model.scores(faces, probabilities))
    with pytest.raises(ModelDirError, match="do not match"):
        OpenSetModel.from_arrays(arrays, ("a", "c"), "x")
    # a model dir calibrated before this score: a clear request to recalibrate, not a misread
    old = {"score": np.array("centroid_cosine"), "labels": np.array(["a", "b"]), "feature_mean": np.zeros(4), "centroids": np.eye(2, 4)}
    with pytest.raises(ModelDirError, match="score must be 'mahalanobis_share'. Received: 'centroid_cosine'. Recalibrate"):
        OpenSetModel.from_arrays(old, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="missing arrays basis"):
        OpenSetModel.from_arrays({key: value for key, value in arrays.items() if key != "basis"}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match=r"basis \(F, R\)"):
        OpenSetModel.from_arrays({**arrays, "basis": arrays["basis"][:2]}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="variances must be positive"):
        OpenSetModel.from_arrays({**arrays, "variances": -arrays["variances"]}, ("a", "b"), "x")
    with pytest.raises(FaceclsError, match=r"features must have shape \(N, 4\)"):
        model.scores(np.ones((2, 5)), np.eye(2))


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
        assert set(data.files) == {
            "score", "labels", "class_means", "basis", "variances", "residual_variance", "reference_distances"
        }
        assert str(data["score"]) == "mahalanobis_share"
    model = load_open_set(model_dir, loaded.labels)
    assert model.class_means.shape[0] == len(loaded.labels)
    assert np.allclose(model.basis.T @ model.basis, np.eye(model.basis.shape[1]), atol=1e-4)  # orthonormal
    assert len(model.reference_distances) == calibration.known_count


def test_write_open_set_refuses_a_threshold_outside_zero_one(calibrated, tmp_path):
    model_dir, *_ = calibrated
    with pytest.raises(FaceclsError, match="between 0 and 1"):
        modeldir.write_open_set(model_dir, {}, 1.5)
    with pytest.raises(ModelDirError, match="not a model dir"):
        modeldir.write_open_set(tmp_path / "missing", {}, 0.5)
