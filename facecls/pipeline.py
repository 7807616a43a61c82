"""The whole chain in one run folder: ingest -> crop -> curate -> train -> evaluate.

The run folder's layout is ``facecls.layout`` (``RunLayout``).

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
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from facecls import modeldir
from facecls.config import (
    CropSettings,
    CurateSettings,
    DetectSettings,
    IngestSettings,
    IMAGENET_WEIGHTS_URL,
    TrainSettings,
    imagenet_weights_file_name,
    settings_to_dict,
    weights_hint,
)
from facecls.errors import FaceclsError
from facecls.layout import RunLayout
from facecls.manifest import output_lock, read_json, sha256_file, write_json
from facecls.paths import check_output_folder, person_name_problem

logger = logging.getLogger(__name__)



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
    unknown_threshold: float
    stranger_rejection: float | None  # share of the other people's faces in the scrape called unknown
    stranger_count: int  # those faces (from photos of several people); 0: nothing to measure it on
    seconds: float  # the whole run, every stage
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
    model_dir = Path(model_dir) if model_dir else RunLayout(run_dir).model_dir
    preflight(scrape, settings, model_dir, run_dir)
    with output_lock(run_dir):
        return _run_locked(scrape, run_dir, settings, model_dir, workers, started)


def _run_locked(scrape: Path, run_dir: Path, settings: RunSettings, model_dir: Path, workers: int | None,
                started: float) -> RunResult:
    from facecls.crop import crop
    from facecls.curate import check_enough_photos, curate
    from facecls.ingest import ingest
    from facecls.openset import calibrate_from_crops

    layout = RunLayout(run_dir)
    previous = _read_previous(layout.run_summary)
    with output_lock(model_dir.parent):
        # A save killed earlier left temporary siblings (or the old model dir retired): tidy them
        # now, since a reused model dir is never saved again to do it.
        modeldir.remove_stale_temporaries(model_dir)
    ingested = ingest(scrape, run_dir, settings.ingest)
    # Before the heavy crop stage: a person whose files are mostly unusable cannot be split anyway.
    usable = Counter(record.person for record in ingested.records if record.status == "ok")
    check_enough_photos({person: usable[person] for person in ingested.people},
                        f"usable photos (see {ingested.manifest_path})", settings.curate)
    cropped = crop(scrape, ingested.manifest_path, layout.crop_dir, settings.detect, settings.crop, workers=workers)
    curated = curate(layout.crops_manifest, layout.curate_dir, settings.curate)

    fingerprint = _training_fingerprint(curated.manifest_path, settings)
    trained = not _reusable(previous, fingerprint, model_dir)
    open_set = None if trained else previous.get("open_set")
    if trained:  # training calibrates 'unknown' before it saves the model dir
        from facecls.train import train_model

        calibration = train_model(curated.items, layout.crop_dir, settings.train, model_dir, settings.crop,
                                  settings.detect).calibration
    else:
        logger.info("Reusing %s: same splits and settings as the last run", model_dir)
        calibration = None
        if not open_set or not _open_set_current(model_dir):  # calibrated by an older facecls
            calibration = calibrate_from_crops(model_dir, layout.crop_dir, curated.items)
    if calibration is not None:
        open_set = {
            "unknown_threshold": calibration.threshold,
            "known_recall": calibration.known_recall,
            "stranger_rejection": calibration.stranger_rejection,
            "stranger_count": calibration.stranger_count,
        }
    record = {
        "scrape": str(scrape.resolve()),
        "model_dir": str(model_dir),
        "training_fingerprint": fingerprint,
        "model_sha256": sha256_file(model_dir / modeldir.MODEL_FILE),
        "open_set": open_set,  # how 'unknown' was calibrated, and how many of the other people's faces it rejects
        "settings": {name: settings_to_dict(value) for name, value in vars(settings).items()},
    }
    # Recorded before evaluation: a run killed from here on reuses this model. The model's hash
    # ties the record to this very model dir, not to whatever a later save puts under its name.
    write_json(layout.run_summary, {"state": "trained", **record})
    evaluation = _evaluate_test_split(model_dir, layout.crop_dir, curated.items, layout.evaluation_dir)

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
        unknown_threshold=open_set["unknown_threshold"],
        stranger_rejection=open_set["stranger_rejection"],
        stranger_count=open_set["stranger_count"],
        seconds=time.perf_counter() - started,
        warnings=cropped.warnings,
    )
    write_json(
        layout.run_summary,
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


def preflight(scrape: Path, settings: RunSettings, model_dir: Path, run_dir: Path) -> None:
    """Check, before any heavy work and before the run folder exists, what a run needs.

    ``run_dir`` and ``model_dir`` are usable folders outside the scrape (a run folder inside it
    would be ingested as a person), ``model_dir`` may be replaced, the base weights can be had (``check_weights``), and the
    scrape is laid out as ``<scrape>/<person>/<photos>`` with at least two people, each with
    as many files as the split needs (once ingested, as many usable photos).

    Raises:
        FaceclsError: the first of these that does not hold, in one line saying how to fix it.
    """
    from facecls.curate import check_enough_photos
    from facecls.ingest import check_scrape_layout, list_scrape

    check_output_folder(Path(run_dir), [Path(scrape)])
    check_output_folder(Path(model_dir), [Path(scrape)], "--model-dir")
    modeldir.check_replaceable(Path(model_dir))
    check_weights(settings.train)
    files = list_scrape(Path(scrape))
    check_scrape_layout(Path(scrape), files)
    # Folders whose names cannot be a person's are not people (ingest gives their files no_person).
    people = Counter(person for _, person in files if person and not person_name_problem(person))
    check_enough_photos(people, "files", settings.curate)


def check_weights(train_settings: TrainSettings) -> None:
    """Fail at once when training could not load its base weights; imports no TensorFlow.

    A path must be an HDF5 file named ``.h5``; ``imagenet`` must be in the Keras cache or its
    download address reachable.
    """
    weights, alpha = train_settings.weights, train_settings.alpha
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            problem = "no such file" if not path.exists() else "not a file"
            raise FaceclsError(f"--weights must be 'imagenet' or a weights file. Received: {weights} ({problem}). "
                               f"{weights_hint(alpha)}.")
        with open(path, "rb") as file:
            signature = file.read(len(_HDF5_SIGNATURE))
        if not path.name.endswith(".h5") or signature != _HDF5_SIGNATURE:
            raise FaceclsError(f"--weights {weights} is not an HDF5 weights file (.h5 or .weights.h5). "
                               f"{weights_hint(alpha)}.")
        return
    file_name = imagenet_weights_file_name(alpha)
    if any((folder / "models" / file_name).is_file() for folder in _keras_cache_folders()):
        return
    url = IMAGENET_WEIGHTS_URL + file_name
    problem = _unreachable(url)
    if problem:
        cache = _keras_cache_folders()[0] / "models"
        raise FaceclsError(
            f"--weights imagenet: cannot download {url} ({problem}), and the Keras cache {cache} does not hold "
            f"{file_name}. Fetch that file on a machine with internet and pass --weights PATH/TO/{file_name} "
            f"(alpha {alpha}), or put it into {cache}."
        )


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _keras_cache_folders() -> list[Path]:
    """Where ``keras.utils.get_file`` looks: $KERAS_HOME or ~/.keras, and /tmp/.keras when that is not writable."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    return [home, Path("/tmp/.keras")]


def _unreachable(url: str, timeout: float = 10.0) -> str:
    """Why ``url`` cannot be fetched ("" when it can): a HEAD request, honouring the proxy settings."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return " ".join(str(reason).split()) or type(error).__name__


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
