"""Open set: telling the people a model knows from everyone else (label ``unknown``).

A softmax over a few people calls every stranger one of them, often with a high
probability. So classify also asks how close a face is to the person the softmax picked:
the pooled features of every training crop (the model's own feature space) are centred on
their mean and L2-normalised, each person gets the normalised mean of their crops as a
centroid, and a face's score is the cosine similarity between its centred, normalised
features and the centroid of its predicted person. Below ``threshold`` the face is unknown.

The threshold is calibrated on held-out faces of the known people (the val and test
splits, never seen in training) so that a chosen share of them (95%) is kept; the faces of
other people in the scrape's multi-face photos (``others.csv`` of the crop stage) measure
how many strangers that threshold rejects. Everything here is numpy on features; only
``calibrate_model_dir`` runs the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facecls.errors import FaceclsError, ModelDirError

logger = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
SCORE_NAME = "centroid_cosine"  # stored in openset.npz so a later change of score cannot be misread
_EPSILON = 1e-9


def _unit_rows(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, _EPSILON)


@dataclass(frozen=True)
class OpenSetModel:
    """Per-person centroids in the model's feature space; scores faces against them."""

    labels: tuple[str, ...]  # in the order of the classifier's outputs
    feature_mean: np.ndarray  # [F] mean pooled features of the training crops
    centroids: np.ndarray  # [C, F] unit vectors, one per label

    def scores(self, features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Score [N] of each face for its most probable person: cosine similarity, in [-1, 1]."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.centroids.shape[1]:
            raise FaceclsError(
                f"features must have shape (N, {self.centroids.shape[1]}). Received: {features.shape}"
            )
        predicted = np.argmax(probabilities, axis=1)
        units = _unit_rows(features - self.feature_mean)
        return np.sum(units * self.centroids[predicted], axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "score": np.array(SCORE_NAME),
            "labels": np.array(self.labels),
            "feature_mean": self.feature_mean.astype(np.float32),
            "centroids": self.centroids.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], labels: Sequence[str], source: str) -> "OpenSetModel":
        """Rebuild from ``to_arrays`` output, checking it belongs to a model with ``labels``.

        Raises:
            ModelDirError: arrays missing, of another score, or of other labels or shapes.
        """
        missing = [name for name in ("score", "labels", "feature_mean", "centroids") if name not in arrays]
        if missing:
            raise ModelDirError(f"{source}: missing arrays {', '.join(missing)}. Recalibrate the model dir.")
        if str(arrays["score"]) != SCORE_NAME:
            raise ModelDirError(
                f"{source}: score must be {SCORE_NAME!r}. Received: {str(arrays['score'])!r}. Recalibrate the model dir."
            )
        stored = tuple(str(label) for label in arrays["labels"].tolist())
        if stored != tuple(labels):
            raise ModelDirError(
                f"{source}: labels {list(stored)} do not match the model's {list(labels)}; "
                "the model was retrained without recalibrating. Recalibrate the model dir."
            )
        centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        mean = np.asarray(arrays["feature_mean"], dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[0] != len(labels) or mean.shape != (centroids.shape[1],):
            raise ModelDirError(
                f"{source}: centroids must be ({len(labels)}, F) and feature_mean (F,). "
                f"Received: {centroids.shape} and {mean.shape}. Recalibrate the model dir."
            )
        return cls(labels=tuple(labels), feature_mean=mean, centroids=centroids)


def fit_open_set(features: np.ndarray, person_indices: np.ndarray, labels: Sequence[str]) -> OpenSetModel:
    """Centroids of each person's training features (centred on the mean of all, normalised).

    Raises:
        FaceclsError: a label has no features, or the arrays do not line up.
    """
    features = np.asarray(features, dtype=np.float32)
    person_indices = np.asarray(person_indices)
    if features.ndim != 2 or len(features) != len(person_indices):
        raise FaceclsError(
            f"features must be (N, F) with one person index each. Received: {features.shape} and {person_indices.shape}"
        )
    empty = [label for index, label in enumerate(labels) if not np.any(person_indices == index)]
    if empty:
        raise FaceclsError(f"Every person needs training faces for the open-set centroids. Received none for: {', '.join(empty)}")
    mean = features.mean(axis=0)
    units = _unit_rows(features - mean)
    centroids = _unit_rows(np.stack([units[person_indices == index].mean(axis=0) for index in range(len(labels))]))
    return OpenSetModel(labels=tuple(labels), feature_mean=mean, centroids=centroids)


def threshold_for_recall(known_scores: np.ndarray, target_recall: float = DEFAULT_TARGET_RECALL) -> float:
    """The highest threshold that keeps at least ``target_recall`` of ``known_scores`` (score >= threshold).

    Raises:
        FaceclsError: no scores, or a target outside (0, 1].
    """
    if not 0.0 < target_recall <= 1.0:
        raise FaceclsError(f"target_recall must be in (0, 1]. Received: {target_recall}")
    scores = np.sort(np.asarray(known_scores, dtype=np.float64))
    if scores.size == 0:
        raise FaceclsError("Calibrating 'unknown' needs held-out faces of the known people. Received none.")
    allowed_misses = int(np.floor((1.0 - target_recall) * scores.size + 1e-9))
    return float(scores[allowed_misses])


def stored_threshold(threshold: float) -> float:
    """A cosine threshold as facecls.json stores it (0..1): negative similarities clip to 0."""
    return float(min(max(threshold, 0.0), 1.0))


@dataclass(frozen=True)
class OpenSetCalibration:
    """What calibrating ``unknown`` found: the threshold and how well it separates."""

    threshold: float
    target_recall: float
    known_recall: float  # share of held-out known faces scoring at or above the threshold
    stranger_rejection: float | None  # share of stranger faces scoring below it (None: no strangers)
    known_accuracy: float  # share of held-out known faces kept AND given the right person
    train_count: int  # crops the centroids were computed from
    known_count: int  # held-out crops the threshold was calibrated on
    stranger_count: int
    calibrated_on: str  # "val+test", or "train" when there was nothing held out (optimistic)


def evaluate_threshold(
    model: OpenSetModel,
    threshold: float,
    known: tuple[np.ndarray, np.ndarray, np.ndarray],
    strangers: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[float, float | None, float]:
    """(known recall, stranger rejection, known accuracy) at ``threshold``.

    ``known`` is (features, probabilities, true person indices); ``strangers`` (features, probabilities).
    """
    features, probabilities, truth = known
    kept = model.scores(features, probabilities) >= threshold
    recall = float(np.mean(kept))
    accuracy = float(np.mean(kept & (np.argmax(probabilities, axis=1) == truth)))
    rejection = None
    if strangers is not None and len(strangers[0]):
        rejection = float(np.mean(model.scores(*strangers) < threshold))
    return recall, rejection, accuracy


def calibrate(
    labels: Sequence[str],
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray],
    strangers: tuple[np.ndarray, np.ndarray] | None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    calibrated_on: str = "val+test",
) -> tuple[OpenSetModel, OpenSetCalibration]:
    """Fit centroids on ``train`` (features, person indices) and pick the threshold on ``held_out``.

    ``held_out`` is (features, probabilities, person indices); ``strangers`` is (features,
    probabilities) of faces of people outside the model, only measured.
    """
    model = fit_open_set(train[0], train[1], labels)
    known_scores = model.scores(held_out[0], held_out[1])
    threshold = stored_threshold(threshold_for_recall(known_scores, target_recall))
    recall, rejection, accuracy = evaluate_threshold(model, threshold, held_out, strangers)
    calibration = OpenSetCalibration(
        threshold=threshold,
        target_recall=target_recall,
        known_recall=recall,
        stranger_rejection=rejection,
        known_accuracy=accuracy,
        train_count=len(train[0]),
        known_count=len(held_out[0]),
        stranger_count=0 if strangers is None else len(strangers[0]),
        calibrated_on=calibrated_on,
    )
    return model, calibration


def _read_crops(crops_dir: Path, crop_paths: Iterable[str], image_size: int, flipped: Sequence[bool] | None = None) -> np.ndarray:
    from facecls.images import read_rgb

    paths = list(crop_paths)
    pixels = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for index, crop_path in enumerate(paths):
        image = read_rgb(crops_dir / crop_path)
        if image.shape != (image_size, image_size, 3):
            raise FaceclsError(
                f"{crops_dir / crop_path}: crops must be {image_size}x{image_size} like the model's input. "
                f"Received: {image.shape[1]}x{image.shape[0]}. Re-crop with the model's image_size."
            )
        pixels[index] = image[:, ::-1] if flipped is not None and flipped[index] else image
    return pixels


def calibrate_model_dir(
    model_dir: Path,
    crops_dir: Path,
    items: list,
    stranger_crop_paths: list[str],
    target_recall: float = DEFAULT_TARGET_RECALL,
    batch_size: int = 32,
) -> OpenSetCalibration:
    """Calibrate ``unknown`` for a trained model dir and store it there.

    Centroids come from the train items (flips included), the threshold from the val and test
    items, the reported rejection rate from ``stranger_crop_paths`` (e.g. the crop stage's
    ``others.csv``). Writes ``openset.npz`` and ``unknown_threshold`` into the model dir.

    Args:
        model_dir: a model dir written by the train stage.
        crops_dir: the folder the items' and strangers' crop paths are relative to.
        items: ``SplitItem``s of curate (all splits).
        stranger_crop_paths: crops of faces of people outside the model; may be empty.
        target_recall: share of held-out known faces to keep.

    Raises:
        FaceclsError: no train items of some person, unreadable crops, or a bad model dir.
    """
    from facecls import modeldir
    from facecls.model import build_feature_and_probability_model, predict_batched

    model_dir, crops_dir = Path(model_dir), Path(crops_dir)
    loaded = modeldir.load_model_dir(model_dir)
    labels = loaded.labels
    class_of = {label: index for index, label in enumerate(labels)}
    outside = sorted({item.person for item in items} - set(labels))
    if outside:
        raise FaceclsError(f"Every item's person must be one of the model's labels {list(labels)}. Received: {', '.join(outside)}")
    two_outputs = build_feature_and_probability_model(loaded.model)
    size = loaded.info.image_size

    def run(crop_paths: list[str], flipped: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not crop_paths:
            return np.zeros((0, 1), np.float32), np.zeros((0, len(labels)), np.float32)
        pixels = _read_crops(crops_dir, crop_paths, size, flipped)
        features, probabilities = predict_batched(two_outputs, pixels, batch_size)
        return np.asarray(features), np.asarray(probabilities)

    train_views = sorted({(item.crop_path, item.flipped, item.person) for item in items if item.split == "train"})
    held_out = sorted({(item.crop_path, item.person) for item in items if item.split in ("val", "test") and not item.flipped})
    calibrated_on = "val+test"
    if not held_out:
        logger.warning("No val or test items: calibrating 'unknown' on training crops, which overstates recall.")
        held_out = sorted({(path, person) for path, flipped, person in train_views if not flipped})
        calibrated_on = "train"
    train_features, _ = run([view[0] for view in train_views], [view[1] for view in train_views])
    known_features, known_probabilities = run([path for path, _ in held_out])
    stranger = run(list(stranger_crop_paths)) if stranger_crop_paths else None
    model, calibration = calibrate(
        labels,
        (train_features, np.array([class_of[view[2]] for view in train_views])),
        (known_features, known_probabilities, np.array([class_of[person] for _, person in held_out])),
        stranger,
        target_recall,
        calibrated_on,
    )
    modeldir.write_open_set(model_dir, model.to_arrays(), calibration.threshold)
    logger.info(
        "Open set: threshold %.3f keeps %.1f%% of %d held-out known faces, rejects %s of %d strangers",
        calibration.threshold,
        100 * calibration.known_recall,
        calibration.known_count,
        "n/a" if calibration.stranger_rejection is None else f"{100 * calibration.stranger_rejection:.1f}%",
        calibration.stranger_count,
    )
    return calibration


def load_open_set(model_dir: Path, labels: Sequence[str]) -> OpenSetModel | None:
    """The open-set model stored in a model dir, or None when it was never calibrated."""
    from facecls import modeldir

    arrays = modeldir.read_open_set(model_dir)
    if arrays is None:
        return None
    return OpenSetModel.from_arrays(arrays, labels, f"{model_dir}/{modeldir.OPEN_SET_FILE}")
