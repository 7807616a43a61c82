"""Choosing faces: the shared face filter, keypoint geometry, the second look, and the identity
consensus of the crop stage on a small real scrape (real MTCNN, real identity network)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from facecls.config import CropSettings, DetectSettings
from facecls.consensus import (
    CORRECTIONS_NAME, PAIR_DISTANCE, IdentityChoice, PersonConsensus, PhotoCandidates, consensus_warnings,
    person_consensus, read_corrections,
)
from facecls.crop import crop, read_crops_manifest
from facecls.detect import Detection, Keypoints, Point, geometry_problem
from facecls.errors import FaceclsError
from facecls.faces import faces_in_pixels, filter_faces
from facecls.ingest import ingest

SCRAPED = "scraped-celebs-6"
SWEENEY_PHOTOS = ["f374b17b61c59ea1.jpg", "4be26f07e1b86299.jpg", "31c814860398eb43.jpg", "1c0030ae7659d0d7.jpg"]
TRUMP_COLLAGE = "0fe487627f0d6d1c.jpg"  # sydney_sweeney beside a larger Donald Trump
LYING_DOWN = "654e282a6b93bbc6.jpg"  # sydney_sweeney lying on her side
SHIRT = "79de6ff31394a5cd.jpg"  # messi with his shirt over his face: MTCNN's "face" at 0.904 is the shirt
SECOND_LOOK = [
    ("scarlett_johansson", "1b6edde78c5555fd.jpg"),  # a frontal face MTCNN misses at the photo's own size
    ("jennifer_lawrence", "d4ce8c9e3b4148d7.jpg"),  # a frontal face at 0.88 at the first look
]


def detection(x, y, side, confidence, squeezed=False) -> Detection:
    """A hand-made face box; ``squeezed`` puts every keypoint near the nose, as on a face lying sideways."""
    def point(across: float, down: float) -> Point:
        if squeezed:
            across, down = 0.5 + (across - 0.5) * 0.2, 0.5 + (down - 0.5) * 0.2
        return Point(x + across * side, y + down * side)

    return Detection(x, y, side, side, confidence,
                     Keypoints(point(0.3, 0.4), point(0.7, 0.4), point(0.5, 0.55), point(0.35, 0.75), point(0.65, 0.75)))


class FixedDetector:
    """The detector seam: the same hand-made detections for every photo."""

    def __init__(self, detections):
        self.settings = DetectSettings()
        self.detections = detections

    def detect_many(self, photos):
        return [list(self.detections) for _ in photos]


def test_crop_and_classify_keep_faces_with_the_same_filter():
    faces = [
        detection(10, 10, 100, 0.99),  # a face
        detection(150, 10, 100, 0.99, squeezed=True),  # keypoints in no face's shape
        detection(10, 150, 100, 0.85),  # under min_confidence, above candidate_confidence
        detection(300, 300, 5, 0.99),  # too small
        detection(150, 150, 100, 0.75),  # under candidate_confidence
    ]
    pixels = np.zeros((400, 400, 3), np.uint8)
    detector = FixedDetector(faces)
    classify_way = faces_in_pixels(detector, [("photo", pixels)], CropSettings(face_policy="all", image_size=32))[0]
    crop_way = faces_in_pixels(detector, [("photo", pixels)], CropSettings(image_size=32), candidates=True)[0]
    assert tuple(face.index for face in classify_way.chosen) == filter_faces(faces, 400, 400, detector.settings, 0.9).kept == (0,)
    assert tuple(face.index for face in crop_way.chosen) == filter_faces(faces, 400, 400, detector.settings, 0.8).kept == (0, 2)
    assert geometry_problem(faces[1]).startswith("keypoints implausible")
    only_squeezed = filter_faces([faces[1]], 400, 400, detector.settings, 0.9)
    assert (only_squeezed.status, only_squeezed.kept) == ("no_face", ())
    assert "keypoints implausible" in only_squeezed.reason


def test_geometry_check_does_not_depend_on_rotation():
    upright = detection(100, 100, 100, 0.99)
    points = upright.keypoints
    # The same face turned a quarter clockwise about (150, 150): (x, y) -> (300 - y, x).
    turned = Keypoints(*(Point(300 - point.y, point.x) for point in
                         (points.left_eye, points.right_eye, points.nose, points.mouth_left, points.mouth_right)))
    assert geometry_problem(upright) == "" == geometry_problem(dataclasses.replace(upright, keypoints=turned))


# ---------------------------------------------------------------- the identity consensus on a small scrape


@pytest.fixture(scope="module")
def consensus_runs(data_dir, tmp_path_factory):
    """jerry_seinfeld with a photo of madonna and messi's shirt planted in; sydney_sweeney with the
    Trump collage and the lying-down photo; two photos for the second look. Cropped, then cropped
    again with corrections.csv."""
    base = tmp_path_factory.mktemp("consensus")
    scrape = base / "scrape"
    (scrape / "jerry_seinfeld").mkdir(parents=True)
    (scrape / "sydney_sweeney").mkdir(parents=True)
    celebrities = data_dir / "5-celebrity-faces"
    for photo in sorted((celebrities / "train" / "jerry_seinfeld").iterdir())[:5]:
        shutil.copy2(photo, scrape / "jerry_seinfeld" / photo.name)
    intruder = sorted((celebrities / "val" / "madonna").iterdir())[0]
    shutil.copy2(intruder, scrape / "jerry_seinfeld" / "intruder.jpg")
    shutil.copy2(data_dir / SCRAPED / "messi" / SHIRT, scrape / "jerry_seinfeld" / "shirt.jpg")
    for name in SWEENEY_PHOTOS + [TRUMP_COLLAGE, LYING_DOWN]:
        shutil.copy2(data_dir / SCRAPED / "sydney_sweeney" / name, scrape / "sydney_sweeney" / name)
    (scrape / "second_look").mkdir()
    for person, name in SECOND_LOOK:
        shutil.copy2(data_dir / SCRAPED / person / name, scrape / "second_look" / name)
    run = base / "run"
    ingested = ingest(scrape, run)
    out = run / "crop"
    state = SimpleNamespace(out=out, first=crop(scrape, ingested.manifest_path, out, workers=1))
    state.first_photos = {row["path"]: row for row in csv.DictReader(open(out / "photos.csv", newline=""))}
    state.first_others = read_crops_manifest(out / "others.csv")
    kept_out = sorted(path for path, row in state.first_photos.items()
                      if row["person"] == "jerry_seinfeld" and row["status"] == "ok")[0]
    (out / CORRECTIONS_NAME).write_text(f"path,face\n{kept_out},none\nsydney_sweeney/{TRUMP_COLLAGE},0\n")
    state.kept_out = kept_out
    state.second = crop(scrape, ingested.manifest_path, out, workers=1)
    state.second_photos = {row["path"]: row for row in csv.DictReader(open(out / "photos.csv", newline=""))}
    return state


@pytest.mark.parametrize("name", [name for _, name in SECOND_LOOK])
def test_second_look_finds_clear_frontal_faces(consensus_runs, name):
    photo = consensus_runs.first_photos[f"second_look/{name}"]
    found = [Detection.from_dict(data) for data in json.loads(photo["detections"])]
    confident = [face for face in found if face.confidence >= 0.9 and not geometry_problem(face)]
    assert len(confident) == 1
    assert confident[0].height > 0.3 * int(photo["height"])


def test_planted_intruder_is_rejected_with_its_reason(consensus_runs):
    photos = consensus_runs.first_photos
    intruder = photos["jerry_seinfeld/intruder.jpg"]
    assert intruder["status"] == "wrong_person"
    assert intruder["reason"].startswith("no face agrees with jerry_seinfeld's other photos (nearest ")
    assert float(intruder["identity_distance"]) >= 0.5
    crops = [record.source_path for record in consensus_runs.first.crops]
    assert "jerry_seinfeld/intruder.jpg" not in crops
    jerry = [row for path, row in photos.items() if row["person"] == "jerry_seinfeld" and path.startswith("jerry_seinfeld/http")]
    assert [row["status"] for row in jerry] == ["ok"] * 5


def test_false_detection_is_never_a_crop_nor_another_person(consensus_runs):
    shirt = consensus_runs.first_photos["jerry_seinfeld/shirt.jpg"]
    assert shirt["status"] == "wrong_person"
    assert shirt["crops"] == "0"
    others = [record.source_path for record in consensus_runs.first_others]
    assert "jerry_seinfeld/shirt.jpg" not in others  # 0.904: under other_min_confidence


def test_target_face_is_chosen_over_a_larger_bystander(consensus_runs):
    collage = consensus_runs.first_photos[f"sydney_sweeney/{TRUMP_COLLAGE}"]
    assert collage["status"] == "multiple_faces"
    assert collage["chosen_by"] == "consensus"
    assert collage["largest_face"] == "0" and collage["chosen_face"] == "1"
    assert "not the largest" in collage["reason"]
    trump = [record for record in consensus_runs.first_others if record.source_path.endswith(TRUMP_COLLAGE)]
    assert [record.face_index for record in trump] == [0]  # the bystander calibrates unknown


def test_a_face_lying_sideways_is_found_turned_and_kept(consensus_runs):
    lying = consensus_runs.first_photos[f"sydney_sweeney/{LYING_DOWN}"]
    assert lying["status"] == "ok", lying["reason"]
    chosen = Detection.from_dict(json.loads(lying["detections"])[int(lying["chosen_face"])])
    assert geometry_problem(chosen) == ""
    eyes = np.array([chosen.keypoints.right_eye.x - chosen.keypoints.left_eye.x,
                     chosen.keypoints.right_eye.y - chosen.keypoints.left_eye.y])
    assert abs(eyes[1]) > abs(eyes[0])  # the eye line runs up and down the photo: found on the turned photo
    assert float(lying["identity_distance"]) < PAIR_DISTANCE  # agrees with her other photos


def test_user_corrections_take_effect_on_the_rerun(consensus_runs):
    second = consensus_runs.second_photos
    assert consensus_runs.second.reused == len(second)  # no detection again
    excluded = second[consensus_runs.kept_out]
    assert excluded["status"] == "excluded" and excluded["crops"] == "0"
    assert f"{CORRECTIONS_NAME} line 2" in excluded["reason"]
    collage = second[f"sydney_sweeney/{TRUMP_COLLAGE}"]
    assert (collage["chosen_face"], collage["chosen_by"]) == ("0", CORRECTIONS_NAME)
    crops = {(record.source_path, record.face_index) for record in consensus_runs.second.crops}
    assert (f"sydney_sweeney/{TRUMP_COLLAGE}", 0) in crops
    assert not any(path == consensus_runs.kept_out for path, _ in crops)


@pytest.mark.parametrize(
    "text, message",
    [
        ("photo,face\n", "line 1: the header must be 'path,face'"),
        ("path,face\na/1.jpg,left\n", "line 2: face must be a face number (0, 1, ...) or none. Received: 'left'"),
        ("path,face\na/2.jpg,0\n", "line 2: 'a/2.jpg' is not a usable photo of the scrape"),
        ("path,face\na/1.jpg,0\na/1.jpg,none\n", "line 3: 'a/1.jpg' is already on line 2"),
        ("path,face\na/1.jpg\n", "line 2: expected 2 fields (path,face)"),
    ],
)
def test_a_bad_corrections_line_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / CORRECTIONS_NAME
    path.write_text(text)
    with pytest.raises(FaceclsError) as error:
        read_corrections(path, {"a/1.jpg"})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_corrections_read_faces_and_exclusions(tmp_path):
    path = tmp_path / CORRECTIONS_NAME
    path.write_text("path,face\na/1.jpg,2\n\na/3.jpg,NONE\n")
    corrections = read_corrections(path, {"a/1.jpg", "a/3.jpg"})
    assert {name: (item.line, item.face) for name, item in corrections.items()} == {"a/1.jpg": (2, 2), "a/3.jpg": (4, None)}
    assert read_corrections(tmp_path / "absent.csv", set()) == {}


def test_consensus_is_not_swayed_by_bystanders_or_by_near_copies_voting_for_each_other():
    """Descriptors drawn as dlib's are spread: one person's faces about 0.35 apart, two people's about 0.9."""
    rng = np.random.default_rng(0)

    def identity():
        return rng.normal(0, 0.9 / np.sqrt(2 * 128), 128)

    def face_of(centre):
        return centre + rng.normal(0, 0.35 / np.sqrt(2 * 128), 128)

    person, copied = identity(), identity()
    photos = []
    for number in range(8):  # the person, with a larger stranger beside them in half the photos
        faces = [face_of(identity()), face_of(person)] if number % 2 else [face_of(person)]
        photos.append(PhotoCandidates(f"p{number}.jpg", f"p{number}", tuple(range(len(faces))), (0.99,) * len(faces),
                                      np.stack(faces)))
    for number in range(9):  # one photo of someone else, in 9 near-copies: one duplicate group
        photos.append(PhotoCandidates(f"copy{number}.jpg", "copies", (0,), (0.99,), face_of(copied)[None]))
    result = person_consensus("someone", photos, CropSettings())
    assert [choice.chosen for choice in result.choices[:8]] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert [choice.chosen for choice in result.choices[8:]] == [None] * 9
    assert all(choice.nearest > 0.7 for choice in result.choices[8:])
    assert result.agreeing == 8


def test_warnings_name_a_folder_that_disagrees_or_is_another_person():
    def consensus(person, agreeing, total, centre):
        choices = tuple(IdentityChoice(f"{person}/{number}.jpg", 0 if number < agreeing else None, (0.3,), ())
                        for number in range(total))
        return PersonConsensus(person, choices, agreeing, np.asarray(centre, dtype=float))

    people = [
        consensus("ada", 40, 40, [0.0, 0.0]),
        consensus("bea", 12, 30, [1.0, 0.0]),  # mostly not one identity
        consensus("cleo", 6, 7, [0.0, 1.0]),  # too few photos
        consensus("dora", 35, 36, [0.1, 0.0]),  # the same identity as ada
    ]
    warnings = consensus_warnings(people, {"ada": 40, "bea": 30, "cleo": 7, "dora": 36})
    assert len(warnings) == 3
    assert warnings[0].startswith("bea: only 12 of 30 photos with a face agree with one another")
    assert warnings[1].startswith("cleo: only 6 photos agree with one another (of 7 with a face)")
    assert warnings[2].startswith("ada and dora: their photos show one identity (0.10 apart")
    assert all("\n" not in warning for warning in warnings)
