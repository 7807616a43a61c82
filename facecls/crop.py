"""Stage 2, crop: find the faces with MTCNN and cut out the target person's face.

``FaceCropper`` is the one path from a photo file (or array) to face crops. The crop stage,
``evaluate`` on raw photos and ``classify`` all use it, with the settings stored in the model
dir, so a face is cropped exactly the same way in training and in inference.

Per photo status:
- ``ok``: one face passed the filters and was cropped;
- ``multiple_faces``: several faces passed; the face policy chose which to crop (``skip``: none);
- ``wrong_person``: faces passed, but none agrees with the identity of the person's other photos
  (face policy ``consensus``, ``facecls.faces``): another person, or not a face at all;
- ``excluded``: the user dropped the photo in ``corrections.csv``;
- ``low_confidence``: MTCNN found faces, none at ``min_confidence`` (nor, with ``consensus``, one
  down to ``candidate_confidence`` that agrees with the person's other photos);
- ``no_face``: no face, or only faces too small or not in a face's shape (keypoints);
- ``unreadable``: the file could not be decoded (never reported as ``no_face``).

``corrections.csv`` in the crop folder (``<run>/crop/corrections.csv``) overrides the choice:
``path,face`` lines, the photo's path as in photos.csv and the face number to train on, or
``none`` to leave the photo out. The next run honours it without detecting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from facecls import images
from facecls.align import crop_face
from facecls.config import CropSettings, DetectSettings, IngestSettings, settings_to_dict
from facecls.detect import Detection, FaceDetector, limit_tensorflow_threads
from facecls.errors import FaceclsError
from facecls.faces import (
    PAIR_DISTANCE, PhotoCandidates, candidate_confidence, consensus_warnings, filter_faces, person_consensus,
)
from facecls.manifest import atomic_write_bytes, field_names, output_lock, read_csv, read_json, write_csv, write_json
from facecls.paths import check_output_folder, path_under
from facecls.quiet import import_tensorflow_quietly

logger = logging.getLogger(__name__)

PHOTO_STATUSES = ("ok", "multiple_faces", "wrong_person", "excluded", "low_confidence", "no_face", "unreadable")
CROPS_MANIFEST = "crops.csv"
PHOTOS_MANIFEST = "photos.csv"
SUMMARY_NAME = "crop.json"
FACES_FOLDER = "faces"
OTHERS_FOLDER = "others"  # faces of other people in the same photos: the strangers unknown is measured on
OTHERS_MANIFEST = "others.csv"
CHIPS_FOLDER = "chips"  # identity chips (facecls.identity) of faces/ and others/, same names, PNG
SHEETS_FOLDER = "sheets"
CORRECTIONS_NAME = "corrections.csv"  # the user's per-photo choices, read from the crop folder
CACHE_FOLDER = "cache"
# Bump when a change to detection or cropping changes the crops, so reruns redo old work.
# 7: candidates down to candidate_confidence, keypoint geometry, second look turned and at 0.75x.
CROP_ALGORITHM_VERSION = 7


@dataclass(frozen=True)
class FaceChoice:
    status: str
    reason: str
    chosen: tuple[int, ...]  # indices into the detections, in the order they are cropped
    others: tuple[int, ...] = ()  # faces that passed the filters but were not chosen (other people)


@dataclass(frozen=True)
class PhotoFaces:
    """Everything the crop path found in one photo."""

    path: str
    status: str
    reason: str
    width: int
    height: int
    detections: tuple[Detection, ...] = ()  # every face MTCNN found, unfiltered
    chosen: tuple[int, ...] = ()  # indices of the detections that were cropped
    crops: tuple[np.ndarray, ...] = field(default=(), repr=False)  # one RGB crop per chosen face
    others: tuple[int, ...] = ()  # indices of faces that passed the filters but were not chosen
    other_crops: tuple[np.ndarray, ...] = field(default=(), repr=False)  # their crops: other people
    chips: tuple[np.ndarray, ...] = field(default=(), repr=False)  # identity chip of each chosen face
    other_chips: tuple[np.ndarray, ...] = field(default=(), repr=False)  # and of each other face


@dataclass(frozen=True)
class CropRecord:
    """One face crop written by the crop stage."""

    crop_path: str  # relative to the crop output folder
    source_path: str  # relative to the scrape
    person: str
    group: str  # the source photo's duplicate group (from ingest)
    sha256: str  # of the source photo
    face_index: int  # index among the photo's detections
    x: float
    y: float
    width: float
    height: float
    confidence: float
    photo_status: str


@dataclass(frozen=True)
class PhotoRecord:
    """One photo as the crop stage saw it, with every detection."""

    path: str
    person: str
    sha256: str
    group: str
    status: str
    reason: str
    width: int
    height: int
    faces: int
    crops: int
    detections: list  # Detection.to_dict() of every face found
    # Added with the identity consensus; older photos.csv files lack them.
    chosen_face: int | None = None  # detection index of the training face
    largest_face: int | None = None  # detection index of the largest face that passed the filters
    identity_distance: float | None = None  # of the chosen face (or the nearest, when none agrees) to the consensus
    chosen_by: str = ""  # what chose the face: only face, consensus, largest, most_confident, all, corrections.csv


@dataclass(frozen=True)
class CropResult:
    photos: list[PhotoRecord]
    crops: list[CropRecord]
    out_dir: Path
    counts: dict[str, int]
    reused: int  # photos taken from an earlier run with the same settings
    warnings: tuple[str, ...] = ()  # one line per person whose photos do not agree enough


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


def choose_faces(
    detections: Sequence[Detection], width: int, height: int, detect: DetectSettings, policy: str
) -> FaceChoice:
    """Pick the faces to crop from one photo alone: ``filter_faces`` at ``min_confidence``, then the
    face policy. One photo has no consensus to agree with: ``consensus`` takes the largest here."""
    found = filter_faces(detections, width, height, detect, detect.min_confidence)
    if not found.kept:
        return FaceChoice(found.status, found.reason, ())
    sized = list(found.kept)
    if len(sized) == 1:
        return FaceChoice("ok", "", (sized[0],))
    reason = f"{len(sized)} faces"
    if policy == "skip":
        return FaceChoice("multiple_faces", reason + "; face_policy skip crops none", (), tuple(sized))
    if policy == "all":
        return FaceChoice("multiple_faces", reason + "; face_policy all crops each", tuple(sized))
    if policy == "most_confident":
        best = max(sized, key=lambda index: (detections[index].confidence, detections[index].area))
    else:
        best = max(sized, key=lambda index: (detections[index].area, detections[index].confidence))
    others = tuple(index for index in sized if index != best)
    chosen_by = "the most confident" if policy == "most_confident" else "the largest"
    return FaceChoice("multiple_faces", f"{reason}; cropped {chosen_by}", (best,), others)


def faces_in_pixels(
    detector: FaceDetector, photos: Sequence[tuple[str, np.ndarray]], crop_settings: CropSettings,
    candidates: bool = False,
) -> list[PhotoFaces]:
    """Detect, choose and crop the faces of decoded photos, batching detection across them.

    Each face gets two cuts: the classifier's crop and the identity network's chip. With
    ``candidates``, every face that passes ``filter_faces`` down to ``candidate_confidence`` is
    cropped (``chosen``), for the crop stage's identity consensus to choose from.
    """
    from facecls.identity import identity_chip

    found = detector.detect_many([pixels for _, pixels in photos])
    results = []
    for (name, pixels), detections in zip(photos, found):
        height, width = pixels.shape[:2]
        if candidates:
            kept = filter_faces(detections, width, height, detector.settings, candidate_confidence(detector.settings))
            choice = FaceChoice(kept.status, kept.reason, kept.kept)
        else:
            choice = choose_faces(detections, width, height, detector.settings, crop_settings.face_policy)
        crops = tuple(crop_face(pixels, detections[index], crop_settings) for index in choice.chosen)
        other_crops = tuple(crop_face(pixels, detections[index], crop_settings) for index in choice.others)
        chips = tuple(identity_chip(pixels, detections[index]) for index in choice.chosen)
        other_chips = tuple(identity_chip(pixels, detections[index]) for index in choice.others)
        results.append(
            PhotoFaces(
                name, choice.status, choice.reason, width, height, tuple(detections), choice.chosen, crops,
                choice.others, other_crops, chips, other_chips,
            )
        )
    return results


def _faces_in_files(
    detector: FaceDetector, paths: Sequence[str], crop_settings: CropSettings, max_pixels: int, candidates: bool
) -> list[PhotoFaces]:
    decoded: list[tuple[str, np.ndarray]] = []
    failures: dict[str, PhotoFaces] = {}
    for path in paths:
        try:
            decoded.append((path, images.decode_image(Path(path), max_pixels=max_pixels).pixels))
        except images.ImageDecodeError as error:
            status = "unreadable"
            failures[path] = PhotoFaces(path, status, error.reason, 0, 0)
    try:
        found = faces_in_pixels(detector, decoded, crop_settings, candidates) if decoded else []
    except Exception:  # noqa: BLE001 - one photo's failure must not take the others down: retry one by one
        found = [_faces_or_failure(detector, name, pixels, crop_settings, candidates) for name, pixels in decoded]
    done = {result.path: result for result in found}
    return [failures.get(path) or done[path] for path in paths]


def _faces_or_failure(
    detector: FaceDetector, name: str, pixels: np.ndarray, crop_settings: CropSettings, candidates: bool
) -> PhotoFaces:
    """The faces of one photo, or an unreadable result saying why detecting or cropping failed."""
    try:
        return faces_in_pixels(detector, [(name, pixels)], crop_settings, candidates)[0]
    except Exception as error:  # noqa: BLE001 - becomes this photo's status and reason
        logger.warning("%s: face detection failed: %s", name, error)
        reason = f"face detection failed on this image ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
        return PhotoFaces(name, "unreadable", reason, int(pixels.shape[1]), int(pixels.shape[0]))


_worker_detector: FaceDetector | None = None
_worker_crop_settings: CropSettings | None = None
_worker_max_pixels: int = 0
_worker_after: Callable[[list[PhotoFaces]], list] | None = None
_worker_candidates: bool = False


def _worker_start(
    detect_settings: DetectSettings,
    crop_settings: CropSettings,
    max_pixels: int,
    after: Callable[[list[PhotoFaces]], list] | None,
    candidates: bool,
) -> None:
    global _worker_detector, _worker_crop_settings, _worker_max_pixels, _worker_after, _worker_candidates
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly()
    # One core per worker process: MTCNN does not scale across threads, but across processes.
    limit_tensorflow_threads(1)
    _worker_detector = FaceDetector(detect_settings)
    _worker_crop_settings = crop_settings
    _worker_max_pixels = max_pixels
    _worker_after = after
    _worker_candidates = candidates


def _worker_run(paths: list[str]) -> list:
    assert _worker_detector is not None and _worker_crop_settings is not None
    found = _faces_in_files(_worker_detector, paths, _worker_crop_settings, _worker_max_pixels, _worker_candidates)
    return found if _worker_after is None else _worker_after(found)


def task_size(detect_settings: DetectSettings) -> int:
    """Photos per worker task: a few, for fewer round trips; with detect batches above 1, two batches."""
    return max(4, 2 * detect_settings.batch_size)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


class FaceCropper:
    """Photo files or arrays in, ``PhotoFaces`` out; holds the detector(s) for a whole run.

    With ``workers`` > 1, files are decoded, detected and cropped in that many processes (each
    with one MTCNN on one core), which is how MTCNN uses more than one core. Use as a context
    manager so the worker processes are shut down.

    ``after``, if given, is applied to each chunk of results where they were found (in the
    worker process) and ``faces_in_files`` yields what it returns, one item per photo: classify
    runs its model there, so crops never travel between processes and the driving process
    needs no TensorFlow. It must be picklable; each worker gets its own copy.

    ``candidates`` crops every face that may be the person's (``faces_in_pixels``), for the crop stage.
    """

    def __init__(
        self,
        detect_settings: DetectSettings = DetectSettings(),
        crop_settings: CropSettings = CropSettings(),
        workers: int | None = None,
        max_megapixels: float = IngestSettings().max_megapixels,
        after: Callable[[list[PhotoFaces]], list] | None = None,
        candidates: bool = False,
    ):
        self.detect_settings = detect_settings
        self.candidates = candidates
        self.crop_settings = crop_settings
        self.workers = default_workers() if workers is None else max(1, workers)
        self.max_pixels = int(max_megapixels * 1e6)
        self.after = after
        self._detector: FaceDetector | None = None
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "FaceCropper":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(self.detect_settings)
        return self._detector

    def faces_in_array(self, pixels: np.ndarray, name: str = "<array>") -> PhotoFaces:
        """Faces of one decoded RGB uint8 photo, in this process."""
        return faces_in_pixels(self.detector, [(name, pixels)], self.crop_settings, self.candidates)[0]

    def faces_in_files(self, paths: Iterable[str | Path], chunk_size: int | None = None) -> Iterator:
        """Faces of each file (or what ``after`` made of them), in input order; memory stays flat
        however many files there are."""
        chunk_size = chunk_size or task_size(self.detect_settings)
        chunks = _chunks((str(path) for path in paths), chunk_size)
        if self.workers == 1:
            for chunk in chunks:
                found = _faces_in_files(self.detector, chunk, self.crop_settings, self.max_pixels, self.candidates)
                yield from (found if self.after is None else self.after(found))
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
                initargs=(self.detect_settings, self.crop_settings, self.max_pixels, self.after, self.candidates),
            )
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(self._pool.submit(_worker_run, chunk))
                if len(pending) >= 2 * self.workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        except BrokenProcessPool:
            self._pool = None
            raise FaceclsError(
                "A face-detection worker process died (out of memory or killed). "
                "Rerun the same command: finished photos are reused."
            ) from None
        finally:
            for future in pending:
                future.cancel()


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def settings_fingerprint(detect_settings: DetectSettings, crop_settings: CropSettings) -> str:
    text = json.dumps(
        {"detect": settings_to_dict(detect_settings), "crop": settings_to_dict(crop_settings)}, sort_keys=True
    )
    # batch_size changes speed, not results: leave it out so a rerun with another batch reuses work
    data = json.loads(text)
    data["detect"].pop("batch_size", None)
    # The cache holds every candidate face; which one is trained on is decided afresh each run.
    for name in ("face_policy", "agree_distance", "sure_agree_distance", "other_min_confidence"):
        data["crop"].pop(name, None)
    data["algorithm"] = CROP_ALGORITHM_VERSION
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def crop_file_name(source_path: str, sha256: str, face_index: int, crop_format: str) -> str:
    stem = _UNSAFE.sub("_", Path(source_path).stem).strip("._")[:60] or "photo"
    return f"{stem}-{sha256[:8]}-{face_index}.{crop_format}"


def chip_path_of(crop_path: str) -> str:
    """Where the identity chip of the face cropped to ``crop_path`` lies (both relative to the crop folder).

    Raises:
        FaceclsError: ``crop_path`` is absolute.
    """
    path = PurePosixPath(crop_path)
    if path.is_absolute():
        raise FaceclsError(f"Crop paths must be relative to their crop folder. Received: {crop_path}")
    return str(PurePosixPath(CHIPS_FOLDER) / path.with_suffix(".png"))


def crop(
    scrape: Path,
    ingest_manifest: Path,
    out_dir: Path,
    detect_settings: DetectSettings = DetectSettings(),
    crop_settings: CropSettings = CropSettings(),
    workers: int | None = None,
) -> CropResult:
    """Crop the faces of every usable photo in an ingest manifest into ``<out_dir>/faces/<person>/``.

    Writes ``photos.csv`` (every photo, every detection, a status and which face was chosen by
    what), ``crops.csv`` (every crop, linked to its source photo and duplicate group),
    ``crop.json`` and a contact sheet per person in ``sheets/``. The faces of a photo that are not
    the person's go to ``others/<person>/`` and ``others.csv``: the strangers ``unknown`` is
    measured on. Each crop's identity chip (``chip_path_of``) goes under ``chips/``. Photos done
    before with the same detection settings are reused; ``corrections.csv`` in ``out_dir``
    overrides the choice of face.

    Raises:
        FaceclsError: no usable photo, or a bad line in ``corrections.csv``.
    """
    from facecls.ingest import read_ingest_manifest

    scrape, out_dir = Path(scrape), Path(out_dir)
    check_output_folder(out_dir, [scrape])
    records = [record for record in read_ingest_manifest(ingest_manifest) if record.status == "ok"]
    if not records:
        raise FaceclsError(f"{ingest_manifest} lists no usable photo. Check the ingest statuses and reasons in it.")
    corrections = read_corrections(out_dir / CORRECTIONS_NAME, {record.path for record in records})
    fingerprint = settings_fingerprint(detect_settings, crop_settings)
    cache_dir = out_dir / CACHE_FOLDER / fingerprint
    with output_lock(out_dir):
        # The cache's candidate crops were cut with the settings of its fingerprint; other settings' are stale.
        for stale in (out_dir / CACHE_FOLDER).glob("*"):
            if stale.is_dir() and stale.name != fingerprint:
                shutil.rmtree(stale)
        cached: dict[str, dict] = {}
        todo = []
        # MTCNN's result for a photo depends on the photos batched with it, so work is redone by
        # whole tasks of the full list: a resumed run batches exactly as an uninterrupted one.
        size = task_size(detect_settings)
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            entries = [_read_cache(cache_dir, record.sha256) for record in batch]
            if any(entry is None for entry in entries):
                todo.extend(batch)
            else:
                cached.update((record.path, entry) for record, entry in zip(batch, entries))
        progress = tqdm(total=len(records), initial=len(cached), desc="crop", unit="photo")
        with FaceCropper(
            detect_settings, crop_settings, workers=_workers_for(len(todo), workers), candidates=True
        ) as cropper:
            by_path = {str(scrape / record.path): record for record in todo}
            for faces in cropper.faces_in_files(by_path, chunk_size=size):
                record = by_path[faces.path]
                cached[record.path] = _store_photo(faces, record, crop_settings, cache_dir)
                progress.update(1)
        progress.close()
        _describe_candidates(records, cached, cache_dir)
        decisions, warnings = decide_faces(records, cached, detect_settings, crop_settings, corrections)
        for warning in warnings:
            logger.warning(warning)
        photos, crops, others = _manifests(records, cached, decisions, crop_settings)
        _link_crops(out_dir, cache_dir, cached, crops + others)
        write_csv(out_dir / PHOTOS_MANIFEST, photos, field_names(PhotoRecord))
        write_csv(out_dir / CROPS_MANIFEST, crops, field_names(CropRecord))
        write_csv(out_dir / OTHERS_MANIFEST, others, field_names(CropRecord))
        _remove_stale_crops(out_dir, {record.crop_path for record in crops + others})
        counts = dict(Counter(photo.status for photo in photos))
        faceless = sorted({photo.person for photo in photos} - {record.person for record in crops})
        for person in faceless:
            logger.warning("%s: no face found in any usable photo of %s; %s is left out of the model", out_dir, person, person)
        write_json(
            out_dir / SUMMARY_NAME,
            {
                "scrape": str(scrape.resolve()),
                "detect_settings": settings_to_dict(detect_settings),
                "crop_settings": settings_to_dict(crop_settings),
                "photos": len(photos),
                "crops": len(crops),
                "other_people_crops": len(others),
                "counts": counts,
                "reused": len(records) - len(todo),
                "people_without_faces": faceless,
                "corrections": len(corrections),
                "warnings": warnings,
            },
        )
        write_contact_sheets(out_dir, photos, crops)
    return CropResult(photos, crops, out_dir, counts, reused=len(records) - len(todo), warnings=tuple(warnings))


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


def _workers_for(photo_count: int, requested: int | None) -> int:
    # Starting a worker process costs a few seconds (TensorFlow import, MTCNN build).
    if requested is not None:
        return requested
    return 1 if photo_count < 24 else default_workers()


def _cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}.json"


def _read_cache(cache_dir: Path, sha256: str) -> dict | None:
    path = _cache_path(cache_dir, sha256)
    if not path.exists():
        return None
    try:
        entry = read_json(path)
    except FaceclsError:
        return None
    names = entry.get("candidate_files", []) + entry.get("chip_files", [])
    if "candidates" not in entry or not all((cache_dir / name).exists() for name in names):
        return None
    return entry


def _store_photo(faces: PhotoFaces, record, crop_settings: CropSettings, cache_dir: Path) -> dict:
    """Write a photo's candidate crops and chips into the cache; returns its cache entry."""
    crop_files, chip_files = [], []
    for index, pixels, chip in zip(faces.chosen, faces.crops, faces.chips):
        stem = f"{record.sha256[:2]}/{record.sha256}-{index}"
        crop_files.append(f"{stem}.{crop_settings.crop_format}")
        chip_files.append(f"{stem}.chip.png")
        images.write_image(cache_dir / crop_files[-1], pixels)
        images.write_image(cache_dir / chip_files[-1], chip)
    entry = {
        "status": faces.status,
        "reason": faces.reason,
        "width": faces.width,
        "height": faces.height,
        "detections": [detection.to_dict() for detection in faces.detections],
        "candidates": list(faces.chosen),
        "candidate_files": crop_files,
        "chip_files": chip_files,
    }
    # Written last: a photo counts as done only once its crops are on disk. An unreadable file is
    # not cached: the cause (deleted or locked mid-run, a full disk) may be gone on the rerun.
    if faces.status != "unreadable":
        write_json(_cache_path(cache_dir, record.sha256), entry)
    return entry


