"""Stage 2, crop: find the faces with MTCNN and cut out the target person's face.

``FaceCropper`` is the one path from a photo file (or array) to face crops. The crop stage,
``evaluate`` on raw photos and ``classify`` all use it, with the settings stored in the model
dir, so a face is cropped exactly the same way in training and in inference.

Per photo status:
- ``ok``: one face passed the filters and was cropped;
- ``multiple_faces``: several faces passed; the face policy chose which to crop (``skip``: none);
- ``low_confidence``: MTCNN found faces, none at ``min_confidence``;
- ``no_face``: no face, or only faces smaller than ``min_face_fraction`` of the photo;
- ``unreadable``: the file could not be decoded (never reported as ``no_face``).
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from facecls import images
from facecls.config import CropSettings, DetectSettings, IngestSettings, settings_to_dict
from facecls.detect import Detection, FaceDetector, import_tensorflow_quietly, limit_tensorflow_threads
from facecls.errors import FaceclsError
from facecls.manifest import atomic_write_bytes, field_names, output_lock, read_csv, read_json, write_csv, write_json
from facecls.paths import check_output_folder, path_under

logger = logging.getLogger(__name__)

PHOTO_STATUSES = ("ok", "multiple_faces", "low_confidence", "no_face", "unreadable")
CROPS_MANIFEST = "crops.csv"
PHOTOS_MANIFEST = "photos.csv"
SUMMARY_NAME = "crop.json"
FACES_FOLDER = "faces"
OTHERS_FOLDER = "others"  # faces of other people in the same photos: the strangers unknown is measured on
OTHERS_MANIFEST = "others.csv"
CHIPS_FOLDER = "chips"  # identity chips (facecls.identity) of faces/ and others/, same names, PNG
SHEETS_FOLDER = "sheets"
CACHE_FOLDER = "cache"
# Bump when a change to detection or cropping changes the crops, so reruns redo old work.
CROP_ALGORITHM_VERSION = 6  # 6: identity chips


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


@dataclass(frozen=True)
class CropResult:
    photos: list[PhotoRecord]
    crops: list[CropRecord]
    out_dir: Path
    counts: dict[str, int]
    reused: int  # photos taken from an earlier run with the same settings


def choose_faces(
    detections: Sequence[Detection], width: int, height: int, detect: DetectSettings, policy: str
) -> FaceChoice:
    """Pick the faces to crop: filter by confidence and size, then apply the face policy."""
    if not detections:
        return FaceChoice("no_face", "no face found", ())
    confident = [index for index, face in enumerate(detections) if face.confidence >= detect.min_confidence]
    if not confident:
        best = max(face.confidence for face in detections)
        return FaceChoice(
            "low_confidence", f"best face confidence {best:.2f} is under min_confidence {detect.min_confidence}", ()
        )
    min_side = detect.min_face_fraction * min(width, height)
    sized = [index for index in confident if max(detections[index].width, detections[index].height) >= min_side]
    if not sized:
        return FaceChoice(
            "no_face",
            f"{len(confident)} face(s) smaller than min_face_fraction {detect.min_face_fraction} of the photo",
            (),
        )
    if len(sized) == 1:
        return FaceChoice("ok", "", (sized[0],))
    reason = f"{len(sized)} faces"
    if policy == "skip":
        return FaceChoice("multiple_faces", reason + "; face_policy skip crops none", (), tuple(sized))
    if policy == "all":
        ordered = sorted(sized, key=lambda index: -detections[index].area)
        return FaceChoice("multiple_faces", reason + "; face_policy all crops each", tuple(ordered))
    if policy == "most_confident":
        best = max(sized, key=lambda index: (detections[index].confidence, detections[index].area))
    else:
        best = max(sized, key=lambda index: (detections[index].area, detections[index].confidence))
    others = tuple(index for index in sized if index != best)
    chosen_by = "the most confident" if policy == "most_confident" else "the largest"
    return FaceChoice("multiple_faces", f"{reason}; cropped {chosen_by}", (best,), others)


def square_box(detection: Detection, margin: float, width: int, height: int) -> tuple[int, int, int]:
    """A square around the face with ``margin`` on each side, shifted and shrunk to fit the photo.

    Returns (left, top, side) in pixels.
    """
    side = max(detection.width, detection.height) * (1.0 + 2.0 * margin)
    side = int(round(min(side, width, height)))
    side = max(side, 1)
    center_x = detection.x + detection.width / 2.0
    center_y = detection.y + detection.height / 2.0
    left = int(round(min(max(center_x - side / 2.0, 0), width - side)))
    top = int(round(min(max(center_y - side / 2.0, 0), height - side)))
    return left, top, side


# The ArcFace 112x112 face template (insightface): where the eyes, nose tip and mouth corners of an
# aligned face sit, as seen in the image (left eye = the eye on the left of the picture).
ALIGNMENT_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def keypoint_array(detection: Detection) -> np.ndarray:
    """The five MTCNN keypoints as a [5, 2] array of (x, y), in template order.

    Rounded to 0.1 pixel as photos.csv stores them: MTCNN run with another thread count (a worker
    process) differs in the last float bits, which must not change the crop.
    """
    points = detection.keypoints
    return np.round(
        np.array(
            [[point.x, point.y] for point in (points.left_eye, points.right_eye, points.nose, points.mouth_left, points.mouth_right)],
            dtype=np.float64,
        ),
        1,
    )


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that maps ``source`` points closest to ``target``.

    Least squares over all points (Umeyama 1991), no reflection. Closed form and deterministic,
    unlike a RANSAC/LMEDS fit, so a photo always gives the same crop in training and classify.
    """
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    left, singular, right = np.linalg.svd(covariance)
    signs = np.array([1.0, 1.0 if np.linalg.det(left) * np.linalg.det(right) >= 0 else -1.0])
    rotation = left @ np.diag(signs) @ right
    variance = float(np.sum(source_centred**2)) / len(source)
    scale = float(np.sum(singular * signs)) / max(variance, 1e-12)
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def alignment_matrix(detection: Detection, margin: float, image_size: int) -> np.ndarray:
    """Photo -> crop similarity putting the keypoints on the template, scaled so the template's
    112-pixel frame plus ``margin`` of it on each side fills ``image_size`` (margin 0.25 gives
    about the scale of a 0.25-margin box crop: 4.1x the eye-to-mouth distance a side)."""
    scale = image_size / (112.0 * (1.0 + 2.0 * margin))
    target = (ALIGNMENT_TEMPLATE_112 - 56.0) * scale + image_size / 2.0
    return similarity_matrix(keypoint_array(detection), target)


