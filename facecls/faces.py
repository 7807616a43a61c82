"""Which detected faces are used: the one face filter crop and classify share, and the identity
consensus that picks the face of each training photo.

``filter_faces`` keeps the detections that can be faces: confident enough, large enough, with
keypoints in a face's shape (``facecls.detect.geometry_problem``). Classify names every face it
keeps at ``min_confidence``; the crop stage keeps candidates down to ``candidate_confidence`` and
lets the identity network decide.

``person_consensus`` finds, among all the candidates of one person's photos, the identity that
those photos share: the centre of the faces that agree with one another, one vote per duplicate
group so near-copies of a photo do not vote for each other. Each photo's training face is then
its agreeing candidate nearest the centre of its OTHER photos: within ``agree_distance``, or
``sure_agree_distance`` for a face MTCNN is sure of (wider when the other photos are few, up to
``PAIR_DISTANCE``); a photo none of whose faces is that close (another person, a
shirt, a hand) is not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from facecls.config import CropSettings, DetectSettings
from facecls.detect import Detection, geometry_problem

# Rounds of "centre = mean of the faces near it" at most: on scraped-celebs-6 the members stopped
# changing after 1-2 rounds for every person.
CONSENSUS_ROUNDS = 10
# dlib's own line between two faces of one person and of two (face_recognition's 0.6). A face is
# compared with the mean of the n other photos' faces: if faces scatter around their person's
# identity with variance s^2, a face of the person lies sqrt(s^2 (1 + 1/n)) from that mean, so the
# bar agree_distance (for a mean of many faces) widens to agree_distance * sqrt(1 + 1/n) for few,
# and never beyond this pairwise line. A 3-photo scrape's photo lay 0.60 from the mean of its 2 others.
PAIR_DISTANCE = 0.6
# A face MTCNN is this sure of agrees under CropSettings.sure_agree_distance rather than
# agree_distance: the false detections of the shared sets (a shirt, a chest, blur) scored 0.80-0.913.
SURE_CONFIDENCE = 0.99
# A person with fewer agreeing photos than this gets a warning: that few is not enough to train
# or test on (the 5-celebrity set, 14-20 training photos a person, reaches 0.88-0.93).
MIN_AGREEING_PHOTOS = 10
# A person whose photos agree in under this share of the photos with a face gets a warning: the
# folder holds several people, or mostly someone else (scraped-celebs-6: 97-100% of each person's
# photos with a face agree).
MIN_AGREEING_SHARE = 0.5
# Two people whose consensus centres are nearer than this are one identity: one folder is mostly
# the other person. Centres of different people in the shared sets lie 0.54-0.88 apart (the closest:
# jennifer_lawrence and sydney_sweeney); two halves of one person's photos, about 0.1-0.2.
SAME_IDENTITY_CENTRES = 0.4


@dataclass(frozen=True)
class FaceFilter:
    """The detections of one photo that can be faces, and why none could when none is kept."""

    kept: tuple[int, ...]  # detection indices, largest first
    status: str  # "ok" when something is kept; no_face or low_confidence otherwise
    reason: str


def filter_faces(
    detections: Sequence[Detection], width: int, height: int, detect: DetectSettings, min_confidence: float
) -> FaceFilter:
    """The faces at ``min_confidence`` or more, at least ``detect.min_face_fraction`` of the photo's
    shorter side, with keypoints in a face's shape."""
    if not detections:
        return FaceFilter((), "no_face", "no face found")
    confident = [index for index, face in enumerate(detections) if face.confidence >= min_confidence]
    if not confident:
        best = max(face.confidence for face in detections)
        name = "min_confidence" if min_confidence == detect.min_confidence else "candidate_confidence"
        return FaceFilter((), "low_confidence", f"best face confidence {best:.2f} is under {name} {min_confidence}")
    min_side = detect.min_face_fraction * min(width, height)
    sized = [index for index in confident if max(detections[index].width, detections[index].height) >= min_side]
    if not sized:
        return FaceFilter(
            (), "no_face", f"{len(confident)} face(s) smaller than min_face_fraction {detect.min_face_fraction} of the photo"
        )
    shaped = [index for index in sized if not geometry_problem(detections[index])]
    if not shaped:
        return FaceFilter((), "no_face", f"{len(sized)} face(s) with {geometry_problem(detections[sized[0]])}")
    return FaceFilter(tuple(sorted(shaped, key=lambda index: -detections[index].area)), "ok", "")


