"""Open set: telling the people a model knows from everyone else (label ``unknown``).

A softmax over a few people calls every stranger one of them, often with a high
probability, and the classifier's own features do not help much: trained on ImageNet and
fitted on a few hundred photos, they tell the known people apart but not from a stranger who
looks like them (a Mahalanobis distance in them rejected about a third of the strangers).
So ``unknown`` is decided in the space of an identity network trained on millions of faces
(``facecls.identity``), where one person's photos lie close together: each known person is the
mean descriptor of their training faces, and a face is as far from a person as its descriptor
is from that mean.

A face's score is the share of the calibration faces -- held-out faces of the known people
(the val and test splits, never seen in training) -- lying at least as far from their own
person: 1 for a face closer than all of them, 0 for one farther than any. So a threshold reads
"unknown if less typical than this share of the person's own held-out photos", and the
calibrated threshold keeps a chosen share of them (95%). The people a face scores at least the
threshold against are the people it could be; the classifier names the most probable of them,
and a face that could be none of them is ``unknown`` (``OpenSetModel.decide``). So a stranger is
unknown however sure the classifier is, and a known face the classifier would misname as someone
it plainly is not gets the plausible person instead. The faces of other people in the scrape's multi-face photos (``others.csv`` of the crop stage)
measure how many strangers that threshold rejects; nothing is fitted to them. Everything here
is numpy on descriptors; only ``calibrate_model_dir`` runs networks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facecls.errors import FaceclsError, ModelDirError

logger = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
SCORE_NAME = "identity_distance_share"  # stored in openset.npz so a later change of score cannot be misread
IDENTITY_NETWORK = "dlib_face_recognition_resnet_model_v1"  # the descriptors' network (facecls.identity)
_ARRAYS = ("score", "identity_network", "labels", "class_means", "reference_distances")


@dataclass(frozen=True)
class OpenSetModel:
    """Each known person's mean identity descriptor, and how far their held-out faces lie from it."""

    labels: tuple[str, ...]  # in the order of the classifier's outputs
    class_means: np.ndarray  # [C, D] mean identity descriptor of each person's training faces
    reference_distances: np.ndarray  # [K] ascending: calibration faces' distances to their own person

    def distances(self, identities: np.ndarray, persons: np.ndarray) -> np.ndarray:
        """Euclidean distance [N] of each face's descriptor to the mean of the person at its index in ``persons``."""
        identities = np.asarray(identities, dtype=np.float64)
        size = self.class_means.shape[1]
        if identities.ndim != 2 or identities.shape[1] != size:
            raise FaceclsError(f"identity descriptors must have shape (N, {size}). Received: {identities.shape}")
        persons = np.asarray(persons, dtype=np.int64)
        if persons.shape != (len(identities),):
            raise FaceclsError(f"persons must hold one index per face ({len(identities)}). Received: {persons.shape}")
        return np.linalg.norm(identities - self.class_means[persons], axis=1)

    def scores(self, identities: np.ndarray, persons: np.ndarray) -> np.ndarray:
        """Score [N] in [0, 1] of each face against a person: the share of calibration faces at least as far.

        Between two calibration distances the share is interpolated, so the score falls smoothly.
        """
        return self._shares(self.distances(identities, persons))

    def person_scores(self, identities: np.ndarray) -> np.ndarray:
        """Score [N, C] of each face against every known person."""
        identities = np.asarray(identities)
        count = len(identities)
        persons = np.tile(np.arange(len(self.labels)), count)
        return self.scores(np.repeat(identities, len(self.labels), axis=0), persons).reshape(count, len(self.labels))

    def decide(self, identities: np.ndarray, probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Who each face is: (person index [N], -1 for unknown; score [N]).

        The people a face could be are those it scores at least ``threshold`` against; of them
        the classifier's most probable is named, and with none the face is unknown. The score is
        that of the person named, or for an unknown face the best it reached. A threshold of 0
        names the classifier's most probable person every time.
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        scores = self.person_scores(identities)
        if probabilities.shape != scores.shape:
            raise FaceclsError(f"probabilities must have shape {scores.shape}. Received: {probabilities.shape}")
        possible = scores >= threshold
        named = np.argmax(np.where(possible, probabilities, -1.0), axis=1)
        known = possible.any(axis=1)
        score = np.where(known, scores[np.arange(len(named)), named], scores.max(axis=1, initial=0.0))
        return np.where(known, named, -1), score

    def _shares(self, distances: np.ndarray) -> np.ndarray:
        reference = self.reference_distances
        steps = np.unique(reference)
        shares = 1.0 - np.searchsorted(reference, steps, side="left") / reference.size
        return np.interp(distances, steps, shares, left=1.0, right=0.0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "score": np.array(SCORE_NAME),
            "identity_network": np.array(IDENTITY_NETWORK),
            "labels": np.array(self.labels),
            "class_means": self.class_means.astype(np.float32),
            "reference_distances": self.reference_distances.astype(np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], labels: Sequence[str], source: str) -> "OpenSetModel":
        """Rebuild from ``to_arrays`` output, checking it belongs to a model with ``labels``.

        Raises:
            ModelDirError: arrays missing, of another score or network, or of other labels or shapes.
        """
        for name, expected in (("score", SCORE_NAME), ("identity_network", IDENTITY_NETWORK)):
            if name in arrays and str(arrays[name]) != expected:
                raise ModelDirError(
                    f"{source}: {name} must be {expected!r}. Received: {str(arrays[name])!r}. Recalibrate it: rerun the facecls run (or facecls train) that made it."
                )
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ModelDirError(f"{source}: missing arrays {', '.join(missing)}. Recalibrate it: rerun the facecls run (or facecls train) that made it.")
        if np.asarray(arrays["labels"]).ndim != 1:
            raise ModelDirError(f"{source}: labels must be a list of names. Received an array of shape {np.shape(arrays['labels'])}. Recalibrate it: rerun the facecls run (or facecls train) that made it.")
        stored = tuple(str(label) for label in arrays["labels"].tolist())
        if stored != tuple(labels):
            raise ModelDirError(
                f"{source}: labels {list(stored)} do not match the model's {list(labels)}; "
                "the model was retrained without recalibrating. Recalibrate it: rerun the facecls run (or facecls train) that made it."
            )
        means = np.asarray(arrays["class_means"], dtype=np.float32)
        reference = np.asarray(arrays["reference_distances"], dtype=np.float64)
        if not (means.ndim == 2 and means.shape[0] == len(labels) and reference.ndim == 1 and reference.size > 0):
            raise ModelDirError(
                f"{source}: class_means must be ({len(labels)}, D) and reference_distances (K,) with K >= 1. "
                f"Received: {means.shape} and {reference.shape}. Recalibrate it: rerun the facecls run (or facecls train) that made it."
            )
        if not (np.all(np.isfinite(means)) and np.all(np.diff(reference) >= 0) and reference[0] >= 0):
            raise ModelDirError(
                f"{source}: class_means must be finite and reference_distances ascending from 0. Recalibrate it: rerun the facecls run (or facecls train) that made it."
            )
        return cls(labels=tuple(labels), class_means=means, reference_distances=reference)


def fit_open_set(
    identities: np.ndarray,
    person_indices: np.ndarray,
    labels: Sequence[str],
    reference: tuple[np.ndarray, np.ndarray],
) -> OpenSetModel:
    """Each person's mean descriptor from their training faces; ``reference`` scored against them.

    Args:
        identities: [N, D] identity descriptors of the training faces.
        person_indices: [N] index into ``labels`` of each face's person.
        labels: the model's labels, in the order of its outputs.
        reference: (descriptors, person indices) of the calibration faces, whose distances to their
            own person define the score.

    Raises:
        FaceclsError: a label has no faces, the arrays do not line up, or no reference faces.
    """
    identities = np.asarray(identities, dtype=np.float64)
    person_indices = np.asarray(person_indices)
    if identities.ndim != 2 or len(identities) != len(person_indices):
        raise FaceclsError(
            f"identities must be (N, D) with one person index each. Received: {identities.shape} and {person_indices.shape}"
        )
    empty = [label for index, label in enumerate(labels) if not np.any(person_indices == index)]
    if empty:
        raise FaceclsError(f"Every person needs training faces for the open-set model. Received none for: {', '.join(empty)}")
    if len(reference[0]) == 0:
        raise FaceclsError("Calibrating 'unknown' needs held-out faces of the known people. Received none.")
    means = np.stack([identities[person_indices == index].mean(axis=0) for index in range(len(labels))])
    # means in float32 as openset.npz stores them, so a loaded model scores alike
    model = OpenSetModel(labels=tuple(labels), class_means=means.astype(np.float32), reference_distances=np.zeros(1))
    return replace(model, reference_distances=np.sort(model.distances(*reference)))


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
    known_recall: float  # share of held-out known faces not called unknown
    stranger_rejection: float | None  # share of stranger faces called unknown (None: no strangers)
    known_accuracy: float  # share of held-out known faces given the right person
    train_count: int  # faces the person means were computed from
    known_count: int  # held-out faces the threshold was calibrated on
    stranger_count: int
    calibrated_on: str  # "val+test", or "train" when there was nothing held out (optimistic)


def evaluate_threshold(
    model: OpenSetModel,
    threshold: float,
    known: tuple[np.ndarray, np.ndarray, np.ndarray],
    strangers: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[float, float | None, float]:
    """(known recall, stranger rejection, known accuracy) at ``threshold``, decided as classify decides.

    ``known`` is (descriptors, probabilities, true person indices); ``strangers`` (descriptors,
    probabilities).
    """
    identities, probabilities, truth = known
    named, _ = model.decide(identities, probabilities, threshold)
    recall = float(np.mean(named >= 0))
    accuracy = float(np.mean(named == truth))
    rejection = None
    if strangers is not None and len(strangers[0]):
        rejection = float(np.mean(model.decide(strangers[0], strangers[1], threshold)[0] < 0))
    return recall, rejection, accuracy


def calibrate(
    labels: Sequence[str],
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray],
    strangers: tuple[np.ndarray, np.ndarray] | None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    calibrated_on: str = "val+test",
) -> tuple[OpenSetModel, OpenSetCalibration]:
    """Fit the person means on ``train`` (descriptors, person indices) and the score and threshold on ``held_out``.

    ``held_out`` is (descriptors, probabilities, person indices): the threshold keeps
    ``target_recall`` of these faces scored against their own person, so the classifier's
    mistakes do not loosen it. ``strangers`` is (descriptors, probabilities) of faces of people
    outside the model, only measured.
    """
    identities, probabilities, truth = held_out
    model = fit_open_set(train[0], train[1], labels, (identities, truth))
    threshold = threshold_for_recall(model.scores(identities, truth), target_recall)
    recall, rejection, accuracy = evaluate_threshold(model, threshold, held_out, strangers)
    calibration = OpenSetCalibration(
        threshold=threshold,
        target_recall=target_recall,
        known_recall=recall,
        stranger_rejection=rejection,
        known_accuracy=accuracy,
        train_count=len(train[0]),
        known_count=len(identities),
        stranger_count=0 if strangers is None else len(strangers[0]),
        calibrated_on=calibrated_on,
    )
    return model, calibration


def _read_images(folder: Path, paths: Sequence[str], size: int, what: str, fix: str) -> np.ndarray:
    from facecls.images import ImageDecodeError, read_rgb

    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        try:
            image = read_rgb(folder / path)
        except (ImageDecodeError, OSError) as error:
            raise FaceclsError(f"{folder / path}: cannot read this {what} ({error}). {fix}") from None
        if image.shape != (size, size, 3):
            raise FaceclsError(
                f"{folder / path}: {what}s must be {size}x{size}. Received: {image.shape[1]}x{image.shape[0]}. {fix}"
            )
        pixels[index] = image
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

    Each person's mean descriptor comes from the identity chips of the train items, the
    score's reference distances and the threshold from the val and test items, the reported
    rejection rate from ``stranger_crop_paths`` (e.g. the crop stage's ``others.csv``).
    Writes ``openset.npz`` and ``unknown_threshold`` into the model dir.

    Args:
        model_dir: a model dir written by the train stage.
        crops_dir: the crop stage's folder, which the items' and strangers' crop paths are
            relative to and which holds their identity chips (``facecls.crop.chip_path_of``).
        items: ``SplitItem``s of curate (all splits; flips are left out).
        stranger_crop_paths: crops of faces of people outside the model; may be empty.
        target_recall: share of held-out known faces to keep.

    Raises:
        FaceclsError: no train items of some person, unreadable crops or chips, or a bad model dir.
    """
    from facecls import modeldir
    from facecls.crop import chip_path_of
    from facecls.identity import CHIP_SIZE, IdentityEncoder
    from facecls.model import predict_batched

    model_dir, crops_dir = Path(model_dir), Path(crops_dir)
    loaded = modeldir.load_model_dir(model_dir)
    labels = loaded.labels
    class_of = {label: index for index, label in enumerate(labels)}
    outside = sorted({item.person for item in items} - set(labels))
    if outside:
        raise FaceclsError(f"Every item's person must be one of the model's labels {list(labels)}. Received: {', '.join(outside)}")
    encoder = IdentityEncoder(batch_size=batch_size)
    recrop = "Rerun the crop stage into that folder (crops made before identity chips existed have none)."

    def describe(crop_paths: list[str]) -> np.ndarray:
        chips = _read_images(crops_dir, [chip_path_of(path) for path in crop_paths], CHIP_SIZE, "identity chip", recrop)
        return encoder.embed(chips)

    def probabilities(crop_paths: list[str]) -> np.ndarray:
        size = loaded.info.image_size
        crops = _read_images(crops_dir, crop_paths, size, "crop", "Re-crop with the model's image_size.")
        return np.asarray(predict_batched(loaded.model, crops, batch_size)).reshape(len(crop_paths), len(labels))

    train = sorted({(item.crop_path, item.person) for item in items if item.split == "train" and not item.flipped})
    held_out = sorted({(item.crop_path, item.person) for item in items if item.split in ("val", "test") and not item.flipped})
    calibrated_on = "val+test"
    if not held_out:
        logger.warning("No val or test items: calibrating 'unknown' on training crops, which overstates recall.")
        held_out, calibrated_on = train, "train"
    known_paths = [path for path, _ in held_out]
    strangers = None
    if stranger_crop_paths:
        strangers = (describe(list(stranger_crop_paths)), probabilities(list(stranger_crop_paths)))
    model, calibration = calibrate(
        labels,
        (describe([path for path, _ in train]), np.array([class_of[person] for _, person in train])),
        (describe(known_paths), probabilities(known_paths), np.array([class_of[person] for _, person in held_out])),
        strangers,
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


def calibrate_from_crops(model_dir: Path, crops_dir: Path, items: list) -> OpenSetCalibration:
    """``calibrate_model_dir`` with the crop stage's other faces (``others.csv``) as the strangers."""
    from facecls.crop import OTHERS_MANIFEST, read_crops_manifest

    others = Path(crops_dir) / OTHERS_MANIFEST
    strangers = [record.crop_path for record in read_crops_manifest(others)] if others.exists() else []
    return calibrate_model_dir(model_dir, crops_dir, items, strangers)


def load_open_set(model_dir: Path, labels: Sequence[str]) -> OpenSetModel | None:
    """The open-set model stored in a model dir, or None when it was never calibrated."""
    from facecls import modeldir

    arrays = modeldir.read_open_set(model_dir)
    if arrays is None:
        return None
    from facecls.identity import EMBEDDING_SIZE

    source = f"{model_dir}/{modeldir.OPEN_SET_FILE}"
    model = OpenSetModel.from_arrays(arrays, labels, source)
    if model.class_means.shape[1] != EMBEDDING_SIZE:
        raise ModelDirError(
            f"{source}: class_means must have {EMBEDDING_SIZE} columns, one per identity-descriptor value. "
            f"Received: {model.class_means.shape[1]}. Recalibrate it: rerun the facecls run (or facecls train) that made it."
        )
    return model
