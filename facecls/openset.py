"""Open set: telling the people a model knows from everyone else (label ``unknown``).

A softmax over a few people calls every stranger one of them, often with a high probability,
and the classifier's own features do not tell a known person from a stranger who looks like
them. So who a face could be is decided in the space of an identity network trained on
millions of faces (``facecls.identity``, dlib's face-recognition ResNet), where one distance
separates the same person from different people for faces in general (dlib: 0.6).

The decision stands on that prior and on the scrape's own evidence, never on a handful of
held-out faces:
- **references**: each person's training faces, kept when their photos agree: a training face
  counts when at least ``neighbours`` of the person's other training faces lie within the prior
  distance of it (a bystander or a false detection that slipped into the training faces does
  not, so it cannot make room for strangers);
- **distance**: a face's distance to a person is the distance to the ``neighbours``-th nearest of
  that person's references, so a face must agree with several of the person's photos, not with
  one (a wrong training face) and not with their mean (which lies between a person's looks);
- **acceptance distance** per person: the prior, tightened to just inside the nearest negative
  that falls inside it -- the scrape's other faces, found in the other people's photos, and the
  other known people's references -- but never below the distance that keeps ``target_recall``
  of the person's own training faces, each measured leave-one-out against the others. A second
  face in a person's own photo does not tighten that person: it may be the person again (a
  collage, a mirror, a photo on a screen); on scraped-celebs-6 such faces cost 2.2 points of
  known photos and gained nothing against strangers (``benchmarks/bench_identity.py``).

A face's score against a person is ``1 - distance / (2 * acceptance distance)`` clipped to [0, 1]:
0.5 at the acceptance distance, which is the calibrated threshold (``DECISION_THRESHOLD``). The
people a face scores at least the threshold against are the people it could be; the classifier
(MobileNetV2, what ``facecls train`` fine-tunes and ``facecls export`` exports) names the most
probable of them, and a face that could be none is ``unknown`` (``OpenSetModel.decide``). So a
stranger, or a bystander in a known person's photo, is named only when the identity agrees.

Everything here is numpy on descriptors; only ``calibrate_classifier`` runs networks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facecls.errors import FaceclsError, ModelDirError
from facecls.images import read_crops

logger = logging.getLogger(__name__)

# 2: references, nearest-neighbour distances and acceptance distances per person (1 was a mean
# descriptor per person and a threshold on held-out faces).
OPEN_SET_FORMAT = 2
SCORE_NAME = "identity_neighbour_distance"  # stored in openset.npz so a later change of score cannot be misread
IDENTITY_NETWORK = "dlib_face_recognition_resnet_model_v1"  # the descriptors' network (facecls.identity)
# dlib's own same-person distance for its descriptors (99.38% on LFW); face_recognition uses it too.
DEFAULT_PRIOR_DISTANCE = 0.6
# A face must agree with this many of a person's training photos: one or two wrong training faces are not
# enough. scraped-celebs-6 (bench_identity, 10 splits): stranger photos with nobody named 0.955 / 0.982 / 0.991
# at 1 / 2 / 3, known photos right 0.987 / 0.987 / 0.978.
DEFAULT_NEIGHBOURS = 3
# Negatives never tighten a person's distance below the one keeping this share of their own faces.
DEFAULT_TARGET_RECALL = 0.95
DECISION_THRESHOLD = 0.5  # the score at a person's acceptance distance
_ARRAYS = ("format", "score", "identity_network", "labels", "references", "reference_persons", "person_distances",
           "neighbours", "prior_distance", "crops_dir")


@dataclass(frozen=True)
class OpenSetModel:
    """Each known person's reference descriptors and acceptance distance, in the identity network's space."""

    labels: tuple[str, ...]  # in the order of the classifier's outputs
    references: np.ndarray  # [M, D] identity descriptors of the training faces that agree with their person
    reference_persons: np.ndarray  # [M] index into labels of each reference's person
    person_distances: np.ndarray  # [C] acceptance distance of each person
    neighbours: int = DEFAULT_NEIGHBOURS
    prior_distance: float = DEFAULT_PRIOR_DISTANCE
    crops_dir: str = ""  # the crop folder calibrated from, for facecls calibrate

    def neighbour_distances(self, identities: np.ndarray) -> np.ndarray:
        """Distance [N, C] of each face to the ``neighbours``-th nearest reference of each person."""
        identities = np.asarray(identities, dtype=np.float64)
        size = self.references.shape[1]
        if identities.ndim != 2 or identities.shape[1] != size:
            raise FaceclsError(f"identity descriptors must have shape (N, {size}). Received: {identities.shape}")
        return np.stack(
            [_kth_nearest(identities, self.references[self.reference_persons == person], self.neighbours)
             for person in range(len(self.labels))],
            axis=1,
        ).reshape(len(identities), len(self.labels))

    def person_scores(self, identities: np.ndarray) -> np.ndarray:
        """Score [N, C] in [0, 1] of each face against every known person: 0.5 at the person's acceptance distance."""
        distances = self.neighbour_distances(identities)
        return np.clip(1.0 - distances / (2.0 * self.person_distances[None, :]), 0.0, 1.0)

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

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "format": np.array(OPEN_SET_FORMAT),
            "score": np.array(SCORE_NAME),
            "identity_network": np.array(IDENTITY_NETWORK),
            "labels": np.array(self.labels),
            "references": self.references.astype(np.float32),
            "reference_persons": self.reference_persons.astype(np.int32),
            "person_distances": self.person_distances.astype(np.float64),
            "neighbours": np.array(self.neighbours),
            "prior_distance": np.array(self.prior_distance),
            "crops_dir": np.array(self.crops_dir),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], labels: Sequence[str], source: str) -> "OpenSetModel":
        """Rebuild from ``to_arrays`` output, checking it belongs to a model with ``labels``.

        Raises:
            ModelDirError: arrays of another format, score or network, missing, or of other labels or shapes.
        """
        fix = f"Recalibrate it: facecls calibrate {Path(source).parent}"
        stored_format = int(arrays["format"]) if "format" in arrays else 1
        if stored_format != OPEN_SET_FORMAT:
            raise ModelDirError(
                f"{source}: open-set format must be {OPEN_SET_FORMAT}. Received: {stored_format} "
                f"(written by an older facecls). {fix}"
            )
        for name, expected in (("score", SCORE_NAME), ("identity_network", IDENTITY_NETWORK)):
            if name in arrays and str(arrays[name]) != expected:
                raise ModelDirError(f"{source}: {name} must be {expected!r}. Received: {str(arrays[name])!r}. {fix}")
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ModelDirError(f"{source}: missing arrays {', '.join(missing)}. {fix}")
        if np.asarray(arrays["labels"]).ndim != 1:
            raise ModelDirError(f"{source}: labels must be a list of names. Received an array of shape "
                                f"{np.shape(arrays['labels'])}. {fix}")
        stored = tuple(str(label) for label in arrays["labels"].tolist())
        if stored != tuple(labels):
            raise ModelDirError(
                f"{source}: labels {list(stored)} do not match the model's {list(labels)}; "
                f"the model was retrained without recalibrating. {fix}"
            )
        references = np.asarray(arrays["references"], dtype=np.float32)
        persons = np.asarray(arrays["reference_persons"], dtype=np.int64)
        distances = np.asarray(arrays["person_distances"], dtype=np.float64)
        neighbours = int(arrays["neighbours"])
        shapes_fit = references.ndim == 2 and persons.shape == (len(references),) and distances.shape == (len(labels),)
        if not (shapes_fit and neighbours >= 1 and set(persons.tolist()) == set(range(len(labels)))):
            raise ModelDirError(
                f"{source}: references must be (M, D) with one person index each, covering all {len(labels)} people, "
                f"and person_distances ({len(labels)},). Received: {references.shape}, {persons.shape} and "
                f"{distances.shape}. {fix}"
            )
        if not (np.all(np.isfinite(references)) and np.all(distances > 0) and np.all(np.isfinite(distances))):
            raise ModelDirError(f"{source}: references must be finite and person_distances positive. {fix}")
        return cls(tuple(labels), references, persons, distances, neighbours, float(arrays["prior_distance"]),
                   str(arrays["crops_dir"]))


