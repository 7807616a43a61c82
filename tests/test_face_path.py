"""The photo -> faces path behind its detector seam, with the fake detector: no MTCNN, no TensorFlow.

The real detector on real photos is tested in test_crop.py and test_faces.py; here the contract
of the seam: what FaceCropper does with whatever a Detector returns.
"""

from __future__ import annotations

import numpy as np
import pytest

from facecls.config import CropSettings, DetectSettings
from facecls.faces import FaceCropper, PhotoFaces, faces_in_pixels
from facecls.images import write_image
from fakes import FakeDetector, fake_face, fake_face_count

CROP = CropSettings(image_size=32, face_policy="all")


def photo_with(count: int, seed: int = 0, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A random photo in which FakeDetector finds ``count`` faces."""
    generator = np.random.default_rng(seed)
    while True:
        pixels = generator.integers(0, 256, (*size, 3), dtype=np.uint8)
        if fake_face_count(pixels) == count:
            return pixels


class FixedDetector:
    """Returns the detections it was given, for every photo."""

    def __init__(self, detections):
        self.settings = DetectSettings()
        self.detections = list(detections)

    def detect_many(self, photos):
        return [list(self.detections) for _ in photos]


def test_each_face_is_one_record_with_its_crop_chip_and_detection():
    pixels = photo_with(2)
    faces = faces_in_pixels(FakeDetector(), [("two", pixels)], CROP)[0]
    assert (faces.status, len(faces.detections)) == ("multiple_faces", 2)
    assert [face.index for face in faces.chosen] == [0, 1]  # largest first, both kept with face_policy all
    for face in faces.faces:
        assert face.detection == faces.detections[face.index]
        assert face.crop.shape == (32, 32, 3) and face.crop.dtype == np.uint8
        assert face.chip.shape == (150, 150, 3)
    assert not np.array_equal(faces.faces[0].crop, faces.faces[1].crop)


def test_the_face_policy_decides_which_faces_are_chosen_and_which_are_others():
    big, small = fake_face(0, 0, 60), fake_face(70, 0, 40)
    pixels = photo_with(0)
    for policy, chosen, others in (("largest", [0], [1]), ("all", [0, 1], []), ("skip", [], [0, 1])):
        faces = faces_in_pixels(FixedDetector([big, small]), [("p", pixels)], CropSettings(image_size=32, face_policy=policy))[0]
        assert [face.index for face in faces.chosen] == chosen, policy
        assert [face.index for face in faces.others] == others, policy


def test_detections_that_cannot_be_faces_are_filtered_with_a_reason():
    pixels = photo_with(0)
    unsure = fake_face(0, 0, 60, confidence=0.5)
    faces = faces_in_pixels(FixedDetector([unsure]), [("p", pixels)], CROP)[0]
    assert (faces.status, faces.faces) == ("low_confidence", ())
    assert "under min_confidence" in faces.reason
    tiny = fake_face(0, 0, 3)  # under min_face_fraction 0.04 of 120 pixels
    faces = faces_in_pixels(FixedDetector([tiny]), [("p", pixels)], CROP)[0]
    assert (faces.status, faces.faces) == ("no_face", ())
    assert "min_face_fraction" in faces.reason


@pytest.mark.parametrize("workers", [1, 2])
def test_files_in_worker_processes_give_what_this_process_gives(tmp_path, workers):
    """Two workers build their own fake detector from the factory; the results come back in input
    order, an undecodable file as unreadable, and every photo says how long each phase took."""
    paths = []
    for number in range(9):
        paths.append(tmp_path / f"{number}.png")
        write_image(paths[-1], photo_with(number % 3, seed=number))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    paths.insert(4, tmp_path / "broken.jpg")
    with FaceCropper(DetectSettings(), CROP, workers=workers, detector_factory=FakeDetector) as cropper:
        found: list[PhotoFaces] = list(cropper.faces_in_files(paths, chunk_size=3))
    assert [result.path for result in found] == [str(path) for path in paths]
    assert found[4].status == "unreadable" and found[4].faces == ()
    counts = [len(result.chosen) for result in found if result.status != "unreadable"]
    assert counts == [number % 3 for number in range(9)]
    for result in found:
        assert result.seconds["decode"] >= 0.0
        if result.status != "unreadable":
            assert set(result.seconds) == {"decode", "detect", "crop"}


def test_a_detector_that_fails_on_one_photo_fails_only_that_photo():
    class Failing(FakeDetector):
        def detect_many(self, photos):
            if any(pixels.shape[0] == 99 for pixels in photos):
                raise RuntimeError("boom")
            return super().detect_many(photos)

    photos = [("good", photo_with(1, size=(120, 160))), ("bad", photo_with(1, size=(99, 160)))]
    from facecls.faces import _faces_or_failure

    results = [_faces_or_failure(Failing(), name, pixels, CROP, False) for name, pixels in photos]
    assert results[0].status == "ok" and len(results[0].chosen) == 1
    assert results[1].status == "unreadable" and "RuntimeError: boom" in results[1].reason
