"""Export a model dir for phones and servers: TFLite (float32, float16 or int8) or a TensorFlow SavedModel.

The exported model is the classifier as trained: float32 RGB face crops with values in
[0, 255], shape [N, image_size, image_size, 3], in; softmax probabilities in the order of
``labels.txt`` out. Scaling to [-1, 1] is inside the model, so an app feeds plain pixels.
Beside the model, ``preprocessing.json`` says how faces must be detected and cropped (the
model dir's own settings) and ``export.json`` records each exported file and how closely its
outputs matched the Keras model's on real face crops.

Quantized variants: ``float16`` stores the weights as float16 (half the size, computed in
float32); ``int8`` quantizes weights and activations, calibrated on real face crops, and keeps
float32 input and output so the same preprocessing applies.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facecls.align import describe_crop
from facecls.errors import FaceclsError
from facecls.manifest import atomic_write_bytes, atomic_write_text, read_json, write_json

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("tflite", "savedmodel")
QUANTIZATIONS = ("none", "float16", "int8")
LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"
EXPORT_SUMMARY = "export.json"
SAVED_MODEL_FOLDER = "saved_model"
MAX_REPRESENTATIVE = 200  # crops used to calibrate int8 and to check an export

# How far an export may stray from the Keras model on real face crops (measured in
# tests/test_export.py; the README states them). max_difference: of any probability;
# min_agreement: share of crops whose most probable person is the same.
TOLERANCES = {
    ("savedmodel", "none"): {"max_difference": 1e-5, "min_agreement": 1.0},
    ("tflite", "none"): {"max_difference": 1e-4, "min_agreement": 1.0},
    ("tflite", "float16"): {"max_difference": 0.1, "min_agreement": 0.98},
    ("tflite", "int8"): {"max_difference": None, "min_agreement": 0.90},
}


@dataclass(frozen=True)
class ExportCheck:
    """How the exported model's outputs compare with the Keras model's on real face crops."""

    crops: int
    max_difference: float  # largest absolute difference of any probability
    mean_difference: float  # mean over crops of the largest difference per crop
    agreement: float  # share of crops with the same most probable person
    within_tolerance: bool


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    model_path: Path  # the .tflite file or the SavedModel folder
    export_format: str
    quantization: str
    size_bytes: int
    check: ExportCheck | None  # None without crops to check on
    seconds: float


def model_file_name(export_format: str, quantization: str) -> str:
    if export_format == "savedmodel":
        return SAVED_MODEL_FOLDER
    return "model.tflite" if quantization == "none" else f"model_{quantization}.tflite"


def default_out_dir(model_dir: Path) -> Path:
    """``<model_dir>-export``, beside the model dir (the model dir itself is never written to)."""
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}-export"


def read_crops(folder: Path, image_size: int, limit: int = MAX_REPRESENTATIVE) -> np.ndarray:
    """Up to ``limit`` face crops from ``folder`` (recursively), evenly spread over its sorted files.

    Crops of another size are resized; the uint8 result has shape [N, image_size, image_size, 3].

    Raises:
        FaceclsError: the folder is missing, holds no image, or holds images that are not square.
    """
    from facecls.images import ImageDecodeError, decode_image, resize_square

    folder = Path(folder)
    if not folder.is_dir():
        raise FaceclsError(f"Crops folder {folder} not found. Pass a folder of face crops, e.g. <run>/crop/faces.")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))
    pixels = []
    for path in files:
        try:
            image = decode_image(path).pixels
        except ImageDecodeError:
            continue
        if abs(image.shape[0] - image.shape[1]) > 1:
            raise FaceclsError(
                f"{path} is {image.shape[1]}x{image.shape[0]}; face crops must be square. Pass a folder of crops "
                "written by facecls crop (e.g. <run>/crop/faces), not of photos."
            )
        pixels.append(image)
    if not pixels:
        raise FaceclsError(f"{folder} holds no image. Pass a folder of face crops, e.g. <run>/crop/faces.")
    chosen = np.linspace(0, len(pixels) - 1, num=min(limit, len(pixels))).round().astype(int)
    return np.stack([
        pixels[index] if pixels[index].shape[:2] == (image_size, image_size) else resize_square(pixels[index], image_size)
        for index in dict.fromkeys(chosen.tolist())
    ])


def _quiet_stdout():
    """TensorFlow's converters print to stdout; library code keeps stdout for the CLI."""
    return contextlib.redirect_stdout(io.StringIO())