def _kth_nearest(faces: np.ndarray, references: np.ndarray, neighbours: int) -> np.ndarray:
    """Distance [N] of each face to its ``neighbours``-th nearest reference (the farthest when there are fewer)."""
    if len(faces) == 0:
        return np.zeros(0)
    distances = np.linalg.norm(faces[:, None, :] - references[None, :, :].astype(np.float64), axis=2)
    rank = min(neighbours, distances.shape[1]) - 1
    return np.partition(distances, rank, axis=1)[:, rank]


def _own_distances(identities: np.ndarray, mine: np.ndarray, kept: np.ndarray, neighbours: int) -> np.ndarray:
    """Distance of each of a person's training faces (``mine``) to the ``neighbours``-th nearest of the
    person's references (``kept``) other than itself: leave-one-out (inf without enough others)."""
    references = mine[kept[mine]]
    distances = np.linalg.norm(identities[mine][:, None, :] - identities[references][None, :, :], axis=2)
    distances[mine[:, None] == references[None, :]] = np.inf
    rank = min(neighbours, len(references)) - 1
    return np.partition(distances, rank, axis=1)[:, rank]


@dataclass(frozen=True)
class OpenSetCalibration:
    """What calibrating ``unknown`` found: the acceptance distances and how well they separate."""

    threshold: float  # the score threshold stored as unknown_threshold (DECISION_THRESHOLD)
    person_distances: dict[str, float]  # acceptance distance of each person
    known_recall: float  # share of the training faces accepted as their own person, each leave-one-out
    known_count: int  # training faces
    outliers: dict[str, int]  # per person, training faces too few of the person's other photos agree with
    stranger_rejection: float | None  # share of the negatives (the scrape's other faces) called unknown
    stranger_count: int
    held_out_recall: float | None = None  # val+test faces not called unknown (None: none held out)
    known_accuracy: float | None = None  # val+test faces given the right person
    held_out_count: int = 0


