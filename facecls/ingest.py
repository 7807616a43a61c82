"""Stage 1, ingest: index a scrape ``<scrape>/<person>/**``, decode every file, find duplicates.

The scrape is only read. Each file gets one ``IngestRecord`` with a status:

- ``ok``: a usable photo, the one kept of its duplicate group;
- ``unreadable``: an image that fails to decode (truncated, corrupt, permission denied);
- ``not_image``: content that is no image at all (HTML, text, ...), whatever its extension;
- ``too_small`` / ``too_large``: under ``min_side`` pixels, or over ``max_megapixels``;
- ``duplicate``: byte-identical to a kept photo;
- ``near_duplicate``: the same picture re-encoded, resized or mirrored (perceptual hash);
- ``no_person``: a file outside any usable person's folder: directly in the scrape folder, in a
  hidden folder, behind a symbolic link to a folder, or in a folder whose name cannot be a
  person's (``facecls.paths.person_name_problem``: ``unknown``, not UTF-8, a control character, ...).

Names that are not valid UTF-8 are shown with ``\\xNN`` escapes, and such files are ``unreadable``
(no manifest could name them exactly). Content is sniffed before a file is hashed, and a file too
large for ``max_megapixels`` is never read whole.

Every usable photo belongs to a duplicate ``group`` (the kept photo's id); later stages keep a
group together so that copies of one photo never land in both training and test.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facecls import images
from facecls.config import IngestSettings, settings_to_dict
from facecls.errors import FaceclsError
from facecls.layout import INGEST_MANIFEST, INGEST_SUMMARY
from facecls.manifest import output_lock, read_csv, sha256_file, write_stage_outputs
from facecls.paths import check_output_folder, display_name, is_valid_utf8, person_name_problem, walk_files

logger = logging.getLogger(__name__)

# Bytes per pixel above which a file is too large to hash or decode, whatever it holds: well
# over what any format needs (16-bit RGBA uncompressed TIFF: 8).
MAX_FILE_BYTES_PER_PIXEL = 8


@dataclass(frozen=True)
class IngestRecord:
    """What ingest found out about one file of the scrape."""

    path: str  # relative to the scrape folder
    person: str
    sha256: str
    format: str
    width: int
    height: int
    status: str
    reason: str
    group: str  # duplicate-group id: the first 16 hex digits of the kept photo's sha256
    duplicate_of: str  # path of the kept photo, for duplicate and near_duplicate
    dhash: str  # 64-bit difference hash of the photo, hex
    dhash_mirror: str  # the same of its horizontal mirror


@dataclass(frozen=True)
class IngestResult:
    records: list[IngestRecord]
    manifest_path: Path
    counts: dict[str, int]  # by status
    people: list[str]


def difference_hash(pixels: np.ndarray) -> int:
    """64-bit dHash: is each pixel of a 9x8 grayscale thumbnail brighter than its right neighbour."""
    import cv2

    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def list_scrape(scrape: Path) -> list[tuple[Path, str]]:
    """All files under ``<scrape>/<person>/`` as (path, person), sorted.

    Files directly in the scrape folder or in a hidden top-level folder come with person ""
    (they get status no_person).
    Hidden files are included (a photo named ``.jpg`` is still a photo); symlinked folders
    are not followed, a person's folder included (listed with person "", so they get a row),
    so symlink loops cannot trap the walk and nothing outside the scrape is read.
    """
    scrape = Path(scrape)
    if not scrape.exists():
        raise FaceclsError(f"Scrape folder not found: {scrape}. Pass a folder laid out as <scrape>/<person>/<photos>.")
    if not scrape.is_dir():
        raise FaceclsError(f"{scrape} is a file; the scrape must be a folder laid out as <scrape>/<person>/<photos>.")
    entries = sorted(os.listdir(scrape))

    def is_folder(entry: str) -> bool:
        return (scrape / entry).is_dir() and not (scrape / entry).is_symlink()

    files: list[tuple[Path, str]] = [(scrape / entry, "") for entry in entries if not is_folder(entry)]
    for entry in entries:  # hidden folders (.thumbnails, .git) are not people: listed, not used
        if entry.startswith(".") and is_folder(entry):
            files.extend((Path(path), "") for path in walk_files(scrape / entry))
    people = sorted(entry for entry in entries if is_folder(entry) and not entry.startswith("."))
    for person in people:
        files.extend((Path(path), person) for path in walk_files(scrape / person))
    return files


def check_scrape_layout(scrape: Path, files: list[tuple[Path, str]]) -> list[str]:
    """The people of a scrape listed by ``list_scrape``, once it holds files of at least two.

    Raises:
        FaceclsError: fewer than two person folders hold a file; says what the folder holds
            instead (files directly in it, empty person folders) and how to lay it out.
    """
    people = sorted({person for _, person in files if person and not person_name_problem(person)})
    if len(people) >= 2:
        return people
    refused = sorted({person for _, person in files if person and person_name_problem(person)})
    loose = [path.name for path, person in files if not person and path.parent == scrape]
    folders = sorted(entry.name for entry in scrape.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    empty = [name for name in folders if name not in people and name not in refused]
    found = []
    if loose:
        example = ", ".join(loose[:2]) + (", ..." if len(loose) > 2 else "")
        found.append(f"{_count(len(loose), 'file')} directly in it ({example}), which belong to no person")
    if people:
        found.append(f"photos of one person only ({people[0]})")
    if refused:
        names = ", ".join(repr(display_name(name)) for name in refused[:3]) + (", ..." if len(refused) > 3 else "")
        found.append(f"{_count(len(refused), 'folder')} whose name cannot be a person's ({names})")
    if empty:
        found.append(f"{_count(len(empty), 'empty person folder')} ({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''})")
    layout = f"{scrape}/<person>/<photos>"
    if not found:
        raise FaceclsError(f"No photos found in {scrape}. Expected one folder per person: {layout}.")
    if loose:
        fix = f"Move each person's photos into a folder named after them, e.g. {scrape / 'alice' / loose[0]}."
    else:
        fix = "Add a folder of photos for each person to tell apart."
    raise FaceclsError(
        f"{scrape} needs photos of at least two people, one folder per person ({layout}, the folder "
        f"name is the label). Received: {'; '.join(found)}. {fix}"
    )


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _dangling_link_reason(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
    return "broken symbolic link"


def _inspect(path: Path, person: str, scrape: Path, settings: IngestSettings) -> IngestRecord:
    relative = str(path.relative_to(scrape))
    blank = IngestRecord(display_name(relative), display_name(person), "", "", 0, 0, "unreadable", "", "", "", "", "")
    if not person:
        if path.is_symlink() and path.is_dir() and path.parent == scrape:
            reason = ("is a symbolic link to a folder: person folders that are links are not followed (as links "
                      "inside them are not); copy the photos into <scrape>/<person>/ to use them")  # fmt: skip
        elif len(Path(relative).parts) > 1:
            reason = "is in a hidden folder, which is not a person's; move it into <scrape>/<person>/ to use it"
        else:
            reason = "is not in a person's folder; move it into <scrape>/<person>/ to use it"
        return replace(blank, status="no_person", reason=reason)
    problem = person_name_problem(person)
    if problem:
        return replace(blank, status="no_person", reason=f"its folder name {display_name(person)!r} {problem}; rename the folder to use its photos")
    if not is_valid_utf8(relative):
        return replace(blank, reason="its name is not valid UTF-8 (shown with \\x escapes); rename the file to use it")
    max_pixels = int(settings.max_megapixels * 1e6)
    max_bytes = max_pixels * MAX_FILE_BYTES_PER_PIXEL
    try:
        if path.is_symlink() and not path.exists():
            return replace(blank, reason=_dangling_link_reason(path))
        if not path.is_file():
            folder = path.is_symlink() and path.is_dir()
            reason = "symbolic link to a folder (not followed)" if folder else images.special_file_reason(path.stat().st_mode)
            return replace(blank, reason=reason)
        size = path.stat().st_size
        # A file too large to be a usable photo is never read whole: a 4 GB file of zeros is
        # rejected from its first bytes, not hashed for a minute.
        blank = replace(blank, sha256=sha256_file(path) if size <= max_bytes else "")
        info = images.read_info(path)
        blank = replace(blank, format=info.format, width=info.width, height=info.height)
        if size > max_bytes:
            return replace(
                blank, status="too_large", reason=f"the file is {size / 1e6:.0f} MB, over {max_bytes / 1e6:.0f} MB "
                f"({MAX_FILE_BYTES_PER_PIXEL} bytes a pixel at {settings.max_megapixels:g} megapixels)",
            )  # fmt: skip
        if info.width * info.height > max_pixels:
            return replace(
                blank,
                status="too_large",
                reason=f"{info.width}x{info.height} is over {settings.max_megapixels:g} megapixels",
            )
        decoded = images.decode_image(path, max_pixels=max_pixels)
    except images.NotAnImageError as error:
        return replace(blank, status="not_image", reason=error.reason)
    except images.ImageTooLargeError as error:
        return replace(blank, status="too_large", reason=error.reason)
    except images.ImageDecodeError as error:
        return replace(blank, reason=error.reason)
    except OSError as error:
        return replace(blank, reason=error.strerror or str(error))
    record = replace(blank, width=decoded.width, height=decoded.height, status="ok")
    if min(decoded.width, decoded.height) < settings.min_side:
        return replace(
            record,
            status="too_small",
            reason=f"{decoded.width}x{decoded.height} is under the minimum side of {settings.min_side} pixels",
        )
    return replace(
        record,
        dhash=f"{difference_hash(decoded.pixels):016x}",
        dhash_mirror=f"{difference_hash(decoded.pixels[:, ::-1]):016x}",
    )


def _keep_order(record: IngestRecord) -> tuple:
    # The copy kept of a group: most pixels, then the first path.
    return (-record.width * record.height, record.path)


def mark_duplicates(records: list[IngestRecord], max_distance: int) -> list[IngestRecord]:
    """Group exact and near duplicates (mirrors included); keep one photo per group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    usable = [index for index, record in enumerate(records) if record.status == "ok"]
    first: list[int] = []  # edges between positions in usable
    second: list[int] = []
    by_sha: dict[str, int] = {}
    for position, index in enumerate(usable):
        sha = records[index].sha256
        if sha in by_sha:
            first.append(by_sha[sha])
            second.append(position)
        else:
            by_sha[sha] = position

    hashes = np.array([int(records[index].dhash, 16) for index in usable], dtype=np.uint64)
    mirrors = np.array([int(records[index].dhash_mirror, 16) for index in usable], dtype=np.uint64)
    for position in range(len(usable) - 1):
        later = hashes[position + 1 :]
        distance = np.minimum(np.bitwise_count(later ^ hashes[position]), np.bitwise_count(later ^ mirrors[position]))
        close = np.flatnonzero(distance <= max_distance) + position + 1
        first.extend([position] * len(close))
        second.extend(close.tolist())

    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(usable), len(usable)))
    _, component_of = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for position, index in enumerate(usable):
        members[int(component_of[position])].append(index)

    result = list(records)
    for group in members.values():
        kept = min(group, key=lambda index: _keep_order(records[index]))
        group_id = records[kept].sha256[:16]
        for index in group:
            record = records[index]
            if index == kept:
                result[index] = replace(record, group=group_id)
                continue
            exact = record.sha256 == records[kept].sha256
            other_person = "" if record.person == records[kept].person else f" (filed under {records[kept].person})"
            result[index] = replace(
                record,
                status="duplicate" if exact else "near_duplicate",
                reason=("same bytes as " if exact else "same picture (resized, re-encoded or mirrored) as ")
                + records[kept].path
                + other_person,
                group=group_id,
                duplicate_of=records[kept].path,
            )
    return result


