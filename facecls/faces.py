"""From a photo to its faces: detect, filter, choose and cut out, the one path crop, evaluate and classify share.

``FaceCropper`` turns photo files (or arrays) into ``PhotoFaces``: it decodes them
(``facecls.images``), finds the faces with a ``Detector`` (MTCNN's ``facecls.detect.FaceDetector``
unless another is given: tests of file handling pass a fake), keeps the detections that can be faces
(``filter_faces``: confident enough, large enough, keypoints in a face's shape), chooses among them
(``choose_faces``, or every candidate for the crop stage's identity consensus, ``facecls.consensus``)
and cuts out each face twice: the classifier's crop and the identity network's chip
(``facecls.align``, ``facecls.identity``). With ``workers`` > 1 it runs in that many processes,
which is how MTCNN uses more than one core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from facecls import images
from facecls.align import crop_face
from facecls.config import CropSettings, DetectSettings, IngestSettings
from facecls.detect import Detection, geometry_problem
from facecls.errors import FaceclsError

logger = logging.getLogger(__name__)

PHASES = ("decode", "detect", "crop")  # what the face path times per photo (PhotoFaces.seconds)


class Detector(Protocol):
    """What ``FaceCropper`` needs of a face detector: its settings, and every face of each photo.

    ``facecls.detect.FaceDetector`` (MTCNN) is the one facecls ships; ``DetectorFactory`` builds one
    from settings, in each worker process.
    """

    settings: DetectSettings

    def detect_many(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        """All faces (unfiltered) in each RGB uint8 photo, in the photos' pixel coordinates."""
        ...


DetectorFactory = Callable[[DetectSettings], Detector]


def mtcnn_detector(settings: DetectSettings) -> Detector:
    """The MTCNN detector, TensorFlow imported quietly."""
    from facecls.detect import FaceDetector

    return FaceDetector(settings)


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
class FaceChoice:
    """Which detections of one photo are cut out as the person's, and which as other people's."""

    status: str
    reason: str
    chosen: tuple[int, ...]  # indices into the detections, in the order they are cropped
    others: tuple[int, ...] = ()  # faces that passed the filters but were not chosen (other people)


@dataclass(frozen=True)
class Face:
    """One face cut out of a photo: the classifier's crop and the identity network's chip."""

    index: int  # among the photo's detections
    detection: Detection
    crop: np.ndarray = field(repr=False)  # RGB uint8, image_size square
    chip: np.ndarray = field(repr=False)  # RGB uint8, facecls.identity.CHIP_SIZE square
    chosen: bool = True  # False: it passed the filters but is another person (not chosen)


@dataclass(frozen=True)
class PhotoFaces:
    """Everything the face path found in one photo."""

    path: str
    status: str
    reason: str
    width: int
    height: int
    detections: tuple[Detection, ...] = ()  # every face the detector found, unfiltered
    faces: tuple[Face, ...] = ()  # the chosen faces, then the other faces that passed the filters
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # decode, detect, crop

    @property
    def chosen(self) -> tuple[Face, ...]:
        return tuple(face for face in self.faces if face.chosen)

    @property
    def others(self) -> tuple[Face, ...]:
        return tuple(face for face in self.faces if not face.chosen)


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
    detector: Detector, photos: Sequence[tuple[str, np.ndarray]], crop_settings: CropSettings,
    candidates: bool = False,
) -> list[PhotoFaces]:
    """Detect, choose and crop the faces of decoded photos, batching detection across them.

    Each face gets two cuts: the classifier's crop and the identity network's chip. With
    ``candidates``, every face that passes ``filter_faces`` down to ``candidate_confidence`` is
    cropped (``chosen``), for the crop stage's identity consensus to choose from. Each result's
    ``seconds`` holds its share of the detection batch and its own crop time.
    """
    from facecls.identity import identity_chip

    started = time.perf_counter()
    found = detector.detect_many([pixels for _, pixels in photos])
    detect_seconds = (time.perf_counter() - started) / max(1, len(photos))
    results = []
    for (name, pixels), detections in zip(photos, found):
        started = time.perf_counter()
        height, width = pixels.shape[:2]
        if candidates:
            kept = filter_faces(detections, width, height, detector.settings, candidate_confidence(detector.settings))
            choice = FaceChoice(kept.status, kept.reason, kept.kept)
        else:
            choice = choose_faces(detections, width, height, detector.settings, crop_settings.face_policy)
        cut = tuple(
            Face(index, detections[index], crop_face(pixels, detections[index], crop_settings),
                 identity_chip(pixels, detections[index]), chosen)
            for indices, chosen in ((choice.chosen, True), (choice.others, False))
            for index in indices
        )  # fmt: skip
        seconds = {"detect": detect_seconds, "crop": time.perf_counter() - started}
        results.append(PhotoFaces(name, choice.status, choice.reason, width, height, tuple(detections), cut, seconds))
    return results


