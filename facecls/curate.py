"""Stage 3, curate: split the face crops into train / val / test, balance, add flips.

Splitting happens before anything is flipped or repeated, and by duplicate group: every
crop of a photo, every near-duplicate of it (ingest's ``group``) and every flip of them land
in one split, so a test face never has a mirror image or a re-encoded copy in training.
The split is stratified by person and seeded.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from facecls.config import CurateSettings, settings_to_dict
from facecls.crop import CropRecord
from facecls.errors import FaceclsError
from facecls.layout import CURATE_SUMMARY, SPLITS_MANIFEST
from facecls.manifest import output_lock, read_csv, write_stage_outputs

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_TRAIN_GROUPS = 2


@dataclass(frozen=True)
class SplitItem:
    """One face crop assigned to a split: the training input, one row of ``splits.csv``."""

    crop_path: str  # relative to the crop stage's folder
    person: str
    source_path: str  # the original photo, relative to the scrape
    group: str  # duplicate group; never straddles splits
    split: str  # train | val | test
    flipped: bool  # the horizontal mirror of crop_path (train only)
    weight: float = 1.0  # training sample weight (balance policy "weight")


@dataclass(frozen=True)
class CurateResult:
    items: list[SplitItem]
    counts: dict[str, dict[str, int]]  # person -> split -> crops (before flips and repeats)
    dropped: list[str]  # crop paths left out of training by undersampling
    repeated: dict[str, int]  # crop path -> extra copies added by oversampling
    manifest_path: Path


def check_enough_photos(counts: dict[str, int], what: str, settings: CurateSettings) -> None:
    """Fail when a person has fewer than the split needs: 2 train, and 1 val and 1 test when those are on.

    ``counts`` is person -> how many ``what`` (files, usable photos, distinct face photos).
    """
    need_val = 1 if settings.val_fraction > 0 else 0
    need_test = 1 if settings.test_fraction > 0 else 0
    minimum = MIN_TRAIN_GROUPS + need_val + need_test
    short = {person: count for person, count in counts.items() if count < minimum}
    if short:
        listing = ", ".join(f"{person} has {count}" for person, count in sorted(short.items()))
        raise FaceclsError(
            f"Too few {what} to split: {listing}; each person needs at least {minimum} distinct face photos "
            f"({MIN_TRAIN_GROUPS} train{', 1 val' if need_val else ''}{', 1 test' if need_test else ''}). "
            "Add photos of them, or remove their folders from the scrape."
        )


def split_groups(
    crops: list[CropRecord], settings: CurateSettings
) -> dict[str, str]:
    """Assign every duplicate group to a split, stratified by person; returns group -> split."""
    rng = np.random.default_rng(settings.seed)
    groups_by_person: dict[str, list[str]] = defaultdict(list)
    size: Counter = Counter()
    for crop in crops:
        if crop.group not in size:
            groups_by_person[crop.person].append(crop.group)
        size[crop.group] += 1
    need_val = 1 if settings.val_fraction > 0 else 0
    need_test = 1 if settings.test_fraction > 0 else 0
    check_enough_photos({person: len(groups) for person, groups in groups_by_person.items()}, "distinct face photos",
                        settings)
    assignment: dict[str, str] = {}
    for person in sorted(groups_by_person):
        groups = sorted(groups_by_person[person])
        order = rng.permutation(len(groups))
        count = len(groups)
        test_count = max(need_test, int(round(settings.test_fraction * count)))
        val_count = max(need_val, int(round(settings.val_fraction * count)))
        for rank, index in enumerate(order):
            if rank < test_count:
                assignment[groups[index]] = "test"
            elif rank < test_count + val_count:
                assignment[groups[index]] = "val"
            else:
                assignment[groups[index]] = "train"
    return assignment


def balance_training(
    items: list[SplitItem], policy: str, seed: int
) -> tuple[list[SplitItem], list[str], dict[str, int]]:
    """Balance the train items by person; returns (train items, dropped crop paths, repeats)."""
    rng = np.random.default_rng(seed + 1)
    by_person: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        by_person[item.person].append(item)
    counts = {person: len(person_items) for person, person_items in by_person.items()}
    if policy == "none" or len(set(counts.values())) <= 1:
        return list(items), [], {}
    balanced: list[SplitItem] = []
    dropped: list[str] = []
    repeated: dict[str, int] = {}
    if policy == "undersample":
        smallest = min(counts.values())
        for person in sorted(by_person):
            person_items = by_person[person]
            keep = set(rng.choice(len(person_items), size=smallest, replace=False).tolist())
            for index, item in enumerate(person_items):
                (balanced.append(item) if index in keep else dropped.append(item.crop_path))
    elif policy == "oversample":
        largest = max(counts.values())
        for person in sorted(by_person):
            person_items = by_person[person]
            balanced.extend(person_items)
            extra = largest - len(person_items)
            copies = np.concatenate(
                [np.tile(np.arange(len(person_items)), extra // len(person_items)),
                 rng.choice(len(person_items), size=extra % len(person_items), replace=False)]
            ).astype(int)
            for index in copies:
                balanced.append(person_items[index])
                repeated[person_items[index].crop_path] = repeated.get(person_items[index].crop_path, 0) + 1
    elif policy == "weight":
        from sklearn.utils.class_weight import compute_sample_weight

        ordered = [item for person in sorted(by_person) for item in by_person[person]]
        weights = compute_sample_weight("balanced", [item.person for item in ordered])
        balanced.extend(replace(item, weight=round(float(weight), 6)) for item, weight in zip(ordered, weights))
    else:
        raise FaceclsError(f"balance must be one of undersample, oversample, weight, none. Received: {policy!r}")
    return balanced, dropped, repeated


def curate(crops_manifest: Path, out_dir: Path, settings: CurateSettings = CurateSettings()) -> CurateResult:
    """Split, balance and flip the crops of ``crops.csv`` into ``<out_dir>/splits.csv``.

    Raises:
        FaceclsError: fewer than two people, or a person with too few photos for the split.
    """
    from facecls.crop import read_crops_manifest

    crops_manifest, out_dir = Path(crops_manifest), Path(out_dir)
    crops = read_crops_manifest(crops_manifest)
    people = sorted({crop.person for crop in crops})
    if len(people) < 2:
        raise FaceclsError(
            f"{crops_manifest} holds face crops of {len(people)} person(s) ({', '.join(people) or 'none'}). "
            "A classifier needs at least two people with faces."
        )
    assignment = split_groups(crops, settings)
    by_split: dict[str, list[SplitItem]] = defaultdict(list)
    for crop in crops:
        split = assignment[crop.group]
        by_split[split].append(SplitItem(crop.crop_path, crop.person, crop.source_path, crop.group, split, False))
    train, dropped, repeated = balance_training(by_split["train"], settings.balance, settings.seed)
    if settings.flip:
        train = train + [replace(item, flipped=True) for item in train]
    items = train + by_split["val"] + by_split["test"]
    counts = {
        person: {split: sum(1 for item in by_split[split] if item.person == person) for split in SPLITS}
        for person in people
    }
    training_counts = {person: sum(1 for item in train if item.person == person) for person in people}
    with output_lock(out_dir):
        summary = {
            "crops_manifest": str(crops_manifest.resolve()),
            "settings": settings_to_dict(settings),
            "crops_per_person_and_split": counts,
            "training_items_per_person": training_counts,
            "dropped_by_undersampling": dropped,
            "repeated_by_oversampling": repeated,
        }
        manifest_path = write_stage_outputs(out_dir, SPLITS_MANIFEST, items, SplitItem, CURATE_SUMMARY, summary)
    return CurateResult(items, counts, dropped, repeated, manifest_path)


def read_splits(path: Path) -> list[SplitItem]:
    items = []
    for row in read_csv(path):
        if row.get("split") not in SPLITS:
            raise FaceclsError(f"{path}: split must be one of {', '.join(SPLITS)}. Received: {row.get('split')!r}")
        items.append(
            SplitItem(
                crop_path=row["crop_path"],
                person=row["person"],
                source_path=row["source_path"],
                group=row["group"],
                split=row["split"],
                flipped=row["flipped"] == "true",
                weight=float(row["weight"]),
            )
        )
    return items
