"""Face geometry: where a face's crop and identity chip are cut from a photo.

One path for training, evaluate and classify: ``crop_face`` aligns a face on its five MTCNN
keypoints (or takes the detection box with a margin), ``warp_face`` cuts any 2x3 similarity
out of a photo (the identity chip uses it too, ``facecls.identity.identity_chip``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facecls import images
from facecls.config import CropSettings
from facecls.detect import Detection


class Box(Protocol):
    """A face's box in photo pixels: a Detection, or a box read back from a manifest."""

    x: float
    y: float
    width: float
    height: float


def square_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int]:
    """A square around the face with ``margin`` on each side, shifted and shrunk to fit the photo.

    Returns (left, top, side) in pixels.
    """
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    side = int(round(min(side, width, height)))
    side = max(side, 1)
    center_x = box.x + box.width / 2.0
    center_y = box.y + box.height / 2.0
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
    return similarity_matrix(keypoint_array(detection), alignment_target(margin, image_size))


def alignment_target(margin: float, image_size: int) -> np.ndarray:
    """Where an aligned crop puts the five keypoints: [5, 2] (x, y) in crop pixels, template order."""
    scale = image_size / (112.0 * (1.0 + 2.0 * margin))
    return (ALIGNMENT_TEMPLATE_112 - 56.0) * scale + image_size / 2.0


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


def describe_crop(settings: CropSettings) -> dict:
    """How ``crop_face`` cuts a face with ``settings``, in numbers an app reimplementing it can follow."""
    notes = {"image_size": settings.image_size, "margin": settings.margin, "align": settings.align,
             "face_policy": settings.face_policy}  # fmt: skip
    if settings.align:
        notes["keypoint_template_112"] = ALIGNMENT_TEMPLATE_112.round(4).tolist()
        notes["target_keypoints"] = alignment_target(settings.margin, settings.image_size).round(4).tolist()
        notes["how"] = (
            "similarity transform (rotation, uniform scale, shift; least squares over the 5 MTCNN keypoints "
            "left_eye, right_eye, nose, mouth_left, mouth_right of the full-resolution photo) onto target_keypoints "
            "(keypoint_template_112 scaled by image_size / (112 * (1 + 2 * margin)) about the crop's centre), then warp to image_size x image_size (bilinear, edges replicated); a transform that shrinks the face "
            "first shrinks the region it covers with an area filter to the crop's scale"
        )
    else:
        notes["how"] = (
            "square of side max(box width, height) * (1 + 2 * margin) centred on the face box, shifted and "
            "shrunk to fit inside the full-resolution photo, then resized to image_size x image_size "
            "(area filter when shrinking)"
        )
    return notes