def candidate_confidence(detect: DetectSettings) -> float:
    """The confidence a face needs to be a candidate for the identity consensus."""
    return min(detect.candidate_confidence, detect.min_confidence)


@dataclass(frozen=True)
class PhotoCandidates:
    """The candidate faces of one photo of a person, with their identity descriptors."""

    path: str
    group: str  # ingest's duplicate group: photos of one group do not vote for each other
    faces: tuple[int, ...]  # detection indices, largest first
    confidences: tuple[float, ...]
    descriptors: np.ndarray  # [len(faces), 128]
    forced: int | None = None  # a face chosen by the user; it joins the consensus as it is


@dataclass(frozen=True)
class IdentityChoice:
    """What the consensus made of one photo."""

    path: str
    chosen: int | None  # detection index of the face that agrees; None when none does
    distances: tuple[float, ...]  # of each candidate (PhotoCandidates.faces order) to the consensus of the other photos
    agreeing: tuple[int, ...]  # detection indices of every candidate within agree_distance
    threshold: float = float("nan")  # the bar of its nearest face: under it a face agrees (wider for few other photos)

    @property
    def nearest(self) -> float:
        """The smallest distance of any of the photo's faces to the consensus (nan without one)."""
        finite = [distance for distance in self.distances if np.isfinite(distance)]
        return min(finite) if finite else float("nan")


@dataclass(frozen=True)
class PersonConsensus:
    person: str
    choices: tuple[IdentityChoice, ...]  # in the order of the photos given
    members: int  # photos whose face formed the consensus
    centre: np.ndarray | None = None  # the consensus descriptor; None without candidates

    @property
    def agreeing(self) -> int:
        return sum(1 for choice in self.choices if choice.chosen is not None)


