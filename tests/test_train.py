"""Training on real face crops: better than chance, the saved model equals the cached path."""

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from shared_data import WEIGHTS_035_H5, WEIGHTS_100_H5
from facecls.config import CropSettings, DetectSettings, TrainSettings
from facecls.errors import FaceclsError, ModelDirError
from facecls.evaluate import load_split_crops
from facecls.model import base_of, load_base, predict_batched
from facecls.modeldir import load_model_dir
from facecls.train import CURVES_FILE, train_model

SIZE = 96
CROP = CropSettings(image_size=SIZE)
DETECT = DetectSettings()


@pytest.fixture(scope="module")
def crops(celebrity_crops):
    crops_dir, items = celebrity_crops
    with_flips = list(items) + [dataclasses.replace(item, flipped=True) for item in items if item.split == "train"]
    return crops_dir, with_flips


def settings(**changes) -> TrainSettings:
    defaults = dict(weights=str(WEIGHTS_035_H5), head_epochs=25, fine_tune_epochs=4, patience=4)
    return TrainSettings(**{**defaults, **changes})


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    crops_dir, items = crops
    model_dir = tmp_path_factory.mktemp("train") / "model"
    return train_model(items, crops_dir, settings(), model_dir, CROP, DETECT)


def test_training_beats_chance_on_real_faces(trained):
    assert trained.labels == ("ben_afflek", "elton_john", "jerry_seinfeld", "madonna", "mindy_kaling")
    assert trained.val_count == 25 and trained.train_count == 2 * 93
    assert trained.val_accuracy >= 0.6  # chance is 0.2


def test_saved_full_model_matches_the_cached_training_path(trained, crops):
    crops_dir, items = crops
    loaded = load_model_dir(trained.model_dir)
    val = load_split_crops(items, crops_dir, "val")
    probabilities = predict_batched(loaded.model, val.pixels)
    targets = np.array([trained.labels.index(label) for label in val.labels])
    picked = np.clip(probabilities[np.arange(len(targets)), targets], 1e-7, 1.0)  # as training clips
    loss = float(np.mean(-np.log(picked)))
    accuracy = float(np.mean(probabilities.argmax(axis=1) == targets))
    assert accuracy == trained.val_accuracy
    assert loss == pytest.approx(trained.val_loss, abs=1e-4)


def test_model_dir_describes_the_run(trained):
    info = json.loads((trained.model_dir / "facecls.json").read_text())
    assert info["labels"] == list(trained.labels)
    assert info["image_size"] == SIZE and info["alpha"] == 0.35
    assert info["train_settings"]["fine_tune_from"] == "block_13_expand"
    assert info["metrics"]["val_accuracy"] == trained.val_accuracy
    history = json.loads((trained.model_dir / "history.json").read_text())
    assert len(history["head"]["val_loss"]) == trained.head_epochs_run
    assert len(history["fine_tune"]["loss"]) == trained.fine_tune_epochs_run
    assert (trained.model_dir / CURVES_FILE).read_bytes().startswith(b"\x89PNG")


def test_training_calibrates_unknown_before_its_one_save(trained, crops, tmp_path):
    from facecls.openset import OPEN_SET_FORMAT, calibrate_model_dir, load_open_set, strangers_from_crops

    crops_dir, items = crops
    calibration = trained.calibration
    assert calibration.known_count == 93 and calibration.held_out_count == 25 and calibration.known_recall >= 0.9
    info = json.loads((trained.model_dir / "facecls.json").read_text())
    assert info["unknown_threshold"] == calibration.threshold and info["open_set_format"] == OPEN_SET_FORMAT
    assert load_open_set(trained.model_dir, trained.labels).person_distances.tolist() == list(
        calibration.person_distances.values())
    # Calibrating the saved model dir again, as train-then-calibrate did, finds and stores exactly the same.
    copy = tmp_path / "model"
    shutil.copytree(trained.model_dir, copy)
    assert calibrate_model_dir(copy, crops_dir, items, *strangers_from_crops(crops_dir, items)) == calibration
    assert json.loads((copy / "facecls.json").read_text()) == info
    with np.load(trained.model_dir / "openset.npz") as saved, np.load(copy / "openset.npz") as recalibrated:
        assert saved.files == recalibrated.files
        assert all(np.array_equal(saved[name], recalibrated[name]) for name in saved.files)


def test_fine_tuning_changes_only_the_top_and_never_batchnorm_statistics(crops, tmp_path):
    crops_dir, items = crops
    train_only = [item for item in items if item.split == "train"]  # no val: fine-tuning is always kept
    result = train_model(
        train_only, crops_dir, settings(head_epochs=3, fine_tune_epochs=2),
        tmp_path / "model", CROP, DETECT, calibrate=False,
    )
    assert result.val_accuracy is None and result.fine_tune_kept and result.fine_tune_epochs_run == 2
    trained_base = base_of(load_model_dir(tmp_path / "model").model)
    pretrained = load_base(0.35, SIZE, str(WEIGHTS_035_H5))
    changed = {
        layer.name
        for layer in pretrained.layers[1:]  # the input layer's name differs between instances
        if any(
            not np.array_equal(old, new)
            for old, new in zip(layer.get_weights(), trained_base.get_layer(layer.name).get_weights())
        )
    }
    assert changed and all(name.startswith(("block_13", "block_14", "block_15", "block_16", "Conv_1")) for name in changed)
    assert not any(isinstance(pretrained.get_layer(name), keras.layers.BatchNormalization) for name in changed)


