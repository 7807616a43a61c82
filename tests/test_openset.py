"""The open set: who a face could be, decided in the identity space; persistence; a real calibration."""

import json

import numpy as np
import pytest

from facecls import modeldir
from facecls.errors import FaceclsError, ModelDirError
from facecls.openset import DECISION_THRESHOLD, OpenSetModel, calibrate_arrays, load_open_set

DIMENSIONS = 16


def around(rng, center, count, spread=0.05):
    """``count`` descriptors scattered ``spread`` per dimension around ``center``."""
    return center + spread * rng.standard_normal((count, DIMENSIONS))


def axis(index, length=1.0):
    point = np.zeros(DIMENSIONS)
    point[index] = length
    return point


def two_people(seed=0):
    """Person a in two clusters 0.8 apart (two looks), person b in one; 20 faces each look."""
    rng = np.random.default_rng(seed)
    a = np.concatenate([around(rng, axis(0), 20), around(rng, axis(0) + axis(1, 0.8), 20)])
    b = around(rng, axis(2, 2.0), 20)
    return rng, np.concatenate([a, b]), np.repeat([0, 1], [40, 20])


def test_a_face_must_agree_with_the_nearest_training_faces_not_with_their_mean():
    rng, train, people = two_people()
    model, calibration = calibrate_arrays(("a", "b"), train, people, np.zeros((0, DIMENSIONS)))
    assert calibration.person_distances == {"a": 0.6, "b": 0.6}  # nothing tightens the prior
    assert calibration.known_recall == 1.0 and calibration.outliers == {"a": 0, "b": 0}
    # A face of either look of a is close to its neighbours, though 0.4 from a's mean ...
    looks = np.stack([axis(0), axis(0) + axis(1, 0.8)]) + 0.03 * rng.standard_normal((2, DIMENSIONS))
    assert np.linalg.norm(looks - train[:40].mean(axis=0), axis=1).min() > 0.35
    named, scores = model.decide(looks, np.array([[0.5, 0.5]] * 2), DECISION_THRESHOLD)
    assert named.tolist() == [0, 0] and np.all(scores > 0.5)
    # ... and a stranger at a's mean, off the line between the looks, is near the mean but far from every face.
    stranger = train[:40].mean(axis=0, keepdims=True) + axis(3, 0.62)
    assert np.linalg.norm(stranger - train[:40].mean(axis=0)) < 0.63
    named, scores = model.decide(stranger, np.array([[1.0, 0.0]]), DECISION_THRESHOLD)
    assert named.tolist() == [-1] and scores[0] < DECISION_THRESHOLD
    # with a threshold of 0 every person is possible: the classifier's choice stands
    assert model.decide(stranger, np.array([[0.2, 0.8]]), 0.0)[0].tolist() == [1]


def test_negatives_inside_a_person_tighten_it_but_never_below_the_persons_own_faces():
    rng, train, people = two_people(1)
    # A bystander who looks like b: 0.45 from b's faces, inside the prior of 0.6.
    lookalike = around(rng, axis(2, 2.0) + axis(4, 0.45), 3, 0.01)
    model, calibration = calibrate_arrays(("a", "b"), train, people, lookalike)
    assert 0.3 < calibration.person_distances["b"] < 0.45 and calibration.person_distances["a"] == 0.6
    assert calibration.stranger_rejection == 1.0 and calibration.known_recall == 1.0
    face_of_b = around(rng, axis(2, 2.0), 1, 0.05)
    another_lookalike = axis(2, 2.0) + axis(4, 0.44)
    named, _ = model.decide(np.stack([face_of_b[0], another_lookalike]), np.array([[0.0, 1.0]] * 2), DECISION_THRESHOLD)
    assert named.tolist() == [1, -1]
    # Never below the distance keeping 95% of b's own faces, even for a negative among them ...
    _, inside = calibrate_arrays(("a", "b"), train, people, around(rng, axis(2, 2.0), 1, 0.01))
    assert inside.known_recall >= 0.95 and inside.person_distances["b"] > 0.2
    # ... and a second face in one of b's own photos (b twice in a collage) does not tighten b at all.
    _, collage = calibrate_arrays(("a", "b"), train, people, lookalike, negative_persons=np.array([1, 1, 1]))
    assert collage.person_distances == {"a": 0.6, "b": 0.6}


def test_a_training_face_no_other_photo_agrees_with_is_no_reference():
    rng, train, people = two_people(2)
    intruder = axis(5, 2.0)  # a wrong person among a's training faces
    model, calibration = calibrate_arrays(("a", "b"), np.vstack([train, intruder]), np.append(people, 0),
                                          np.zeros((0, DIMENSIONS)))
    assert calibration.outliers == {"a": 1, "b": 0} and len(model.references) == len(train)
    assert calibration.known_recall == pytest.approx(60 / 61)
    near_intruder = intruder + axis(6, 0.1)
    assert model.decide(near_intruder[None], np.array([[1.0, 0.0]]), DECISION_THRESHOLD)[0].tolist() == [-1]


