"""Stage 7, classify: photos -> one prediction per face, ``unknown`` for strangers, sorted copies.

``Classifier`` loads a model dir once and classifies arrays or files: faces are found and
cropped by the crop stage's ``FaceCropper`` with the detect/crop settings stored in the model
dir (every face, not only the largest), in worker processes, and each worker runs the crops of
a chunk of photos through the compiled classifier, and their identity chips through the
compiled identity network (``facecls.identity``), one batched call each, so crops never travel
between processes and the driving process needs no TensorFlow: two TensorFlow processes on
two cores instead of three.

Labels: with an open-set model in the model dir (``facecls.openset``), the identity network
decides who a face could be (the people within their calibrated acceptance distance of it, in
the identity space, measured to their nearest training faces) and the classifier names the most
probable of them; a face that could be none of them is ``unknown``, however sure the classifier
is. The score is 0.5 at a person's acceptance distance and 1 at a training face, and the
threshold is the calibrated ``unknown_threshold`` (``--unknown-threshold`` overrides it).
Without one, the label is the most probable person, the score its softmax probability, and no
face is ever ``unknown`` unless a threshold is given.

``classify`` is the batch stage: it writes ``predictions.csv`` and ``predictions.jsonl``
(one row per face; one row with status ``no_face`` or ``unreadable`` for a photo without a
face or a file that cannot be decoded), appends each photo's rows in one write so a killed
run never leaves half a photo behind, skips photos already in the output on a rerun (keyed
by path and content hash), and optionally sorts the photos into ``<out>/<label>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import stat
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from facecls import images
from facecls.errors import FaceclsError
from facecls.faces import PHASES as FACE_PHASES
from facecls.faces import DetectorFactory, FaceCropper, PhotoFaces, default_workers, mtcnn_detector, workers_for
from facecls.ingest import MAX_FILE_BYTES_PER_PIXEL
from facecls.manifest import atomic_write_bytes, output_lock, read_json, sha256_file, write_json
from facecls.outputs import ANNOTATED_FOLDER, NO_FACE, PREDICTIONS_CSV, SUMMARY_NAME, UNKNOWN, UNREADABLE
from facecls.paths import check_output_folder, display_name, is_valid_utf8, walk_files
from facecls.predictions import (
    FacePrediction, PhotoPrediction, PredictionWriter, RowCounts, prediction_columns, prediction_rows, repair_outputs,
)
from facecls.sort import JOURNAL_NAME, SORT_MODES, Sorter

logger = logging.getLogger(__name__)

ANNOTATED_LONGEST_SIDE = 2048
# Photos are grouped until this many faces wait, then classified in one model call.
DEFAULT_BATCH_SIZE = 32
PHASES = FACE_PHASES + ("classify",)  # timed per photo (PhotoPrediction.seconds)


@dataclass(frozen=True)
class ClassifyResult:
    """What a classify run wrote; counts cover the whole output, earlier runs included."""

    out_dir: Path
    predictions_path: Path
    photos: int
    faces: int
    label_counts: dict[str, int]  # faces per label, "unknown" included
    unknown: int  # faces
    no_face: int  # photos
    unreadable: int  # photos
    skipped: int  # photos found in the output of an earlier run
    classified: int  # photos classified by this run
    sorted_files: int  # files placed into label folders by this run
    seconds: float
    photos_per_second: float  # of this run
    kept_sources: tuple[str, ...] = ()  # --sort move, every run into out_dir: files left in place, and why
    phase_seconds: dict[str, float] = field(default_factory=dict)  # this run's photos, per PHASES step


@dataclass(frozen=True)
class FaceOutputs:
    """The networks' outputs for the classified faces of one photo (its crops and chips already dropped)."""

    photo: PhotoFaces  # without its faces (pixels stay in the process that cut them)
    detections: tuple  # the Detection of each classified face
    probabilities: np.ndarray  # [faces, C] softmax over the model's labels
    identities: np.ndarray | None  # [faces, D] identity descriptors, the open-set model's input (None: no open set)