def _tflite_bytes(model, quantization: str, representative: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def samples():
            for crop in representative:
                yield [crop[np.newaxis].astype(np.float32)]

        converter.representative_dataset = samples
    with _quiet_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def run_exported(model_path: Path, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities [N, C] of an exported model (a .tflite file or a SavedModel folder) for crops [N, S, S, 3]."""
    import tensorflow as tf

    model_path = Path(model_path)
    pixels = np.asarray(pixels, dtype=np.float32)
    outputs = []
    if model_path.is_dir():
        loaded = tf.saved_model.load(str(model_path))
        for start in range(0, len(pixels), batch_size):
            outputs.append(np.asarray(loaded.serve(tf.constant(pixels[start : start + batch_size]))))
        return np.concatenate(outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter warns that LiteRT will replace it
        interpreter = tf.lite.Interpreter(model_path=str(model_path), num_threads=len(os.sched_getaffinity(0)))
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        interpreter.resize_tensor_input(input_index, list(batch.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(output_index)))
    return np.concatenate(outputs)


def compare(expected: np.ndarray, received: np.ndarray, tolerance: dict) -> ExportCheck:
    """How close an export's probabilities are to the Keras model's, against ``tolerance``."""
    per_crop = np.max(np.abs(np.asarray(expected) - np.asarray(received)), axis=1)
    agreement = float(np.mean(np.argmax(expected, axis=1) == np.argmax(received, axis=1)))
    max_difference = float(per_crop.max())
    within = agreement >= tolerance["min_agreement"] and (
        tolerance["max_difference"] is None or max_difference <= tolerance["max_difference"]
    )
    return ExportCheck(len(per_crop), max_difference, float(per_crop.mean()), agreement, bool(within))


def preprocessing_notes(info) -> dict:
    """What an app must do before and after the exported model, from the model dir's settings."""
    from facecls.model import PIXELS_LAYER

    size = info.image_size
    crop, detect = info.crop_settings, info.detect_settings
    return {
        "labels": list(info.labels),
        "input": {
            "name": PIXELS_LAYER,
            "shape": [None, size, size, 3],
            "dtype": "float32",
            "channels": "RGB",
            "value_range": [0, 255],
            "scaling": "inside the model (x / 127.5 - 1): feed plain pixel values",
        },
        "output": {
            "shape": [None, len(info.labels)],
            "dtype": "float32",
            "meaning": "softmax probabilities, one per label, in the order of labels.txt",
        },
        "face_detection": {
            "detector": f"MTCNN (mtcnn {info.versions.get('mtcnn', '?')}) on RGB uint8, EXIF-oriented photos",
            "detect_side": detect.detect_side,
            "min_confidence": detect.min_confidence,
            "min_face_fraction": detect.min_face_fraction,
            "how": "detect on a copy whose longest side is at most detect_side; keep faces with confidence "
            ">= min_confidence whose longer box side is >= min_face_fraction of the photo's shorter side",
        },
        "crop": describe_crop(crop),
        "unknown": {
            "threshold": info.unknown_threshold,
            "note": "facecls calls a face unknown by the distance of its identity descriptor (dlib's face-recognition "
            "ResNet, facecls.identity) to each person's nearest training descriptors (openset.npz in the model dir); the "
            "exported model outputs probabilities only, so a high top probability does not prove the face is one of the labels",
        },
    }


def export_model_dir(
    model_dir: Path,
    out_dir: Path | None = None,
    export_format: str = "tflite",
    quantization: str = "none",
    representative: Path | None = None,
) -> ExportResult:
    """Export the model of a model dir, with labels.txt and preprocessing.json beside it.

    Args:
        model_dir: a model dir written by the train stage.
        out_dir: where to write (default ``<model_dir>-export``); other exports there are kept.
        export_format: tflite or savedmodel.
        quantization: none, float16 or int8 (tflite only).
        representative: a folder of face crops of the model's people (e.g. ``<run>/crop/faces``):
            calibrates int8 (required for it) and checks every export against the Keras model.

    Raises:
        FaceclsError: an unknown format or quantization, int8 without crops, a bad model dir.
    """
    started = time.perf_counter()
    if export_format not in EXPORT_FORMATS:
        raise FaceclsError(f"format must be one of {', '.join(EXPORT_FORMATS)}. Received: {export_format!r}")
    if quantization not in QUANTIZATIONS:
        raise FaceclsError(f"quantize must be one of {', '.join(QUANTIZATIONS)}. Received: {quantization!r}")
    if export_format == "savedmodel" and quantization != "none":
        raise FaceclsError(f"--quantize applies to tflite only. Received: --format savedmodel --quantize {quantization}")
    if quantization == "int8" and representative is None:
        raise FaceclsError(
            "--quantize int8 needs --representative FOLDER of face crops to calibrate on (e.g. <run>/crop/faces). "
            "Received none."
        )
    from facecls.model import predict_batched
    from facecls.modeldir import library_versions, load_model_dir
    from facecls.paths import check_output_folder

    if out_dir is not None:
        check_output_folder(Path(out_dir), [Path(model_dir)])  # a model dir is only read
    loaded = load_model_dir(Path(model_dir))
    crops = read_crops(Path(representative), loaded.info.image_size) if representative is not None else None
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(Path(model_dir))
    source = str(Path(model_dir).resolve())
    summary_path = out_dir / EXPORT_SUMMARY
    summary = read_json(summary_path) if summary_path.is_file() else {"model_dir": source, "exports": {}}
    if summary.get("model_dir") != source:
        raise FaceclsError(
            f"{out_dir} holds exports of another model dir ({summary.get('model_dir')}). "
            "Choose another --out folder, or delete it first."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / model_file_name(export_format, quantization)

    if export_format == "tflite":
        atomic_write_bytes(target, _tflite_bytes(loaded.model, quantization, crops))
        size = target.stat().st_size
    else:
        temporary = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{target.name}.partial-"))
        try:
            with _quiet_stdout():
                loaded.model.export(str(temporary / SAVED_MODEL_FOLDER), format="tf_saved_model")
            if target.exists():
                shutil.rmtree(target)
            os.rename(temporary / SAVED_MODEL_FOLDER, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())

    check = None
    if crops is not None:
        expected = predict_batched(loaded.model, crops.astype(np.float32))
        check = compare(expected, run_exported(target, crops), TOLERANCES[(export_format, quantization)])
        if not check.within_tolerance:
            logger.warning("%s strays from the Keras model beyond the stated tolerance: %s", target, check)

    atomic_write_text(out_dir / LABELS_FILE, "".join(label + "\n" for label in loaded.labels))
    write_json(out_dir / PREPROCESSING_FILE, preprocessing_notes(loaded.info))
    exports = summary.get("exports", {})
    exports[target.name] = {
        "format": export_format,
        "quantization": quantization,
        "size_bytes": size,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tolerance": TOLERANCES[(export_format, quantization)],
        "check": check,
        "representative": str(Path(representative).resolve()) if representative is not None else None,
    }
    write_json(summary_path, {"model_dir": source, "versions": library_versions(), "exports": exports})
    return ExportResult(out_dir, target, export_format, quantization, size, check, time.perf_counter() - started)
