"""A fake face detector for the ``facecls.faces.Detector`` seam: tests of file handling (sorting,
resuming, repairing outputs) run the real pipeline around it without MTCNN.

``FakeDetector`` "finds" 0, 1 or 2 faces in a photo, decided by its pixels (the same photo always
gives the same faces), each a square in a face's shape: boxes and keypoints that pass
``facecls.faces.filter_faces``. Pass the class itself as ``detector_factory``: it is picklable, so
worker processes build their own.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from facecls.config import DetectSettings
from facecls.detect import Detection, Keypoints, Point


def fake_face(x: float, y: float, side: float, confidence: float = 0.999) -> Detection:
    """A square face at (x, y) with keypoints where a frontal face has them."""
    def point(u: float, v: float) -> Point:
        return Point(x + u * side, y + v * side)

    keypoints = Keypoints(point(0.3, 0.4), point(0.7, 0.4), point(0.5, 0.6), point(0.35, 0.8), point(0.65, 0.8))
    return Detection(x, y, side, side, confidence, keypoints)


def fake_face_count(pixels: np.ndarray) -> int:
    """How many faces ``FakeDetector`` finds in ``pixels``: 0, 1 or 2, from a checksum of them."""
    return zlib.crc32(np.ascontiguousarray(pixels[::8, ::8]).tobytes()) % 3


class FakeDetector:
    """Faces decided by the pixels, side by side in the upper half of the photo; never any below 64 pixels."""

    def __init__(self, settings: DetectSettings = DetectSettings()):
        self.settings = settings
        self.calls = 0

    def detect_many(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        found = []
        for pixels in photos:
            height, width = pixels.shape[:2]
            side = min(width / 2, height / 2)
            count = fake_face_count(pixels) if side >= 32 else 0
            found.append([fake_face(number * width / 2, 0, side * (1 - 0.2 * number)) for number in range(count)])
        return found