def _describe_candidates(records, cached: dict[str, dict], cache_dir: Path, chunk_size: int = 32) -> None:
    """Add the identity descriptors of every candidate face to the cache entries that lack them.

    Photos are described in fixed chunks of the full list, all of a chunk at once, so a resumed
    run feeds the network the same batches as an uninterrupted one (the last float bits of a
    descriptor depend on its batch).
    """
    encoder = None
    for start in range(0, len(records), chunk_size):
        chunk = [record for record in records[start : start + chunk_size] if cached[record.path]["candidates"]]
        if all("descriptors" in cached[record.path] for record in chunk):
            continue
        if encoder is None:
            from facecls.identity import IdentityEncoder

            encoder = IdentityEncoder()
        chips = [images.read_rgb(cache_dir / name) for record in chunk for name in cached[record.path]["chip_files"]]
        descriptors = encoder.embed(np.stack(chips))
        position = 0
        for record in chunk:
            entry = cached[record.path]
            count = len(entry["candidates"])
            entry["descriptors"] = np.round(descriptors[position : position + count], 5).tolist()
            position += count
            write_json(_cache_path(cache_dir, record.sha256), entry)


def _manifests(records, cached: dict[str, dict], decisions: dict[str, FaceDecision], crop_settings: CropSettings
               ) -> tuple[list[PhotoRecord], list[CropRecord], list[CropRecord]]:
    photos, crops, others = [], [], []
    for record in records:
        entry = cached[record.path]
        decision = decisions[record.path]
        detections = entry["detections"]
        photos.append(
            PhotoRecord(
                path=record.path,
                person=record.person,
                sha256=record.sha256,
                group=record.group,
                status=decision.status,
                reason=decision.reason,
                width=entry["width"],
                height=entry["height"],
                faces=len(detections),
                crops=len(decision.chosen),
                detections=detections,
                chosen_face=decision.chosen[0] if len(decision.chosen) == 1 else None,
                largest_face=decision.largest,
                identity_distance=None if decision.distance is None else round(decision.distance, 4),
                chosen_by=decision.chosen_by,
            )
        )
        pairs = [(crops, FACES_FOLDER, index) for index in decision.chosen]
        pairs += [(others, OTHERS_FOLDER, index) for index in decision.others]
        for target, folder, index in pairs:
            detection = Detection.from_dict(detections[index])
            name = f"{folder}/{record.person}/" + crop_file_name(record.path, record.sha256, index, crop_settings.crop_format)
            target.append(
                CropRecord(
                    crop_path=name,
                    source_path=record.path,
                    person=record.person,
                    group=record.group,
                    sha256=record.sha256,
                    face_index=index,
                    x=round(detection.x, 1),
                    y=round(detection.y, 1),
                    width=round(detection.width, 1),
                    height=round(detection.height, 1),
                    confidence=round(detection.confidence, 5),
                    photo_status=decision.status,
                )
            )
    return photos, crops, others


