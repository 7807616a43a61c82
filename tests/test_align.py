"""Face alignment on the MTCNN keypoints, and one crop path shared by training and classify."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from facecls.config import CropSettings, DetectSettings
from facecls.align import ALIGNMENT_TEMPLATE_112, alignment_matrix, crop_face, keypoint_array, similarity_matrix
from facecls.detect import Detection, FaceDetector, Keypoints, Point
from facecls.images import decode_image

ALIGNED = CropSettings(image_size=160, margin=0.25, align=True)  # room around the face to re-detect it


def test_similarity_matrix_recovers_a_known_rotation_scale_and_shift():
    angle = np.deg2rad(23.0)
    rotation = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ALIGNMENT_TEMPLATE_112 + np.array([[0.0, 3.0], [1.0, -2.0], [0.5, 0.0], [-1.0, 1.0], [2.0, 0.5]])
    target = source @ rotation.T + np.array([12.0, -5.0])
    expected = np.hstack([rotation, [[12.0], [-5.0]]])
    np.testing.assert_allclose(similarity_matrix(source, target), expected, atol=1e-9)


def test_alignment_maps_the_keypoints_onto_the_template_with_the_margin():
    points = [Point(x, y) for x, y in ALIGNMENT_TEMPLATE_112 * 2.0 + 40.0]  # a face twice the template's size
    detection = Detection(40.0, 40.0, 224.0, 224.0, 0.99, Keypoints(*points))
    mapped = np.hstack([keypoint_array(detection), np.ones((5, 1))]) @ alignment_matrix(detection, 0.25, 168).T
    # 112 template pixels plus 25% on each side fill 168 pixels: one template pixel is one crop pixel
    np.testing.assert_allclose(mapped, ALIGNMENT_TEMPLATE_112 + 28.0, atol=0.05)  # keypoints rounded to 0.1 px


def _rotated(pixels: np.ndarray, degrees: float) -> np.ndarray:
    height, width = pixels.shape[:2]
    side = int(np.hypot(height, width)) + 2
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    matrix[:, 2] += ((side - width) / 2, (side - height) / 2)
    return cv2.warpAffine(pixels, matrix, (side, side), borderMode=cv2.BORDER_REPLICATE)


def _largest(detections: list[Detection]) -> Detection:
    return max(detections, key=lambda face: face.area)


def _eye_tilt(detection: Detection) -> float:
    """Vertical distance between the eyes over their horizontal distance (0 when level)."""
    points = detection.keypoints
    return (points.right_eye.y - points.left_eye.y) / (points.right_eye.x - points.left_eye.x)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(DetectSettings())


@pytest.mark.parametrize("degrees", [20.0, -20.0])
def test_aligned_crops_of_rotated_real_photos_have_level_eyes(data_dir, detector, degrees):
    train = data_dir / "5-celebrity-faces" / "train"
    photos = [  # faces with level eyes in the original photos
        train / "jerry_seinfeld" / "httpmediapopsugarassetscomfilesusersxlargejpg.jpg",
        train / "mindy_kaling" / "httppixelnymagcomimgsfashiondailymindykalingwhjpg.jpg",
    ]
    for photo in photos:
        rotated = _rotated(decode_image(photo).pixels, degrees)
        face = _largest(detector.detect(rotated))
        box_crop = crop_face(rotated, face, dataclasses.replace(ALIGNED, align=False))
        aligned_crop = crop_face(rotated, face, ALIGNED)
        assert aligned_crop.shape == (160, 160, 3)
        before = _largest(detector.detect(box_crop))
        after = _largest(detector.detect(aligned_crop))
        assert abs(_eye_tilt(before)) > 0.25, f"{photo.name}: the box crop of a {degrees} degree rotation should tilt"
        assert abs(_eye_tilt(after)) < 0.06, f"{photo.name}: aligned eyes tilt by {_eye_tilt(after):.3f}"
        # and the eyes sit where the template puts them (112-pixel template, 25% margin, 160 pixels)
        expected = (ALIGNMENT_TEMPLATE_112[:2] - 56.0) * 160 / 168 + 80.0
        found = np.array([[after.keypoints.left_eye.x, after.keypoints.left_eye.y],
                          [after.keypoints.right_eye.x, after.keypoints.right_eye.y]])
        assert np.abs(found - expected).max() < 0.05 * 160, f"{photo.name}: eyes at {found.tolist()}, template {expected.tolist()}"


def test_classify_crops_a_training_photo_exactly_as_the_crop_stage_did(data_dir, tmp_path):
    """The model dir carries align and margin; classify's crop of a training photo is the training crop."""
    import json
    import shutil

    import keras

    from facecls.classifier import Classifier
    from facecls.crop import crop
    from facecls.images import read_rgb
    from facecls.ingest import ingest
    from facecls.model import build_classifier
    from facecls.modeldir import load_model_dir, new_model_info, save_model_dir
    from facecls.config import TrainSettings

    scrape = tmp_path / "scrape"
    for person in ("jerry_seinfeld", "mindy_kaling"):
        source = sorted((data_dir / "5-celebrity-faces" / "train" / person).iterdir())[0]
        (scrape / person).mkdir(parents=True)
        shutil.copy(source, scrape / person / source.name)
    crop_settings = CropSettings(image_size=64, crop_format="png")  # png: the crop on disk is exact
    assert crop_settings.align
    ingested = ingest(scrape, tmp_path / "run")
    cropped = crop(scrape, ingested.manifest_path, tmp_path / "run" / "crop", DetectSettings(), crop_settings, workers=1)
    assert len(cropped.crops) == 2

    base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    info = new_model_info(("jerry_seinfeld", "mindy_kaling"), crop_settings, DetectSettings(), TrainSettings())
    save_model_dir(tmp_path / "model", build_classifier(base, 2, 0.1), info)
    stored = json.loads((tmp_path / "model" / "facecls.json").read_text())["crop_settings"]
    assert stored["align"] is True and stored["margin"] == crop_settings.margin

    with Classifier(tmp_path / "model") as classifier:
        assert classifier.cropper.crop_settings.align
        for record in cropped.crops:
            faces = classifier.cropper.faces_in_array(decode_image(scrape / record.source_path).pixels)
            np.testing.assert_array_equal(faces.chosen[0].crop, read_rgb(tmp_path / "run" / "crop" / record.crop_path))

    # a model dir written before alignment existed keeps its box crops
    legacy = json.loads((tmp_path / "model" / "facecls.json").read_text())
    del legacy["crop_settings"]["align"]
    (tmp_path / "model" / "facecls.json").write_text(json.dumps(legacy))
    assert load_model_dir(tmp_path / "model").info.crop_settings.align is False