def test_bad_inputs_fail_before_any_training(crops, tmp_path):
    crops_dir, items = crops
    one_person = [item for item in items if item.person == "madonna"]
    with pytest.raises(FaceclsError, match="at least 2 people"):
        train_model(one_person, crops_dir, settings(), tmp_path / "model", CROP, DETECT)
    no_train = [item for item in items if not (item.person == "madonna" and item.split == "train")]
    with pytest.raises(FaceclsError, match="Received none for: madonna"):
        train_model(no_train, crops_dir, settings(), tmp_path / "model", CROP, DETECT)
    flipped_val = items + [dataclasses.replace(items[-1], split="val", flipped=True)]
    with pytest.raises(FaceclsError, match="Flipped crops are allowed only in the train split"):
        train_model(flipped_val, crops_dir, settings(), tmp_path / "model", CROP, DETECT)
    with pytest.raises(FaceclsError, match="Every person must be one of the labels"):
        train_model(items, crops_dir, settings(), tmp_path / "model", CROP, DETECT, labels=["madonna", "elton_john"])
    occupied = tmp_path / "photos"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ModelDirError, match="refusing to replace"):
        train_model(items, crops_dir, settings(), occupied, CROP, DETECT)
    with pytest.raises(FaceclsError, match="alpha 0.35"):
        train_model(items, crops_dir, settings(weights=str(WEIGHTS_100_H5)), tmp_path / "model", CROP, DETECT)
    with pytest.raises(FaceclsError, match="crops must be 128x128.*Received: 96x96"):
        train_model(items, crops_dir, settings(), tmp_path / "model", CropSettings(image_size=128), DETECT)
    assert not (tmp_path / "model").exists()


def _tiny_model() -> keras.Model:
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def test_fit_stops_early_and_restores_the_weights_of_the_best_val_epoch():
    from facecls.train import _fit

    keras.utils.set_random_seed(0)
    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((64, 4)).astype(np.float32)
    targets = (inputs[:, 0] > 0).astype(np.int64)
    # Val labels are the opposite rule: the better the model learns train, the worse val gets.
    val = (inputs[:16], 1 - targets[:16])
    model = _tiny_model()
    history = _fit(model, "head", 0.05, 50, (inputs, targets, np.ones(64, np.float32)), val, settings(patience=3))

    losses = history["val_loss"]
    best = int(np.argmin(losses))
    assert len(losses) == best + 1 + 3 < 50  # stopped after 3 epochs without improvement
    assert history["loss"][-1] < history["loss"][0]  # it was learning the training rule
    probabilities = np.asarray(model(val[0]))
    restored_loss = float(np.mean(-np.log(np.clip(probabilities[np.arange(16), val[1]], 1e-7, 1))))
    assert restored_loss == pytest.approx(losses[best], rel=1e-4)


def test_fit_sample_weights_steer_the_loss():
    from facecls.train import _fit

    inputs = np.tile(np.eye(4, dtype=np.float32), (8, 1))
    targets = np.tile(np.array([0, 1, 0, 1], dtype=np.int64), 8)
    # Rows 2 and 3 carry the opposite labels with 10x the weight: the model must follow them.
    flipped_targets = targets.copy()
    flipped_targets[2::4] = 1
    flipped_targets[3::4] = 0
    all_targets = np.concatenate([targets, flipped_targets])
    weights = np.concatenate([np.ones(32, np.float32), np.full(32, 10.0, np.float32)])
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    _fit(model, "head", 0.05, 60, (np.concatenate([inputs, inputs]), all_targets, weights), None, settings(patience=60))
    predicted = np.asarray(model(np.eye(4, dtype=np.float32))).argmax(axis=1)
    assert predicted.tolist() == [0, 1, 1, 0]


def _head_model(features: int, classes: int) -> keras.Model:
    from facecls.model import PROBABILITIES_LAYER

    inputs = keras.Input(shape=(features,))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name=PROBABILITIES_LAYER)(inputs))


