"""Which face of each training photo is the person: the identity consensus, and the user's corrections.

``person_consensus`` finds, among all the candidates of one person's photos, the identity that
those photos share: the centre of the faces that agree with one another, one vote per duplicate
group so near-copies of a photo do not vote for each other. Each photo's training face is then
its agreeing candidate nearest the centre of its OTHER photos: within ``agree_distance``, or
``sure_agree_distance`` for a face MTCNN is sure of (wider when the other photos are few, up to
``PAIR_DISTANCE``); a photo none of whose faces is that close (another person, a
shirt, a hand) is not trained on.

``decide_faces`` turns that (or the face policy: largest, most_confident, all, skip) and
``corrections.csv`` (``read_corrections``) into one ``FaceDecision`` per photo for the crop stage.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facecls.config import CropSettings, DetectSettings
from facecls.detect import Detection
from facecls.errors import FaceclsError
from facecls.faces import choose_faces
from facecls.layout import CORRECTIONS_NAME



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


@dataclass(frozen=True)
class Correction:
    """One line of corrections.csv: the face to train on, or None to leave the photo out."""

    line: int
    face: int | None


@dataclass(frozen=True)
class FaceDecision:
    """Which cropped faces of a photo are trained on and which are other people, and why."""

    status: str
    reason: str
    chosen: tuple[int, ...] = ()
    others: tuple[int, ...] = ()
    chosen_by: str = ""
    largest: int | None = None
    distance: float | None = None



def read_corrections(path: Path, known_paths: set[str]) -> dict[str, Correction]:
    """The user's choices in ``corrections.csv`` (header ``path,face``), by photo path; {} without the file.

    Raises:
        FaceclsError: a line without a known photo path or with a face that is not a number or ``none``.
    """
    path = Path(path)
    if not path.exists():
        return {}
    import csv

    with open(path, encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    how = "Each line is a photo's path as in photos.csv, then the face number to train on or none."
    if not rows or [cell.strip() for cell in rows[0]] != ["path", "face"]:
        raise FaceclsError(f"{path} line 1: the header must be 'path,face'. Received: {','.join(rows[0]) if rows else '(empty file)'!r}. {how}")
    corrections: dict[str, Correction] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise FaceclsError(f"{path} line {line}: expected 2 fields (path,face). Received: {','.join(row)!r}. {how}")
        photo, face = row[0].strip(), row[1].strip().lower()
        if photo not in known_paths:
            raise FaceclsError(
                f"{path} line {line}: {photo!r} is not a usable photo of the scrape (see photos.csv for the paths). {how}"
            )
        if photo in corrections:
            raise FaceclsError(f"{path} line {line}: {photo!r} is already on line {corrections[photo].line}. Keep one line per photo.")
        if face != "none" and not face.isdigit():
            raise FaceclsError(f"{path} line {line}: face must be a face number (0, 1, ...) or none. Received: {row[1]!r}. {how}")
        corrections[photo] = Correction(line, None if face == "none" else int(face))
    return corrections


def decide_faces(
    records, cached: dict[str, dict], detect: DetectSettings, settings: CropSettings, corrections: dict[str, Correction]
) -> tuple[dict[str, FaceDecision], list[str]]:
    """Which candidate face of each photo is trained on, which are other people, and warnings per person.

    Raises:
        FaceclsError: a correction names a face that is not one of the photo's candidates.
    """
    decisions: dict[str, FaceDecision] = {}
    by_person: dict[str, list] = defaultdict(list)
    for record in records:
        entry = cached[record.path]
        correction = corrections.get(record.path)
        if entry["status"] == "unreadable":
            decisions[record.path] = FaceDecision(entry["status"], entry["reason"])
        elif correction is not None and correction.face is None:
            decisions[record.path] = FaceDecision("excluded", f"left out by {CORRECTIONS_NAME} line {correction.line}",
                                                  chosen_by=CORRECTIONS_NAME)
        elif not entry["candidates"]:
            decisions[record.path] = FaceDecision(entry["status"], entry["reason"])
        else:
            if correction is not None and correction.face not in entry["candidates"]:
                raise FaceclsError(
                    f"{CORRECTIONS_NAME} line {correction.line}: {record.path} has no usable face {correction.face}; "
                    f"use one of {', '.join(map(str, entry['candidates']))} (the face numbers in the report), or none."
                )
            by_person[record.person].append(record)
    warnings: list[str] = []
    consensus = []
    for person, mine in sorted(by_person.items()):
        if settings.face_policy == "consensus":
            photos = [
                PhotoCandidates(
                    record.path, record.group, tuple(cached[record.path]["candidates"]),
                    tuple(cached[record.path]["detections"][index]["confidence"] for index in cached[record.path]["candidates"]),
                    np.asarray(cached[record.path]["descriptors"], dtype=np.float64).reshape(-1, 128),
                    None if record.path not in corrections else corrections[record.path].face,
                )
                for record in mine
            ]
            result = person_consensus(person, photos, settings)
            consensus.append(result)
            for record, choice in zip(mine, result.choices):
                decisions[record.path] = _consensus_decision(person, cached[record.path], choice, detect, settings,
                                                             corrections.get(record.path))
        else:
            for record in mine:
                decisions[record.path] = _policy_decision(cached[record.path], detect, settings, corrections.get(record.path))
    if consensus:
        with_face = Counter(person for person, mine in by_person.items() for _ in mine)
        warnings = consensus_warnings(consensus, dict(with_face))
    return decisions, warnings


def _largest(entry: dict, indices) -> int | None:
    boxes = entry["detections"]
    return max(indices, key=lambda index: boxes[index]["box"][2] * boxes[index]["box"][3], default=None)


def _consensus_decision(person: str, entry: dict, choice, detect: DetectSettings, settings: CropSettings,
                        correction: Correction | None) -> FaceDecision:
    detections = entry["detections"]
    candidates = entry["candidates"]
    confident = [index for index in candidates if detections[index]["confidence"] >= detect.min_confidence]
    largest = _largest(entry, confident or candidates)
    distance_of = dict(zip(candidates, choice.distances))
    if choice.chosen is None and not np.isfinite(choice.nearest):
        # Nothing to agree with (the person's only photo, or only near-copies of it): the filter and
        # the largest face decide, as face_policy largest does.
        fallback = _policy_decision(entry, detect, replace(settings, face_policy="largest"), correction)
        why = f"no other photo of {person} to compare with, so the face filter alone decided"
        return replace(fallback, reason="; ".join(filter(None, [fallback.reason, why])))
    if choice.chosen is None:
        nearest = choice.nearest
        why = f"no face agrees with {person}'s other photos (nearest {nearest:.3f}, agreeing is under {choice.threshold:.3f})"
        status = "wrong_person" if confident else "low_confidence"
        if not confident:
            why = f"no face at min_confidence {detect.min_confidence}, and {why}"
        # Other people's faces, negatives for "unknown", only when past dlib's line between two people:
        # the person's own hard faces (sunglasses, a profile) that just missed agreeing lay at 0.51-0.56.
        others = tuple(
            index for index in candidates
            if distance_of[index] >= PAIR_DISTANCE and detections[index]["confidence"] >= settings.other_min_confidence
        )
        return FaceDecision(status, why, (), others, largest=largest, distance=nearest)
    chosen = choice.chosen
    distance = distance_of.get(chosen)
    kept = sorted(set(confident) | {chosen})
    status = "ok" if len(kept) == 1 else "multiple_faces"
    if correction is not None:
        chosen_by, reason = CORRECTIONS_NAME, f"face {chosen} chosen by {CORRECTIONS_NAME} line {correction.line}"
    elif len(kept) == 1:
        chosen_by, reason = "only face", ""
        if detections[chosen]["confidence"] < detect.min_confidence:
            chosen_by = "consensus"
            reason = (f"confidence {detections[chosen]['confidence']:.2f} is under min_confidence {detect.min_confidence}, "
                      f"kept: it agrees with {person}'s other photos ({distance:.2f})")
    else:
        chosen_by = "consensus"
        reason = f"{len(kept)} faces; cropped the one that agrees with {person}'s other photos ({distance:.2f})"
        if chosen != largest:
            reason += f", not the largest (face {largest}, {distance_of[largest]:.2f})"
    # The others: faces of the photo that are not the person (an agreeing second face is the person
    # again, in a collage), confident enough not to be a shirt or a hand.
    others = tuple(
        index for index in candidates
        if index != chosen and index not in choice.agreeing
        and detections[index]["confidence"] >= settings.other_min_confidence
    )
    return FaceDecision(status, reason, (chosen,), others, chosen_by, largest, distance)


def _policy_decision(entry: dict, detect: DetectSettings, settings: CropSettings, correction: Correction | None) -> FaceDecision:
    detections = [Detection.from_dict(data) for data in entry["detections"]]
    choice = choose_faces(detections, entry["width"], entry["height"], detect, settings.face_policy)
    largest = _largest(entry, choice.chosen + choice.others)
    if correction is not None:
        chosen, reason, chosen_by = (correction.face,), f"face {correction.face} chosen by {CORRECTIONS_NAME} line {correction.line}", CORRECTIONS_NAME
        others = tuple(index for index in choice.chosen + choice.others if index != correction.face)
        status = "ok" if not others else "multiple_faces"
    elif not choice.chosen and not choice.others:
        return FaceDecision(choice.status, choice.reason)
    else:
        chosen, reason, others, status = choice.chosen, choice.reason, choice.others, choice.status
        chosen_by = "only face" if status == "ok" else settings.face_policy
    others = tuple(index for index in others if detections[index].confidence >= settings.other_min_confidence)
    return FaceDecision(status, reason, tuple(chosen), others, chosen_by, largest)