def calibrate_arrays(
    labels: Sequence[str],
    identities: np.ndarray,
    person_indices: np.ndarray,
    negatives: np.ndarray,
    negative_persons: np.ndarray | None = None,
    prior_distance: float = DEFAULT_PRIOR_DISTANCE,
    neighbours: int = DEFAULT_NEIGHBOURS,
    target_recall: float = DEFAULT_TARGET_RECALL,
    crops_dir: str = "",
) -> tuple[OpenSetModel, OpenSetCalibration]:
    """The open-set model of training descriptors [N, D] (person indices [N]) and negatives [K, D].

    ``negatives`` are descriptors of the scrape's other faces; the other known people's references
    are negatives of each person too. ``negative_persons`` [K] is the index of the person in whose
    photo each negative was found (-1: none): it does not tighten that person, since a second face
    in a person's own photo may be that person again (a collage, a mirror, a photo on a screen).

    Raises:
        FaceclsError: a label has no faces, the arrays do not line up, or a setting out of range.
    """
    # float32 as openset.npz stores the references, so the loaded model decides exactly alike
    identities = np.asarray(identities, dtype=np.float32).astype(np.float64)
    person_indices = np.asarray(person_indices)
    if identities.ndim != 2 or len(identities) != len(person_indices):
        raise FaceclsError(
            f"identities must be (N, D) with one person index each. Received: {identities.shape} and {person_indices.shape}"
        )
    negatives = np.asarray(negatives, dtype=np.float64).reshape(-1, identities.shape[1])
    negative_persons = np.full(len(negatives), -1) if negative_persons is None else np.asarray(negative_persons)
    if negative_persons.shape != (len(negatives),):
        raise FaceclsError(f"negative_persons must hold one index per negative ({len(negatives)}). Received: {negative_persons.shape}")
    if not 0.0 < target_recall <= 1.0:
        raise FaceclsError(f"target_recall must be in (0, 1]. Received: {target_recall}")
    if neighbours < 1 or prior_distance <= 0:
        raise FaceclsError(f"neighbours must be at least 1 and prior_distance positive. Received: {neighbours}, {prior_distance}")
    empty = [label for index, label in enumerate(labels) if not np.any(person_indices == index)]
    if empty:
        raise FaceclsError(f"Every person needs training faces for the open-set model. Received none for: {', '.join(empty)}")
    kept = np.zeros(len(identities), bool)
    outliers = {}
    for person, label in enumerate(labels):
        mine = np.flatnonzero(person_indices == person)
        agree = _own_distances(identities, mine, np.ones(len(identities), bool), neighbours) <= prior_distance
        if agree.sum() < 2:  # too few photos agree to tell who the person is: keep them all
            logger.warning("Open set: the training photos of %s hardly agree with each other; every one is kept.", label)
            agree[:] = True
        kept[mine[agree]] = True
        outliers[label] = int(np.sum(~agree))
    references, persons = identities[kept], person_indices[kept]
    distances, accepted = np.empty(len(labels)), np.zeros(len(identities), bool)
    for person in range(len(labels)):
        mine = np.flatnonzero(person_indices == person)
        own = _own_distances(identities, mine, kept, neighbours)  # each leave-one-out
        references_own = np.sort(own[kept[mine]])
        floor = references_own[int(np.ceil(target_recall * len(references_own))) - 1]
        against = np.concatenate([negatives[negative_persons != person], references[persons != person]])
        nearest = _kth_nearest(against, references[persons == person], neighbours).min(initial=np.inf)
        distances[person] = min(prior_distance, max(floor, np.nextafter(nearest, 0.0)))
        accepted[mine] = own <= distances[person]
    model = OpenSetModel(tuple(labels), references.astype(np.float32), persons.astype(np.int64), distances, neighbours,
                         float(prior_distance), crops_dir)
    rejection = None
    if len(negatives):
        rejection = float(np.mean(~(model.person_scores(negatives) >= DECISION_THRESHOLD).any(axis=1)))
    calibration = OpenSetCalibration(
        threshold=DECISION_THRESHOLD,
        person_distances={label: float(distance) for label, distance in zip(labels, distances)},
        known_recall=float(np.mean(accepted)),
        known_count=len(identities),
        outliers=outliers,
        stranger_rejection=rejection,
        stranger_count=len(negatives),
    )
    return model, calibration