def ingest(scrape: Path, out_dir: Path, settings: IngestSettings = IngestSettings(), workers: int = 2) -> IngestResult:
    """Index a scrape into ``<out_dir>/ingest.csv`` and ``ingest.json``; the scrape is not modified.

    Raises:
        FaceclsError: the scrape is missing, empty, or holds fewer than two people.
    """
    scrape, out_dir = Path(scrape), Path(out_dir)
    check_output_folder(out_dir, [scrape])
    files = list_scrape(scrape)
    for person in sorted({person for _, person in files if person and person_name_problem(person)}):
        logger.warning("%s: not used, its name %s (its files are no_person)", display_name(str(scrape / person)),
                       person_name_problem(person))  # fmt: skip
    people = check_scrape_layout(scrape, files)
    with output_lock(out_dir):
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            records = list(
                tqdm(
                    pool.map(lambda item: _inspect(item[0], item[1], scrape, settings), files),
                    total=len(files),
                    desc="ingest",
                    unit="file",
                )
            )
        records = mark_duplicates(records, settings.near_duplicate_distance)
        counts = Counter(record.status for record in records)
        per_person = {
            person: dict(Counter(record.status for record in records if record.person == person)) for person in people
        }
        summary = {
            "scrape": str(scrape.resolve()),
            "settings": settings_to_dict(settings),
            "files": len(records),
            "counts": dict(counts),
            "per_person": per_person,
        }
        manifest_path = write_stage_outputs(out_dir, INGEST_MANIFEST, records, IngestRecord, INGEST_SUMMARY, summary)
    for person, person_counts in per_person.items():
        if not person_counts.get("ok"):
            logger.warning("%s: no usable photo of %s", scrape / person, person)
    return IngestResult(records=records, manifest_path=manifest_path, counts=dict(counts), people=people)


def read_ingest_manifest(path: Path) -> list[IngestRecord]:
    rows = read_csv(path)
    return [IngestRecord(**{**row, "width": int(row["width"]), "height": int(row["height"])}) for row in rows]
