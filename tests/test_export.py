"""facecls export: TFLite (float32, float16, int8) and SavedModel of a real model dir, checked on real face crops.

The model: MobileNetV2 alpha 0.35 at 96 pixels trained on four people of the shared 5-celebrity
photos (tests/classify_model.py, shared with the classify tests). The exported models are run
here, independently of the export's own check, on every crop of those four people made by the
crop stage, and must stay within the tolerances the README states (facecls.export.TOLERANCES).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from facecls.cli import main
from facecls.export import TOLERANCES, export_model_dir, run_exported



@pytest.fixture(scope="module")
def model_and_crops(open_set_model):
    """(model dir, loaded model, crops of its people, Keras probabilities, crops folder for int8)."""
    from facecls.images import read_rgb
    from facecls.model import predict_batched
    from facecls.modeldir import load_model_dir

    model_dir, _, crops_dir, known, _ = open_set_model
    loaded = load_model_dir(model_dir)
    pixels = np.stack([read_rgb(crops_dir / item.crop_path) for item in known])
    assert len(pixels) > 80
    representative = crops_dir / "train"  # the crops it was trained on, as an app's calibration set would be
    return model_dir, loaded, pixels, predict_batched(loaded.model, pixels.astype(np.float32)), representative


@pytest.fixture(scope="module")
def float32_export(model_and_crops, tmp_path_factory):
    model_dir, _, _, _, representative = model_and_crops
    out = tmp_path_factory.mktemp("export")
    argv = ["export", str(model_dir), "--representative", str(representative), "--out", str(out), "--json", "--quiet"]
    return out, argv


def agreement(expected, received) -> float:
    return float(np.mean(np.argmax(expected, axis=1) == np.argmax(received, axis=1)))


def test_tflite_matches_the_keras_model_and_carries_labels_and_preprocessing(model_and_crops, float32_export, capsys):
    _, loaded, pixels, expected, _ = model_and_crops
    out, argv = float32_export
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["command"] == "export" and summary["model_path"] == str(out / "model.tflite")
    assert summary["check"]["within_tolerance"] is True and summary["check"]["crops"] > 10

    received = run_exported(out / "model.tflite", pixels)
    assert received.shape == expected.shape
    assert np.max(np.abs(received - expected)) <= TOLERANCES[("tflite", "none")]["max_difference"]
    assert agreement(expected, received) == 1.0

    assert (out / "labels.txt").read_text().splitlines() == list(loaded.labels)
    notes = json.loads((out / "preprocessing.json").read_text())
    info = loaded.info
    assert notes["labels"] == list(info.labels)
    assert notes["input"]["shape"] == [None, info.image_size, info.image_size, 3]
    assert notes["input"]["value_range"] == [0, 255] and notes["input"]["channels"] == "RGB"
    assert notes["crop"]["margin"] == info.crop_settings.margin and notes["crop"]["image_size"] == info.image_size
    assert notes["crop"]["align"] == info.crop_settings.align
    if info.crop_settings.align:  # the template an app aligns the keypoints to
        from facecls.align import ALIGNMENT_TEMPLATE_112, alignment_target

        assert np.allclose(notes["crop"]["keypoint_template_112"], ALIGNMENT_TEMPLATE_112, atol=1e-4)
        target = alignment_target(info.crop_settings.margin, info.image_size)
        assert np.allclose(notes["crop"]["target_keypoints"], target, atol=1e-4)
    assert notes["face_detection"]["min_confidence"] == info.detect_settings.min_confidence
    assert notes["unknown"]["threshold"] == info.unknown_threshold

    # the interpreter reports the input the notes describe
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    details = interpreter.get_input_details()[0]
    assert list(details["shape"][1:]) == [info.image_size, info.image_size, 3] and details["dtype"] == np.float32


@pytest.mark.slow
def test_float16_and_int8_variants_stay_within_the_stated_tolerances(model_and_crops, float32_export):
    model_dir, _, pixels, expected, representative = model_and_crops
    out, _ = float32_export
    float32_size = (out / "model.tflite").stat().st_size if (out / "model.tflite").exists() else None

    half = export_model_dir(model_dir, out, "tflite", "float16")
    received = run_exported(half.model_path, pixels)
    tolerance = TOLERANCES[("tflite", "float16")]
    assert np.max(np.abs(received - expected)) <= tolerance["max_difference"]
    assert agreement(expected, received) >= tolerance["min_agreement"]
    assert half.check is None  # no crops given: nothing measured, nothing claimed

    quantized = export_model_dir(model_dir, out, "tflite", "int8", representative=representative)
    received = run_exported(quantized.model_path, pixels)
    assert agreement(expected, received) >= TOLERANCES[("tflite", "int8")]["min_agreement"]
    assert quantized.check is not None and quantized.check.within_tolerance

    if float32_size:  # the float32 export of the test above sits in the same folder
        assert half.size_bytes < 0.6 * float32_size and quantized.size_bytes < 0.4 * float32_size
    exports = json.loads((out / "export.json").read_text())["exports"]
    assert {"model_float16.tflite", "model_int8.tflite"} <= set(exports)
    assert exports["model_int8.tflite"]["check"]["agreement"] == pytest.approx(quantized.check.agreement)


@pytest.mark.slow
def test_savedmodel_matches_the_keras_model(model_and_crops, tmp_path, capsys):
    model_dir, _, pixels, expected, _ = model_and_crops
    assert main(["export", str(model_dir), "--format", "savedmodel", "--out", str(tmp_path)]) == 0
    assert "not checked" in capsys.readouterr().out
    received = run_exported(tmp_path / "saved_model", pixels)
    assert np.max(np.abs(received - expected)) <= TOLERANCES[("savedmodel", "none")]["max_difference"]
    assert (tmp_path / "labels.txt").is_file() and (tmp_path / "preprocessing.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "int8"], "--quantize int8 needs --representative FOLDER"),
        (["--format", "savedmodel", "--quantize", "float16"], "--quantize applies to tflite only"),
    ],
)
def test_export_option_errors_are_exit_1_with_one_line(tmp_path, capsys, extra, message):
    assert main(["export", str(tmp_path / "no-model"), *extra]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error


def test_export_refuses_photos_as_crops_and_a_folder_of_another_models_exports(model_and_crops, data_dir, tmp_path, capsys):
    model_dir, _, _, _, _ = model_and_crops
    photos = data_dir / "5-celebrity-faces" / "val"
    assert main(["export", str(model_dir), "--representative", str(photos), "--out", str(tmp_path)]) == 1
    assert "face crops must be square" in capsys.readouterr().err
    (tmp_path / "export.json").write_text(json.dumps({"model_dir": "/elsewhere/model", "exports": {}}))
    assert main(["export", str(model_dir), "--out", str(tmp_path)]) == 1
    assert "holds exports of another model dir (/elsewhere/model)" in capsys.readouterr().err
    assert not (tmp_path / "model.tflite").exists()
