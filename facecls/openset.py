"""Open set: telling the people a model knows from everyone else (label ``unknown``).

A softmax over a few people calls every stranger one of them, often with a high
probability. So classify also asks how far a face is from the person the softmax picked,
in the model's own feature space (the pooled features): each person is a Gaussian around
the mean of their training crops (flips included), all sharing one within-person
covariance, shrunk towards a sphere by the Ledoit-Wolf amount because a few hundred crops
cannot pin down 1280 dimensions. The Mahalanobis distance under it discounts what varies
between photos of one person (pose, light, expression) and stresses every other
difference. Over six trained models it rejected about a third of the strangers at the
calibrated threshold where the cosine to a centroid rejected a fifth; nearest neighbours,
a whitened cosine, the softmax probability or margin, the logits and a logistic regression
against the scrape's other faces did not do clearly better. Faces the model was never
trained to tell apart stay hard: no score on these features came near rejecting half.

A face's score is the share of the calibration faces -- held-out faces of the known people
(the val and test splits, never seen in training) -- lying at least as far from their own
predicted person: 1 for a face closer than all of them, 0 for one farther than any. So a
threshold reads "unknown if less typical than this share of known faces", and the
calibrated threshold keeps a chosen share of them (95%). The faces of other people in the
scrape's multi-face photos (``others.csv`` of the crop stage) measure how many strangers
that threshold rejects; nothing is fitted to them. Everything here is numpy on features;
only ``calibrate_model_dir`` runs the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facecls.errors import FaceclsError, ModelDirError

logger = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
# Least weight of the sphere in the shared covariance: keeps the directions in which no training
# face varies (most of the 1280 when there are a few hundred crops) at a finite distance.
MIN_SHRINKAGE = 0.01
SCORE_NAME = "mahalanobis_share"  # stored in openset.npz so a later change of score cannot be misread
_ARRAYS = ("score", "labels", "class_means", "basis", "variances", "residual_variance", "reference_distances")


@dataclass(frozen=True)
class OpenSetModel:
    """A Gaussian per person with one shared covariance, and the distances of the calibration faces.

    The covariance is ``basis @ diag(variances) @ basis.T`` plus ``residual_variance`` in every
    direction orthogonal to ``basis``.
    """

    labels: tuple[str, ...]  # in the order of the classifier's outputs
    class_means: np.ndarray  # [C, F] mean pooled features of each person's training crops
    basis: np.ndarray  # [F, R] orthonormal directions in which training crops vary within a person
    variances: np.ndarray  # [R] shrunk variance along each of them
    residual_variance: float  # variance in every other direction
    reference_distances: np.ndarray  # [K] ascending: calibration faces' distances to their predicted person

    def distances(self, features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Mahalanobis distance [N] of each face to its most probable person."""
        features = np.asarray(features, dtype=np.float64)
        size = self.class_means.shape[1]
        if features.ndim != 2 or features.shape[1] != size:
            raise FaceclsError(f"features must have shape (N, {size}). Received: {features.shape}")
        difference = features - self.class_means[np.argmax(probabilities, axis=1)]
        along = difference @ self.basis
        within = np.sum(along**2 / self.variances, axis=1)
        outside = np.maximum(np.sum(difference**2, axis=1) - np.sum(along**2, axis=1), 0.0)
        return np.sqrt(within + outside / self.residual_variance)

    def scores(self, features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Score [N] in [0, 1] of each face: the share of calibration faces at least as far from their person.

        Between two calibration distances the share is interpolated, so the score falls smoothly.
        """
        distances = self.distances(features, probabilities)
        reference = self.reference_distances
        steps = np.unique(reference)
        shares = 1.0 - np.searchsorted(reference, steps, side="left") / reference.size
        return np.interp(distances, steps, shares, left=1.0, right=0.0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "score": np.array(SCORE_NAME),
            "labels": np.array(self.labels),
            "class_means": self.class_means.astype(np.float32),
            "basis": self.basis.astype(np.float32),
            "variances": self.variances.astype(np.float64),
            "residual_variance": np.array(self.residual_variance, dtype=np.float64),
            "reference_distances": self.reference_distances.astype(np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], labels: Sequence[str], source: str) -> "OpenSetModel":
        """Rebuild from ``to_arrays`` output, checking it belongs to a model with ``labels``.

        Raises:
            ModelDirError: arrays missing, of another score, or of other labels or shapes.
        """
        if "score" in arrays and str(arrays["score"]) != SCORE_NAME:
            raise ModelDirError(
                f"{source}: score must be {SCORE_NAME!r}. Received: {str(arrays['score'])!r}. Recalibrate the model dir."
            )
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ModelDirError(f"{source}: missing arrays {', '.join(missing)}. Recalibrate the model dir.")
        stored = tuple(str(label) for label in arrays["labels"].tolist())
        if stored != tuple(labels):
            raise ModelDirError(
                f"{source}: labels {list(stored)} do not match the model's {list(labels)}; "
                "the model was retrained without recalibrating. Recalibrate the model dir."
            )
        means = np.asarray(arrays["class_means"], dtype=np.float32)
        basis = np.asarray(arrays["basis"], dtype=np.float32)
        variances = np.asarray(arrays["variances"], dtype=np.float64)
        residual = np.asarray(arrays["residual_variance"], dtype=np.float64)
        reference = np.asarray(arrays["reference_distances"], dtype=np.float64)
        shapes_fit = (
            means.ndim == 2
            and means.shape[0] == len(labels)
            and basis.ndim == 2
            and basis.shape[0] == means.shape[1]
            and variances.shape == (basis.shape[1],)
            and residual.shape == ()
            and reference.ndim == 1
            and reference.size > 0
        )
        if not shapes_fit:
            raise ModelDirError(
                f"{source}: class_means must be ({len(labels)}, F), basis (F, R), variances (R,), residual_variance "
                f"a number and reference_distances (K,) with K >= 1. Received: {means.shape}, {basis.shape}, "
                f"{variances.shape}, {residual.shape} and {reference.shape}. Recalibrate the model dir."
            )
        if not (np.all(variances > 0) and residual > 0 and np.all(np.diff(reference) >= 0)):
            raise ModelDirError(
                f"{source}: variances must be positive and reference_distances ascending. Recalibrate the model dir."
            )
        return cls(
            labels=tuple(labels),
            class_means=means,
            basis=basis,
            variances=variances,
            residual_variance=float(residual),
            reference_distances=reference,
        )


def fit_open_set(
    features: np.ndarray,
    person_indices: np.ndarray,
    labels: Sequence[str],
    reference: tuple[np.ndarray, np.ndarray],
) -> OpenSetModel:
    """Fit each person's mean and the shared covariance on training features; score ``reference`` against them.

    Args:
        features: [N, F] pooled features of the training crops.
        person_indices: [N] index into ``labels`` of each crop's person.
        labels: the model's labels, in the order of its outputs.
        reference: (features, probabilities) of the calibration faces, whose distances define the score.

    Raises:
        FaceclsError: a label has no features, the arrays do not line up, no reference faces, or
            the training features do not vary within a person.
    """
    features = np.asarray(features, dtype=np.float64)
    person_indices = np.asarray(person_indices)
    if features.ndim != 2 or len(features) != len(person_indices):
        raise FaceclsError(
            f"features must be (N, F) with one person index each. Received: {features.shape} and {person_indices.shape}"
        )
    empty = [label for index, label in enumerate(labels) if not np.any(person_indices == index)]
    if empty:
        raise FaceclsError(f"Every person needs training faces for the open-set model. Received none for: {', '.join(empty)}")
    if len(reference[0]) == 0:
        raise FaceclsError("Calibrating 'unknown' needs held-out faces of the known people. Received none.")
    means = np.stack([features[person_indices == index].mean(axis=0) for index in range(len(labels))])
    within = features - means[person_indices]
    # Eigen-decomposition of the within-person covariance through the SVD of the deviations:
    # it has at most N non-zero directions, all of them rows of ``directions``.
    _, singular_values, directions = np.linalg.svd(within, full_matrices=False)
    eigenvalues = singular_values**2 / len(features)
    sphere = float(eigenvalues.sum()) / features.shape[1]
    if sphere <= 0.0:
        raise FaceclsError(
            f"The open-set model needs training faces that differ within a person. Received {len(features)} "
            "faces whose features do not vary: add photos of each person."
        )
    shrinkage = max(_ledoit_wolf_shrinkage(within, eigenvalues, sphere), MIN_SHRINKAGE)
    keep = eigenvalues > eigenvalues[0] * 1e-9
    model = OpenSetModel(  # means and basis in float32 as openset.npz stores them, so a loaded model scores alike
        labels=tuple(labels),
        class_means=means.astype(np.float32),
        basis=np.ascontiguousarray(directions[keep].T, dtype=np.float32),
        variances=(1.0 - shrinkage) * eigenvalues[keep] + shrinkage * sphere,
        residual_variance=shrinkage * sphere,
        reference_distances=np.zeros(1),
    )
    return replace(model, reference_distances=np.sort(model.distances(*reference)))


def _ledoit_wolf_shrinkage(deviations: np.ndarray, eigenvalues: np.ndarray, sphere: float) -> float:
    """Ledoit & Wolf (2004): the weight of ``sphere * I`` that best estimates the covariance of ``deviations``.

    More faces per dimension, less shrinkage; it needs nothing but the known people's faces.
    """
    count, size = deviations.shape
    squared_norm = float(np.sum(eigenvalues**2))  # ||S||_F^2 of the sample covariance S
    distance_to_sphere = squared_norm - size * sphere**2  # ||S - sphere I||_F^2
    if distance_to_sphere <= 0.0:
        return 1.0
    # mean over faces of ||x x^T - S||_F^2, divided by the count: how unsure S itself is
    uncertainty = (float(np.sum(np.sum(deviations**2, axis=1) ** 2)) / count - squared_norm) / count
    return float(min(max(uncertainty / distance_to_sphere, 0.0), 1.0))


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


@dataclass(frozen=True)
class OpenSetCalibration:
    """What calibrating ``unknown`` found: the threshold and how well it separates."""

    threshold: float
    target_recall: float
    known_recall: float  # share of held-out known faces scoring at or above the threshold
    stranger_rejection: float | None  # share of stranger faces scoring below it (None: no strangers)
    known_accuracy: float  # share of held-out known faces kept AND given the right person
    train_count: int  # crops (flips included) the means and covariance were computed from
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
    """Fit the Gaussians on ``train`` (features, person indices) and the score and threshold on ``held_out``.

    ``held_out`` is (features, probabilities, person indices); ``strangers`` is (features,
    probabilities) of faces of people outside the model, only measured.
    """
    model = fit_open_set(train[0], train[1], labels, (held_out[0], held_out[1]))
    threshold = threshold_for_recall(model.scores(held_out[0], held_out[1]), target_recall)
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

    Each person's mean and the shared covariance come from the train items (flips included),
    the score's reference distances and the threshold from the val and test items, the
    reported rejection rate from ``stranger_crop_paths`` (e.g. the crop stage's
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
