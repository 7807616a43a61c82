"""Who is named, photo by photo: five rules side by side on the same splits of the shared photos.

Known people: pairs and triples of scraped-celebs-6 (``GROUPS``), each split as ``facecls
run`` splits (curate, seeded; ``--seeds`` splits per group) and trained with the default
``TrainSettings``. Strangers, people the model never saw: the other scraped-celebs-6 people,
every 5-celebrity photo and the hard-cases photos that show nobody of the group. Faces are
whatever the crop stage produces (every face that passes its filters), so the table measures
the face choice of the day.

Rules (columns):
- ``mobilenet``: MobileNetV2's most probable person, every face named;
- ``identity``: the nearest training descriptor of any known person, named within dlib's 0.6;
- ``today``: the open set before format 2 (each person's mean descriptor; unknown under the
  threshold that keeps 95% of the val+test faces), MobileNetV2 naming the most probable of the
  plausible people;
- ``new``: ``facecls.openset`` as ``facecls run`` calibrates it (train faces as references,
  the other faces of the train and val photos as negatives);
- ``face_recognition``: its KNN example: dlib's HOG detector (one upsampling), the 68-point
  landmarks, dlib's descriptors of the train photos with exactly one face, KNN with k =
  round(sqrt(n)), a name only within 0.6. Photos over 2000 px a side are shrunk to 2000 first
  (as ingest bounds what MTCNN sees); a file PIL cannot open has no face.

Rows: known test photos right by the largest face, and by the photo rule (the person named on
some face, no other known person named on any); stranger photos (with a face) where nobody is
named; bystanders (the other faces of known test photos) named as a known person; seconds of
training (MobileNetV2 train_model, or the KNN fit; calibration included for the open sets).

Usage: .venv/bin/python benchmarks/bench_identity.py [--seeds 2] [--out benchmarks/out/identity]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from facecls.config import CropSettings, CurateSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.crop import CropRecord, chip_path_of, crop, read_crops_manifest  # noqa: E402
from facecls.curate import curate  # noqa: E402
from facecls.ingest import ingest  # noqa: E402
from facecls.manifest import field_names, read_csv, write_csv  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SIX = SHARED / "data" / "scraped-celebs-6"
FIVE = SHARED / "data" / "5-celebrity-faces"
HARD = SHARED / "data" / "hard-cases"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
GROUPS = (
    ("angelina_jolie", "brad_pitt"),
    ("jennifer_lawrence", "scarlett_johansson"),
    ("messi", "sydney_sweeney"),
    ("angelina_jolie", "jennifer_lawrence", "scarlett_johansson"),  # three look-alike actresses
    ("brad_pitt", "messi", "sydney_sweeney"),
)
# Hard cases that show one of the scraped-celebs-6 people are never strangers for a group holding
# them: those scraped from their folders (manifest source_path) and those the descriptions name.
HARD_NAMED = {"couple.jpg": ("angelina_jolie", "brad_pitt"), "selfie-many-people.jpg": ("angelina_jolie", "brad_pitt")}
HARD_FOLDER_WORDS = {"messi": "messi", "sydney": "sydney_sweeney", "jolie": "angelina_jolie", "pitt": "brad_pitt",
                     "lawrence": "jennifer_lawrence", "scarlett": "scarlett_johansson"}


def hard_shows() -> dict[str, tuple[str, ...]]:
    shows = dict(HARD_NAMED)
    for row in read_csv(HARD / "manifest.csv"):
        folder = row["source_path"].lower()
        people = tuple(person for word, person in HARD_FOLDER_WORDS.items() if word in folder)
        shows[row["file"]] = shows.get(row["file"], ()) + people
    return shows


RULES = ("mobilenet", "identity", "today", "new", "face_recognition")
# --variants: the new rule with one setting changed at a time (prior distance, neighbours, who names
# among the possible people: MobileNetV2, or the identity score alone, or their product).
VARIANTS = {
    "new k=1": (0.6, 1, 0.95, "mobilenet"), "new k=2": (0.6, 2, 0.95, "mobilenet"),
    "new prior 0.55": (0.55, 3, 0.95, "mobilenet"), "new prior 0.58": (0.58, 3, 0.95, "mobilenet"),
    "new floor 1.0": (0.6, 3, 1.0, "mobilenet"), "new no negatives": (0.6, 3, None, "mobilenet"),
    "new own photos tighten": (0.6, 3, 0.95, "mobilenet"),
    "new named by identity": (0.6, 3, 0.95, "identity"), "new named by product": (0.6, 3, 0.95, "product"),
}
DLIB_DISTANCE = 0.6  # face_recognition's tolerance, and dlib's documented same-person distance
DLIB_LONGEST_SIDE = 2000
TEST_FRACTION = 0.3  # more test photos per split than run's 0.15: ~9 per person


@dataclass(frozen=True)
class Face:
    crop_path: str
    area: float
    target: bool  # the face the crop stage chose for the photo's person


@dataclass(frozen=True)
class Photo:
    key: str  # "<set>/<source path>"
    set_name: str
    person: str
    source: Path  # the file
    faces: tuple[Face, ...]  # largest first


def prepare(scrape: Path, out: Path) -> Path:
    ingested = ingest(scrape, out)
    crop(scrape, ingested.manifest_path, out / "crop", DetectSettings(), CropSettings())
    return out / "crop"


def photos_of(set_name: str, scrape: Path, crops_dir: Path) -> list[Photo]:
    faces: dict[str, list[Face]] = defaultdict(list)
    people: dict[str, str] = {}
    for manifest, target in (("crops.csv", True), ("others.csv", False)):
        for record in read_crops_manifest(crops_dir / manifest):
            faces[record.source_path].append(Face(f"{set_name}:{record.crop_path}", record.width * record.height, target))
    for row in read_csv(crops_dir / "photos.csv"):
        people[row["path"]] = row["person"]
    return [
        Photo(f"{set_name}/{path}", set_name, person, scrape / path,
              tuple(sorted(faces.get(path, []), key=lambda face: -face.area)))
        for path, person in sorted(people.items())
    ]


def identity_descriptors(crop_folders: dict[str, Path], cache: Path) -> dict[str, np.ndarray]:
    """Identity descriptor of every face (chosen and other) of every crop folder, by "<set>:<crop path>"."""
    from facecls.identity import IdentityEncoder
    from facecls.images import read_rgb

    names, folders = [], []
    for set_name, folder in crop_folders.items():
        for manifest in ("crops.csv", "others.csv"):
            for record in read_crops_manifest(folder / manifest):
                names.append(f"{set_name}:{record.crop_path}")
                folders.append((folder, record.crop_path))
    if cache.exists():
        with np.load(cache) as stored:
            if list(stored["names"]) == names:
                return dict(zip(names, stored["descriptors"]))
    chips = np.stack([read_rgb(folder / chip_path_of(path)) for folder, path in folders])
    descriptors = IdentityEncoder().embed(chips)
    np.savez(cache, names=np.array(names), descriptors=descriptors)
    return dict(zip(names, descriptors))


def dlib_faces(photos: list[Photo], cache: Path) -> dict[str, list[dict]]:
    """face_recognition's detections and descriptors per photo: [{"box": [top, right, bottom, left], "descriptor": [...]}]."""
    import dlib
    import face_recognition_models
    from PIL import Image

    done = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [photo for photo in photos if photo.key not in done]
    if todo:
        detector = dlib.get_frontal_face_detector()
        shapes = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        encoder = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        for number, photo in enumerate(todo):
            try:
                image = Image.open(photo.source)
                image = image.convert("RGB")
            except Exception:
                done[photo.key] = []
                continue
            scale = min(1.0, DLIB_LONGEST_SIDE / max(image.size))
            if scale < 1.0:
                image = image.resize((round(image.width * scale), round(image.height * scale)))
            pixels = np.asarray(image)
            faces = []
            for box in detector(pixels, 1):
                descriptor = encoder.compute_face_descriptor(pixels, shapes(pixels, box), 1)
                faces.append({"box": [box.top() / scale, box.right() / scale, box.bottom() / scale, box.left() / scale],
                              "descriptor": list(descriptor)})
            done[photo.key] = faces
            if number % 20 == 0:
                print(f"  face_recognition: {number + 1}/{len(todo)} photos", file=sys.stderr, flush=True)
                cache.write_text(json.dumps(done))
        cache.write_text(json.dumps(done))
    return done


