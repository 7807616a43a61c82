"""Model dirs on disk: round trip, atomic replacement, and tampered folders."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from facecls import modeldir
from facecls.config import CropSettings, DetectSettings, TrainSettings
from facecls.errors import FaceclsError, ModelDirError
from facecls.model import build_classifier, predict_batched
from facecls.modeldir import load_model_dir, new_model_info, save_model_dir

SIZE = 32
LABELS = ("alice", "bob", "carol")


def make_classifier(classes: int = len(LABELS)) -> keras.Model:
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None)
    return build_classifier(base, classes, dropout=0.1)


def make_info(labels=LABELS):
    return new_model_info(
        labels, CropSettings(image_size=SIZE, margin=0.3), DetectSettings(), TrainSettings(), {"val_accuracy": 0.5}
    )


@pytest.fixture(scope="module")
def classifier():
    return make_classifier()


@pytest.fixture(scope="module")
def template(tmp_path_factory, classifier):
    path = tmp_path_factory.mktemp("template") / "model"
    save_model_dir(path, classifier, make_info(), history={"head": {"loss": [1.0, 0.5]}}, extra_files={"curves.png": b"png"})
    return path


@pytest.fixture()
def saved(tmp_path, template):
    """A fresh copy of a saved model dir, free to tamper with."""
    return Path(shutil.copytree(template, tmp_path / "model"))


def test_round_trip_keeps_model_labels_and_settings(saved, classifier):
    assert sorted(entry.name for entry in saved.iterdir()) == ["curves.png", "facecls.json", "history.json", "model.keras"]
    loaded = load_model_dir(saved)
    assert loaded.labels == LABELS
    assert loaded.info.crop_settings == CropSettings(image_size=SIZE, margin=0.3)
    assert loaded.info.unknown_threshold is None and loaded.info.metrics == {"val_accuracy": 0.5}
    assert set(loaded.info.versions) == {"python", "facecls", "tensorflow", "keras", "numpy", "mtcnn"}
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    np.testing.assert_allclose(predict_batched(loaded.model, pixels), predict_batched(classifier, pixels), atol=1e-6)
    assert json.loads((saved / "history.json").read_text()) == {"head": {"loss": [1.0, 0.5]}}


def test_a_failed_save_leaves_no_model_dir_and_no_leftovers(tmp_path, classifier, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(modeldir, "write_json", fail)  # after model.keras is already written
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(tmp_path / "model", classifier, make_info())
    assert list(tmp_path.iterdir()) == []


def test_a_failed_replacement_keeps_the_old_model_dir(saved, monkeypatch):
    other = make_classifier(classes=2)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(modeldir, "atomic_write_bytes", fail)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(saved, other, make_info(("x", "y")), extra_files={"plot.png": b"png"})
    assert [entry.name for entry in saved.parent.iterdir()] == ["model"]
    assert load_model_dir(saved).labels == LABELS


def test_saving_again_replaces_the_model_dir(saved):
    save_model_dir(saved, make_classifier(classes=2), make_info(("x", "y")))
    assert load_model_dir(saved).labels == ("x", "y")
    assert not (saved / "curves.png").exists()
    assert [entry.name for entry in saved.parent.iterdir()] == ["model"]


def test_a_folder_that_is_not_a_model_dir_is_never_replaced(tmp_path, classifier):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"jpeg")
    with pytest.raises(ModelDirError, match="not a facecls model dir; refusing"):
        save_model_dir(photos, classifier, make_info())
    assert [entry.name for entry in photos.iterdir()] == ["me.jpg"]


def test_labels_must_match_model_outputs_when_saving(tmp_path, classifier):
    with pytest.raises(FaceclsError, match="3 outputs but info has 2 labels"):
        save_model_dir(tmp_path / "model", classifier, make_info(("x", "y")))


def edit_info(path, change):
    data = json.loads((path / "facecls.json").read_text())
    change(data)
    (path / "facecls.json").write_text(json.dumps(data))


def test_a_facecls_json_of_before_open_set_formats_still_reads(saved):
    edit_info(saved, lambda data: data.pop("open_set_format"))  # written before the field existed
    assert modeldir.read_model_info(saved).open_set_format is None


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda path: (path / "facecls.json").unlink(), "facecls.json is missing"),
        (lambda path: (path / "model.keras").unlink(), "model.keras is missing"),
        (lambda path: (path / "facecls.json").write_text("{not json"), "not valid JSON"),
        (lambda path: edit_info(path, lambda data: data.update(lables=[])), "unknown key 'lables'. Did you mean 'labels'"),
        (lambda path: edit_info(path, lambda data: data.pop("train_settings")), "missing keys train_settings"),
        (lambda path: edit_info(path, lambda data: data["labels"].append("dave")), "4 labels but model.keras has 3 outputs"),
        (lambda path: edit_info(path, lambda data: data["crop_settings"].update(margn=1)), "Unknown CropSettings key 'margn'"),
        (lambda path: edit_info(path, lambda data: data.update(format_version=7)), "format_version must be 1"),
        (lambda path: edit_info(path, lambda data: data.update(open_set_format="2")), "open_set_format must be null or an integer"),
        (lambda path: (path / "model.keras").write_bytes((path / "model.keras").read_bytes()[:5000]), "model.keras cannot be loaded"),
    ],
)
def test_tampered_model_dirs_give_one_line_errors(saved, tamper, expected):
    tamper(saved)
    with pytest.raises(ModelDirError) as caught:
        load_model_dir(saved)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_model_with_code_inside_is_refused(tmp_path):
    pixels = keras.Input(shape=(SIZE, SIZE, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda tensor: tensor * 2)(pixels))
    )
    path = tmp_path / "model"
    path.mkdir()
    keras.Model(pixels, outputs).save(path / "model.keras")
    (path / "facecls.json").write_text(json.dumps(modeldir.info_to_dict(make_info()), default=lambda value: value.__dict__))
    with pytest.raises(ModelDirError, match="cannot be loaded.*(unsafe|Lambda|safe_mode)"):
        load_model_dir(path)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelDirError, match="is not a model dir"):
        load_model_dir(tmp_path / "nowhere")