def calibrate_classifier(
    model,
    labels: Sequence[str],
    crops_dir: Path,
    items: list,
    stranger_crop_paths: list[str],
    stranger_persons: Sequence[str] | None = None,
    batch_size: int = 32,
) -> tuple[OpenSetModel, OpenSetCalibration]:
    """Calibrate ``unknown`` for a classifier (Keras model, outputs in ``labels`` order); writes nothing.

    The references are the identity descriptors of the train items' chips, the negatives those of
    ``stranger_crop_paths`` (e.g. the crop stage's ``others.csv``); the val and test items are only
    measured (``held_out_recall``, ``known_accuracy``), as classify decides.

    Args:
        model: the classifier, [0, 255] pixels in, probabilities out.
        labels: the classifier's labels in output order.
        crops_dir: the crop stage's folder, which the items' and strangers' crop paths are
            relative to and which holds their identity chips (``facecls.crop.chip_path_of``).
        items: ``SplitItem``s of curate (all splits; flips are left out).
        stranger_crop_paths: crops of faces of people outside the model; may be empty.
        stranger_persons: the person whose photo each stranger face was found in (None: nobody's),
            which that face does not tighten.

    Raises:
        FaceclsError: no train items of some person, an item of another person, unreadable crops or chips.
    """
    from dataclasses import replace

    from facecls.crop import chip_path_of
    from facecls.identity import CHIP_SIZE, IdentityEncoder
    from facecls.model import predict_batched

    crops_dir, labels = Path(crops_dir), tuple(labels)
    class_of = {label: index for index, label in enumerate(labels)}
    outside = sorted({item.person for item in items} - set(labels))
    if outside:
        raise FaceclsError(f"Every item's person must be one of the model's labels {list(labels)}. Received: {', '.join(outside)}")
    encoder = IdentityEncoder(batch_size=batch_size)
    recrop = "Rerun the crop stage into that folder (crops made before identity chips existed have none)."

    def describe(crop_paths: list[str]) -> np.ndarray:
        chips = read_crops(crops_dir, [chip_path_of(path) for path in crop_paths], CHIP_SIZE, "identity chip", recrop)
        return encoder.embed(chips)

    train = sorted({(item.crop_path, item.person) for item in items if item.split == "train" and not item.flipped})
    held_out = sorted({(item.crop_path, item.person) for item in items if item.split in ("val", "test") and not item.flipped})
    open_set, calibration = calibrate_arrays(
        labels,
        describe([path for path, _ in train]),
        np.array([class_of[person] for _, person in train]),
        describe(list(stranger_crop_paths)),
        np.array([class_of.get(person, -1) for person in stranger_persons or [""] * len(stranger_crop_paths)], dtype=int),
        crops_dir=str(crops_dir.resolve()),
    )
    if held_out:
        paths = [path for path, _ in held_out]
        image_size = int(model.input_shape[1])
        crops = read_crops(crops_dir, paths, image_size, "crop", "Re-crop with the model's image_size.")
        probabilities = np.asarray(predict_batched(model, crops, batch_size)).reshape(len(paths), len(labels))
        named, _ = open_set.decide(describe(paths), probabilities, calibration.threshold)
        truth = np.array([class_of[person] for _, person in held_out])
        calibration = replace(calibration, held_out_recall=float(np.mean(named >= 0)),
                              known_accuracy=float(np.mean(named == truth)), held_out_count=len(held_out))
    logger.info("Open set: %s", calibration_summary(calibration))
    return open_set, calibration