def test_calibration_refuses_what_cannot_make_a_model():
    with pytest.raises(FaceclsError, match="Received none for: b"):
        calibrate_arrays(("a", "b"), np.ones((3, 4)), np.array([0, 0, 0]), np.zeros((0, 4)))
    with pytest.raises(FaceclsError, match="one person index each"):
        calibrate_arrays(("a", "b"), np.ones((3, 4)), np.array([0, 1]), np.zeros((0, 4)))
    with pytest.raises(FaceclsError, match="target_recall"):
        calibrate_arrays(("a", "b"), np.ones((2, 4)), np.array([0, 1]), np.zeros((0, 4)), target_recall=1.5)
    with pytest.raises(FaceclsError, match="one index per negative"):
        calibrate_arrays(("a", "b"), np.ones((2, 4)), np.array([0, 1]), np.zeros((2, 4)), np.array([0]))


def test_arrays_round_trip_and_those_of_an_older_facecls_ask_for_facecls_calibrate():
    _, train, people = two_people(3)
    model, _ = calibrate_arrays(("a", "b"), train, people, np.zeros((0, DIMENSIONS)))
    arrays = model.to_arrays()
    again = OpenSetModel.from_arrays(arrays, ("a", "b"), "run/model/openset.npz")
    faces = np.random.default_rng(4).random((5, DIMENSIONS))
    assert np.allclose(again.person_scores(faces), model.person_scores(faces))
    with pytest.raises(ModelDirError, match="do not match"):
        OpenSetModel.from_arrays(arrays, ("a", "c"), "run/model/openset.npz")
    # the open set of an older facecls (a mean per person, no format): a request to recalibrate, not a misread
    old = {"score": np.array("identity_distance_share"), "labels": np.array(["a", "b"]), "class_means": np.zeros((2, 4)),
           "reference_distances": np.ones(3)}
    with pytest.raises(ModelDirError, match=r"open-set format must be 2. Received: 1 .*facecls calibrate run/model"):
        OpenSetModel.from_arrays(old, ("a", "b"), "run/model/openset.npz")
    with pytest.raises(ModelDirError, match="identity_network must be"):
        OpenSetModel.from_arrays({**arrays, "identity_network": np.array("another_network")}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="missing arrays references"):
        OpenSetModel.from_arrays({key: value for key, value in arrays.items() if key != "references"}, ("a", "b"), "x")
    with pytest.raises(ModelDirError, match="covering all 2 people"):
        OpenSetModel.from_arrays({**arrays, "reference_persons": np.zeros_like(arrays["reference_persons"])}, ("a", "b"), "x")
    with pytest.raises(FaceclsError, match=r"identity descriptors must have shape \(N, 16\)"):
        model.person_scores(np.ones((2, 5)))


def test_scores_need_numpy_only():
    # classify may score faces in a process without TensorFlow
    import subprocess
    import sys

    code = "import sys, facecls.openset; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def calibrated(open_set_model):
    return open_set_model


def test_calibration_on_real_faces_keeps_known_people(calibrated):
    model_dir, calibration, _, known, _ = calibrated
    assert calibration.known_count == sum(1 for item in known if item.split == "train")
    assert calibration.held_out_count == sum(1 for item in known if item.split == "val")
    assert calibration.known_recall >= 0.9 and calibration.held_out_recall >= 0.9
    assert calibration.known_accuracy >= 0.9  # the identity network keeps MobileNetV2's slips out
    assert all(0.3 < distance <= 0.6 for distance in calibration.person_distances.values())


def test_calibration_is_stored_in_the_model_dir_without_pickle(calibrated):
    model_dir, calibration, crops_dir, *_ = calibrated
    info = json.loads((model_dir / modeldir.INFO_FILE).read_text())
    assert info["unknown_threshold"] == DECISION_THRESHOLD and info["open_set_format"] == 2
    loaded = modeldir.load_model_dir(model_dir)  # facecls.json still passes the strict checks
    with np.load(model_dir / modeldir.OPEN_SET_FILE, allow_pickle=False) as data:
        assert str(data["score"]) == "identity_neighbour_distance" and int(data["format"]) == 2
        assert str(data["crops_dir"]) == str(crops_dir.resolve())
    model = load_open_set(model_dir, loaded.labels)
    assert model.references.shape == (calibration.known_count - sum(calibration.outliers.values()), 128)


def test_write_open_set_refuses_a_threshold_outside_zero_one(calibrated, tmp_path):
    model_dir, *_ = calibrated
    with pytest.raises(FaceclsError, match="between 0 and 1"):
        modeldir.write_open_set(model_dir, {}, 1.5, 2)
    with pytest.raises(ModelDirError, match="not a model dir"):
        modeldir.write_open_set(tmp_path / "missing", {}, 0.5, 2)


def test_openset_npz_is_reserved_so_no_report_file_can_overwrite_it(tmp_path):
    with pytest.raises(FaceclsError, match="openset.npz"):
        modeldir.save_model_dir(tmp_path / "model", None, None, extra_files={modeldir.OPEN_SET_FILE: b"plot"})
    assert not (tmp_path / "model").exists()
