"""Reading and writing a model dir: the only code that knows the file names inside one.

A model dir holds ``model.keras`` (the classifier: [0, 255] pixels in, probabilities out),
``facecls.json`` (labels in training order, the resolved crop/detect/train settings,
versions, metrics), ``history.json`` and report files such as plots. It is written into a
temporary sibling folder and renamed into place, so a folder with this name is always complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import importlib.metadata
import os
import platform
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecls.config import CropSettings, DetectSettings, TrainSettings, settings_from_dict, unknown_key_problem
from facecls.errors import FaceclsError, ModelDirError, one_line
from facecls.manifest import atomic_write_bytes, read_json, write_json
from facecls.paths import person_name_problem

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
INFO_FILE = "facecls.json"
HISTORY_FILE = "history.json"
OPEN_SET_FILE = "openset.npz"  # the open-set ('unknown') arrays, written by facecls.openset
RESERVED_FILES = (MODEL_FILE, INFO_FILE, HISTORY_FILE, OPEN_SET_FILE)
# Settings that older model dirs record but that no longer exist; they say how a model was
# trained, not how to use it, so reading such a dir ignores them.
RETIRED_TRAIN_KEYS = frozenset({"head_learning_rate"})  # the head's Adam step, before L-BFGS
# Keys that older model dirs lack; reading one fills in the default (None: an older open set).
OPTIONAL_KEYS = frozenset({"open_set_format"})
# Size guards on what is read from a model dir, which may come from anyone: far above what
# facecls writes (facecls.json ~3 KB; model.keras config ~200 KB; openset.npz ~10 KB; weights
# of MobileNetV2 alpha 1.4 ~25 MB), far below what would exhaust memory.
MAX_INFO_BYTES = 1 << 20
MAX_MODEL_CONFIG_BYTES = 16 << 20
MAX_MODEL_BYTES = 1 << 30
MAX_OPEN_SET_BYTES = 64 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What a model dir says about its model (stored as facecls.json)."""

    labels: tuple[str, ...]  # class names in the order of the model's outputs
    image_size: int  # crops are square, this many pixels a side
    alpha: float  # MobileNetV2 width multiplier
    crop_settings: CropSettings
    detect_settings: DetectSettings
    train_settings: TrainSettings
    unknown_threshold: float | None = None  # below this score a face is "unknown"; None: not calibrated
    open_set_format: int | None = None  # facecls.openset.OPEN_SET_FORMAT of openset.npz; None: before formats
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""  # ISO 8601, UTC
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class LoadedModel:
    """A model dir read back: the Keras model, what it was trained with, and where it lives."""

    model: Any  # keras.Model
    info: ModelInfo
    path: Path

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a model depends on, without importing them."""
    import facecls

    versions = {"python": platform.python_version(), "facecls": facecls.__version__}
    for name, distributions in (
        ("tensorflow", ("tensorflow-cpu", "tensorflow")),
        ("keras", ("keras",)),
        ("numpy", ("numpy",)),
        ("mtcnn", ("mtcnn",)),
    ):
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = "not installed"
    return versions


def new_model_info(
    labels: list[str] | tuple[str, ...],
    crop_settings: CropSettings,
    detect_settings: DetectSettings,
    train_settings: TrainSettings,
    metrics: dict[str, Any] | None = None,
    unknown_threshold: float | None = None,
) -> ModelInfo:
    """A ModelInfo stamped with the current time and library versions."""
    return ModelInfo(
        labels=tuple(labels),
        image_size=crop_settings.image_size,
        alpha=train_settings.alpha,
        crop_settings=crop_settings,
        detect_settings=detect_settings,
        train_settings=train_settings,
        unknown_threshold=unknown_threshold,
        metrics=dict(metrics or {}),
        versions=library_versions(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def info_to_dict(info: ModelInfo) -> dict[str, Any]:
    return {item.name: getattr(info, item.name) for item in dataclasses.fields(info)}


def info_from_dict(data: Any, source: str) -> ModelInfo:
    """Check and convert a facecls.json record; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise ModelDirError(f"{source}: must hold a JSON object. Received: {type(data).__name__}")
    known = [item.name for item in dataclasses.fields(ModelInfo)]
    problem = unknown_key_problem(data, known)
    if problem:
        raise ModelDirError(f"{source}: unknown {problem}")
    missing = [name for name in known if name not in data and name not in OPTIONAL_KEYS]
    if missing:
        raise ModelDirError(f"{source}: missing keys {', '.join(missing)}. Retrain to write a complete model dir.")
    if type(data["format_version"]) is not int or data["format_version"] != FORMAT_VERSION:
        raise ModelDirError(
            f"{source}: format_version must be {FORMAT_VERSION}. Received: {data['format_version']!r}. "
            "Use the facecls version that wrote it, or retrain."
        )
    labels = data["labels"]
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelDirError(f"{source}: labels must be a list of at least 2 distinct names. Received: {labels!r}"[:500])
    for label in labels:
        problem = person_name_problem(label)
        if problem:
            raise ModelDirError(f"{source}: label {label!r} {problem}; labels become folder names. Retrain from a scrape "
                                "whose person folders have plain names.")  # fmt: skip
    threshold = data["unknown_threshold"]
    if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
        raise ModelDirError(f"{source}: unknown_threshold must be null or between 0 and 1. Received: {threshold!r}")
    open_set_format = data.get("open_set_format")
    if open_set_format is not None and (isinstance(open_set_format, bool) or not isinstance(open_set_format, int)):
        raise ModelDirError(f"{source}: open_set_format must be null or an integer. Received: {open_set_format!r}")
    for name in ("image_size", "alpha"):
        if not _is_number(data[name]) or (name == "image_size" and type(data[name]) is not int):
            kind = "an integer" if name == "image_size" else "a number"
            raise ModelDirError(f"{source}: {name} must be {kind}. Received: {data[name]!r}")
    for name in ("metrics", "versions", "crop_settings", "detect_settings", "train_settings"):
        if not isinstance(data[name], dict):
            raise ModelDirError(f"{source}: {name} must be a JSON object. Received: {data[name]!r}"[:500])
    if not isinstance(data["created"], str):
        raise ModelDirError(f"{source}: created must be a string (ISO 8601 time). Received: {data['created']!r}")
    try:
        # Model dirs written before alignment existed were trained on box crops: keep cropping them so.
        crop_settings = settings_from_dict(CropSettings, {"align": False, **data["crop_settings"]})
        detect_settings = settings_from_dict(DetectSettings, data["detect_settings"])
        stored = {key: value for key, value in data["train_settings"].items() if key not in RETIRED_TRAIN_KEYS}
        train_settings = settings_from_dict(TrainSettings, stored)
    except (FaceclsError, TypeError) as error:
        raise ModelDirError(f"{source}: {error}") from None
    if data["image_size"] != crop_settings.image_size or data["alpha"] != train_settings.alpha:
        raise ModelDirError(
            f"{source}: image_size {data['image_size']} and alpha {data['alpha']} must match crop_settings "
            f"({crop_settings.image_size}) and train_settings ({train_settings.alpha})."
        )
    return ModelInfo(
        labels=tuple(labels),
        image_size=int(data["image_size"]),
        alpha=float(data["alpha"]),
        crop_settings=crop_settings,
        detect_settings=detect_settings,
        train_settings=train_settings,
        unknown_threshold=None if threshold is None else float(threshold),
        open_set_format=open_set_format,
        metrics=data["metrics"],
        versions=data["versions"],
        created=str(data["created"]),
        format_version=FORMAT_VERSION,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_archive(path: Path, max_bytes: int, members: dict[str, int] | None = None,
                   fix: str = "Retrain to write a new model dir.") -> None:
    """Refuse a zip archive (model.keras, openset.npz) that would unpack to more than we read.

    Raises:
        ModelDirError: not a zip archive, over ``max_bytes`` uncompressed, or a member of
            ``members`` (name -> most bytes) larger than allowed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelDirError(f"{path} cannot be loaded (not a valid archive: {error}). {fix}") from None
    total = sum(entry.file_size for entry in entries)
    if total > max_bytes:
        raise ModelDirError(
            f"{path} cannot be loaded: it unpacks to {total} bytes, over the {max_bytes} allowed. {fix}"
        )
    for entry in entries:
        if members and entry.filename in members and entry.file_size > members[entry.filename]:
            raise ModelDirError(
                f"{path} cannot be loaded: its {entry.filename} is {entry.file_size} bytes, over the "
                f"{members[entry.filename]} allowed. {fix}"
            )


def _check_extra_name(name: str) -> None:
    if not name or "/" in name or os.sep in name or name.startswith(".") or name in RESERVED_FILES:
        raise FaceclsError(
            f"Extra model-dir file names must be plain file names other than {', '.join(RESERVED_FILES)}. "
            f"Received: {name!r}"
        )


def save_model_dir(
    path: Path,
    model,
    info: ModelInfo,
    history: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    open_set: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model dir at ``path``, replacing an older model dir there.

    Everything is written into a temporary sibling folder that is renamed into place, so an
    interrupted save leaves either the old model dir or none, never a half-written one.

    Args:
        path: the model dir.
        model: the Keras classifier.
        info: what to store in facecls.json.
        history: per-epoch training curves, stored as history.json.
        extra_files: report files (plots) by file name.
        open_set: the open-set arrays (facecls.openset), stored as openset.npz; ``info`` carries
            their ``unknown_threshold`` and ``open_set_format``.

    Raises:
        ModelDirError: ``path`` exists and is not a model dir (it is never deleted then).
    """
    path = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _check_extra_name(name)
    outputs = int(model.output_shape[-1])
    if outputs != len(info.labels):
        raise FaceclsError(f"The model has {outputs} outputs but info has {len(info.labels)} labels; they must match.")
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        model.save(str(temporary / MODEL_FILE))
        write_json(temporary / HISTORY_FILE, history or {})
        for name, data in extra_files.items():
            atomic_write_bytes(temporary / name, data)
        if open_set is not None:
            atomic_write_bytes(temporary / OPEN_SET_FILE, _open_set_bytes(open_set))
        write_json(temporary / INFO_FILE, info_to_dict(info))
        _replace_directory(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def remove_stale_temporaries(path: Path) -> None:
    """Clear the temporary siblings of a model dir that a killed save left behind.

    A kill between the two renames of a replacement leaves no model dir and the old one
    retired: it is put back. Call it holding the lock of ``path``'s parent (train does).
    """
    path = Path(path)
    name = glob.escape(path.name)
    for retired in sorted(path.parent.glob(f".{name}.old-*")):
        if not os.path.lexists(path) and (retired / INFO_FILE).is_file():
            os.rename(retired, path)
        else:
            shutil.rmtree(retired, ignore_errors=True)
    for partial in path.parent.glob(f".{name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def check_replaceable(path: Path) -> None:
    """Fail unless ``path`` is free, an empty folder, or a model dir (call before heavy work).

    Raises:
        ModelDirError: ``path`` holds something else, which a save would otherwise replace.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / INFO_FILE).is_file() or not any(path.iterdir()))):
        raise ModelDirError(
            f"{path} exists and is not a facecls model dir; refusing to replace it. Choose another output path."
        )


def _replace_directory(source: Path, target: Path) -> None:
    if not target.exists():
        os.rename(source, target)
        return
    retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rmdir(retired)
    os.rename(target, retired)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def read_model_info(path: Path) -> ModelInfo:
    """Read and check facecls.json of a model dir without loading the model."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(
            f"{path} is not a model dir (no such folder). Pass the folder written by facecls train."
        )
    info_path = path / INFO_FILE
    if not info_path.is_file():
        raise ModelDirError(f"{path} is not a complete model dir: {INFO_FILE} is missing. Retrain or pick another folder.")
    try:
        data = read_json(info_path, max_bytes=MAX_INFO_BYTES)
    except FaceclsError as error:
        raise ModelDirError(str(error)) from None
    return info_from_dict(data, str(info_path))


def model_file(path: Path) -> Path:
    """The Keras model file of a model dir, checked to unpack to a sane size (before Keras reads it).

    Raises:
        ModelDirError: it is missing, not an archive, or too large.
    """
    model_path = Path(path) / MODEL_FILE
    if not model_path.is_file():
        raise ModelDirError(f"{path} is not a complete model dir: {MODEL_FILE} is missing. Retrain.")
    _check_archive(model_path, MAX_MODEL_BYTES, {"config.json": MAX_MODEL_CONFIG_BYTES, "metadata.json": MAX_INFO_BYTES})
    return model_path


def load_model_dir(path: Path) -> LoadedModel:
    """Load a model dir written by ``save_model_dir``, checking that its parts agree.

    Raises:
        ModelDirError: the folder is missing, incomplete or tampered with (bad JSON, unknown
            keys, a model that cannot be loaded safely, or labels that do not match its outputs).
    """
    path = Path(path)
    info = read_model_info(path)
    model_path = model_file(path)
    from facecls.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    try:
        model = keras.saving.load_model(str(model_path), safe_mode=True, compile=False)
    except Exception as error:
        raise ModelDirError(f"{model_path} cannot be loaded ({one_line(error)}). Retrain to write a new model dir.") from None
    outputs = int(model.output_shape[-1])
    if outputs != len(info.labels):
        raise ModelDirError(
            f"{path}: {INFO_FILE} lists {len(info.labels)} labels but {MODEL_FILE} has {outputs} outputs; "
            "the folder was modified. Retrain."
        )
    input_shape = tuple(model.input_shape[1:])
    if input_shape != (info.image_size, info.image_size, 3):
        raise ModelDirError(
            f"{path}: {INFO_FILE} says image_size {info.image_size} but {MODEL_FILE} takes {input_shape}; "
            "the folder was modified. Retrain."
        )
    return LoadedModel(model=model, info=info, path=path)


def write_open_set(path: Path, arrays: dict[str, Any], unknown_threshold: float, open_set_format: int) -> None:
    """Store the open-set arrays in a model dir and set its ``unknown_threshold`` and ``open_set_format``.

    ``openset.npz`` is written first and ``facecls.json`` last, each atomically, so a
    threshold in facecls.json always has its arrays beside it.

    Raises:
        ModelDirError: ``path`` is not a complete model dir.
        FaceclsError: the threshold is not between 0 and 1.
    """
    path = Path(path)
    if not (0.0 <= float(unknown_threshold) <= 1.0):
        raise FaceclsError(f"unknown_threshold must be between 0 and 1. Received: {unknown_threshold}")
    info = read_model_info(path)
    atomic_write_bytes(path / OPEN_SET_FILE, _open_set_bytes(arrays))
    updated = dataclasses.replace(info, unknown_threshold=float(unknown_threshold), open_set_format=int(open_set_format))
    write_json(path / INFO_FILE, info_to_dict(updated))


def _open_set_bytes(arrays: dict[str, Any]) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def read_open_set(path: Path) -> dict[str, Any] | None:
    """The open-set arrays of a model dir, or None when it was never calibrated.

    Raises:
        ModelDirError: the file exists but cannot be read (it is loaded without pickle).
    """
    import numpy as np

    file = Path(path) / OPEN_SET_FILE
    if not file.is_file():
        return None
    try:
        _check_archive(file, MAX_OPEN_SET_BYTES, fix="Recalibrate the model dir (facecls run does it after training).")
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise ModelDirError(
            f"{file} cannot be read ({one_line(error)}). Recalibrate the model dir: facecls calibrate {path}"
        ) from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biufU":
            raise ModelDirError(
                f"{file}: array {name} must hold numbers or text. Received dtype {array.dtype}. "
                "Recalibrate the model dir (facecls run does it after training)."
            )
    return arrays
