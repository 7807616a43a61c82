"""Stage 2, crop: every usable photo of the scrape to face crops of its person, with manifests.

The faces are found and cut out by ``facecls.faces.FaceCropper`` (the one photo-to-faces path,
shared with evaluate and classify), every candidate face of a photo, and ``facecls.consensus``
decides which one is the person (the identity consensus, or the face policy, and
``corrections.csv``). This module is the stage around them: the per-photo cache that lets a rerun
reuse detection, the manifests, the crop folders and the contact sheets.

Per photo status:
- ``ok``: one face passed the filters and was cropped;
- ``multiple_faces``: several faces passed; the face policy chose which to crop (``skip``: none);
- ``wrong_person``: faces passed, but none agrees with the identity of the person's other photos
  (face policy ``consensus``, ``facecls.consensus``): another person, or not a face at all;
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
import os
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from facecls import images
from facecls.config import CropSettings, DetectSettings, settings_to_dict
from facecls.consensus import FaceDecision, decide_faces, read_corrections
from facecls.detect import Detection
from facecls.errors import FaceclsError
from facecls.faces import PHASES, DetectorFactory, FaceCropper, PhotoFaces, mtcnn_detector, task_size, workers_for
from facecls.manifest import atomic_write_bytes, field_names, output_lock, read_csv, read_json, write_csv, write_json
from facecls.layout import CORRECTIONS_NAME, CROP_SUMMARY, CROPS_MANIFEST, OTHERS_MANIFEST, PHOTOS_MANIFEST
from facecls.paths import check_output_folder, path_under

logger = logging.getLogger(__name__)

PHOTO_STATUSES = ("ok", "multiple_faces", "wrong_person", "excluded", "low_confidence", "no_face", "unreadable")
FACES_FOLDER = "faces"
OTHERS_FOLDER = "others"  # faces of other people in the same photos: the strangers unknown is measured on
CHIPS_FOLDER = "chips"  # identity chips (facecls.identity) of faces/ and others/, same names, PNG
SHEETS_FOLDER = "sheets"
CACHE_FOLDER = "cache"
# Bump when a change to detection or cropping changes the crops, so reruns redo old work.
# 7: candidates down to candidate_confidence, keypoint geometry, second look turned and at 0.75x.
CROP_ALGORITHM_VERSION = 7


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
    phase_seconds: dict[str, float] = field(default_factory=dict)  # decode, detect, crop of the photos done now



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
    detector_factory: DetectorFactory = mtcnn_detector,
) -> CropResult:
    """Crop the faces of every usable photo in an ingest manifest into ``<out_dir>/faces/<person>/``.

    Writes ``photos.csv`` (every photo, every detection, a status and which face was chosen by
    what), ``crops.csv`` (every crop, linked to its source photo and duplicate group),
    ``crop.json`` and a contact sheet per person in ``sheets/``. The faces of a photo that are not
    the person's go to ``others/<person>/`` and ``others.csv``: the strangers ``unknown`` is
    measured on. Each crop's identity chip (``chip_path_of``) goes under ``chips/``. Photos done
    before with the same detection settings are reused; ``corrections.csv`` in ``out_dir``
    overrides the choice of face. ``detector_factory`` builds the face detector (default: MTCNN).

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
        phase_seconds = dict.fromkeys(PHASES, 0.0)
        with FaceCropper(
            detect_settings, crop_settings, workers=workers_for(len(todo), workers), candidates=True,
            detector_factory=detector_factory,
        ) as cropper:
            by_path = {str(scrape / record.path): record for record in todo}
            for faces in cropper.faces_in_files(by_path, chunk_size=size):
                for phase, seconds in faces.seconds.items():
                    phase_seconds[phase] += seconds
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
            out_dir / CROP_SUMMARY,
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
                "phase_seconds": {phase: round(seconds, 3) for phase, seconds in phase_seconds.items()},
            },
        )
        write_contact_sheets(out_dir, photos, crops)
    return CropResult(photos, crops, out_dir, counts, reused=len(records) - len(todo), warnings=tuple(warnings),
                      phase_seconds={phase: round(seconds, 3) for phase, seconds in phase_seconds.items()})


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
    for face in faces.chosen:
        stem = f"{record.sha256[:2]}/{record.sha256}-{face.index}"
        crop_files.append(f"{stem}.{crop_settings.crop_format}")
        chip_files.append(f"{stem}.chip.png")
        images.write_image(cache_dir / crop_files[-1], face.crop)
        images.write_image(cache_dir / chip_files[-1], face.chip)
    entry = {
        "status": faces.status,
        "reason": faces.reason,
        "width": faces.width,
        "height": faces.height,
        "detections": [detection.to_dict() for detection in faces.detections],
        "candidates": [face.index for face in faces.chosen],
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
