"""The crop path: real MTCNN on the shared photos, the face policies, square boxes and the crop stage.

Every real detection run happens once per module (module-scoped fixtures); the tests then
assert on what it found.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from facecls.align import crop_face, square_box
from facecls.config import CropSettings, DetectSettings
from facecls.crop import chip_path_of, crop, read_crops_manifest
from facecls.detect import Detection, Keypoints, Point, geometry_problem
from facecls.errors import FaceclsError
from facecls.faces import FaceCropper, PhotoFaces, choose_faces, faces_in_pixels
from facecls.images import decode_image
from facecls.ingest import ingest

DETECT = DetectSettings()
CROP = CropSettings(margin=0.25, align=False)  # the box crop; aligned crops: tests/test_align.py
NO_FACE_PHOTOS = [
    "no_face/rocket.jpg",
    "no_face/coffee.png",
    "no_face/hubble_deep_field.jpg",
    "no_face/chelsea.png",
    "alpha_and_palette/image_49.png",  # the LTT logo
]
MULTIPLE_FACE_PHOTOS = sorted(
    ["couple.jpg", "kit_with_rose.jpg", "obama_and_biden.jpg", "selfie-many-people.jpg", "two_people.jpg"]
)


def iou(first, second) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    x1, y1, w1, h1 = first
    x2, y2, w2, h2 = second
    overlap = max(0.0, min(x1 + w1, x2 + w2) - max(x1, x2)) * max(0.0, min(y1 + h1, y2 + h2) - max(y1, y2))
    return overlap / (w1 * h1 + w2 * h2 - overlap)


def box(detection: Detection) -> tuple[float, float, float, float]:
    return (detection.x, detection.y, detection.width, detection.height)


def indices(faces) -> tuple[int, ...]:
    """The detection indices of ``Face`` records."""
    return tuple(face.index for face in faces)


def kept_faces(faces: PhotoFaces) -> list[int]:
    """Indices of the detections that pass the default confidence, size and keypoint-shape filters."""
    min_side = DETECT.min_face_fraction * min(faces.width, faces.height)
    return [
        index
        for index, face in enumerate(faces.detections)
        if face.confidence >= DETECT.min_confidence and max(face.width, face.height) >= min_side
        and not geometry_problem(face)
    ]


def face(x, y, width, height, confidence) -> Detection:
    """A hand-made upright detection, its keypoints where a frontal face has them."""
    def point(across: float, down: float) -> Point:
        return Point(x + across * width, y + down * height)

    return Detection(x, y, width, height, confidence,
                     Keypoints(point(0.3, 0.4), point(0.7, 0.4), point(0.5, 0.55), point(0.35, 0.75), point(0.65, 0.75)))


# ---------------------------------------------------------------- real MTCNN, run once per module


@pytest.fixture(scope="module")
def cropper():
    with FaceCropper(DETECT, CROP, workers=1) as instance:
        yield instance


@pytest.fixture(scope="module")
def hard_case_files(data_dir) -> list[Path]:
    root = data_dir / "hard-cases"
    return sorted(path for path in root.rglob("*") if path.is_file() and path.parent != root)


@pytest.fixture(scope="module")
def hard_faces(cropper, hard_case_files, data_dir, folder_snapshot) -> dict[str, PhotoFaces]:
    """Every hard case through FaceCropper.faces_in_files, by path relative to hard-cases/."""
    root = data_dir / "hard-cases"
    before = folder_snapshot(root)
    found = list(cropper.faces_in_files(hard_case_files))
    assert [faces.path for faces in found] == [str(path) for path in hard_case_files]  # input order
    assert folder_snapshot(root) == before  # read only
    return {str(Path(faces.path).relative_to(root)): faces for faces in found}


@pytest.fixture(scope="module")
def celebrity_files(data_dir) -> list[Path]:
    root = data_dir / "5-celebrity-faces"
    return sorted(root.glob("*/*/*"))


@pytest.fixture(scope="module")
def celebrity_faces(cropper, celebrity_files) -> list[PhotoFaces]:
    return list(cropper.faces_in_files(celebrity_files))


@pytest.fixture(scope="module")
def celebrity_plain_largest(celebrity_files) -> list[tuple | None]:
    """Largest face (confidence >= 0.9) that plain MTCNN finds in each full-size photo."""
    from mtcnn import MTCNN

    detector = MTCNN()
    largest = []
    for path in celebrity_files:
        faces = [face for face in detector.detect_faces(decode_image(path).pixels) if face["confidence"] >= 0.9]
        largest.append(tuple(max(faces, key=lambda face: face["box"][2] * face["box"][3])["box"]) if faces else None)
    return largest


def test_compiled_mtcnn_networks_find_exactly_what_eager_mtcnn_finds(celebrity_files):
    from mtcnn import MTCNN

    from facecls.detect import FaceDetector, _CompiledNetwork

    compiled = FaceDetector(DETECT)._mtcnn
    assert all(isinstance(stage._model, _CompiledNetwork) for stage in compiled.stages)
    eager = MTCNN()
    assert not any(isinstance(stage._model, _CompiledNetwork) for stage in eager.stages)
    for path in celebrity_files[::12]:
        pixels = decode_image(path).pixels
        ours, theirs = compiled.detect_faces(pixels), eager.detect_faces(pixels)
        assert len(ours) == len(theirs) >= 1, path
        for mine, plain in zip(ours, theirs):
            assert mine["box"] == plain["box"], path
            assert mine["confidence"] == pytest.approx(plain["confidence"], abs=1e-5)


def test_every_five_celebrity_photo_yields_one_square_crop(celebrity_files, celebrity_faces):
    assert len(celebrity_faces) == 118
    for faces in celebrity_faces:
        assert faces.status in ("ok", "multiple_faces"), (faces.path, faces.status, faces.reason)
        assert len(faces.chosen) == 1
        assert faces.chosen[0].crop.shape == (CROP.image_size, CROP.image_size, 3)
        assert faces.chosen[0].crop.dtype == np.uint8


def test_five_celebrity_crop_is_the_largest_face_plain_mtcnn_finds(celebrity_faces, celebrity_plain_largest):
    disagreements = []
    for faces, plain in zip(celebrity_faces, celebrity_plain_largest):
        chosen = faces.chosen[0].detection
        assert chosen.area == max(faces.detections[index].area for index in kept_faces(faces))
        # Detected on a resized copy, mapped back to full resolution: the same box as plain MTCNN's.
        if plain is None or iou(box(chosen), plain) < 0.5:
            disagreements.append((Path(faces.path).name, box(chosen), plain))
    # Plain MTCNN misses a few faces in these small photos that facecls finds on an upscaled copy.
    assert len(disagreements) <= 3, disagreements


def test_five_celebrity_crops_hold_a_centred_face(cropper, celebrity_faces):
    crops = [faces.chosen[0].crop for faces in celebrity_faces]
    found = cropper.detector.detect_many(crops)
    expected_side = CROP.image_size / (1 + 2 * CROP.margin)  # the face box, margin removed
    bad = []
    for faces, detections in zip(celebrity_faces, found):
        # A tight crop of a face (a grainy one: Elton John in glasses) can score under 0.9 on its own.
        confident = [d for d in detections if d.confidence >= 0.7]
        if not confident:
            bad.append((Path(faces.path).name, "no face in the crop"))
            continue
        largest = max(confident, key=lambda d: d.area)
        center = np.array([largest.x + largest.width / 2, largest.y + largest.height / 2])
        if not 0.5 * expected_side <= max(largest.width, largest.height) <= 1.5 * expected_side:
            bad.append((Path(faces.path).name, "face of another size", box(largest)))
        elif np.abs(center - CROP.image_size / 2).max() > 0.15 * CROP.image_size:
            # A face near the photo's edge is shifted off-centre by the clamping.
            bad.append((Path(faces.path).name, "face off-centre", box(largest)))
    assert len(bad) <= 3, bad


def test_crop_is_cut_from_the_full_resolution_photo(celebrity_faces):
    faces = celebrity_faces[0]
    pixels = decode_image(Path(faces.path)).pixels
    expected = crop_face(pixels, faces.chosen[0].detection, CROP)
    np.testing.assert_array_equal(faces.chosen[0].crop, expected)


@pytest.mark.parametrize("name", MULTIPLE_FACE_PHOTOS)
def test_multiple_faces_photos_crop_the_largest(hard_faces, name):
    faces = hard_faces[f"multiple_faces/{name}"]
    kept = kept_faces(faces)
    assert faces.status == "multiple_faces", faces.reason
    assert len(kept) >= 2
    largest = max(kept, key=lambda index: faces.detections[index].area)
    assert indices(faces.chosen) == (largest,)
    assert sorted(indices(faces.others)) == sorted(index for index in kept if index != largest)
    assert all(face.crop.shape == (CROP.image_size, CROP.image_size, 3) for face in faces.others)
    assert "cropped the largest" in faces.reason


@pytest.mark.parametrize("relative", NO_FACE_PHOTOS)
def test_photos_without_a_person_are_no_face(hard_faces, relative):
    faces = hard_faces[relative]
    assert faces.status == "no_face", [d.confidence for d in faces.detections]
    assert faces.faces == ()
    assert faces.width > 0  # decoded fine: no_face, not unreadable


def test_truncated_file_is_unreadable_never_no_face(hard_faces):
    faces = hard_faces["corrupt/truncated.jpg"]
    assert faces.status == "unreadable"
    assert "Truncated File Read" in faces.reason
    assert faces.detections == () and faces.faces == ()


def test_every_other_hard_case_gives_a_crop(hard_faces):
    skipped = set(NO_FACE_PHOTOS) | {"corrupt/truncated.jpg"}
    for relative, faces in hard_faces.items():
        if relative in skipped:
            continue
        assert faces.status in ("ok", "multiple_faces"), (relative, faces.status, faces.reason)
        assert faces.chosen and faces.chosen[0].crop.shape == (CROP.image_size, CROP.image_size, 3)
    assert len(hard_faces) == 29


def test_huge_photo_detections_are_in_full_resolution_coordinates(hard_faces, cropper):
    faces = hard_faces["huge/AFP_337E9GT.jpg"]
    assert (faces.width, faces.height) == (8192, 5464)
    assert faces.status == "multiple_faces"
    confident = [d for d in faces.detections if d.confidence >= DETECT.min_confidence]
    assert len(confident) >= 3  # Messi, Neymar, Mbappé
    for detection in confident:
        assert 0 <= detection.x and detection.x + detection.width <= 8192
        assert 0 <= detection.y and detection.y + detection.height <= 5464
        # Three players in a 44.8 MP frame: faces hundreds of pixels wide, not tens (640-pixel scale).
        assert 150 <= detection.width <= 1500
        eyes = (detection.keypoints.left_eye, detection.keypoints.right_eye)
        assert all(detection.x <= eye.x <= detection.x + detection.width for eye in eyes)
        assert all(detection.y <= eye.y <= detection.y + detection.height for eye in eyes)
    # The crop from the full-size photo really holds a face.
    in_crop = cropper.detector.detect(faces.chosen[0].crop)
    assert any(d.confidence >= DETECT.min_confidence for d in in_crop)


@pytest.mark.slow  # worker processes with the fake detector: test_face_path.py
def test_two_workers_find_what_one_worker_finds(hard_faces, data_dir):
    root = data_dir / "hard-cases"
    handful = [
        "corrupt/truncated.jpg",
        "multiple_faces/couple.jpg",
        "tiny/obama_small.jpg",
        "grayscale/camera.png",
        "no_face/rocket.jpg",
        "wrong_extension/250.jpg",
    ]
    paths = [root / relative for relative in handful]
    # MTCNN batches photos of similar size together, so both sides batch the same photos.
    with FaceCropper(workers=2) as cropper:
        found = list(cropper.faces_in_files(paths, chunk_size=2))
    with FaceCropper(workers=1) as cropper:
        in_process = list(cropper.faces_in_files(paths, chunk_size=2))
    assert [Path(faces.path).relative_to(root).as_posix() for faces in found] == handful
    for faces, alone in zip(found, in_process):
        assert (faces.status, indices(faces.chosen), len(faces.detections)) == (alone.status, indices(alone.chosen), len(alone.detections))
        for ours, theirs in zip(faces.detections, alone.detections):
            np.testing.assert_allclose(box(ours), box(theirs), atol=1.0)
            assert ours.confidence == pytest.approx(theirs.confidence, abs=1e-3)
    assert found[0].status == "unreadable"


def test_face_policies_on_a_real_photo(cropper, data_dir):
    pixels = decode_image(data_dir / "hard-cases" / "multiple_faces" / "couple.jpg").pixels
    results = {
        policy: faces_in_pixels(cropper.detector, [("couple", pixels)], CropSettings(face_policy=policy))[0]
        for policy in ("largest", "most_confident", "all", "skip")
    }
    detections = results["largest"].detections
    kept = kept_faces(results["largest"])
    assert len(kept) == 2
    by_area = sorted(kept, key=lambda index: -detections[index].area)
    assert indices(results["largest"].chosen) == (by_area[0],)
    assert indices(results["most_confident"].chosen) == (max(kept, key=lambda index: detections[index].confidence),)
    assert indices(results["all"].chosen) == tuple(by_area)
    assert results["skip"].chosen == ()
    assert {result.status for result in results.values()} == {"multiple_faces"}
    # Angelina Jolie and Brad Pitt: the two crops are different faces.
    assert not np.array_equal(results["all"].chosen[0].crop, results["all"].chosen[1].crop)


# ---------------------------------------------------------------- choose_faces contract (hand-made detections)

BIG_LESS_SURE = face(100, 100, 200, 220, 0.95)
SMALL_SURE = face(500, 100, 80, 90, 0.999)
MEDIUM = face(300, 300, 120, 130, 0.97)
UNSURE = face(10, 10, 300, 300, 0.5)
SPECK = face(700, 500, 10, 10, 0.999)  # under 4% of the 800-pixel short side


def test_choose_faces_without_detections_is_no_face():
    assert choose_faces([], 1000, 800, DETECT, "largest") == choose_faces([], 1000, 800, DETECT, "all")
    assert choose_faces([], 1000, 800, DETECT, "largest").status == "no_face"


def test_choose_faces_low_confidence_names_the_best_confidence():
    choice = choose_faces([UNSURE, face(0, 0, 50, 50, 0.7)], 1000, 800, DETECT, "largest")
    assert choice.status == "low_confidence"
    assert "0.70" in choice.reason and "0.9" in choice.reason
    assert choice.chosen == ()


def test_choose_faces_only_tiny_faces_is_no_face_with_the_reason():
    choice = choose_faces([SPECK], 1000, 800, DETECT, "largest")
    assert choice.status == "no_face"
    assert "min_face_fraction" in choice.reason
    assert choice.chosen == ()


def test_choose_faces_one_face_passing_the_filters_is_ok():
    choice = choose_faces([UNSURE, SPECK, MEDIUM], 1000, 800, DETECT, "skip")
    assert (choice.status, choice.chosen, choice.others) == ("ok", (2,), ())


@pytest.mark.parametrize(
    "policy, chosen, others",
    [
        ("largest", (0,), (1, 2)),
        ("most_confident", (1,), (0, 2)),
        ("all", (0, 2, 1), ()),  # by area, largest first
        ("skip", (), (0, 1, 2)),
    ],
)
def test_choose_faces_policies(policy, chosen, others):
    detections = [BIG_LESS_SURE, SMALL_SURE, MEDIUM, UNSURE, SPECK]
    choice = choose_faces(detections, 1000, 800, DETECT, policy)
    assert choice.status == "multiple_faces"
    assert choice.chosen == chosen
    assert tuple(sorted(choice.others)) == others  # filtered faces (3, 4) are nobody's crop
    assert choice.reason.startswith("3 faces")


def test_choose_faces_ties_are_broken_by_the_other_criterion():
    twins = [face(0, 0, 100, 100, 0.95), face(300, 0, 100, 100, 0.99)]
    assert choose_faces(twins, 1000, 800, DETECT, "largest").chosen == (1,)
    sure_twins = [face(0, 0, 100, 100, 0.99), face(300, 0, 150, 150, 0.99)]
    assert choose_faces(sure_twins, 1000, 800, DETECT, "most_confident").chosen == (1,)


def test_choose_faces_follows_the_detect_settings():
    loose = DetectSettings(min_confidence=0.4, min_face_fraction=0.0)
    choice = choose_faces([UNSURE, SPECK], 1000, 800, loose, "largest")
    assert (choice.status, choice.chosen) == ("multiple_faces", (0,))


# ---------------------------------------------------------------- square boxes


def test_square_box_centred_away_from_the_edges():
    left, top, side = square_box(face(400, 300, 100, 120, 0.99), 0.25, 1000, 800)
    assert side == 180  # the longer side (120) plus 25% of it on each side
    assert (left + side / 2, top + side / 2) == (450, 360)  # the face's centre


@pytest.mark.parametrize(
    "detection, expected",
    [
        (face(0, 0, 100, 100, 0.99), (0, 0, 150)),  # top-left corner: shifted right and down
        (face(950, 750, 50, 50, 0.99), (925, 725, 75)),  # bottom-right corner: shifted left and up
        (face(-20, 700, 100, 100, 0.99), (0, 650, 150)),  # a box reaching outside the photo
        (face(100, 100, 900, 900, 0.99), (150, 0, 800)),  # bigger than the photo: shrunk to the short side
    ],
)
def test_square_box_is_clamped_inside_the_photo(detection, expected):
    assert square_box(detection, 0.25, 1000, 800) == expected


def test_square_box_always_fits():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(value) for value in rng.integers(20, 2000, 2))
        detection = face(
            float(rng.uniform(-50, width)), float(rng.uniform(-50, height)),
            float(rng.uniform(1, 1.2 * width)), float(rng.uniform(1, 1.2 * height)), 0.99,
        )
        left, top, side = square_box(detection, float(rng.uniform(0, 1)), width, height)
        assert 1 <= side <= min(width, height)
        assert 0 <= left and left + side <= width
        assert 0 <= top and top + side <= height


def test_crop_face_is_image_size_square_from_the_box():
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[100:200, 150:250] = 255  # a white "face"
    crop_pixels = crop_face(pixels, face(150, 100, 100, 100, 0.99), CropSettings(margin=0.5, image_size=64, align=False))
    assert crop_pixels.shape == (64, 64, 3)
    # margin 0.5: the 100-pixel face fills the middle half of a 200-pixel square.
    assert crop_pixels[24:40, 24:40].min() == 255
    assert crop_pixels[:8, :8].max() == 0 and crop_pixels[-8:, -8:].max() == 0


# ---------------------------------------------------------------- the crop stage on a small scrape


@pytest.fixture(scope="module")
def crop_runs(data_dir, tmp_path_factory, folder_snapshot):
    """Ingest a small scrape, then crop it four times: fresh, rerun, new margin (2 workers), old margin."""
    base = tmp_path_factory.mktemp("crop-stage")
    scrape = base / "scrape"
    celebrities = data_dir / "5-celebrity-faces" / "train"
    for person in ("ben_afflek", "madonna"):
        (scrape / person).mkdir(parents=True)
        for photo in sorted((celebrities / person).iterdir())[:3]:
            shutil.copy2(photo, scrape / person / photo.name)
    shutil.copy2(data_dir / "hard-cases" / "no_face" / "rocket.jpg", scrape / "ben_afflek")
    shutil.copy2(data_dir / "hard-cases" / "multiple_faces" / "two_people.jpg", scrape / "madonna")
    shutil.copy2(data_dir / "hard-cases" / "corrupt" / "truncated.jpg", scrape / "madonna")
    scrape_before = folder_snapshot(scrape)
    run = base / "run"
    ingested = ingest(scrape, run)
    out = run / "crop"

    def crop_files():
        return folder_snapshot(out / "faces")

    state = SimpleNamespace(scrape=scrape, out=out, ingested=ingested)
    state.first = crop(scrape, ingested.manifest_path, out)
    state.files_first = crop_files()
    state.second = crop(scrape, ingested.manifest_path, out)
    state.files_second = crop_files()
    state.wider = crop(scrape, ingested.manifest_path, out, crop_settings=CropSettings(margin=0.4), workers=2)
    state.files_wider = crop_files()
    state.back = crop(scrape, ingested.manifest_path, out)
    state.files_back = crop_files()
    state.scrape_unchanged = folder_snapshot(scrape) == scrape_before
    return state


def test_crop_stage_gives_every_usable_photo_a_status(crop_runs):
    first = crop_runs.first
    usable = [record for record in crop_runs.ingested.records if record.status == "ok"]
    assert sorted(photo.path for photo in first.photos) == sorted(record.path for record in usable)
    statuses = {photo.path: photo.status for photo in first.photos}
    assert statuses["ben_afflek/rocket.jpg"] == "no_face"
    # Biden and Obama, in madonna's folder: neither face agrees with her other photos
    assert statuses["madonna/two_people.jpg"] == "wrong_person"
    assert "madonna/truncated.jpg" not in statuses  # unreadable at ingest, never reaches detection
    assert sum(status in ("ok", "multiple_faces") for status in statuses.values()) == 6
    assert first.reused == 0
    # the photos detected now, timed by phase; a rerun that reuses every photo detects nothing
    assert set(first.phase_seconds) == {"decode", "detect", "crop"} and all(first.phase_seconds.values())
    assert crop_runs.second.reused == len(usable) and crop_runs.second.phase_seconds["detect"] == 0


def test_crop_stage_writes_crops_linked_to_their_photo(crop_runs):
    first, out = crop_runs.first, crop_runs.out
    groups = {record.path: record.group for record in crop_runs.ingested.records}
    assert len(first.crops) == 6
    for record in first.crops:
        pixels = decode_image(out / record.crop_path).pixels
        assert pixels.shape == (CROP.image_size, CROP.image_size, 3)
        assert record.crop_path.startswith(f"faces/{record.person}/")
        assert record.group == groups[record.source_path]
    assert (out / "photos.csv").exists() and (out / "crops.csv").exists()


def test_crop_stage_writes_an_identity_chip_beside_every_crop(crop_runs):
    out = crop_runs.out
    others = read_crops_manifest(out / "others.csv")
    assert len(others) == 2  # the two other people in two_people.jpg
    for record in crop_runs.first.crops + others:
        chip_path = chip_path_of(record.crop_path)
        assert chip_path.startswith("chips/") and chip_path.endswith(".png")
        assert decode_image(out / chip_path).pixels.shape == (150, 150, 3)
    # every chip file belongs to a crop: none left over from other settings
    chips = sorted(str(path.relative_to(out)) for path in (out / "chips").rglob("*") if path.is_file())
    assert chips == sorted(chip_path_of(record.crop_path) for record in crop_runs.back.crops + others)


def test_crop_stage_contact_sheets(crop_runs):
    sheets = crop_runs.out / "sheets"
    assert sorted(path.name for path in sheets.iterdir()) == ["ben_afflek.png", "madonna.png"]
    for sheet in sheets.iterdir():
        image = Image.open(sheet)
        assert image.format == "PNG"
        assert image.width == 10 * 96  # ten 96-pixel thumbnails a row


def test_crop_stage_rerun_reuses_every_photo_without_rewriting(crop_runs):
    assert crop_runs.second.reused == len(crop_runs.first.photos) == 8
    assert crop_runs.files_second == crop_runs.files_first  # same bytes and same mtimes
    assert crop_runs.second.crops == crop_runs.first.crops


def test_crop_stage_settings_change_redoes_the_work(crop_runs):
    assert crop_runs.wider.reused == 0
    assert set(crop_runs.files_wider) == set(crop_runs.files_first)
    changed = 0
    for name, (digest, mtime) in crop_runs.files_wider.items():
        assert mtime != crop_runs.files_first[name][1], name  # rewritten
        changed += digest != crop_runs.files_first[name][0]
    # A wider margin gives other pixels, except where the square already filled a small photo.
    assert changed >= len(crop_runs.files_wider) // 2
    # The two-worker run found the same faces as the one-process run.
    assert [(c.source_path, c.face_index) for c in crop_runs.wider.crops] == [
        (c.source_path, c.face_index) for c in crop_runs.first.crops
    ]


def test_crop_stage_going_back_to_earlier_settings_gives_their_crops(crop_runs):
    # The crops on disk must be the ones of the settings asked for, not of the run before.
    digests_back = {name: digest for name, (digest, _) in crop_runs.files_back.items()}
    digests_first = {name: digest for name, (digest, _) in crop_runs.files_first.items()}
    assert digests_back == digests_first


def test_crop_stage_leaves_the_scrape_byte_identical(crop_runs):
    assert crop_runs.scrape_unchanged


def test_crop_stage_with_no_usable_photo_fails_before_detecting(tmp_path):
    manifest = tmp_path / "ingest.csv"
    manifest.write_text(
        "path,person,sha256,format,width,height,status,reason,group,duplicate_of,dhash,dhash_mirror\n"
        "a/x.jpg,a,00,,0,0,unreadable,broken,,,,\n"
    )
    with pytest.raises(FaceclsError, match="lists no usable photo"):
        crop(tmp_path / "scrape", manifest, tmp_path / "crop")  # the crop folder lies outside the scrape