@pytest.mark.parametrize("align", [True, False])
def test_the_exported_crop_description_reproduces_crop_face(align):
    """An app following describe_crop's numbers (what export writes to preprocessing.json) cuts the
    very crop facecls does."""
    from facecls.align import describe_crop, square_box

    settings = CropSettings(image_size=160 if align else 64, margin=0.1, align=align)  # aligned: enlarges the face
    generator = np.random.default_rng(3)
    pixels = generator.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    points = [Point(150 + 0.8 * dx, 120 + 0.8 * dy) for dx, dy in ((0, 0), (40, 4), (22, 30), (5, 55), (38, 58))]
    detection = Detection(130.0, 90.0, 80.0, 100.0, 0.99, Keypoints(*points))
    notes = describe_crop(settings)
    assert (notes["image_size"], notes["margin"], notes["align"]) == (settings.image_size, 0.1, align)
    if align:
        source = np.array([[point.x, point.y] for point in points])
        matrix = similarity_matrix(source, np.array(notes["target_keypoints"]))
        expected = cv2.warpAffine(pixels, matrix, (160, 160), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        left, top, side = square_box(detection, notes["margin"], 400, 300)
        expected = cv2.resize(pixels[top : top + side, left : left + side], (64, 64), interpolation=cv2.INTER_AREA)
    difference = np.abs(crop_face(pixels, detection, settings).astype(int) - expected.astype(int))
    assert difference.max() <= 1  # the same cut; rounding of the 4-decimal target at most one level
