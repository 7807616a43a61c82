"""How well the identity consensus catches intruders, and what choosing faces by it does to accuracy.

The scrape: scraped-celebs-6 with intruders planted into every person's folder:
- 3 photos of people from 5-celebrity-faces (strangers to the set), a different one each time;
- 1 photo of another scraped-celebs-6 person, moved out of that person's folder (a known intruder);
- 1 multi-face photo from hard-cases/multiple_faces (other people only) for the first five people.

Photos of the scrape's own that show no face of the person (the review notes of its manifest:
a back view, a shirt pulled over the face) count as rightly caught, not as false alarms.

The crop stage runs once with ``face_policy consensus``; ``largest`` decides from the same cached
detections (the cache does not depend on the face policy). Printed:
- intruders caught (no training face from the photo): precision and recall;
- every photo of the scrape's own that consensus rejected, with its reason (the false alarms);
- how often the chosen face differs from the largest;
- MobileNetV2 test accuracy trained on each policy's crops, on one split of the photos (the
  split is drawn once over the duplicate groups and used by both), for ``--seeds`` splits:
  each model on its own test crops, and both on the same test faces (the consensus face of
  every test photo that is not an intruder).

Usage: .venv/bin/python benchmarks/bench_consensus.py [--seeds 3] [--out benchmarks/out/consensus]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from facecls.config import CropSettings, CurateSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.crop import crop, read_crops_manifest  # noqa: E402
from facecls.curate import SplitItem, balance_training, split_groups  # noqa: E402
from facecls.evaluate import evaluate_crops, load_split_crops  # noqa: E402
from facecls.ingest import ingest  # noqa: E402
from facecls.modeldir import load_model_dir  # noqa: E402
from facecls.train import train_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIVE = SHARED / "data" / "5-celebrity-faces"
SIX = SHARED / "data" / "scraped-celebs-6"
MULTI = SHARED / "data" / "hard-cases" / "multiple_faces"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
NOT_TRAINED = ("wrong_person", "low_confidence", "no_face", "excluded")
FACE_NOT_VISIBLE = "face not visible"  # review note in scraped-celebs-6's manifest.csv


def plant(out: Path, planting: bool = True) -> tuple[Path, set[str]]:
    """Build the planted scrape (``planting`` False: scraped-celebs-6 as it is); returns its folder
    and the paths of the intruders in it."""
    scrape = out / "scrape"
    if scrape.exists():
        shutil.rmtree(scrape)
    people = sorted(path.name for path in SIX.iterdir() if path.is_dir())
    strangers = sorted(FIVE.glob("*/*/*.*"))
    multi = sorted(MULTI.iterdir())
    intruders: set[str] = set()
    moved = {person: sorted((SIX / person).iterdir())[-1] if planting else None for person in people}
    for number, person in enumerate(people):
        folder = scrape / person
        folder.mkdir(parents=True)
        for photo in sorted((SIX / person).iterdir()):
            if photo != moved[person]:
                shutil.copy2(photo, folder / photo.name)
        if not planting:
            continue
        planted = [strangers[(number * 3 + index) * 7 % len(strangers)] for index in range(3)]
        planted.append(moved[people[(number + 1) % len(people)]])
        if number < len(multi):
            # Shifted by one: couple.jpg and the group selfie show angelina_jolie and brad_pitt.
            planted.append(multi[(number + 1) % len(multi)])
        for index, photo in enumerate(planted):
            name = f"planted-{index}-{photo.name}"
            shutil.copy2(photo, folder / name)
            intruders.add(f"{person}/{name}")
    return scrape, intruders


def photos_of(crops_dir: Path) -> dict[str, dict]:
    with open(crops_dir / "photos.csv", newline="", encoding="utf-8") as file:
        return {row["path"]: row for row in csv.DictReader(file)}


def split_items(crops, assignment: dict[str, str], seed: int) -> list[SplitItem]:
    """Items of ``crops`` in the given split of the groups, balanced and flipped as curate does."""
    by_split: dict[str, list[SplitItem]] = {"train": [], "val": [], "test": []}
    for record in crops:
        split = assignment[record.group]
        by_split[split].append(SplitItem(record.crop_path, record.person, record.source_path, record.group, split, False))
    train, _, _ = balance_training(by_split["train"], "weight", seed)
    train = train + [dataclasses.replace(item, flipped=True) for item in train]
    return train + by_split["val"] + by_split["test"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/consensus"))
    parser.add_argument("--no-plant", action="store_true", help="scraped-celebs-6 as it is: only the accuracy side by side")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING)
    scrape, intruders = plant(args.out, planting=not args.no_plant)
    ingested = ingest(scrape, args.out / "run")
    crops_dirs = {"consensus": args.out / "run" / "consensus", "largest": args.out / "run" / "largest"}
    started = time.perf_counter()
    crop(scrape, ingested.manifest_path, crops_dirs["consensus"], DetectSettings(), CropSettings())
    print(f"crop with consensus: {time.perf_counter() - started:.0f} s", flush=True)
    # The largest policy decides from the same cached detections: share the cache.
    if crops_dirs["largest"].exists():
        shutil.rmtree(crops_dirs["largest"])
    shutil.copytree(crops_dirs["consensus"] / "cache", crops_dirs["largest"] / "cache", copy_function=os.link)
    largest = crop(scrape, ingested.manifest_path, crops_dirs["largest"], DetectSettings(), CropSettings(face_policy="largest"))
    assert largest.reused == len(largest.photos)

    photos = {policy: photos_of(folder) for policy, folder in crops_dirs.items()}
    usable = set(photos["consensus"])
    planted = intruders & usable
    with open(SIX / "manifest.csv", newline="", encoding="utf-8") as file:
        faceless = {f"{row['class']}/{row['file']}" for row in csv.DictReader(file)
                    if row["review_note"].startswith(FACE_NOT_VISIBLE)} & usable
    print(f"\n{len(usable)} usable photos, {len(planted)} planted intruders "
          f"({len(intruders) - len(planted)} more were duplicates or unusable at ingest)")
    print(f"{len(faceless)} photos of the scrape show no face of their person: {', '.join(sorted(faceless))}")
    print("| policy | intruders caught | recall | photos not trained on | of them right (intruders, no face) | precision |")
    print("|---|---|---|---|---|---|")
    for policy, rows in photos.items():
        rejected = {path for path, row in rows.items() if row["status"] in NOT_TRAINED}
        caught = rejected & planted
        right = rejected & (planted | faceless)
        print(f"| {policy} | {len(caught)} of {len(planted)} | {len(caught) / max(len(planted), 1):.3f} | {len(rejected)} | "
              f"{len(right)} | {len(right) / max(len(rejected), 1):.3f} |")
    consensus_rows = photos["consensus"]
    missed = sorted(path for path in planted if consensus_rows[path]["status"] not in NOT_TRAINED)
    print("\nintruders consensus trained on:", ", ".join(f"{path} ({consensus_rows[path]['status']})" for path in missed) or "none")
    print("photos of the scrape's own that consensus did not train on:")
    for path, row in sorted(consensus_rows.items()):
        if path not in planted | faceless and row["status"] in NOT_TRAINED:
            print(f"  {path}: {row['status']}: {row['reason']}")
    kept = [row for row in consensus_rows.values() if row["chosen_face"] != ""]
    differs = [row for row in kept if row["largest_face"] not in ("", row["chosen_face"])]
    several = [row for row in kept if row["status"] == "multiple_faces"]
    print(f"\nchosen face differs from the largest: {len(differs)} of {len(kept)} trained photos "
          f"({len(differs)} of {len(several)} multi-face photos): " + ", ".join(row["path"] for row in differs))

    crops = {policy: read_crops_manifest(folder / "crops.csv") for policy, folder in crops_dirs.items()}
    accuracy: dict[str, list[float]] = {"consensus own": [], "largest own": [], "consensus common": [], "largest common": []}
    seconds: dict[str, list[float]] = {"consensus": [], "largest": []}
    for seed in range(args.seeds):
        # One split over the groups of every photo with a face under either policy.
        assignment = split_groups(crops["largest"] + crops["consensus"], CurateSettings(seed=seed))
        items = {policy: split_items(crops[policy], assignment, seed) for policy in crops_dirs}
        common = [item for item in items["consensus"] if item.split == "test" and item.source_path not in planted]
        common_crops = load_split_crops(common, crops_dirs["consensus"], "test")
        for policy, folder in crops_dirs.items():
            model_dir = args.out / f"model-{policy}-{seed}"
            # Head only (no fine-tuning): the comparison is of the training faces, at a cost a benchmark can pay.
            settings = TrainSettings(weights=str(WEIGHTS), fine_tune_from="", fine_tune_epochs=0, seed=seed)
            started = time.perf_counter()
            train_model(items[policy], folder, settings, model_dir, CropSettings(face_policy=policy), DetectSettings())
            seconds[policy].append(time.perf_counter() - started)
            loaded = load_model_dir(model_dir)
            own = evaluate_crops(loaded, load_split_crops(items[policy], folder, "test"), args.out / f"test-{policy}-{seed}")
            same = evaluate_crops(loaded, common_crops, args.out / f"common-{policy}-{seed}")
            accuracy[f"{policy} own"].append(own.accuracy)
            accuracy[f"{policy} common"].append(same.accuracy)
            print(f"  seed {seed} {policy}: own test {own.accuracy:.3f} ({own.correct}/{own.count}), "
                  f"common test {same.accuracy:.3f} ({same.correct}/{same.count})", flush=True)
    print("\n| training faces | test accuracy, own test crops (mean, min) | test accuracy, common true faces (mean, min) | train s |")
    print("|---|---|---|---|")
    for policy in crops_dirs:
        own, same = accuracy[f"{policy} own"], accuracy[f"{policy} common"]
        print(f"| {policy} | {statistics.mean(own):.3f}, {min(own):.3f} | {statistics.mean(same):.3f}, {min(same):.3f} | "
              f"{statistics.mean(seconds[policy]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