def today_rule(train_x, train_y, held_x, held_p, held_y, count, faces_x, faces_p):
    """The open set before format 2: person means, a share score, the 95%-recall threshold on val+test."""
    means = np.stack([train_x[train_y == person].mean(axis=0) for person in range(count)])
    reference = np.sort(np.linalg.norm(held_x - means[held_y], axis=1))
    steps = np.unique(reference)
    shares = 1.0 - np.searchsorted(reference, steps, side="left") / reference.size

    def scores(x):
        distances = np.linalg.norm(x[:, None, :] - means[None], axis=2)
        return np.interp(distances, steps, shares, left=1.0, right=0.0)

    own = scores(held_x)[np.arange(len(held_y)), held_y]
    threshold = float(np.sort(own)[int(np.floor(0.05 * own.size + 1e-9))])
    possible = scores(faces_x) >= threshold
    named = np.argmax(np.where(possible, faces_p, -1.0), axis=1)
    return np.where(possible.any(axis=1), named, -1)


def identity_rule(train_x, train_y, faces_x):
    distances = np.linalg.norm(faces_x[:, None, :] - train_x[None], axis=2)
    nearest = np.argmin(distances, axis=1)
    return np.where(distances[np.arange(len(faces_x)), nearest] <= DLIB_DISTANCE, train_y[nearest], -1)