def _link_crops(out_dir: Path, cache_dir: Path, cached: dict[str, dict], chosen: list[CropRecord]) -> None:
    """Put each chosen crop and its chip in place: a hard link to the cache's copy (a copy where links fail)."""
    for crop_record in chosen:
        path_under(out_dir, crop_record.crop_path)  # the person name was checked at ingest; the manifest may be edited
        entry = cached[crop_record.source_path]
        position = entry["candidates"].index(crop_record.face_index)
        for source, target in (
            (entry["candidate_files"][position], crop_record.crop_path),
            (entry["chip_files"][position], chip_path_of(crop_record.crop_path)),
        ):
            _place(cache_dir / source, out_dir / target)


def _place(source: Path, target: Path) -> None:
    if target.exists() and os.path.samefile(source, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.link")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _remove_stale_crops(out_dir: Path, keep: set[str]) -> None:
    # Crops written by earlier settings are ours to remove; the manifests are the truth.
    keep = keep | {chip_path_of(name) for name in keep}
    for folder in (FACES_FOLDER, OTHERS_FOLDER, CHIPS_FOLDER):
        for path in (out_dir / folder).rglob("*"):
            if path.is_file() and str(path.relative_to(out_dir)) not in keep:
                path.unlink()


def read_crops_manifest(path: Path) -> list[CropRecord]:
    numeric = {"face_index": int, "x": float, "y": float, "width": float, "height": float, "confidence": float}
    return [
        CropRecord(**{key: numeric.get(key, str)(value) for key, value in row.items()}) for row in read_csv(path)
    ]


def write_contact_sheets(out_dir: Path, photos: list[PhotoRecord], crops: list[CropRecord], thumb: int = 96) -> None:
    """One PNG per person: a grid of the crops, then the photos that gave no crop and why."""
    from PIL import Image, ImageDraw

    crops_by_person: dict[str, list[CropRecord]] = defaultdict(list)
    for crop_record in crops:
        crops_by_person[crop_record.person].append(crop_record)
    missing_by_person: dict[str, list[PhotoRecord]] = defaultdict(list)
    for photo in photos:
        if photo.crops == 0:
            missing_by_person[photo.person].append(photo)
    for person in sorted({photo.person for photo in photos}):
        person_crops = crops_by_person[person]
        missing = missing_by_person[person]
        columns = 10
        rows = (len(person_crops) + columns - 1) // columns
        line = 14
        text_lines = [f"{person}: {len(person_crops)} crops"] + (
            [f"{len(missing)} photos without a crop:"]
            + [f"  {photo.path}: {photo.status} {photo.reason}"[:110] for photo in missing]
        )
        sheet = Image.new("RGB", (columns * thumb, rows * thumb + line * (len(text_lines) + 1)), "white")
        for position, crop_record in enumerate(person_crops):
            try:
                face = Image.fromarray(images.read_rgb(out_dir / crop_record.crop_path)).resize((thumb, thumb))
            except images.ImageDecodeError:
                continue
            column, row = position % columns, position // columns
            sheet.paste(face, (column * thumb, row * thumb))
            if crop_record.photo_status != "ok":  # several faces: mark the ones a person should double-check
                ImageDraw.Draw(sheet).rectangle(
                    (column * thumb, row * thumb, (column + 1) * thumb - 1, (row + 1) * thumb - 1),
                    outline=(255, 140, 0),
                    width=3,
                )
        draw = ImageDraw.Draw(sheet)
        for number, text in enumerate(text_lines):
            draw.text((4, rows * thumb + 4 + number * line), text, fill="black")
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        atomic_write_bytes(path_under(out_dir, SHEETS_FOLDER, f"{person}.png"), buffer.getvalue())