def calibrate_model_dir(
    model_dir: Path,
    crops_dir: Path,
    items: list,
    stranger_crop_paths: list[str],
    stranger_persons: Sequence[str] | None = None,
    batch_size: int = 32,
) -> OpenSetCalibration:
    """Calibrate ``unknown`` for an existing model dir and store it there (``openset.npz``, ``unknown_threshold``).

    What ``calibrate_classifier`` does, with the model dir's classifier and labels.

    Raises:
        FaceclsError: what ``calibrate_classifier`` raises, or a bad model dir.
    """
    from facecls import modeldir

    loaded = modeldir.load_model_dir(Path(model_dir))
    open_set, calibration = calibrate_classifier(loaded.model, loaded.labels, crops_dir, items, stranger_crop_paths,
                                                 stranger_persons, batch_size)
    modeldir.write_open_set(model_dir, open_set.to_arrays(), calibration.threshold, OPEN_SET_FORMAT)
    return calibration


def strangers_from_crops(crops_dir: Path, items: list) -> tuple[list[str], list[str]]:
    """The crop stage's other faces (``others.csv``) as negatives: (crop paths, person of their photo).

    The other faces of test photos are left out, so the test split stays unseen.
    """
    from facecls.crop import read_crops_manifest
    from facecls.layout import OTHERS_MANIFEST

    others = Path(crops_dir) / OTHERS_MANIFEST
    test_photos = {item.source_path for item in items if item.split == "test"}
    records = read_crops_manifest(others) if others.exists() else []
    strangers = [record for record in records if record.source_path not in test_photos]
    return [record.crop_path for record in strangers], [record.person for record in strangers]