def knn_rule(train_x, train_y, faces_x):
    """face_recognition's examples/face_recognition_knn.py: distance-weighted KNN, unknown beyond 0.6."""
    from sklearn.neighbors import KNeighborsClassifier

    if len(faces_x) == 0:
        return np.zeros(0, int)
    neighbours = int(round(math.sqrt(len(train_x))))
    knn = KNeighborsClassifier(n_neighbors=neighbours, algorithm="ball_tree", weights="distance").fit(train_x, train_y)
    closest = knn.kneighbors(faces_x, n_neighbors=1)[0][:, 0]
    return np.where(closest <= DLIB_DISTANCE, knn.predict(faces_x), -1)


def boxes_overlap(dlib_box, face_record: CropRecord) -> bool:
    top, right, bottom, left = dlib_box
    x0, y0 = max(left, face_record.x), max(top, face_record.y)
    x1, y1 = min(right, face_record.x + face_record.width), min(bottom, face_record.y + face_record.height)
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (right - left) * (bottom - top) + face_record.width * face_record.height - inter
    return inter / max(union, 1e-9) >= 0.3


class Tally:
    def __init__(self):
        self.counts = defaultdict(lambda: [0, 0])
        self.seconds: list[float] = []

    def add(self, row: str, good: bool) -> None:
        self.counts[row][0] += int(good)
        self.counts[row][1] += 1

    def cell(self, row: str) -> str:
        good, total = self.counts[row]
        return f"{good / total:.3f} ({good}/{total})" if total else "n/a"


