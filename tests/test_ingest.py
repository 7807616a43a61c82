"""Ingest on the shared scrapes and on generated files: every file gets one row with the right status."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecls.config import IngestSettings
from facecls.errors import FaceclsError
from facecls.images import decode_image
from facecls.ingest import IngestRecord, ingest, mark_duplicates, read_ingest_manifest
from facecls.paths import RESERVED_PERSON_NAMES

LEAK_TRAIN = "train/ben_afflek/httpssmediacacheakpinimgcomxeebdfdbaaajpg.jpg"
LEAK_VAL = "val/ben_afflek/httpbpblogspotcomedLMjVpRGkSWexgsXjkNIAAAAAAAADWgFFtAUqBlhAsjpg.jpg"


def by_path(records: list[IngestRecord]) -> dict[str, IngestRecord]:
    return {record.path: record for record in records}


def all_files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def shared_manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as file:
        return list(csv.DictReader(file))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def hard_cases_ingested(data_dir, tmp_path_factory, folder_snapshot):
    scrape = data_dir / "hard-cases"
    before = folder_snapshot(scrape)
    result = ingest(scrape, tmp_path_factory.mktemp("hard-ingest"))
    return scrape, result, before


def test_hard_cases_every_file_gets_one_row(hard_cases_ingested):
    scrape, result, _ = hard_cases_ingested
    assert sorted(record.path for record in result.records) == sorted(all_files(scrape))
    assert len(result.records) == 31


def test_hard_cases_statuses_match_the_shared_manifest(hard_cases_ingested):
    scrape, result, _ = hard_cases_ingested
    records = by_path(result.records)
    for row in shared_manifest(scrape):
        record = records[f"{row['category']}/{row['file']}"]
        assert record.person == row["category"]
        if row["category"] in RESERVED_PERSON_NAMES:  # classify's folder for photos without a face: no person
            assert record.status == "no_person" and "reserved" in record.reason, record
            continue
        assert record.sha256 == row["sha256"]
        if row["pillow_decode"] == "decodes":
            assert record.status == "ok", (record.path, record.reason)
            assert (record.format, record.width, record.height) == (row["format"], int(row["width"]), int(row["height"]))
            assert record.group == record.sha256[:16] and record.duplicate_of == ""
            assert len(record.dhash) == 16 and len(record.dhash_mirror) == 16
        else:
            assert record.status == "unreadable", record.path
    assert result.counts == {"ok": 24, "unreadable": 1, "no_person": 6}  # 4 in no_face/


def test_truncated_is_unreadable_with_the_decoders_reason(hard_cases_ingested):
    scrape, result, _ = hard_cases_ingested
    record = by_path(result.records)["corrupt/truncated.jpg"]
    assert record.status == "unreadable"
    with pytest.raises(FaceclsError) as caught:
        decode_image(scrape / "corrupt" / "truncated.jpg")
    assert record.reason == caught.value.reason
    assert "truncated" in record.reason.lower()
    assert record.group == ""  # unusable files belong to no duplicate group


def test_root_level_files_are_no_person_and_hidden_jpg_is_ok(hard_cases_ingested):
    _, result, _ = hard_cases_ingested
    records = by_path(result.records)
    for name in ("manifest.csv", "PROVENANCE.md"):
        assert records[name].status == "no_person"
        assert records[name].person == ""
        assert "<person>" in records[name].reason
    hidden = records["odd_filename/.jpg"]
    assert (hidden.status, hidden.format, hidden.width, hidden.height) == ("ok", "JPEG", 599, 399)
    huge = records["huge/AFP_337E9GT.jpg"]
    assert (huge.status, huge.width, huge.height) == ("ok", 8192, 5464)


def test_manifest_and_summary_on_disk_match_the_result(hard_cases_ingested):
    _, result, _ = hard_cases_ingested
    assert read_ingest_manifest(result.manifest_path) == result.records
    summary = json.loads((result.manifest_path.parent / "ingest.json").read_text())
    assert summary["counts"] == result.counts
    assert summary["files"] == 31
    assert summary["per_person"]["corrupt"] == {"unreadable": 1}
    assert summary["settings"] == {"min_side": 32, "max_megapixels": 50.0, "near_duplicate_distance": 4}


def test_hard_cases_are_byte_identical_after_ingest(hard_cases_ingested, folder_snapshot):
    scrape, _, before = hard_cases_ingested
    assert folder_snapshot(scrape) == before


def test_scraped_celebs_all_ok_and_distinct(data_dir, tmp_path, folder_snapshot):
    scrape = data_dir / "scraped-celebs-6"
    before = folder_snapshot(scrape)
    result = ingest(scrape, tmp_path)
    assert result.counts == {"ok": 190, "no_person": 2}
    assert result.people == ["angelina_jolie", "brad_pitt", "jennifer_lawrence", "messi", "scarlett_johansson", "sydney_sweeney"]
    records = by_path(result.records)
    for row in shared_manifest(scrape):
        record = records[f"{row['class']}/{row['file']}"]
        assert (record.sha256, record.format, record.width, record.height) == (
            row["sha256"], row["format"], int(row["width"]), int(row["height"])
        )
    ok_groups = [record.group for record in result.records if record.status == "ok"]
    assert len(set(ok_groups)) == 190  # the set was deduplicated: no false near-duplicates
    assert folder_snapshot(scrape) == before


def test_five_celebrity_train_val_leak_is_found_in_the_whole_set(data_dir, tmp_path):
    result = ingest(data_dir / "5-celebrity-faces", tmp_path)
    assert result.counts == {"ok": 117, "near_duplicate": 1, "no_person": 2}
    records = by_path(result.records)
    duplicate = next(record for record in result.records if record.status == "near_duplicate")
    assert {duplicate.path, duplicate.duplicate_of} == {LEAK_TRAIN, LEAK_VAL}
    assert records[duplicate.duplicate_of].status == "ok"
    assert duplicate.group == records[duplicate.duplicate_of].group


def test_five_celebrity_leak_pair_copied_into_a_scrape(data_dir, tmp_path):
    source = data_dir / "5-celebrity-faces"
    scrape = tmp_path / "scrape"
    (scrape / "ben_afflek").mkdir(parents=True)
    (scrape / "madonna").mkdir()
    shutil.copy2(source / LEAK_TRAIN, scrape / "ben_afflek" / "from_train.jpg")
    shutil.copy2(source / LEAK_VAL, scrape / "ben_afflek" / "from_val.jpg")
    for photo in sorted((source / "train" / "madonna").iterdir())[:2]:
        shutil.copy2(photo, scrape / "madonna" / photo.name)
    result = ingest(scrape, tmp_path / "out")
    records = by_path(result.records)
    pair = [records["ben_afflek/from_train.jpg"], records["ben_afflek/from_val.jpg"]]
    assert sorted(record.status for record in pair) == ["near_duplicate", "ok"]
    kept, copy = sorted(pair, key=lambda record: record.status != "ok")
    assert copy.duplicate_of == kept.path
    assert copy.group == kept.group == kept.sha256[:16]
    assert copy.sha256 != kept.sha256  # not the same bytes: found by the perceptual hash
    madonna = [record for record in result.records if record.person == "madonna"]
    assert [record.status for record in madonna] == ["ok", "ok"]
    assert len({record.group for record in madonna} | {kept.group}) == 3


@pytest.fixture
def duplicates_scrape(data_dir, tmp_path):
    """Copies of one photo (exact, re-encoded smaller, mirrored) beside distinct photos."""
    source = data_dir / "scraped-celebs-6"
    originals = sorted((source / "brad_pitt").iterdir())[:3]
    others = sorted((source / "messi").iterdir())[:2]
    scrape = tmp_path / "scrape"
    for folder in ("brad_pitt", "messi"):
        (scrape / folder).mkdir(parents=True)
    for photo in originals:
        shutil.copy2(photo, scrape / "brad_pitt" / photo.name)
    for photo in others:
        shutil.copy2(photo, scrape / "messi" / photo.name)
    original = originals[0]
    shutil.copy2(original, scrape / "brad_pitt" / "exact_copy.jpg")
    shutil.copy2(original, scrape / "messi" / "misfiled_copy.jpg")  # the same photo under another person
    image = Image.open(original).convert("RGB")
    image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS).save(
        scrape / "brad_pitt" / "smaller_q55.jpg", quality=55
    )
    image.transpose(Image.FLIP_LEFT_RIGHT).save(scrape / "brad_pitt" / "mirrored.png")
    return scrape, original.name


def test_generated_duplicates_join_the_kept_photos_group(duplicates_scrape, tmp_path):
    scrape, original = duplicates_scrape
    result = ingest(scrape, tmp_path / "out")
    records = by_path(result.records)
    kept = records[f"brad_pitt/{original}"]
    assert kept.status == "ok"
    expected = {
        "brad_pitt/exact_copy.jpg": "duplicate",
        "messi/misfiled_copy.jpg": "duplicate",
        "brad_pitt/smaller_q55.jpg": "near_duplicate",
        "brad_pitt/mirrored.png": "near_duplicate",
    }
    for path, status in expected.items():
        record = records[path]
        assert record.status == status, (path, record.reason)
        assert record.group == kept.group
        assert record.duplicate_of == kept.path
        assert kept.path in record.reason
    assert "(filed under brad_pitt)" in records["messi/misfiled_copy.jpg"].reason
    distinct = [record for record in result.records if record.path not in expected]
    assert all(record.status == "ok" for record in distinct)
    assert len({record.group for record in distinct}) == len(distinct) == 5


def test_the_copy_with_most_pixels_is_kept(data_dir, tmp_path):
    source = sorted((data_dir / "scraped-celebs-6" / "angelina_jolie").iterdir())[0]
    scrape = tmp_path / "scrape"
    for folder in ("a", "b"):
        (scrape / folder).mkdir(parents=True)
    image = Image.open(source).convert("RGB")
    # "a_small" sorts first, but the larger copy is the one to keep.
    image.resize((image.width // 2, image.height // 2), Image.LANCZOS).save(scrape / "a" / "a_small.jpg", quality=90)
    image.save(scrape / "a" / "b_large.png")
    shutil.copy2(sorted((data_dir / "scraped-celebs-6" / "messi").iterdir())[0], scrape / "b" / "other.jpg")
    records = by_path(ingest(scrape, tmp_path / "out").records)
    assert records["a/b_large.png"].status == "ok"
    assert records["a/a_small.jpg"].status == "near_duplicate"
    assert records["a/a_small.jpg"].duplicate_of == "a/b_large.png"


def test_near_duplicate_distance_zero_keeps_re_encoded_copies_apart(duplicates_scrape, tmp_path):
    scrape, _ = duplicates_scrape
    records = by_path(ingest(scrape, tmp_path / "out", IngestSettings(near_duplicate_distance=0)).records)
    # Exact copies are still found by their bytes, whatever the distance.
    assert records["brad_pitt/exact_copy.jpg"].status == "duplicate"


@pytest.fixture
def two_people(data_dir, tmp_path):
    """A minimal valid scrape: one real photo for each of two people."""
    scrape = tmp_path / "scrape"
    for person, photo in (("obama", "tiny/obama_small.jpg"), ("kit", "multiple_faces/kit_with_rose.jpg")):
        (scrape / person).mkdir(parents=True)
        shutil.copy2(data_dir / "hard-cases" / photo, scrape / person / Path(photo).name)
    return scrape


def test_too_small_has_the_size_in_its_reason(two_people, tmp_path):
    Image.new("RGB", (40, 20), "gray").save(two_people / "obama" / "sliver.png")
    records = by_path(ingest(two_people, tmp_path / "out").records)
    record = records["obama/sliver.png"]
    assert record.status == "too_small"
    assert "40x20" in record.reason and "32" in record.reason
    assert record.group == ""
    assert records["obama/obama_small.jpg"].status == "ok"


def test_min_side_setting_marks_the_real_tiny_crops(data_dir, tmp_path):
    result = ingest(data_dir / "hard-cases", tmp_path, IngestSettings(min_side=100))
    records = by_path(result.records)
    assert records["tiny/messi_18.jpg"].status == "too_small"
    assert records["tiny/virat_kohli36.png"].status == "too_small"
    assert records["tiny/obama_small.jpg"].status == "ok"


def test_too_large_by_setting(two_people, tmp_path):
    Image.new("RGB", (200, 100), "gray").save(two_people / "kit" / "wide.png")
    records = by_path(ingest(two_people, tmp_path / "out", IngestSettings(max_megapixels=0.015)).records)
    record = records["kit/wide.png"]
    assert record.status == "too_large"
    assert "200x100" in record.reason and "0.015 megapixels" in record.reason
    assert (record.width, record.height) == (200, 100)


def test_a_declared_10000x8000_png_is_too_large_without_being_decoded(two_people, tmp_path):
    (two_people / "kit" / "bomb.png").write_bytes(png_declaring(10_000, 8_000))
    record = by_path(ingest(two_people, tmp_path / "out").records)["kit/bomb.png"]
    assert record.status == "too_large"
    assert "10000x8000" in record.reason


def test_a_declared_200_megapixel_png_is_too_large_not_unreadable(two_people, tmp_path):
    # Over Pillow's own decompression-bomb guard as well as over max_megapixels.
    (two_people / "kit" / "bomb.png").write_bytes(png_declaring(20_000, 10_000))
    record = by_path(ingest(two_people, tmp_path / "out").records)["kit/bomb.png"]
    assert record.status == "too_large", record.reason


def test_html_and_empty_files_are_not_images(two_people, tmp_path):
    (two_people / "obama" / "photo.jpg").write_text("<html><body>Access denied</body></html>")
    (two_people / "obama" / "zero.jpg").write_bytes(b"")
    records = by_path(ingest(two_people, tmp_path / "out").records)
    assert records["obama/photo.jpg"].status == "not_image"
    assert "HTML" in records["obama/photo.jpg"].reason
    assert records["obama/zero.jpg"].status == "not_image"
    assert records["obama/zero.jpg"].reason == "empty file"


def test_broken_symlink_and_nested_folders(two_people, tmp_path):
    (two_people / "obama" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    nested = two_people / "obama" / "2019" / "summer"
    nested.mkdir(parents=True)
    shutil.copy2(two_people / "kit" / "kit_with_rose.jpg", nested / "kit_again.jpg")
    (two_people / "obama" / "loop").symlink_to(two_people / "obama", target_is_directory=True)
    records = by_path(ingest(two_people, tmp_path / "out").records)
    assert records["obama/dangling.jpg"].status == "unreadable"
    assert records["obama/dangling.jpg"].reason == "broken symbolic link"
    nested_record = records["obama/2019/summer/kit_again.jpg"]
    assert (nested_record.person, nested_record.status) == ("obama", "duplicate")
    assert not any(path.startswith("obama/loop/") for path in records)


def test_missing_scrape_folder(tmp_path):
    with pytest.raises(FaceclsError, match="Scrape folder not found") as caught:
        ingest(tmp_path / "absent", tmp_path / "out")
    assert "<scrape>/<person>" in str(caught.value)
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_scrape_that_is_a_file(tmp_path):
    (tmp_path / "scrape.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(FaceclsError, match="is a file"):
        ingest(tmp_path / "scrape.zip", tmp_path / "out")


def test_empty_scrape_folder(tmp_path):
    (tmp_path / "scrape").mkdir()
    with pytest.raises(FaceclsError, match="No photos found"):
        ingest(tmp_path / "scrape", tmp_path / "out")


def test_photos_without_person_folders(tmp_path, data_dir):
    (tmp_path / "scrape").mkdir()
    shutil.copy2(data_dir / "hard-cases" / "tiny" / "obama_small.jpg", tmp_path / "scrape")
    with pytest.raises(FaceclsError, match="one folder per person"):
        ingest(tmp_path / "scrape", tmp_path / "out")


def test_one_person_only(two_people, tmp_path):
    shutil.rmtree(two_people / "kit")
    with pytest.raises(FaceclsError) as caught:
        ingest(two_people, tmp_path / "out")
    message = str(caught.value)
    assert "one person only (obama)" in message and "at least two people" in message
    assert not (tmp_path / "out" / "ingest.csv").exists()


def test_generated_scrape_is_byte_identical_after_ingest(duplicates_scrape, tmp_path, folder_snapshot):
    scrape, _ = duplicates_scrape
    before = folder_snapshot(scrape)
    ingest(scrape, tmp_path / "out")
    assert folder_snapshot(scrape) == before
    assert set(before) == all_files(scrape)  # nothing added either


def _hashed_records(count: int, seed: int) -> list[IngestRecord]:
    """Usable records with random dHashes in a few tight clusters (chains across them), some byte-identical."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, size=6, dtype=np.uint64)
    records = []
    for index in range(count):
        value = int(centres[index % 6]) ^ sum(1 << int(bit) for bit in rng.choice(64, size=rng.integers(0, 9), replace=False))
        sha = f"{index // 3 if index % 7 == 0 else index + 1000:064x}"
        records.append(IngestRecord(f"p{index % 3}/{index}.jpg", f"p{index % 3}", sha, "JPEG", 100 + index % 5, 100,
                                    "ok", "", "", "", f"{value:016x}", f"{value ^ 0xFF:016x}"))
    return records


def test_duplicate_groups_are_the_connected_components_of_the_near_duplicate_graph():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    for seed, distance in ((0, 4), (1, 8), (2, 12)):
        records = _hashed_records(300, seed)
        marked = mark_duplicates(records, distance)
        hashes = np.array([int(record.dhash, 16) for record in records], dtype=np.uint64)
        mirrors = np.array([int(record.dhash_mirror, 16) for record in records], dtype=np.uint64)
        near = np.minimum(np.bitwise_count(hashes[:, None] ^ hashes[None, :]),
                          np.bitwise_count(hashes[:, None] ^ mirrors[None, :])) <= distance
        same = np.array([[a.sha256 == b.sha256 for b in records] for a in records])
        rows, columns = np.nonzero(near | same)
        graph = coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(records), len(records)))
        _, components = connected_components(graph, directed=False)
        kept = {}
        for index in sorted(range(len(records)), key=lambda i: (-records[i].width * records[i].height, records[i].path)):
            kept.setdefault(components[index], records[index])
        assert [record.group for record in marked] == [kept[component].sha256[:16] for component in components]
        assert len(set(components)) < len(records) // 2  # the clusters did merge