def calibration_summary(calibration: OpenSetCalibration) -> str:
    """One line: the acceptance distances, the known recall and the rejection of the scrape's other faces."""
    distances = ", ".join(f"{label} {distance:.3f}" for label, distance in calibration.person_distances.items())
    rejection = "n/a" if calibration.stranger_rejection is None else f"{calibration.stranger_rejection:.3f}"
    held_out = ""
    if calibration.held_out_recall is not None:
        held_out = (f"; val+test: {calibration.held_out_recall:.3f} named, {calibration.known_accuracy:.3f} rightly, "
                    f"of {calibration.held_out_count}")
    outliers = sum(calibration.outliers.values())
    return (f"acceptance distances {distances}; known recall {calibration.known_recall:.3f} of "
            f"{calibration.known_count} training faces (leave-one-out; {outliers} no other photo agrees with); "
            f"rejects {rejection} of {calibration.stranger_count} other faces{held_out}")


def calibrate_from_crops(model_dir: Path, crops_dir: Path, items: list) -> OpenSetCalibration:
    """``calibrate_model_dir`` with the crop stage's other faces as the negatives (``strangers_from_crops``)."""
    return calibrate_model_dir(model_dir, crops_dir, items, *strangers_from_crops(crops_dir, items))


def recalibrate(model_dir: Path, crops_dir: Path | None = None) -> OpenSetCalibration:
    """Recalibrate an existing model dir from its run's crops and splits (``facecls calibrate``).

    The crop folder is ``crops_dir``, else the one the model dir was last calibrated from, else
    ``crop/`` beside the model dir (the run folder layout); the splits are ``curate/splits.csv``
    beside the crop folder.

    Raises:
        FaceclsError: no crop folder or splits found, or what ``calibrate_model_dir`` raises.
    """
    from facecls import modeldir
    from facecls.curate import read_splits
    from facecls.layout import CROP_FOLDER, CURATE_FOLDER, SPLITS_MANIFEST

    model_dir = Path(model_dir)
    modeldir.read_model_info(model_dir)  # a model dir, before looking for its crops
    candidates = [Path(crops_dir)] if crops_dir is not None else []
    if crops_dir is None:
        try:
            stored = modeldir.read_open_set(model_dir) or {}
        except ModelDirError:
            stored = {}
        if "crops_dir" in stored and str(stored["crops_dir"]):
            candidates.append(Path(str(stored["crops_dir"])))
        candidates.append(model_dir.resolve().parent / CROP_FOLDER)
    found = next((folder for folder in candidates if (folder.parent / CURATE_FOLDER / SPLITS_MANIFEST).is_file()), None)
    if found is None:
        raise FaceclsError(
            f"No run crop folder for {model_dir} (a crop folder with curate/{SPLITS_MANIFEST} beside it): looked in "
            f"{', '.join(map(str, candidates))}. Pass the run's crop folder: facecls calibrate {model_dir} --crops RUN/crop"
        )
    splits = found.parent / CURATE_FOLDER / SPLITS_MANIFEST
    return calibrate_from_crops(model_dir, found, read_splits(splits))


def load_open_set(model_dir: Path, labels: Sequence[str]) -> OpenSetModel | None:
    """The open-set model stored in a model dir, or None when it was never calibrated.

    Raises:
        ModelDirError: it was calibrated by an older facecls, an interrupted calibration left
            facecls.json behind openset.npz, or it does not belong to the model.
    """
    from facecls import modeldir

    arrays = modeldir.read_open_set(model_dir)
    if arrays is None:
        return None
    from facecls.identity import EMBEDDING_SIZE

    source = f"{model_dir}/{modeldir.OPEN_SET_FILE}"
    model = OpenSetModel.from_arrays(arrays, labels, source)
    if model.references.shape[1] != EMBEDDING_SIZE:
        raise ModelDirError(
            f"{source}: references must have {EMBEDDING_SIZE} columns, one per identity-descriptor value. "
            f"Received: {model.references.shape[1]}. Recalibrate it: facecls calibrate {model_dir}"
        )
    recorded = modeldir.read_model_info(model_dir).open_set_format
    if recorded != OPEN_SET_FORMAT:
        raise ModelDirError(
            f"{model_dir}/{modeldir.INFO_FILE}: open_set_format must be {OPEN_SET_FORMAT} like {source}. Received: "
            f"{recorded} (a calibration was interrupted, or the file is older). Recalibrate it: facecls calibrate {model_dir}"
        )
    return model
