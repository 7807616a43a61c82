"""Face detection with MTCNN, behind a small seam.

``FaceDetector`` holds one MTCNN for the life of a run. Photos are downscaled so their
longest side is at most ``DetectSettings.detect_side`` before detecting (P-Net's cost grows
with the pixel count), MTCNN's three networks run as traced graphs rather than eagerly, and
boxes and keypoints are mapped back to full-resolution coordinates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from facecls.config import DetectSettings
from facecls.images import resize_longest_side

logger = logging.getLogger(__name__)

# MTCNN's own minimum face size; above ~24 it silently finds nothing (mtcnn 1.0.0),
# so small faces are filtered afterwards (DetectSettings.min_face_fraction) instead.
MTCNN_MIN_FACE_SIZE = 20


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class Keypoints:
    left_eye: Point  # as seen in the image: the eye on the left of the picture
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point


@dataclass(frozen=True)
class Detection:
    """One face found by MTCNN, in full-resolution pixel coordinates of the EXIF-oriented photo."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    keypoints: Keypoints

    @property
    def area(self) -> float:
        return self.width * self.height

    def to_dict(self) -> dict:
        return {
            "box": [round(self.x, 1), round(self.y, 1), round(self.width, 1), round(self.height, 1)],
            "confidence": round(self.confidence, 5),
            "keypoints": {
                name: [round(getattr(self.keypoints, name).x, 1), round(getattr(self.keypoints, name).y, 1)]
                for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Detection":
        x, y, width, height = data["box"]
        points = {name: Point(*value) for name, value in data["keypoints"].items()}
        return cls(x, y, width, height, float(data["confidence"]), Keypoints(**points))


def _from_mtcnn(face: dict, scale: float) -> Detection:
    x, y, width, height = (float(value) / scale for value in face["box"])
    points = face["keypoints"]

    def point(name: str) -> Point:
        px, py = points[name]
        return Point(float(px) / scale, float(py) / scale)

    return Detection(
        x=x,
        y=y,
        width=width,
        height=height,
        confidence=float(face["confidence"]),
        keypoints=Keypoints(point("left_eye"), point("right_eye"), point("nose"), point("mouth_left"), point("mouth_right")),
    )


# Where the mouth and nose of a real face sit relative to its eyes, measured in the face's own frame
# (the eye line turned level) on the 190 faces MTCNN finds at 0.9 or more in scraped-celebs-6: the
# mouth 0.29-0.53 of the box's longer side below the eye line, the nose 0.32-0.80 of the way from
# the eye line to the mouth. A face lying sideways, detected unturned, had its keypoints squeezed
# onto the nose (mouth 0.10 below the eyes, nose 0.12 of the way): aligned, it became a close-up of
# the nose. The bounds leave room on both sides of what real faces showed.
MIN_MOUTH_DROP = 0.2
NOSE_BETWEEN = (0.1, 1.0)


def geometry_problem(detection: Detection) -> str:
    """Why a detection's keypoints cannot be a face's ("" when they can), whatever its rotation."""
    points = detection.keypoints
    left, right = np.array([points.left_eye.x, points.left_eye.y]), np.array([points.right_eye.x, points.right_eye.y])
    eye_line = right - left
    length = float(np.hypot(*eye_line))
    side = max(detection.width, detection.height, 1e-6)
    if length < 1e-6:
        return "keypoints implausible: both eyes at one point"
    # The component perpendicular to the eye line, positive towards the chin (image y points down).
    down = np.array([-eye_line[1], eye_line[0]]) / length
    middle = (left + right) / 2
    mouth = (np.array([points.mouth_left.x, points.mouth_left.y]) + np.array([points.mouth_right.x, points.mouth_right.y])) / 2
    mouth_drop = float((mouth - middle) @ down) / side
    nose_drop = float((np.array([points.nose.x, points.nose.y]) - middle) @ down) / side
    if mouth_drop < MIN_MOUTH_DROP:
        return f"keypoints implausible: mouth {mouth_drop:.2f} of the face below the eyes (a face has {MIN_MOUTH_DROP} or more)"
    nose_share = nose_drop / mouth_drop
    if not NOSE_BETWEEN[0] <= nose_share <= NOSE_BETWEEN[1]:
        return f"keypoints implausible: nose {nose_share:.2f} of the way from the eyes to the mouth"
    return ""


def _turned_back(detection: Detection, turns: int, shape: tuple) -> Detection:
    """A detection found on ``np.rot90(photo, turns)`` (turns 1 or 3), in the photo's own coordinates.

    The keypoints keep MTCNN's names, which describe the upright face: aligning on them turns the
    face upright in its crop.
    """
    height, width = shape[:2]

    def back(x: float, y: float) -> Point:
        return Point(width - y, x) if turns == 1 else Point(y, height - x)

    if turns == 1:
        x, y = width - detection.y - detection.height, detection.x
    else:
        x, y = detection.y, height - detection.x - detection.width
    points = detection.keypoints
    keypoints = Keypoints(*(back(point.x, point.y) for point in (
        points.left_eye, points.right_eye, points.nose, points.mouth_left, points.mouth_right)))
    return Detection(x, y, detection.height, detection.width, detection.confidence, keypoints)


BUCKET_PIXELS = 64


def _too_thin(shape: tuple) -> bool:
    """Whether no face MTCNN looks for fits (and its P-Net would fail on the pyramid): a 1x2000 photo."""
    return min(shape[:2]) < MTCNN_MIN_FACE_SIZE


def _bucket(shape: tuple) -> tuple[int, int]:
    height, width = shape[:2]
    return (-(-height // BUCKET_PIXELS) * BUCKET_PIXELS, -(-width // BUCKET_PIXELS) * BUCKET_PIXELS)


def _pad_to(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    padded = np.zeros((size[0], size[1], 3), dtype=np.uint8)
    padded[: pixels.shape[0], : pixels.shape[1]] = pixels
    return padded


def _inside(face: dict, shape: tuple) -> bool:
    """Whether a face found on a padded photo has its centre on the photo itself."""
    x, y, width, height = face["box"]
    return x + width / 2 < shape[1] and y + height / 2 < shape[0]


def limit_tensorflow_threads(threads: int) -> None:
    """Pin TensorFlow to ``threads`` cores; call before TensorFlow runs anything."""
    from facecls.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised: keep what is set
        logger.debug("TensorFlow threads already initialised")


class _CompiledNetwork:
    """One MTCNN network as a traced graph taking images of any size.

    mtcnn calls its three networks eagerly, layer by layer: Python overhead was about half of
    its time. One trace with a shape-free signature serves every image size and batch; the
    boxes are the same to the last digit (measured on 40 scraped photos) at 0.53x the CPU.
    """

    def __init__(self, network):
        import tensorflow as tf

        self.network = network
        signature = [tf.TensorSpec((None, None, None, 3), tf.float32)]
        self._call = tf.function(lambda images: network(images), input_signature=signature)

    def __call__(self, images):
        if images.shape[0] == 0:  # no candidate faces left: the traced graph would log a shape error
            return self.network(images)
        return self._call(images)


def _compile_stages(mtcnn) -> None:
    for stage in getattr(mtcnn, "stages", ()):
        network = getattr(stage, "_model", None)
        if network is None:
            logger.debug("mtcnn stage %s has no network to compile; it runs eagerly", stage)
        elif not isinstance(network, _CompiledNetwork):
            stage._model = _CompiledNetwork(network)


class FaceDetector:
    """MTCNN built once; detects faces in RGB uint8 photos of any size."""

    def __init__(self, settings: DetectSettings = DetectSettings()):
        from facecls.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        from mtcnn import MTCNN

        self.settings = settings
        self._mtcnn = MTCNN()
        _compile_stages(self._mtcnn)

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        """All faces in one photo (no filtering by confidence or size)."""
        return self.detect_many([pixels])[0]

    def detect_many(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        """All faces in each photo, one MTCNN call per photo by default.

        With ``DetectSettings.batch_size`` above 1, downscaled photos are padded at the bottom
        and right to the next multiple of ``BUCKET_PIXELS`` so that photos of nearly the same
        size share a batch. That paid (1.4-1.9x) when MTCNN ran eagerly; with its networks
        compiled it no longer does, and padding makes a photo's boxes depend on its batch.
        """
        for pixels in photos:
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ValueError(f"photos must be RGB uint8 arrays of shape (H, W, 3). Received: {pixels.dtype} {pixels.shape}")
        scaled = [resize_longest_side(pixels, self.settings.detect_side) for pixels in photos]
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for index, (small, _) in enumerate(scaled):
            if not _too_thin(small.shape):
                buckets[_bucket(small.shape)].append(index)
        results: list[list[Detection]] = [[] for _ in photos]
        padded: set[int] = set()
        for bucket, indices in buckets.items():
            for start in range(0, len(indices), self.settings.batch_size):
                chunk = indices[start : start + self.settings.batch_size]
                if len(chunk) == 1:
                    batch = [scaled[chunk[0]][0]]  # alone: no padding needed
                else:
                    batch = [_pad_to(scaled[index][0], bucket) for index in chunk]
                    padded.update(chunk)
                found = self._run(batch)
                for index, faces in zip(chunk, found):
                    small, scale = scaled[index]
                    results[index] = [
                        _from_mtcnn(face, scale) for face in faces if _inside(face, small.shape)
                    ]
        for index, pixels in enumerate(photos):
            if not self._has_confident_face(results[index]) and index in padded:
                # padding changes MTCNN's image pyramid: look at the photo alone before rescaling
                small, scale = scaled[index]
                alone = [_from_mtcnn(face, scale) for face in self._run([small])[0]]
                results[index] = alone or results[index]
            if not self._has_confident_face(results[index]):
                results[index] = self._detect_again(pixels) or results[index]
        return results

    def _has_confident_face(self, faces: list[Detection]) -> bool:
        return any(face.confidence >= self.settings.min_confidence and not geometry_problem(face) for face in faces)

    def _detect_again(self, pixels: np.ndarray) -> list[Detection]:
        """Second look at a photo without a confident face of plausible shape: other scales, then
        the photo turned a quarter either way.

        MTCNN's P-Net misses some clear faces in small photos (a 67-pixel face in a 220x165
        thumbnail) that it finds at twice the size, some in large photos (one at the confidence
        threshold) that it finds at twice ``detect_side``, and some in photos of about
        ``detect_side`` that it finds at 0.75x (a frontal scarlett_johansson photo of 557 pixels:
        nothing at 557, 0.91 at 418). A face lying sideways is found upright at full confidence
        once the photo is turned (a sydney_sweeney photo: nothing at 640, 0.93 at 1280 with its
        keypoints squeezed onto the nose, 1.00 turned). Only photos without a confident
        plausible face pay for the second pass.
        """
        import cv2

        longest = max(pixels.shape[:2])
        if longest * 1.5 <= self.settings.detect_side:
            target = self.settings.detect_side
        elif longest > self.settings.detect_side:
            target = min(longest, 2 * self.settings.detect_side)
        else:
            target = longest
        first_scale = min(1.0, self.settings.detect_side / longest)
        found: list[Detection] = []
        # MTCNN's result at one scale is brittle (a face found at 2.42x is missed at 2.424x),
        # so the second look tries two scales and keeps the first with a confident face.
        for fraction in (1.0, 0.75):
            scale = target * fraction / longest
            if abs(scale / first_scale - 1) < 0.1:
                continue  # about the scale of the first pass
            size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
            if _too_thin(size):
                continue
            interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
            resized = cv2.resize(pixels, size, interpolation=interpolation)
            faces = self._mtcnn.detect_faces(resized, min_face_size=MTCNN_MIN_FACE_SIZE)
            found = [_from_mtcnn(face, scale) for face in faces]
            if self._has_confident_face(found):
                return found
        small, scale = resize_longest_side(pixels, self.settings.detect_side)
        for turns in (1, 3):
            faces = self._mtcnn.detect_faces(np.ascontiguousarray(np.rot90(small, turns)), min_face_size=MTCNN_MIN_FACE_SIZE)
            turned = [_turned_back(_from_mtcnn(face, scale), turns, pixels.shape) for face in faces]
            if self._has_confident_face(turned):
                return turned
        return found

    def _run(self, batch: list[np.ndarray]) -> list[list[dict]]:
        if len(batch) == 1:
            return [self._mtcnn.detect_faces(batch[0], min_face_size=MTCNN_MIN_FACE_SIZE)]
        found = self._mtcnn.detect_faces(batch, min_face_size=MTCNN_MIN_FACE_SIZE)
        if not any(found):
            # mtcnn turns an internal error for the whole batch into "no faces";
            # rerun one by one so a single photo cannot hide the faces of the others.
            return [self._mtcnn.detect_faces(pixels, min_face_size=MTCNN_MIN_FACE_SIZE) for pixels in batch]
        return found
