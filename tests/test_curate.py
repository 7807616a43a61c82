"""curate: group-aware stratified split, balancing, flips only in train."""

from collections import Counter
from pathlib import Path

import pytest

from facecls.config import CurateSettings
from facecls.crop import CropRecord
from facecls.curate import balance_training, curate, read_splits, split_groups, SplitItem
from facecls.errors import FaceclsError
from facecls.manifest import field_names, write_csv


def _crops(people: dict[str, int], faces_per_group: int = 1, groups_shared: int = 1) -> list[CropRecord]:
    records = []
    for person, photos in people.items():
        for photo in range(photos):
            group = f"{person}-g{photo // groups_shared}"
            for face in range(faces_per_group):
                records.append(
                    CropRecord(
                        crop_path=f"faces/{person}/{photo}-{face}.jpg",
                        source_path=f"{person}/{photo}.jpg",
                        person=person,
                        group=group,
                        sha256=f"{person}{photo}",
                        face_index=face,
                        x=0.0, y=0.0, width=10.0, height=10.0, confidence=0.99,
                        photo_status="ok",
                    )
                )
    return records


def _write(tmp_path: Path, records: list[CropRecord]) -> Path:
    path = tmp_path / "crops.csv"
    write_csv(path, records, field_names(CropRecord))
    return path


def test_groups_never_straddle_splits_and_flips_stay_in_train(tmp_path):
    # near-duplicate groups of 3 photos, 2 faces per photo ("all" policy)
    records = _crops({"ann": 30, "bob": 45}, faces_per_group=2, groups_shared=3)
    result = curate(_write(tmp_path, records), tmp_path / "curate", CurateSettings(seed=3))
    split_of_group: dict[str, set] = {}
    for item in result.items:
        split_of_group.setdefault(item.group, set()).add(item.split)
    assert all(len(splits) == 1 for splits in split_of_group.values())
    assert {item.split for item in result.items if item.flipped} == {"train"}
    train_views = Counter((item.crop_path, item.flipped) for item in result.items if item.split == "train")
    # every train crop appears once as is and once flipped
    plain = {path for path, flipped in train_views if not flipped}
    assert plain == {path for path, flipped in train_views if flipped}
    # every person is present in every split
    for person in ("ann", "bob"):
        assert {item.split for item in result.items if item.person == person} == {"train", "val", "test"}


def test_split_is_reproducible_and_seeded(tmp_path):
    records = _crops({"ann": 20, "bob": 20})
    first = split_groups(records, CurateSettings(seed=1))
    again = split_groups(records, CurateSettings(seed=1))
    other = split_groups(records, CurateSettings(seed=2))
    assert first == again
    assert first != other


def test_split_fractions_are_respected(tmp_path):
    records = _crops({"ann": 100, "bob": 40})
    assignment = split_groups(records, CurateSettings(val_fraction=0.2, test_fraction=0.1))
    by_person = Counter((group.split("-")[0], split) for group, split in assignment.items())
    assert by_person[("ann", "val")] == 20 and by_person[("ann", "test")] == 10
    assert by_person[("bob", "val")] == 8 and by_person[("bob", "test")] == 4


def test_too_few_photos_fails_early_naming_the_person(tmp_path):
    records = _crops({"ann": 20, "bob": 3})
    with pytest.raises(FaceclsError, match=r"bob has 3.*at least 4"):
        curate(_write(tmp_path, records), tmp_path / "curate")


def test_one_person_only_is_refused(tmp_path):
    with pytest.raises(FaceclsError, match="at least two people"):
        curate(_write(tmp_path, _crops({"ann": 20})), tmp_path / "curate")


def _train_items(counts: dict[str, int]) -> list[SplitItem]:
    return [
        SplitItem(f"{person}/{index}.jpg", person, f"{person}/{index}", f"{person}{index}", "train", False)
        for person, count in counts.items()
        for index in range(count)
    ]


def test_undersample_drops_to_the_smallest_class_and_records_it():
    items, dropped, repeated = balance_training(_train_items({"ann": 10, "bob": 25}), "undersample", seed=0)
    assert Counter(item.person for item in items) == {"ann": 10, "bob": 10}
    assert len(dropped) == 15 and all(path.startswith("bob/") for path in dropped)
    assert repeated == {}


def test_oversample_repeats_the_smaller_class_and_records_it():
    items, dropped, repeated = balance_training(_train_items({"ann": 10, "bob": 25}), "oversample", seed=0)
    assert Counter(item.person for item in items) == {"ann": 25, "bob": 25}
    assert sum(repeated.values()) == 15 and dropped == []


def test_weight_gives_balanced_sample_weights():
    items, _, _ = balance_training(_train_items({"ann": 10, "bob": 30}), "weight", seed=0)
    total = Counter()
    for item in items:
        total[item.person] += item.weight
    assert total["ann"] == pytest.approx(total["bob"])


def test_manifest_round_trips_and_summary_has_counts(tmp_path):
    records = _crops({"ann": 12, "bob": 16})
    result = curate(_write(tmp_path, records), tmp_path / "curate", CurateSettings(balance="oversample"))
    assert read_splits(result.manifest_path) == result.items
    import json

    summary = json.loads((tmp_path / "curate" / "curate.json").read_text())
    assert summary["crops_per_person_and_split"]["ann"] == result.counts["ann"]
    assert sum(summary["repeated_by_oversampling"].values()) == (
        result.counts["bob"]["train"] - result.counts["ann"]["train"]
    )