def test_head_is_regularised_by_c_and_stops_once_converged():
    from facecls.train import _fit_head

    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((120, 8)).astype(np.float32)
    targets = (inputs[:, 0] + 0.5 * inputs[:, 1] > 0).astype(np.int64)
    weights = np.ones(120, np.float32)
    norms, runs = {}, {}
    for c in (0.01, 1.0):
        keras.utils.set_random_seed(0)
        head = _head_model(8, 2)
        history = _fit_head(head, (inputs, targets, weights), (inputs[:20], targets[:20]), settings(head_l2_c=c, head_epochs=5000))
        norms[c] = float(np.linalg.norm(np.asarray(head.layers[-1].kernel)))
        runs[c] = len(history["loss"])
        assert len(history["val_loss"]) == runs[c]
        assert history["accuracy"][-1] > 0.9  # the rule is linear: both fit it
    assert norms[0.01] < 0.5 * norms[1.0]  # a smaller C (stronger L2) keeps the weights small
    assert max(runs.values()) < 5000  # converged and stopped before the cap


def test_head_follows_sample_weights():
    from facecls.train import _fit_head

    inputs = np.tile(np.eye(2, dtype=np.float32), (20, 1))
    targets = np.tile(np.array([0, 1], dtype=np.int64), 20)
    # The same inputs with the opposite labels, weighted 5x: the head must side with them.
    all_inputs = np.concatenate([inputs, inputs])
    all_targets = np.concatenate([targets, 1 - targets])
    weights = np.concatenate([np.ones(40, np.float32), np.full(40, 5.0, np.float32)])
    keras.utils.set_random_seed(0)
    head = _head_model(2, 2)
    _fit_head(head, (all_inputs, all_targets, weights), None, settings(head_l2_c=10.0))
    assert np.asarray(head(np.eye(2, dtype=np.float32))).argmax(axis=1).tolist() == [1, 0]


def test_head_reaches_the_logistic_regression_optimum_on_large_features():
    """Many large non-negative features, as the pooled ReLU maps give: full-batch Adam stalled far
    from the optimum on such data; the head must reach scikit-learn's optimum of the same objective."""
    from sklearn.linear_model import LogisticRegression

    from facecls.train import _fit_head

    generator = np.random.default_rng(1)
    centres = generator.uniform(0.0, 6.0, size=(3, 400))
    targets = np.repeat(np.arange(3), 30)
    inputs = np.clip(centres[targets] + generator.normal(0.0, 2.0, size=(90, 400)), 0.0, 6.0).astype(np.float32)
    weights = np.ones(90, np.float32)

    def objective(kernel, bias):
        logits = inputs.astype(np.float64) @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -log_probabilities[np.arange(90), targets].mean() + (kernel**2).sum() / (2 * 90)

    keras.utils.set_random_seed(0)
    head = _head_model(400, 3)
    history = _fit_head(head, (inputs, targets, weights), None, settings(head_l2_c=1.0, head_epochs=2000))
    assert 1 <= len(history["loss"]) < 2000
    kernel, bias = (np.asarray(value, np.float64) for value in head.layers[-1].get_weights())
    reference = LogisticRegression(C=1.0, max_iter=10000, tol=1e-8).fit(inputs, targets)
    best = objective(reference.coef_.T, reference.intercept_)
    assert objective(kernel, bias) < best + 0.01 * max(best, 1e-3)


def _last_progress_line(capsys) -> str:
    return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


def test_progress_says_the_head_converged_or_hit_its_maximum_and_left_time_is_an_upper_bound(capsys, monkeypatch):
    from facecls.train import _fit_head

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((60, 8)).astype(np.float32)
    targets = (inputs[:, 0] > 0).astype(np.int64)
    weights = np.ones(60, np.float32)
    history = _fit_head(_head_model(8, 2), (inputs, targets, weights), None, settings(head_l2_c=1.0, head_epochs=5000))
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "epochs at most [" in err and "at most" in err.split("epochs at most [")[1].split("]")[0]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"head: converged after {len(history['loss'])} of at most 5000 epochs (L-BFGS iterations) in ")
    _fit_head(_head_model(8, 2), (inputs, targets, weights), None, settings(head_l2_c=1.0, head_epochs=2))
    assert _last_progress_line(capsys).startswith("head: stopped after 2 of at most 2 epochs, not converged (")


def test_progress_says_fine_tuning_stopped_early_and_which_epoch_it_kept(capsys, monkeypatch):
    from facecls.train import _fit

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    keras.utils.set_random_seed(0)
    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((64, 4)).astype(np.float32)
    targets = (inputs[:, 0] > 0).astype(np.int64)
    val = (inputs[:16], 1 - targets[:16])  # the opposite rule: val loss rises while train loss falls
    history = _fit(_tiny_model(), "fine_tune", 0.05, 50, (inputs, targets, np.ones(64, np.float32)), val,
                   settings(patience=3))
    best = int(np.argmin(history["val_loss"])) + 1
    assert _last_progress_line(capsys).startswith(
        f"fine_tune: stopped early after {len(history['loss'])} of at most 50 epochs (val_loss did not improve for 3), "
        f"kept epoch {best} in "
    )
    _fit(_tiny_model(), "fine_tune", 0.05, 2, (inputs, targets, np.ones(64, np.float32)), None, settings(patience=5))
    assert _last_progress_line(capsys).startswith("fine_tune: ran all 2 epochs, kept epoch ")