def evaluate_split(group, seed, six_crops, photos, descriptors, dlib_results, target_records, out, tallies, details,
                   rules=RULES):
    from facecls.modeldir import load_model_dir
    from facecls.images import read_rgb
    from facecls.model import predict_batched
    from facecls.openset import DECISION_THRESHOLD, calibrate_arrays
    from facecls.train import train_model

    labels = tuple(sorted(group))
    index = {person: number for number, person in enumerate(labels)}
    folder = out / "splits" / f"{'+'.join(labels)}-{seed}"
    manifest = folder / "crops.csv"
    group_crops = [record for record in read_crops_manifest(six_crops / "crops.csv") if record.person in labels]
    write_csv(manifest, group_crops, field_names(CropRecord))
    curated = curate(manifest, folder / "curate", CurateSettings(seed=seed, test_fraction=TEST_FRACTION))
    split_of = {item.source_path: item.split for item in curated.items}
    model_dir = folder / "model"
    cache = folder / "probabilities.npz"  # a rerun (another rule) reuses the model and its outputs
    if not cache.exists():
        started = time.perf_counter()
        train_model(curated.items, six_crops, TrainSettings(weights=str(WEIGHTS), seed=seed), model_dir, CropSettings(),
                    DetectSettings())
        mobilenet_seconds = time.perf_counter() - started
    else:
        with np.load(cache) as stored:
            mobilenet_seconds = float(stored["seconds"])

    def key(path):
        return f"six:{path}"

    unflipped = [item for item in curated.items if not item.flipped]
    train_items = [item for item in unflipped if item.split == "train"]
    held_items = [item for item in unflipped if item.split in ("val", "test")]
    train_x = np.stack([descriptors[key(item.crop_path)] for item in train_items])
    train_y = np.array([index[item.person] for item in train_items])

    shown = hard_shows()
    # collages of one person (manifest review notes): their other face is no bystander
    same_person = {row["file"] for row in read_csv(SIX / "manifest.csv") if "same person" in row["review_note"]}
    # Which photos: the group's test photos (known), and every photo of a person outside it (strangers).
    known = [photo for photo in photos if photo.set_name == "six" and photo.person in labels
             and split_of.get(photo.key.split("/", 1)[1]) == "test"]
    strangers = [photo for photo in photos
                 if (photo.set_name == "six" and photo.person not in labels) or photo.set_name == "five"
                 or (photo.set_name == "hard" and not set(shown.get(photo.source.name, ())) & set(labels))]
    faces = sorted({face.crop_path for photo in known + strangers for face in photo.faces}
                   | {key(item.crop_path) for item in held_items})
    position = {name: number for number, name in enumerate(faces)}
    faces_x = np.stack([descriptors[name] for name in faces])
    crop_folders = {"six": six_crops, "five": out / "five" / "crop", "hard": out / "hard" / "crop"}
    stored = dict(np.load(cache)) if cache.exists() else {}
    if list(stored.get("names", [])) == faces:
        faces_p = stored["probabilities"]
    else:
        pixels = np.stack([read_rgb(crop_folders[name.split(":", 1)[0]] / name.split(":", 1)[1]) for name in faces])
        faces_p = predict_batched(load_model_dir(model_dir).model, pixels)
        np.savez(cache, names=np.array(faces), probabilities=faces_p, seconds=mobilenet_seconds)

    # the open set of today, calibrated on val+test as it was
    held = [position[key(item.crop_path)] for item in held_items]
    held_y = np.array([index[item.person] for item in held_items])
    started = time.perf_counter()
    named = {
        "mobilenet": np.argmax(faces_p, axis=1),
        "identity": identity_rule(train_x, train_y, faces_x),
        "today": today_rule(train_x, train_y, faces_x[held], faces_p[held], held_y, len(labels), faces_x, faces_p),
    }
    today_seconds = time.perf_counter() - started
    # the new open set, as facecls run calibrates it: negatives are the other faces of train and val photos
    negative_records = [record for record in read_crops_manifest(six_crops / "others.csv")
                        if record.person in labels and split_of.get(record.source_path) in ("train", "val")]
    negatives_x = np.stack([descriptors[key(record.crop_path)] for record in negative_records]).reshape(-1, train_x.shape[1])
    negatives_y = np.array([index[record.person] for record in negative_records], dtype=int)
    started = time.perf_counter()
    model, calibration = calibrate_arrays(labels, train_x, train_y, negatives_x, negatives_y)
    named["new"] = model.decide(faces_x, faces_p, DECISION_THRESHOLD)[0]
    new_seconds = time.perf_counter() - started
    for variant in set(rules) & set(VARIANTS):
        prior, neighbours, recall, naming = VARIANTS[variant]
        persons = np.full(len(negatives_y), -1) if variant == "new own photos tighten" else negatives_y
        other, _ = calibrate_arrays(labels, train_x, train_y, negatives_x if recall else negatives_x[:0],
                                    persons if recall else persons[:0], prior_distance=prior, neighbours=neighbours,
                                    target_recall=recall or 0.95)
        scores = other.person_scores(faces_x)
        weights = {"mobilenet": faces_p, "identity": scores, "product": faces_p * scores}[naming]
        named[variant] = other.decide(faces_x, weights, DECISION_THRESHOLD)[0]
    details.append({"group": labels, "seed": seed, "distances": model.person_distances.round(3).tolist(),
                    "loo_recall": calibration.known_recall, "negatives_rejected": calibration.stranger_rejection,
                    "references": len(model.references), "outliers": calibration.outliers})

    # face_recognition: train photos of the group with exactly one HOG face
    started = time.perf_counter()
    train_photos = {item.source_path: item.person for item in train_items}
    knn_x, knn_y = [], []
    for path, person in train_photos.items():
        found = dlib_results[f"six/{path}"]
        if len(found) == 1:
            knn_x.append(found[0]["descriptor"])
            knn_y.append(index[person])
    knn_x, knn_y = np.array(knn_x), np.array(knn_y)
    knn_seconds = time.perf_counter() - started
    seconds = {"mobilenet": mobilenet_seconds, "identity": 0.0, "today": mobilenet_seconds + today_seconds,
               "new": mobilenet_seconds + new_seconds, "face_recognition": knn_seconds}
    for rule in rules:
        tallies[rule].seconds.append(seconds.get(rule, seconds["new"]))

    def decided(rule, photo) -> tuple[list[int], list[bool]]:
        """(person index or -1 per face, whether each face is the target) for one photo, largest first."""
        if rule != "face_recognition":
            return ([int(named[rule][position[face.crop_path]]) for face in photo.faces],
                    [face.target for face in photo.faces])
        found = sorted(dlib_results[photo.key], key=lambda face: -(face["box"][1] - face["box"][3]) * (face["box"][2] - face["box"][0]))
        people = knn_rule(knn_x, knn_y, np.array([face["descriptor"] for face in found])).tolist() if found else []
        target = target_records.get(photo.key)
        return people, [target is not None and boxes_overlap(face["box"], target) for face in found]

    for rule in rules:
        tally = tallies[rule]
        for photo in known:
            people, targets = decided(rule, photo)
            truth = index[photo.person]
            tally.add("known photos right, largest face", bool(people) and people[0] == truth)
            tally.add("known photos right, photo rule", truth in people and all(p in (truth, -1) for p in people))
            if photo.source.name not in same_person:
                for person, target in zip(people, targets):
                    if not target:
                        tally.add("bystanders named", person >= 0)
        for photo in strangers:
            if photo.faces or rule == "face_recognition":
                people, _ = decided(rule, photo)
                if people or photo.faces:
                    tally.add("stranger photos, nobody named", all(person < 0 for person in people))
    # what the new rule got wrong, for calibrations.json: each face's distance to each person's references
    distances = model.neighbour_distances(faces_x)
    details[-1]["known_missed"] = [
        {"photo": photo.key, "faces": [[round(float(d), 3) for d in distances[position[face.crop_path]]] for face in photo.faces]}
        for photo in known if [int(named["new"][position[face.crop_path]]) for face in photo.faces][:1] != [index[photo.person]]]
    details[-1]["strangers_named"] = [
        {"photo": photo.key, "faces": [[round(float(d), 3) for d in distances[position[face.crop_path]]] for face in photo.faces]}
        for photo in strangers if any(named["new"][position[face.crop_path]] >= 0 for face in photo.faces)]
    details[-1]["bystanders_named"] = [
        {"photo": photo.key, "face": face.crop_path, "distances": [round(float(d), 3) for d in distances[position[face.crop_path]]]}
        for photo in known if photo.source.name not in same_person for face in photo.faces
        if not face.target and named["new"][position[face.crop_path]] >= 0]
    print(f"  {'+'.join(labels)} seed {seed}: " + ", ".join(
        f"{rule} {tallies[rule].cell('stranger photos, nobody named').split()[0]}" for rule in rules), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/identity"))
    parser.add_argument("--variants", action="store_true", help="also the new rule with other settings (VARIANTS)")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    folders = {"six": prepare(SIX, args.out / "six"), "five": prepare(FIVE, args.out / "five"),
               "hard": prepare(HARD, args.out / "hard")}
    scrapes = {"six": SIX, "five": FIVE, "hard": HARD}
    photos = [photo for name, folder in folders.items() for photo in photos_of(name, scrapes[name], folder)]
    descriptors = identity_descriptors(folders, args.out / "identity.npz")
    dlib_results = dlib_faces(photos, args.out / "face_recognition.json")
    target_records = {f"six/{record.source_path}": record for record in read_crops_manifest(folders["six"] / "crops.csv")}
    rules = RULES + (tuple(VARIANTS) if args.variants else ())
    tallies = {rule: Tally() for rule in rules}
    details: list[dict] = []
    for group in GROUPS:
        for seed in range(args.seeds):
            evaluate_split(group, seed, folders["six"], photos, descriptors, dlib_results, target_records, args.out,
                           tallies, details, rules)
    (args.out / "calibrations.json").write_text(json.dumps(details, indent=1))
    print()
    print(f"{len(GROUPS)} groups x {args.seeds} seeds; photos counted once per split")
    print("| | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for row in ("known photos right, largest face", "known photos right, photo rule", "stranger photos, nobody named",
                "bystanders named"):
        print(f"| {row} | " + " | ".join(tallies[rule].cell(row) for rule in rules) + " |")
    print("| training s per split | " + " | ".join(f"{np.mean(tallies[rule].seconds):.1f}" for rule in rules) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