def person_consensus(person: str, photos: Sequence[PhotoCandidates], settings: CropSettings) -> PersonConsensus:
    """Choose each photo's face of ``person``: the candidate nearest the identity its other photos share."""
    rows = [(number, face) for number, photo in enumerate(photos) for face in range(len(photo.faces))]
    if not rows:
        return PersonConsensus(person, tuple(IdentityChoice(photo.path, None, (), ()) for photo in photos), 0, None)
    descriptors = np.concatenate([photo.descriptors for photo in photos if len(photo.faces)]).astype(np.float64)
    photo_of = np.array([number for number, _ in rows])
    groups = sorted({photo.group for photo in photos})
    group_of = np.array([groups.index(photos[number].group) for number in photo_of])
    forced = np.array([photos[number].forced == photos[number].faces[face] for number, face in rows])
    forced_photos = {number for number, photo in enumerate(photos) if photo.forced is not None}
    threshold = settings.agree_distance

    # Seed: the face with close faces in the most other duplicate groups.
    distances = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=2)
    close = (distances < threshold) & (group_of[:, None] != group_of[None])
    votes = np.array([len(set(group_of[close[row]].tolist())) for row in range(len(rows))])
    members = (distances[int(np.argmax(votes))] < threshold) | forced
    for _ in range(CONSENSUS_ROUNDS):
        centre = _weighted_centre(descriptors, members, group_of)
        to_centre = np.linalg.norm(descriptors - centre, axis=1)
        updated = forced.copy()
        for number in set(photo_of.tolist()) - forced_photos:
            mine = np.flatnonzero(photo_of == number)
            best = mine[np.argmin(to_centre[mine])]
            updated[best] = to_centre[best] < threshold
        if np.array_equal(updated, members) or not updated.any():
            break
        members = updated

    # Each face is judged against the consensus of the OTHER duplicate groups, so a photo (and its
    # near-copies) never agrees with itself.
    weights = _group_weights(members, group_of)
    total = (weights[:, None] * descriptors).sum(axis=0)
    choices = []
    for number, photo in enumerate(photos):
        mine = np.flatnonzero(photo_of == number)
        if not len(mine):
            choices.append(IdentityChoice(photo.path, None, (), ()))
            continue
        own = group_of == group_of[mine[0]]
        rest = weights[~own].sum()
        if rest > 0:
            centre = (total - (weights[own, None] * descriptors[own]).sum(axis=0)) / rest
            to_centre = np.linalg.norm(descriptors[mine] - centre, axis=1)
            widen = float(np.sqrt(1.0 + 1.0 / rest))
            bars = np.array([
                min(PAIR_DISTANCE, widen * (settings.sure_agree_distance if confidence >= SURE_CONFIDENCE else threshold))
                for confidence in photo.confidences
            ])
        else:
            to_centre, bars = np.full(len(mine), np.nan), np.full(len(mine), np.nan)
        agreeing = tuple(photo.faces[face] for face in range(len(mine)) if to_centre[face] < bars[face])
        if photo.forced is not None:
            chosen = photo.forced
        elif agreeing:
            chosen = min(agreeing, key=lambda index: to_centre[photo.faces.index(index)])
        else:
            chosen = None
        nearest = int(np.nanargmin(to_centre)) if np.isfinite(to_centre).any() else 0
        choices.append(IdentityChoice(photo.path, chosen, tuple(round(float(value), 4) for value in to_centre), agreeing,
                                      round(float(bars[nearest]), 3)))
    return PersonConsensus(person, tuple(choices), int(len(set(photo_of[members].tolist()))), total / weights.sum())


def _group_weights(members: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """One vote per duplicate group, shared among its member faces."""
    weights = np.zeros(len(members))
    for group in set(group_of[members].tolist()):
        chosen = members & (group_of == group)
        weights[chosen] = 1.0 / chosen.sum()
    return weights


def _weighted_centre(descriptors: np.ndarray, members: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    weights = _group_weights(members, group_of)
    return (weights[:, None] * descriptors).sum(axis=0) / weights.sum()


def consensus_warnings(consensus: Sequence[PersonConsensus], photos_with_face: dict[str, int]) -> list[str]:
    """One line per person whose photos do not agree enough to train on, or agree with another person's."""
    warnings = []
    for person in consensus:
        total = photos_with_face.get(person.person, 0)
        if not total:
            continue
        comparable = sum(1 for choice in person.choices if np.isfinite(choice.nearest))
        if comparable and person.agreeing < MIN_AGREEING_SHARE * comparable:
            warnings.append(
                f"{person.person}: only {person.agreeing} of {comparable} photos with a face agree with one another: "
                "the folder holds several people or mostly someone else (see status wrong_person in crop/photos.csv)"
            )
        elif person.agreeing < MIN_AGREEING_PHOTOS:
            warnings.append(
                f"{person.person}: only {person.agreeing} photos agree with one another (of {total} with a face); "
                f"{MIN_AGREEING_PHOTOS} or more train a usable model: add photos of {person.person}"
            )
    # Two folders whose consensus is one identity: one of them is mostly the other person.
    placed = [person for person in consensus if person.centre is not None]
    for number, first in enumerate(placed):
        for second in placed[number + 1 :]:
            distance = float(np.linalg.norm(first.centre - second.centre))
            if distance < SAME_IDENTITY_CENTRES:
                warnings.append(
                    f"{first.person} and {second.person}: their photos show one identity ({distance:.2f} apart, "
                    f"under {SAME_IDENTITY_CENTRES}): one folder is mostly the other person"
                )
    return warnings
