"""Where everything sits in a run folder: every path ``facecls run`` and the stage commands use, once.

Run folder layout::

    <run>/ingest.csv, ingest.json      every file of the scrape, with a status
    <run>/crop/                        face crops, photos.csv, crops.csv, others.csv, sheets/
    <run>/crop/corrections.csv         yours, optional: the face to train on per photo, or none
    <run>/curate/                      splits.csv, curate.json
    <run>/model/                       the model dir (everything classify needs)
    <run>/evaluation/                  metrics.json and plots on the test split
    <run>/run.json                     what each stage did, and the fingerprints used to reuse work
    <run>/report.html, report_files/   the run on one page: funnel, faces, splits, curves, test results

The stages name the files they write with these constants; ``RunLayout`` joins them to a run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INGEST_MANIFEST = "ingest.csv"
INGEST_SUMMARY = "ingest.json"
CROP_FOLDER = "crop"
PHOTOS_MANIFEST = "photos.csv"
CROPS_MANIFEST = "crops.csv"
OTHERS_MANIFEST = "others.csv"
CROP_SUMMARY = "crop.json"
CORRECTIONS_NAME = "corrections.csv"  # the user's per-photo choices, read from the crop folder
CURATE_FOLDER = "curate"
SPLITS_MANIFEST = "splits.csv"
CURATE_SUMMARY = "curate.json"
MODEL_FOLDER = "model"
EVALUATION_FOLDER = "evaluation"
METRICS_FILE = "metrics.json"
RUN_SUMMARY = "run.json"
REPORT_NAME = "report.html"
REPORT_FILES_FOLDER = "report_files"  # thumbnails beside report.html


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def ingest_manifest(self) -> Path:
        return self.root / INGEST_MANIFEST

    @property
    def ingest_summary(self) -> Path:
        return self.root / INGEST_SUMMARY

    @property
    def crop_dir(self) -> Path:
        return self.root / CROP_FOLDER

    @property
    def photos_manifest(self) -> Path:
        return self.crop_dir / PHOTOS_MANIFEST

    @property
    def crops_manifest(self) -> Path:
        return self.crop_dir / CROPS_MANIFEST

    @property
    def others_manifest(self) -> Path:
        return self.crop_dir / OTHERS_MANIFEST

    @property
    def crop_summary(self) -> Path:
        return self.crop_dir / CROP_SUMMARY

    @property
    def curate_dir(self) -> Path:
        return self.root / CURATE_FOLDER

    @property
    def splits_manifest(self) -> Path:
        return self.curate_dir / SPLITS_MANIFEST

    @property
    def curate_summary(self) -> Path:
        return self.curate_dir / CURATE_SUMMARY

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_FOLDER

    @property
    def evaluation_dir(self) -> Path:
        return self.root / EVALUATION_FOLDER

    @property
    def metrics(self) -> Path:
        return self.evaluation_dir / METRICS_FILE

    @property
    def run_summary(self) -> Path:
        return self.root / RUN_SUMMARY

    @property
    def report(self) -> Path:
        return self.root / REPORT_NAME