class FaceModel:
    """A model dir's classifier (and, for the open set, the identity network) run on the faces of
    a chunk of photos, in one batched call each.

    Loads itself on first use, so a copy pickled into each detector worker process loads
    there: the crops are classified where they were cut and never cross between processes,
    and the process driving the workers needs no TensorFlow at all.
    """

    def __init__(self, model_dir: Path, batch_size: int = DEFAULT_BATCH_SIZE, identity: bool = True):
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.identity = identity
        self._model = None
        self._encoder = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_encoder": None}

    def load(self):
        """Load (once) and check the model dir; returns the classifier.

        Raises:
            ModelDirError: the model file is missing, cannot be loaded safely, or disagrees
                with facecls.json.
            IdentityWeightsError: the open set needs the identity network and its weights are missing.
        """
        from facecls.identity import IdentityEncoder
        from facecls.modeldir import load_model_dir

        if self._model is None:
            model = load_model_dir(self.model_dir).model
            if self.identity:
                self._encoder = IdentityEncoder(batch_size=self.batch_size)
                self._encoder.model  # built now: missing weights fail here, not at the first face
            self._model = model
        return self._model

    def outputs(self, crops: np.ndarray, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities [N, C], identity descriptors [N, D] or None without the open set) of
        RGB crops [N, size, size, 3] and their identity chips [N, 150, 150, 3], both 0-255.

        Both networks run through ``facecls.model.predict_batched``, as in training, evaluate and
        calibration."""
        from facecls.model import predict_batched

        model = self.load()
        probabilities = np.asarray(predict_batched(model, np.asarray(crops, dtype=np.float32), self.batch_size))
        if not self.identity:
            return probabilities, None
        from facecls.identity import CHIP_SIZE

        if np.shape(chips) != (len(probabilities), CHIP_SIZE, CHIP_SIZE, 3):
            raise FaceclsError(f"chips must have shape ({len(probabilities)}, {CHIP_SIZE}, {CHIP_SIZE}, 3). "
                               f"Received: {np.shape(chips)}")  # fmt: skip
        return probabilities, self._encoder.embed(np.asarray(chips))

    def __call__(self, photos: list[PhotoFaces]) -> list[FaceOutputs]:
        from facecls.identity import CHIP_SIZE

        started = time.perf_counter()
        size = self.load().input_shape[1]
        faces = [photo.chosen for photo in photos]
        crops = [face.crop for chosen in faces for face in chosen]
        chips = [face.chip for chosen in faces for face in chosen]
        probabilities, identities = self.outputs(
            np.stack(crops) if crops else np.zeros((0, size, size, 3), np.float32),
            np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.float32),
        )
        per_face = (time.perf_counter() - started) / max(1, len(crops))
        results, start = [], 0
        for photo, chosen in zip(photos, faces):
            end = start + len(chosen)
            bare = dataclasses.replace(photo, faces=(), seconds={**photo.seconds, "classify": per_face * len(chosen)})
            results.append(FaceOutputs(bare, tuple(face.detection for face in chosen), probabilities[start:end],
                                       None if identities is None else identities[start:end]))  # fmt: skip
            start = end
        return results


class Classifier:
    """A model dir loaded once: classifies photo arrays and files, face by face.

    Use as a context manager (or call ``close``) so detector worker processes stop.

    Args:
        model_dir: a model dir written by the train stage.
        unknown_threshold: overrides the model dir's calibrated threshold; None keeps it.
        workers: face-detection processes for ``classify_paths`` (1: in this process; None: one per
            core). With more than one, each worker also runs the model on the faces it found,
            and this process loads the model only if ``classify_array``/``classify_path`` are used.
        batch_size: faces per call of the classification model.
        detector_factory: builds the face detector from the model dir's detect settings (default:
            MTCNN; ``facecls.faces.Detector`` says what another must do).

    Raises:
        ModelDirError: the model dir is missing, incomplete or inconsistent (with more than one
            worker, a model file that cannot be loaded is reported by the first ``classify_paths``).
        FaceclsError: a threshold outside [0, 1].
    """

    def __init__(
        self,
        model_dir: Path,
        unknown_threshold: float | None = None,
        workers: int | None = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        detector_factory: DetectorFactory = mtcnn_detector,
    ):
        from facecls.modeldir import model_file, read_model_info
        from facecls.errors import ModelDirError
        from facecls.openset import SCORE_NAME, load_open_set

        if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
            raise FaceclsError(f"unknown_threshold must be between 0 and 1. Received: {unknown_threshold}")
        if batch_size < 1:
            raise FaceclsError(f"batch_size must be at least 1. Received: {batch_size}")
        workers = default_workers() if workers is None else max(1, workers)
        self.model_dir = Path(model_dir)
        self.info = read_model_info(self.model_dir)
        model_file(self.model_dir)  # present; the workers load it (with one worker, below)
        self.labels: tuple[str, ...] = self.info.labels  # checked as person names (facecls.paths)
        self.open_set = load_open_set(self.model_dir, self.labels)
        if self.open_set is None and self.info.unknown_threshold is not None:
            raise ModelDirError(
                f"{self.model_dir}: facecls.json has an unknown_threshold but the open-set file is missing; "
                f"the folder was modified. Recalibrate it: facecls calibrate {self.model_dir}"
            )
        self.unknown_threshold = self.info.unknown_threshold if unknown_threshold is None else float(unknown_threshold)
        self.score_name = SCORE_NAME if self.open_set is not None else "probability"
        self.batch_size = batch_size
        if self.open_set is not None:
            from facecls.identity import default_weights_path

            default_weights_path()  # installed: fail here, not in a worker at the first photo
        self.face_model = FaceModel(self.model_dir, batch_size, identity=self.open_set is not None)
        if workers == 1:
            self.face_model.load()  # in this process: a bad model file fails here, not at the first photo
        crop_settings = dataclasses.replace(self.info.crop_settings, face_policy="all")
        self.cropper = FaceCropper(self.info.detect_settings, crop_settings, workers=workers, after=self.face_model,
                                   detector_factory=detector_factory)

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.cropper.close()

    def fingerprint(self) -> str:
        """Identifies the model and threshold, so outputs of another model are never mixed in."""
        from facecls.modeldir import info_to_dict
        from facecls.manifest import to_json

        digest = hashlib.sha256(to_json(info_to_dict(self.info)).encode())
        digest.update(repr(self.unknown_threshold).encode())
        if self.open_set is not None:
            for name, array in sorted(self.open_set.to_arrays().items()):
                digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def label_outputs(self, probabilities: np.ndarray, identities: np.ndarray | None) -> list[tuple[str, float, int]]:
        """(label, score, index of the most probable person) for each face's network outputs."""
        probabilities = np.asarray(probabilities)
        if len(probabilities) == 0:
            return []
        best = np.argmax(probabilities, axis=1)
        if self.open_set is not None:
            named, scores = self.open_set.decide(identities, probabilities, self.unknown_threshold or 0.0)
            labels = [UNKNOWN if index < 0 else self.labels[index] for index in named]
        else:
            scores = probabilities[np.arange(len(best)), best]
            labels = [
                UNKNOWN if self.unknown_threshold is not None and score < self.unknown_threshold else self.labels[index]
                for index, score in zip(best, scores)
            ]
        return [(label, float(score), int(index)) for label, score, index in zip(labels, scores, best)]

    def _prediction(self, outputs: FaceOutputs) -> PhotoPrediction:
        photo = outputs.photo
        faces = []
        labelled = self.label_outputs(outputs.probabilities, outputs.identities)
        for number, (detection, (label, score, best)) in enumerate(zip(outputs.detections, labelled)):
            probabilities = outputs.probabilities[number]
            faces.append(
                FacePrediction(
                    face=number,
                    label=label,
                    score=round(score, 5),
                    best_match=self.labels[best],
                    probability=round(float(probabilities[best]), 5),
                    x=round(detection.x, 1),
                    y=round(detection.y, 1),
                    width=round(detection.width, 1),
                    height=round(detection.height, 1),
                    confidence=round(detection.confidence, 5),
                    probabilities={name: round(float(value), 5) for name, value in zip(self.labels, probabilities)},
                )
            )
        if photo.status == UNREADABLE:
            status, reason = UNREADABLE, photo.reason
        elif faces:
            status, reason = "ok", ""
        else:
            status, reason = NO_FACE, photo.reason or "no face found"
        seconds = {phase: round(photo.seconds.get(phase, 0.0), 6) for phase in PHASES}
        return PhotoPrediction(photo.path, status, reason, photo.width, photo.height, tuple(faces), seconds)

    def classify_array(self, pixels: np.ndarray, name: str = "<array>") -> list[FacePrediction]:
        """The faces of one decoded photo (RGB uint8, H x W x 3), largest first; [] when none."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise FaceclsError(
                f"pixels must be an RGB uint8 array of shape (H, W, 3). Received: {pixels.dtype} {pixels.shape}. "
                "Decode files with facecls.images.decode_image or use classify_path."
            )
        outputs = self.face_model([self.cropper.faces_in_array(pixels, name)])[0]
        return list(self._prediction(outputs).faces)

    def classify_path(self, path: Path) -> PhotoPrediction:
        """One photo file, decoded by content and EXIF-oriented, in this process.

        Raises:
            ImageDecodeError: the file cannot be decoded (not an image, corrupt, too large).
        """
        started = time.perf_counter()
        decoded = images.decode_image(Path(path), max_pixels=self.cropper.max_pixels)
        faces = self.cropper.faces_in_array(decoded.pixels, str(path))
        faces.seconds["decode"] = time.perf_counter() - started - sum(faces.seconds.values())
        return self._prediction(self.face_model([faces])[0])

    def classify_paths(self, paths: Iterable[str | Path]) -> Iterator[PhotoPrediction]:
        """Every file in input order; unreadable files come back with status ``unreadable``.

        Files are decoded, detected, cropped and run through the model in the worker
        processes, a chunk of photos per model call; memory stays flat however many files
        there are.
        """
        for outputs in self.cropper.faces_in_files(paths):
            yield self._prediction(outputs)

    def classify_bytes(self, photos: Sequence[tuple[str, bytes]]) -> list[list[dict]]:
        """The predictions.csv rows of each (path, content) pair: the rows ``classify`` writes for a
        file at that path holding that content.

        The contents go through ``classify_paths`` itself (each is written to a private temporary
        file: the decoder reads files, by content), so remote photos (the Ray engine) are decoded,
        detected, cropped and classified exactly as local ones.
        """
        with tempfile.TemporaryDirectory(prefix="facecls-photos-") as folder:
            names = []
            for number, (_, content) in enumerate(photos):
                names.append(os.path.join(folder, str(number)))
                with open(names[-1], "wb") as file:
                    file.write(content)
            predictions = list(self.classify_paths(names))
        return [
            prediction_rows(dataclasses.replace(photo, path=path), hashlib.sha256(content).hexdigest(), self.labels)
            for photo, (path, content) in zip(predictions, photos)
        ]


# ---------------------------------------------------------------- the batch stage


# ---------------------------------------------------------------- inputs


def _check_inputs(inputs: Sequence[Path]) -> None:
    if not inputs:
        raise FaceclsError("classify needs at least one photo file or folder. Received none.")
    missing = [str(path) for path in inputs if not os.path.lexists(path)]
    if missing:
        raise FaceclsError(f"Input not found: {', '.join(missing)}. Pass existing photo files or folders.")


def iter_input_files(inputs: Sequence[Path]) -> Iterator[str]:
    """Every file under the inputs (recursively, sorted, hidden files included), as absolute paths.

    Symbolic links to folders are listed, not followed (no loops).
    """
    for item in inputs:
        item = Path(os.path.abspath(item))
        if not item.is_dir():
            yield str(item)
            continue
        yield from walk_files(item)


def sha256_or_empty(path: str, max_bytes: int) -> str:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            # A FIFO would block the read forever, a 4 GB file take a minute: the decoder says what they are.
            return ""
        return sha256_file(Path(path))
    except OSError:
        return ""


def _annotate(photo: PhotoPrediction, sha256: str, out_dir: Path) -> None:
    from PIL import Image, ImageDraw

    pixels = images.decode_image(Path(photo.path)).pixels
    scale = min(1.0, ANNOTATED_LONGEST_SIDE / max(pixels.shape[:2]))
    image = Image.fromarray(pixels)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 400))
    for face in photo.faces:
        box = [face.x * scale, face.y * scale, (face.x + face.width) * scale, (face.y + face.height) * scale]
        color = (160, 160, 160) if face.label == UNKNOWN else (0, 200, 0)
        draw.rectangle(box, outline=color, width=line)
        text = f"{face.label} {face.score:.2f}"
        top = max(0, box[1] - 14)
        draw.rectangle([box[0], top, box[0] + 7 * len(text), top + 13], fill=color)
        draw.text((box[0] + 2, top), text, fill=(0, 0, 0))
    stem = "".join(character if character.isalnum() or character in "._-" else "_" for character in Path(photo.path).stem)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    atomic_write_bytes(out_dir / ANNOTATED_FOLDER / f"{stem[:60] or 'photo'}-{sha256[:8]}.jpg", buffer.getvalue())


def _folders_for(photo: PhotoPrediction) -> list[str]:
    if photo.status == UNREADABLE:
        return []  # not a photo (or a broken one): left where it is, its row says why
    if photo.status == NO_FACE:
        return [NO_FACE]
    return list(photo.labels) or [UNKNOWN]


def classify(
    model_dir: Path,
    inputs: Sequence[Path],
    out_dir: Path,
    sort: str = "copy",
    annotate: bool = False,
    unknown_threshold: float | None = None,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    detector_factory: DetectorFactory = mtcnn_detector,
) -> ClassifyResult:
    """Classify every photo under ``inputs`` into ``out_dir``; reruns resume.

    Writes ``predictions.csv`` / ``predictions.jsonl`` (one row per face, or one ``no_face`` /
    ``unreadable`` row per photo) and ``classify.json``; with ``sort`` other than ``none``
    puts each photo into ``<out_dir>/<label>/`` (each recognised person's folder, else
    ``unknown/``, or ``no_face/``; unreadable files are never sorted), never overwriting;
    with ``annotate`` writes boxed copies to ``<out_dir>/annotated/``. Inputs are only read,
    except that ``sort="move"`` removes each source once its copies and rows are safe.

    Args:
        model_dir: a model dir written by the train stage.
        inputs: photo files and folders (searched recursively; ``out_dir`` is skipped).
        out_dir: output folder; a rerun with the same model skips photos already in it.
        sort: copy, link (hard link; a symbolic link across file systems), move or none.
        annotate: also write copies with boxes and labels drawn.
        unknown_threshold: overrides the model dir's threshold.
        workers: face-detection processes (default: one per core for 24 photos or more).
        batch_size: faces per call of the classification model.
        detector_factory: the face detector (default: MTCNN), as for ``Classifier``.

    Raises:
        FaceclsError: a missing input, an unknown sort mode, a bad model dir, an output
            folder in use or holding predictions of another model.
    """
    started = time.perf_counter()
    if sort not in SORT_MODES:
        raise FaceclsError(f"sort must be one of {', '.join(SORT_MODES)}. Received: {sort!r}")
    inputs = [Path(path) for path in inputs]
    _check_inputs(inputs)
    out_dir = Path(out_dir)
    check_output_folder(out_dir, inputs)
    total = sum(1 for _ in iter_input_files(inputs))
    workers = workers_for(total, workers)
    with output_lock(out_dir):
        with Classifier(model_dir, unknown_threshold, workers, batch_size, detector_factory) as classifier:
            columns = prediction_columns(classifier.labels)
            fingerprint = classifier.fingerprint()
            summary_path = out_dir / SUMMARY_NAME
            previous = read_json(summary_path) if summary_path.exists() else {}
            if isinstance(previous, dict) and previous.get("fingerprint") not in (None, fingerprint):
                raise FaceclsError(
                    f"{out_dir} holds predictions of another model or threshold ({previous.get('model_dir')}). "
                    "Choose another --out folder, or delete it to start over."
                )
            done, old_rows = repair_outputs(out_dir, columns)
            sorter = Sorter(out_dir, sort) if sort != "none" else None
            if sorter is not None:
                sorter.check_folders([*classifier.labels, UNKNOWN, NO_FACE])
            recovery = Sorter(out_dir, sort if sorter is not None else "copy")
            if sorter is not None or (out_dir / JOURNAL_NAME).exists():
                recovery.recover(done)
            base_summary = {
                "model_dir": str(Path(model_dir).resolve()),
                "fingerprint": fingerprint,
                "labels": list(classifier.labels),
                "score": classifier.score_name,
                "unknown_threshold": classifier.unknown_threshold,
                "sort": sort,
            }
            # Kept across runs: a run killed after its recovery kept something must not forget it.
            earlier_kept = previous.get("kept_sources") if isinstance(previous, dict) else None
            kept = [str(note) for note in earlier_kept] if isinstance(earlier_kept, list) else []
            kept += recovery.kept
            write_json(summary_path, {**base_summary, "state": "running", "kept_sources": kept})
            counts = RowCounts()
            for row in old_rows:
                counts.add_row(row)
            skipped = 0
            max_bytes = classifier.cropper.max_pixels * MAX_FILE_BYTES_PER_PIXEL
            submitted: deque[tuple[str, str]] = deque()
            seen = set(done)

            def todo() -> Iterator[str]:
                nonlocal skipped
                for path in iter_input_files(inputs):
                    key = (display_name(path), sha256_or_empty(path, max_bytes))
                    if key in seen:
                        skipped += 1
                        progress.update(1)
                        continue
                    seen.add(key)
                    submitted.append(key)
                    yield path

            outputs = PredictionWriter(out_dir, columns)
            classified = 0
            phase_seconds = dict.fromkeys(PHASES, 0.0)
            run_started = time.perf_counter()
            progress = tqdm(total=total, desc="classify", unit="photo")
            try:
                for photo in classifier.classify_paths(todo()):
                    path, sha256 = submitted.popleft()
                    if not is_valid_utf8(photo.path):
                        photo = PhotoPrediction(
                            path, UNREADABLE, "its name is not valid UTF-8 (shown with \\x escapes); rename the "
                            "file to classify it", photo.width, photo.height,
                        )  # fmt: skip
                    folders = _folders_for(photo) if sorter is not None else []
                    destinations = sorter.plan(photo.path, sha256, folders) if folders else []
                    placed = sorter.place(photo.path, destinations) if destinations else []
                    sorted_to = [str(destination.relative_to(out_dir)) for destination in placed]
                    rows = prediction_rows(photo, sha256, classifier.labels, sorted_to)
                    outputs.append(rows, durable=sort == "move")
                    if folders:
                        sorter.committed()
                        sorter.finish(photo.path, sha256, placed)
                    if annotate and photo.faces:
                        _annotate(photo, sha256, out_dir)
                    for row in rows:
                        counts.add_row(row)
                    for phase in PHASES:
                        phase_seconds[phase] += photo.seconds.get(phase, 0.0)
                    classified += 1
                    progress.update(1)
            finally:
                progress.close()
                outputs.close()
                if sorter is not None:
                    sorter.close()
            seconds = time.perf_counter() - started
            rate = classified / max(time.perf_counter() - run_started, 1e-9)
            result = ClassifyResult(
                out_dir=out_dir,
                predictions_path=out_dir / PREDICTIONS_CSV,
                **counts.result_fields(),
                skipped=skipped,
                classified=classified,
                sorted_files=sorter.placed if sorter is not None else 0,
                seconds=round(seconds, 2),
                photos_per_second=round(rate, 2),
                kept_sources=tuple(kept + (sorter.kept if sorter is not None else [])),
                phase_seconds={phase: round(value, 3) for phase, value in phase_seconds.items()},
            )
            summary = {**base_summary, "state": "finished"}
            summary.update(
                {key: value for key, value in dataclasses.asdict(result).items() if key not in ("out_dir", "predictions_path")}
            )
            write_json(summary_path, summary)
        # After the worker processes have stopped: the report decodes photos for its thumbnails.
        from facecls.report import write_classify_report

        write_classify_report(out_dir)
    return result