def align_face(pixels: np.ndarray, detection: Detection, margin: float, image_size: int) -> np.ndarray:
    """An ``image_size`` square crop with the eyes level and the face at the template's scale and place."""
    return warp_face(pixels, alignment_matrix(detection, margin, image_size), image_size)


def warp_face(pixels: np.ndarray, matrix: np.ndarray, image_size: int) -> np.ndarray:
    """The ``image_size`` square that the 2x3 photo -> crop similarity ``matrix`` maps the photo to."""
    import cv2

    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if zoom < 1.0:
        # Shrinking by warpAffine alone aliases: cut out the region the crop covers, shrink it with
        # an area filter to about the crop's scale, and leave the warp only rotation and shift.
        corners = np.array([[0, 0, 1], [image_size, 0, 1], [0, image_size, 1], [image_size, image_size, 1]], float)
        inverse = cv2.invertAffineTransform(matrix)
        mapped = corners @ inverse.T
        height, width = pixels.shape[:2]
        left = int(np.clip(np.floor(mapped[:, 0].min()) - 1, 0, width - 1))
        top = int(np.clip(np.floor(mapped[:, 1].min()) - 1, 0, height - 1))
        right = int(np.clip(np.ceil(mapped[:, 0].max()) + 1, left + 1, width))
        bottom = int(np.clip(np.ceil(mapped[:, 1].max()) + 1, top + 1, height))
        region = pixels[top:bottom, left:right]
        size = (max(1, round(region.shape[1] * zoom)), max(1, round(region.shape[0] * zoom)))
        pixels = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        scale_x, scale_y = size[0] / region.shape[1], size[1] / region.shape[0]
        to_small = np.array([[scale_x, 0, -scale_x * left], [0, scale_y, -scale_y * top], [0, 0, 1]])
        matrix = matrix @ np.linalg.inv(to_small)
    return cv2.warpAffine(
        np.ascontiguousarray(pixels), matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def crop_face(pixels: np.ndarray, detection: Detection, settings: CropSettings) -> np.ndarray:
    """The square ``image_size`` face crop of a full-resolution photo: aligned on the keypoints
    (``settings.align``), or the detection box with ``margin``, shifted to fit the photo."""
    if settings.align:
        return align_face(pixels, detection, settings.margin, settings.image_size)
    height, width = pixels.shape[:2]
    left, top, side = square_box(detection, settings.margin, width, height)
    return images.resize_square(pixels[top : top + side, left : left + side], settings.image_size)


def faces_in_pixels(
    detector: FaceDetector, photos: Sequence[tuple[str, np.ndarray]], crop_settings: CropSettings
) -> list[PhotoFaces]:
    """Detect, choose and crop the faces of decoded photos, batching detection across them.

    Each face gets two cuts: the classifier's crop and the identity network's chip.
    """
    from facecls.identity import identity_chip

    found = detector.detect_many([pixels for _, pixels in photos])
    results = []
    for (name, pixels), detections in zip(photos, found):
        height, width = pixels.shape[:2]
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
    detector: FaceDetector, paths: Sequence[str], crop_settings: CropSettings, max_pixels: int
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
        found = faces_in_pixels(detector, decoded, crop_settings) if decoded else []
    except Exception:  # noqa: BLE001 - one photo's failure must not take the others down: retry one by one
        found = [_faces_or_failure(detector, name, pixels, crop_settings) for name, pixels in decoded]
    done = {result.path: result for result in found}
    return [failures.get(path) or done[path] for path in paths]


def _faces_or_failure(detector: FaceDetector, name: str, pixels: np.ndarray, crop_settings: CropSettings) -> PhotoFaces:
    """The faces of one photo, or an unreadable result saying why detecting or cropping failed."""
    try:
        return faces_in_pixels(detector, [(name, pixels)], crop_settings)[0]
    except Exception as error:  # noqa: BLE001 - becomes this photo's status and reason
        logger.warning("%s: face detection failed: %s", name, error)
        reason = f"face detection failed on this image ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
        return PhotoFaces(name, "unreadable", reason, int(pixels.shape[1]), int(pixels.shape[0]))


_worker_detector: FaceDetector | None = None
_worker_crop_settings: CropSettings | None = None
_worker_max_pixels: int = 0
_worker_after: Callable[[list[PhotoFaces]], list] | None = None


def _worker_start(
    detect_settings: DetectSettings,
    crop_settings: CropSettings,
    max_pixels: int,
    after: Callable[[list[PhotoFaces]], list] | None,
) -> None:
    global _worker_detector, _worker_crop_settings, _worker_max_pixels, _worker_after
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly()
    # One core per worker process: MTCNN does not scale across threads, but across processes.
    limit_tensorflow_threads(1)
    _worker_detector = FaceDetector(detect_settings)
    _worker_crop_settings = crop_settings
    _worker_max_pixels = max_pixels
    _worker_after = after


def _worker_run(paths: list[str]) -> list:
    assert _worker_detector is not None and _worker_crop_settings is not None
    found = _faces_in_files(_worker_detector, paths, _worker_crop_settings, _worker_max_pixels)
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
    """

    def __init__(
        self,
        detect_settings: DetectSettings = DetectSettings(),
        crop_settings: CropSettings = CropSettings(),
        workers: int | None = None,
        max_megapixels: float = IngestSettings().max_megapixels,
        after: Callable[[list[PhotoFaces]], list] | None = None,
    ):
        self.detect_settings = detect_settings
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
        return faces_in_pixels(self.detector, [(name, pixels)], self.crop_settings)[0]

    def faces_in_files(self, paths: Iterable[str | Path], chunk_size: int | None = None) -> Iterator:
        """Faces of each file (or what ``after`` made of them), in input order; memory stays flat
        however many files there are."""
        chunk_size = chunk_size or task_size(self.detect_settings)
        chunks = _chunks((str(path) for path in paths), chunk_size)
        if self.workers == 1:
            for chunk in chunks:
                found = _faces_in_files(self.detector, chunk, self.crop_settings, self.max_pixels)
                yield from (found if self.after is None else self.after(found))
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
                initargs=(self.detect_settings, self.crop_settings, self.max_pixels, self.after),
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

    Writes ``photos.csv`` (every photo, every detection, a status), ``crops.csv`` (every crop,
    linked to its source photo and duplicate group), ``crop.json`` and a contact sheet per person
    in ``sheets/``. The other faces of multi-face photos go to ``others/<person>/`` and
    ``others.csv``: they are mostly other people, the strangers ``unknown`` is measured on. Each
    crop's identity chip (``chip_path_of``) goes under ``chips/``. Photos done before with the
    same settings are reused.
    """
    from facecls.ingest import read_ingest_manifest

    scrape, out_dir = Path(scrape), Path(out_dir)
    check_output_folder(out_dir, [scrape])
    records = [record for record in read_ingest_manifest(ingest_manifest) if record.status == "ok"]
    if not records:
        raise FaceclsError(f"{ingest_manifest} lists no usable photo. Check the ingest statuses and reasons in it.")
    fingerprint = settings_fingerprint(detect_settings, crop_settings)
    cache_dir = out_dir / CACHE_FOLDER / fingerprint
    with output_lock(out_dir):
        # Crop file names do not carry the settings, so crops of other settings are about to be
        # overwritten: their cache entries would then point at the wrong crops.
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
            entries = [_read_cache(cache_dir, record.sha256, out_dir) for record in batch]
            if any(entry is None for entry in entries):
                todo.extend(batch)
            else:
                cached.update((record.path, entry) for record, entry in zip(batch, entries))
        progress = tqdm(total=len(records), initial=len(cached), desc="crop", unit="photo")
        with FaceCropper(detect_settings, crop_settings, workers=_workers_for(len(todo), workers)) as cropper:
            by_path = {str(scrape / record.path): record for record in todo}
            for faces in cropper.faces_in_files(by_path, chunk_size=size):
                record = by_path[faces.path]
                cached[record.path] = _store_photo(faces, record, crop_settings, out_dir, cache_dir)
                progress.update(1)
        progress.close()
        photos, crops, others = _manifests(records, cached)
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
            },
        )
        write_contact_sheets(out_dir, photos, crops)
    return CropResult(photos, crops, out_dir, counts, reused=len(records) - len(todo))


