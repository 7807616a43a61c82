"""The whole chain in one run folder: ingest -> crop -> curate -> train -> evaluate.

Run folder layout::

    <run>/ingest.csv, ingest.json      every file of the scrape, with a status
    <run>/crop/                        face crops, photos.csv, crops.csv, others.csv, sheets/
    <run>/crop/corrections.csv         yours, optional: the face to train on per photo, or none
    <run>/curate/                      splits.csv, curate.json
    <run>/model/                       the model dir (everything classify needs)
    <run>/evaluation/                  metrics.json and plots on the test split
    <run>/run.json                     what each stage did, and the fingerprints used to reuse work
    <run>/report.html, report_files/   the run on one page: funnel, faces, splits, curves, test results

Rerunning with the same settings reuses finished work: crops are cached per photo, and
training is skipped when the splits and training settings are unchanged and the model dir is
the one that training wrote. run.json records that as soon as the model is trained and
calibrated (``state: trained``), so a run killed while evaluating or writing its report
reuses the model; its ``state`` is ``finished`` once everything is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from facecls import modeldir
from facecls.config import (
    CropSettings,
    CurateSettings,
    DetectSettings,
    IngestSettings,
    TrainSettings,
    settings_to_dict,
)
from facecls.errors import FaceclsError
from facecls.manifest import output_lock, read_json, sha256_file, write_json

logger = logging.getLogger(__name__)

RUN_SUMMARY = "run.json"


@dataclass(frozen=True)
class RunSettings:
    ingest: IngestSettings = IngestSettings()
    detect: DetectSettings = DetectSettings()
    crop: CropSettings = CropSettings()
    curate: CurateSettings = CurateSettings()
    train: TrainSettings = TrainSettings()


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    model_dir: Path
    files: int
    usable_photos: int
    faces: int
    split_counts: dict[str, int]  # crops per split, before flips
    test_accuracy: float | None
    test_accuracy_interval: tuple[float, float] | None
    trained: bool  # False when an earlier identical training was reused
    seconds: float
    warnings: tuple[str, ...] = ()  # people whose photos do not agree enough (facecls.faces)


def _training_fingerprint(splits_manifest: Path, settings: RunSettings) -> str:
    digest = hashlib.sha256(splits_manifest.read_bytes())
    digest.update(
        json.dumps(
            {"train": settings_to_dict(settings.train), "crop": settings_to_dict(settings.crop),
             "detect": settings_to_dict(settings.detect)},
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()[:16]


def run(scrape: Path, run_dir: Path, settings: RunSettings = RunSettings(), model_dir: Path | None = None,
        workers: int | None = None) -> RunResult:
    """Chain every training stage over a scrape into ``run_dir``; returns a summary record."""
    started = time.perf_counter()
    scrape, run_dir = Path(scrape), Path(run_dir)
    model_dir = Path(model_dir) if model_dir else run_dir / "model"
    modeldir.check_replaceable(model_dir)
    _check_weights(settings.train.weights)
    with output_lock(run_dir):
        return _run_locked(scrape, run_dir, settings, model_dir, workers, started)


def _run_locked(scrape: Path, run_dir: Path, settings: RunSettings, model_dir: Path, workers: int | None,
                started: float) -> RunResult:
    from facecls.crop import crop
    from facecls.curate import curate
    from facecls.ingest import ingest
    from facecls.openset import calibrate_from_crops

    previous = _read_previous(run_dir / RUN_SUMMARY)
    with output_lock(model_dir.parent):
        # A save killed earlier left temporary siblings (or the old model dir retired): tidy them
        # now, since a reused model dir is never saved again to do it.
        modeldir.remove_stale_temporaries(model_dir)
    ingested = ingest(scrape, run_dir, settings.ingest)
    cropped = crop(scrape, ingested.manifest_path, run_dir / "crop", settings.detect, settings.crop, workers=workers)
    curated = curate(run_dir / "crop" / "crops.csv", run_dir / "curate", settings.curate)

    fingerprint = _training_fingerprint(curated.manifest_path, settings)
    trained = True
    if _reusable(previous, fingerprint, model_dir):
        logger.info("Reusing %s: same splits and settings as the last run", model_dir)
        trained = False
    else:
        from facecls.train import train_model

        train_model(curated.items, run_dir / "crop", settings.train, model_dir, settings.crop, settings.detect)
    if trained or not _open_set_current(model_dir):  # a reused model calibrated by an older facecls too
        calibrate_from_crops(model_dir, run_dir / "crop", curated.items)
    record = {
        "scrape": str(scrape.resolve()),
        "model_dir": str(model_dir),
        "training_fingerprint": fingerprint,
        "model_sha256": sha256_file(model_dir / modeldir.MODEL_FILE),
        "settings": {name: settings_to_dict(value) for name, value in vars(settings).items()},
    }
    # Recorded before evaluation: a run killed from here on reuses this model. The model's hash
    # ties the record to this very model dir, not to whatever a later save puts under its name.
    write_json(run_dir / RUN_SUMMARY, {"state": "trained", **record})
    evaluation = _evaluate_test_split(model_dir, run_dir / "crop", curated.items, run_dir / "evaluation")

    split_counts = {
        split: sum(counts[split] for counts in curated.counts.values()) for split in ("train", "val", "test")
    }
    result = RunResult(
        run_dir=run_dir,
        model_dir=model_dir,
        files=len(ingested.records),
        usable_photos=ingested.counts.get("ok", 0),
        faces=len(cropped.crops),
        split_counts=split_counts,
        test_accuracy=evaluation.get("accuracy") if evaluation else None,
        test_accuracy_interval=tuple(evaluation["accuracy_interval"]) if evaluation else None,
        trained=trained,
        seconds=time.perf_counter() - started,
        warnings=cropped.warnings,
    )
    write_json(
        run_dir / RUN_SUMMARY,
        {
            "state": "finished",
            **record,
            "files": result.files,
            "usable_photos": result.usable_photos,
            "faces": result.faces,
            "ingest_counts": ingested.counts,
            "crop_counts": cropped.counts,
            "warnings": list(cropped.warnings),
            "crops_per_person_and_split": curated.counts,
            "test_accuracy": result.test_accuracy,
            "test_accuracy_interval": result.test_accuracy_interval,
            "seconds": round(result.seconds, 1),
        },
    )
    from facecls.report import write_run_report

    write_run_report(run_dir)
    return result


def _check_weights(weights: str) -> None:
    if weights != "imagenet" and not Path(weights).is_file():
        raise FaceclsError(
            f"--weights must be 'imagenet' or the path of a MobileNetV2 no-top weights file (.h5 or .weights.h5). "
            f"Received: {weights} (no such file)."
        )


def _read_previous(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except FaceclsError:
        return {}


def _reusable(previous: dict, fingerprint: str, model_dir: Path) -> bool:
    """Whether ``model_dir`` is the model the last run trained with this fingerprint.

    The fingerprint alone is not enough: a run with other settings killed after its save
    leaves another model under the same name, and the record still names the old one.
    """
    if previous.get("training_fingerprint") != fingerprint or not previous.get("model_sha256"):
        return False
    try:
        modeldir.read_model_info(model_dir)
        return sha256_file(model_dir / modeldir.MODEL_FILE) == previous["model_sha256"]
    except (FaceclsError, OSError):
        return False


def _open_set_current(model_dir: Path) -> bool:
    from facecls.openset import load_open_set

    try:
        return load_open_set(model_dir, modeldir.read_model_info(model_dir).labels) is not None
    except FaceclsError as error:
        logger.info("Recalibrating 'unknown': %s", error)
        return False


def _evaluate_test_split(model_dir: Path, crops_dir: Path, items, out_dir: Path) -> dict | None:
    test_items = [item for item in items if item.split == "test"]
    if not test_items:
        return None
    from facecls.evaluate import evaluate_crops, load_split_crops
    from facecls.modeldir import load_model_dir

    report = evaluate_crops(load_model_dir(model_dir), load_split_crops(test_items, crops_dir, "test"), out_dir)
    return {"accuracy": report.accuracy, "accuracy_interval": (report.accuracy_low, report.accuracy_high)}