def _faces_in_files(
    detector: Detector, paths: Sequence[str], crop_settings: CropSettings, max_pixels: int, candidates: bool
) -> list[PhotoFaces]:
    decoded: list[tuple[str, np.ndarray]] = []
    failures: dict[str, PhotoFaces] = {}
    decode_seconds: dict[str, float] = {}
    for path in paths:
        started = time.perf_counter()
        try:
            decoded.append((path, images.decode_image(Path(path), max_pixels=max_pixels).pixels))
        except images.ImageDecodeError as error:
            failures[path] = PhotoFaces(path, "unreadable", error.reason, 0, 0)
        decode_seconds[path] = time.perf_counter() - started
    try:
        found = faces_in_pixels(detector, decoded, crop_settings, candidates) if decoded else []
    except Exception:  # noqa: BLE001 - one photo's failure must not take the others down: retry one by one
        found = [_faces_or_failure(detector, name, pixels, crop_settings, candidates) for name, pixels in decoded]
    done = {result.path: result for result in found}
    results = [failures.get(path) or done[path] for path in paths]
    for result in results:
        result.seconds["decode"] = decode_seconds[result.path]
    return results


def _faces_or_failure(
    detector: Detector, name: str, pixels: np.ndarray, crop_settings: CropSettings, candidates: bool
) -> PhotoFaces:
    """The faces of one photo, or an unreadable result saying why detecting or cropping failed."""
    try:
        return faces_in_pixels(detector, [(name, pixels)], crop_settings, candidates)[0]
    except Exception as error:  # noqa: BLE001 - becomes this photo's status and reason
        logger.warning("%s: face detection failed: %s", name, error)
        reason = f"face detection failed on this image ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
        return PhotoFaces(name, "unreadable", reason, int(pixels.shape[1]), int(pixels.shape[0]))


_worker_detector: Detector | None = None
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
    detector_factory: DetectorFactory,
) -> None:
    global _worker_detector, _worker_crop_settings, _worker_max_pixels, _worker_after, _worker_candidates
    if detector_factory is mtcnn_detector or after is not None:
        from facecls.detect import limit_tensorflow_threads

        # One core per worker process: MTCNN does not scale across threads, but across processes.
        # (Importing TensorFlow takes seconds: a worker whose detector and ``after`` need none skips it.)
        limit_tensorflow_threads(1)
    _worker_detector = detector_factory(detect_settings)
    _worker_crop_settings = crop_settings
    _worker_max_pixels = max_pixels
    _worker_after = after
    _worker_candidates = candidates


def _worker_run(paths: list[str]) -> list:
    if _worker_detector is None or _worker_crop_settings is None:
        raise RuntimeError("_worker_run called in a process that _worker_start did not set up")
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
    ``detector_factory`` builds the detector from ``detect_settings`` (in each worker process, so it
    must be picklable): MTCNN unless told otherwise.
    """

    def __init__(
        self,
        detect_settings: DetectSettings = DetectSettings(),
        crop_settings: CropSettings = CropSettings(),
        workers: int | None = None,
        max_megapixels: float = IngestSettings().max_megapixels,
        after: Callable[[list[PhotoFaces]], list] | None = None,
        candidates: bool = False,
        detector_factory: DetectorFactory = mtcnn_detector,
    ):
        self.detect_settings = detect_settings
        self.detector_factory = detector_factory
        self.candidates = candidates
        self.crop_settings = crop_settings
        self.workers = default_workers() if workers is None else max(1, workers)
        self.max_pixels = int(max_megapixels * 1e6)
        self.after = after
        self._detector: Detector | None = None
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
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = self.detector_factory(self.detect_settings)
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
                initargs=(self.detect_settings, self.crop_settings, self.max_pixels, self.after, self.candidates,
                          self.detector_factory),
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


def workers_for(photo_count: int, requested: int | None) -> int:
    """Face-detection processes for a batch of photos: as requested, else one per core from 24 photos
    (starting a worker costs a few seconds: TensorFlow's import and MTCNN's build)."""
    if requested is not None:
        return max(1, requested)
    return 1 if photo_count < 24 else default_workers()