def _workers_for(photo_count: int, requested: int | None) -> int:
    # Starting a worker process costs a few seconds (TensorFlow import, MTCNN build).
    if requested is not None:
        return requested
    return 1 if photo_count < 24 else default_workers()


def _cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}.json"


def _read_cache(cache_dir: Path, sha256: str, out_dir: Path) -> dict | None:
    path = _cache_path(cache_dir, sha256)
    if not path.exists():
        return None
    try:
        entry = read_json(path)
    except FaceclsError:
        return None
    names = entry.get("crop_files", []) + entry.get("other_files", [])
    if not all((out_dir / name).exists() and (out_dir / chip_path_of(name)).exists() for name in names):
        return None
    return entry


def _store_photo(
    faces: PhotoFaces, record, crop_settings: CropSettings, out_dir: Path, cache_dir: Path
) -> dict:
    def write(folder: str, indices: tuple[int, ...], crops: tuple[np.ndarray, ...], chips: tuple[np.ndarray, ...]) -> list[str]:
        names = []
        for index, pixels, chip in zip(indices, crops, chips):
            name = f"{folder}/{record.person}/" + crop_file_name(
                record.path, record.sha256, index, crop_settings.crop_format
            )
            path_under(out_dir, name)  # the person name was checked at ingest; the manifest may be edited
            images.write_image(out_dir / name, pixels)
            images.write_image(out_dir / chip_path_of(name), chip)
            names.append(name)
        return names

    crop_files = write(FACES_FOLDER, faces.chosen, faces.crops, faces.chips)
    other_files = write(OTHERS_FOLDER, faces.others, faces.other_crops, faces.other_chips)
    entry = {
        "status": faces.status,
        "reason": faces.reason,
        "width": faces.width,
        "height": faces.height,
        "detections": [detection.to_dict() for detection in faces.detections],
        "chosen": list(faces.chosen),
        "crop_files": crop_files,
        "others": list(faces.others),
        "other_files": other_files,
    }
    # Written last: a photo counts as done only once its crops are on disk. An unreadable file is
    # not cached: the cause (deleted or locked mid-run, a full disk) may be gone on the rerun.
    if faces.status != "unreadable":
        write_json(_cache_path(cache_dir, record.sha256), entry)
    return entry


def _manifests(records, cached: dict[str, dict]) -> tuple[list[PhotoRecord], list[CropRecord], list[CropRecord]]:
    photos, crops, others = [], [], []
    for record in records:
        entry = cached[record.path]
        detections = entry["detections"]
        photos.append(
            PhotoRecord(
                path=record.path,
                person=record.person,
                sha256=record.sha256,
                group=record.group,
                status=entry["status"],
                reason=entry["reason"],
                width=entry["width"],
                height=entry["height"],
                faces=len(detections),
                crops=len(entry["crop_files"]),
                detections=detections,
            )
        )
        pairs = [(crops, index, name) for index, name in zip(entry["chosen"], entry["crop_files"])]
        pairs += [(others, index, name) for index, name in zip(entry["others"], entry["other_files"])]
        for target, index, name in pairs:
            detection = Detection.from_dict(detections[index])
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
                    photo_status=entry["status"],
                )
            )
    return photos, crops, others


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
