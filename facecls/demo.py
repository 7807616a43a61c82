"""A demo without a scrape of your own: LFW through scikit-learn, laid out as a scrape, then ``run``.

scikit-learn's ``fetch_lfw_people`` downloads Labeled Faces in the Wild (the original,
unaligned 250x250 photos, ~200 MB) into its data home and returns small cropped face arrays.
The demo uses the download, not the arrays: it copies the original photos of the people with
the most photos into ``<out>/scrape/<person>/`` and runs the whole chain into ``<out>/run/``,
which ends with ``<out>/run/report.html``.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from facecls.errors import FaceclsError, one_line

logger = logging.getLogger(__name__)

SCRAPE_FOLDER = "scrape"
RUN_FOLDER = "run"
LFW_IMAGES = ("lfw_home", "lfw")  # where fetch_lfw_people(funneled=False) unpacks the photos, under its data home


@dataclass(frozen=True)
class DemoScrape:
    scrape_dir: Path
    people: tuple[str, ...]  # folder names, e.g. George_W_Bush
    photos: dict[str, int]  # copied photos per person


@dataclass(frozen=True)
class DemoResult:
    scrape: DemoScrape
    run: object  # facecls.pipeline.RunResult
    report_path: Path


def _offline_message(data_home: Path, download: bool, reason: str) -> str:
    if download:
        return (
            f"facecls demo needs internet to download LFW (~200 MB) through scikit-learn into {data_home} ({reason}). "
            "Connect and rerun, or pass --lfw-home DIR holding an LFW download (DIR/lfw_home/lfw/<Person_Name>/)."
        )
    return (
        f"--lfw-home {data_home} holds no LFW download that scikit-learn can load ({reason}). Expected "
        f"{data_home}/lfw_home/ with pairs.txt, pairsDevTrain.txt, pairsDevTest.txt and lfw/<Person_Name>/*.jpg; "
        "or leave out --lfw-home to download it (~200 MB)."
    )


def prepare_scrape(
    scrape_dir: Path,
    lfw_home: Path | None = None,
    people: int = 2,
    photos_per_person: int = 150,
) -> DemoScrape:
    """Copy the original LFW photos of the ``people`` with the most photos into ``<scrape_dir>/<person>/``.

    Args:
        scrape_dir: the scrape folder to fill (files already there are kept).
        lfw_home: a scikit-learn data home holding an LFW download; nothing is downloaded then.
            None: scikit-learn's default data home, downloading LFW if it is missing.
        people: how many people (at least 2).
        photos_per_person: only people with at least this many photos qualify, and this many
            of each are copied (LFW's own order).

    Raises:
        FaceclsError: LFW is missing and cannot be downloaded, or too few people have enough photos.
    """
    from sklearn.datasets import get_data_home

    if people < 2:
        raise FaceclsError(f"--people must be at least 2 (a classifier needs two people). Received: {people}")
    if photos_per_person < 4:
        raise FaceclsError(f"--photos-per-person must be at least 4 (train, val and test). Received: {photos_per_person}")
    if lfw_home is not None and not Path(lfw_home).is_dir():
        raise FaceclsError(f"--lfw-home must be a folder holding an LFW download. Received: {lfw_home} (no such folder)")
    download = lfw_home is None
    data_home = Path(get_data_home(None if lfw_home is None else str(lfw_home)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one "Retry downloading" warning per attempt; the error says it all
            dataset = _fetch(data_home, photos_per_person, download)
    except OSError as error:  # no network (URLError), a failed download, or a missing file with download off
        raise FaceclsError(_offline_message(data_home, download, one_line(error))) from None
    except ValueError as error:  # min_faces_per_person too restrictive: nobody has that many photos
        raise FaceclsError(
            f"No person in LFW has {photos_per_person} photos ({one_line(error)}). Lower --photos-per-person."
        ) from None
    images = data_home.joinpath(*LFW_IMAGES)
    folders = [name.replace(" ", "_") for name in dataset.target_names]
    counts = {folder: len(_photos(images / folder)) for folder in folders}
    if len(counts) < people:
        raise FaceclsError(
            f"LFW has {len(counts)} people with at least {photos_per_person} photos; --people {people} needs more. "
            "Lower --photos-per-person or --people."
        )
    chosen = sorted(counts, key=lambda folder: (-counts[folder], folder))[:people]
    copied = {}
    for folder in chosen:
        target = Path(scrape_dir) / folder
        target.mkdir(parents=True, exist_ok=True)
        photos = _photos(images / folder)[:photos_per_person]
        for photo in photos:
            if not (target / photo.name).exists():
                shutil.copy2(photo, target / photo.name)  # a copy: the LFW download stays as it is
        copied[folder] = len(photos)
    logger.info("Demo scrape in %s: %s", scrape_dir, copied)
    return DemoScrape(Path(scrape_dir), tuple(chosen), copied)


def _fetch(data_home: Path, photos_per_person: int, download: bool):
    from sklearn.datasets import fetch_lfw_people

    # The arrays it returns are small face cut-outs; what the demo needs is that the original
    # photos are on disk, and the names of the people with at least photos_per_person of them.
    return fetch_lfw_people(
        data_home=str(data_home), funneled=False, min_faces_per_person=photos_per_person, resize=0.1,
        download_if_missing=download,
    )


def _photos(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []


def demo(
    out_dir: Path,
    lfw_home: Path | None = None,
    people: int = 2,
    photos_per_person: int = 150,
    settings=None,
    workers: int | None = None,
) -> DemoResult:
    """Lay out LFW as a scrape in ``<out_dir>/scrape`` and run the whole chain into ``<out_dir>/run``.

    ``settings`` is a ``facecls.pipeline.RunSettings`` (default: the run defaults, ImageNet weights).

    Raises:
        FaceclsError: LFW cannot be had (see ``prepare_scrape``), or any stage's error.
    """
    from facecls.report import REPORT_NAME
    from facecls.pipeline import RunSettings, check_weights, run

    from facecls.paths import check_output_folder

    settings = settings or RunSettings()
    check_weights(settings.train)  # fail before the download, not after it
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    scrape = prepare_scrape(out_dir / SCRAPE_FOLDER, lfw_home, people, photos_per_person)
    result = run(scrape.scrape_dir, out_dir / RUN_FOLDER, settings, workers=workers)
    return DemoResult(scrape, result, out_dir / RUN_FOLDER / REPORT_NAME)
