"""The ``facecls`` command: parses arguments, builds settings, calls a stage, prints a summary.

Exit status: 0 ok, 1 a facecls error (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from facecls.config import (
    CropSettings,
    CurateSettings,
    DetectSettings,
    IngestSettings,
    TrainSettings,
    settings_from_dict,
)
from facecls.errors import FaceclsError
from facecls.layout import CROP_SUMMARY, EVALUATION_FOLDER, RunLayout
from facecls.quiet import silence_tensorflow_start_up

logger = logging.getLogger("facecls")

# The settings of the whole chain (run, demo), in the order of their --help; every field is an option.
RUN_SETTINGS = (IngestSettings, DetectSettings, CropSettings, CurateSettings, TrainSettings)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _dest(field: dataclasses.Field) -> str:
    return _flag(field)[2:].replace("-", "_")


def _add_settings_options(parser: argparse.ArgumentParser, settings_classes: tuple[type, ...]) -> None:
    """One option per field of each settings class, from its declaration: flag, type, default, choices, help.

    A flag several classes declare (``--seed``: the split's and training's) is one option setting them all.
    """
    fields_by_flag: dict[str, list[dataclasses.Field]] = {}
    for settings_class in settings_classes:
        for field in dataclasses.fields(settings_class):
            fields_by_flag.setdefault(_flag(field), []).append(field)
    for settings_class in settings_classes:
        group = parser.add_argument_group(settings_class.__name__.removesuffix("Settings").lower())
        for field in dataclasses.fields(settings_class):
            flag, shared = _flag(field), fields_by_flag.pop(_flag(field), None)
            if shared is None:  # added with the first class that declares it
                continue
            text = " and ".join(item.metadata["help"] for item in shared).replace("%", "%%")
            if field.type == "bool":
                default = flag if field.default else "--no-" + flag[2:]
                group.add_argument(flag, dest=_dest(field), action=argparse.BooleanOptionalAction,
                                   default=field.default, help=f"{text} (default {default})")  # fmt: skip
            else:
                low, high = field.metadata.get("between", (None, None))
                allowed = "" if low is None else f"; {low} to {high}"
                group.add_argument(
                    flag, dest=_dest(field), type={"int": int, "float": float, "str": str}[field.type],
                    choices=field.metadata.get("choices"), default=field.default,
                    help=f"{text} (default %(default)s{allowed})",
                )  # fmt: skip


def _settings(settings_class: type, args: argparse.Namespace):
    """A settings record from the options ``_add_settings_options`` added; its ``__post_init__`` checks them."""
    return settings_class(**{field.name: getattr(args, _dest(field)) for field in dataclasses.fields(settings_class)})


def _train_settings(args) -> TrainSettings:
    settings = _settings(TrainSettings, args)
    # Without fine-tuning epochs no layer of the base is trained, and the model dir records that.
    return settings if settings.fine_tune_epochs else dataclasses.replace(settings, fine_tune_from="")


def _run_settings(args):
    """The facecls.pipeline.RunSettings of run and demo: every settings record, from its options."""
    from facecls.pipeline import RunSettings

    return RunSettings(
        ingest=_settings(IngestSettings, args),
        detect=_settings(DetectSettings, args),
        crop=_settings(CropSettings, args),
        curate=_settings(CurateSettings, args),
        train=_train_settings(args),
    )


def _add_workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="face-detection processes (default: one per core)")


def _settings_from_crop_summary(crop_dir: Path) -> tuple[DetectSettings, CropSettings]:
    from facecls.manifest import read_json

    summary_path = crop_dir / CROP_SUMMARY
    if not summary_path.exists():
        raise FaceclsError(f"{summary_path} not found. Run `facecls crop` into this run folder first.")
    summary = read_json(summary_path)
    return (
        settings_from_dict(DetectSettings, summary["detect_settings"]),
        settings_from_dict(CropSettings, summary["crop_settings"]),
    )


def _summary(args, text: str, data: dict) -> None:
    """Print a command's closing summary: prose, or with --json one JSON object on one line."""
    if args.json:
        print(json.dumps({"command": args.command, **data}, default=str, ensure_ascii=False))
    else:
        print(text)


def command_ingest(args) -> int:
    from facecls.ingest import ingest

    result = ingest(Path(args.scrape), Path(args.out), _settings(IngestSettings, args))
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.counts.items()))
    _summary(
        args,
        f"ingest: {sum(result.counts.values())} files of {len(result.people)} people: {counts} -> {result.manifest_path}",
        {"files": sum(result.counts.values()), "people": result.people, "counts": result.counts,
         "manifest": result.manifest_path},
    )
    return 0


def command_crop(args) -> int:
    from facecls.crop import crop

    out = Path(args.out)
    manifest = Path(args.ingest_manifest) if args.ingest_manifest else RunLayout(out).ingest_manifest
    if not manifest.exists():
        raise FaceclsError(f"Ingest manifest not found: {manifest}. Run `facecls ingest {args.scrape} --out {out}` first.")
    result = crop(
        Path(args.scrape), manifest, RunLayout(out).crop_dir, _settings(DetectSettings, args), _settings(CropSettings, args),
        workers=args.workers,
    )
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.counts.items()))
    _summary(
        args,
        f"crop: {len(result.photos)} photos ({counts}; {result.reused} reused) -> "
        f"{len(result.crops)} face crops in {result.out_dir / 'faces'}, contact sheets in {result.out_dir / 'sheets'}"
        + "".join(f"\nwarning: {warning}" for warning in result.warnings),
        {"photos": len(result.photos), "counts": result.counts, "reused": result.reused, "crops": len(result.crops),
         "out_dir": result.out_dir, "warnings": list(result.warnings)},
    )
    return 0


def command_curate(args) -> int:
    from facecls.curate import curate

    out = Path(args.out)
    layout = RunLayout(out)
    result = curate(layout.crops_manifest, layout.curate_dir, _settings(CurateSettings, args))
    totals = {split: sum(counts[split] for counts in result.counts.values()) for split in ("train", "val", "test")}
    _summary(
        args,
        f"curate: {len(result.counts)} people; crops train {totals['train']}, val {totals['val']}, "
        f"test {totals['test']}; {len(result.items)} items with flips and balancing -> {result.manifest_path}",
        {"people": len(result.counts), "crops_per_split": totals, "items": len(result.items),
         "manifest": result.manifest_path},
    )
    return 0


def command_train(args) -> int:
    from facecls.curate import read_splits
    from facecls.pipeline import check_weights

    from facecls.paths import check_output_folder

    out = Path(args.out)
    layout = RunLayout(out)
    model_dir = Path(args.model_dir) if args.model_dir else layout.model_dir
    check_output_folder(model_dir, option="--model-dir")
    detect_settings, crop_settings = _settings_from_crop_summary(layout.crop_dir)
    items = read_splits(layout.splits_manifest)
    check_weights(_train_settings(args))
    from facecls.openset import calibration_summary
    from facecls.train import train_model

    result = train_model(items, layout.crop_dir, _train_settings(args), model_dir, crop_settings, detect_settings)
    calibration = result.calibration
    accuracy = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.3f}"
    _summary(
        args,
        f"train: {len(result.labels)} people, {result.train_count} training items, "
        f"{result.epochs_run} epochs in {result.seconds:.0f} s; val accuracy {accuracy}; unknown: "
        f"{calibration_summary(calibration)} -> {result.model_dir}",
        {"labels": result.labels, "training_items": result.train_count, "epochs": result.epochs_run,
         "seconds": round(result.seconds, 1), "val_accuracy": result.val_accuracy, "model_dir": result.model_dir,
         "unknown_threshold": calibration.threshold, "person_distances": calibration.person_distances,
         "known_recall": calibration.known_recall, "stranger_rejection": calibration.stranger_rejection},
    )
    return 0


def command_calibrate(args) -> int:
    from facecls.openset import calibration_summary, recalibrate

    calibration = recalibrate(Path(args.model_dir), Path(args.crops) if args.crops else None)
    _summary(
        args,
        f"calibrate: {calibration_summary(calibration)} -> {args.model_dir}",
        {"model_dir": args.model_dir, **dataclasses.asdict(calibration)},
    )
    return 0


def command_evaluate(args) -> int:
    from facecls.evaluate import crops_from_labelled_folder, evaluate_crops
    from facecls.manifest import write_csv
    from facecls.modeldir import load_model_dir

    from facecls.paths import check_output_folder

    out = Path(args.out) if args.out else Path(args.model_dir) / EVALUATION_FOLDER / Path(args.folder).name
    check_output_folder(out, [Path(args.folder)])
    loaded = load_model_dir(Path(args.model_dir))
    found = crops_from_labelled_folder(loaded, Path(args.folder), workers=args.workers)
    write_csv(
        out / "photos_without_face.csv",
        [{"path": path, "status": status, "reason": reason} for path, status, reason in found.without_face],
        ["path", "status", "reason"],
    )
    if found.crops is None:
        raise FaceclsError(f"No face found in any photo of {args.folder}; see {out / 'photos_without_face.csv'}.")
    report = evaluate_crops(loaded, found.crops, out)
    _summary(
        args,
        f"evaluate: {report.count} faces from {args.folder} ({len(found.without_face)} photos without a face): "
        f"accuracy {report.accuracy:.3f} (95% CI {report.accuracy_low:.3f}-{report.accuracy_high:.3f}) -> {out}",
        {"faces": report.count, "photos_without_face": len(found.without_face), "accuracy": report.accuracy,
         "accuracy_95_interval": [report.accuracy_low, report.accuracy_high], "out_dir": out},
    )
    return 0


def command_run(args) -> int:
    from facecls.pipeline import run

    result = run(Path(args.scrape), Path(args.out), _run_settings(args),
                 model_dir=Path(args.model_dir) if args.model_dir else None, workers=args.workers)
    _run_summary(args, result)
    return 0


def _run_summary(args, result, extra: dict | None = None) -> None:
    from facecls.report import REPORT_NAME

    counts = result.split_counts
    if result.test_accuracy is None:
        accuracy = "no test split"
    else:
        low, high = result.test_accuracy_interval
        accuracy = f"{result.test_accuracy:.3f} (95% CI {low:.3f}-{high:.3f})"
    if result.stranger_rejection is None:
        rejection = "no other people's faces in the scrape to measure it on"
    else:
        rejected = round(result.stranger_rejection * result.stranger_count)
        rejection = f"rejects {rejected} of {result.stranger_count} other people's faces"
    _summary(
        args,
        f"{args.command}: {result.files} files, {result.usable_photos} usable photos, {result.faces} faces kept; "
        f"crops train {counts['train']} / val {counts['val']} / test {counts['test']}; "
        f"test accuracy {accuracy}; unknown (threshold {result.unknown_threshold:.3f}) {rejection}; "
        f"model {'trained' if result.trained else 'reused'}, whole run {result.seconds:.0f} s\n"
        f"model: {result.model_dir}\nreport: {result.run_dir / REPORT_NAME}"
        + "".join(f"\nwarning: {warning}" for warning in result.warnings),
        {**(extra or {}), **dataclasses.asdict(result), "report": result.run_dir / REPORT_NAME},
    )


def command_classify(args) -> int:
    from facecls.classifier import classify

    if args.engine == "ray":
        return _classify_on_ray(args)
    if args.address is not None or args.actors is not None:
        raise FaceclsError("--address and --actors choose the Ray cluster: add --engine ray, or drop them.")
    uris = [path for path in args.paths if "://" in path]
    if uris:
        raise FaceclsError(f"{uris[0]}: object-store URIs are read by the Ray engine only. Add --engine ray, or pass local paths.")
    result = classify(
        Path(args.model_dir),
        [Path(path) for path in args.paths],
        Path(args.out),
        sort=args.sort or "copy",
        annotate=args.annotate,
        unknown_threshold=args.unknown_threshold,
        workers=args.workers,
    )
    from facecls.report import REPORT_NAME

    people = ", ".join(f"{label} {count}" for label, count in result.label_counts.items()) or "none"
    if result.classified == 0 and result.skipped:
        done = f"all {result.skipped} photos were already classified"
    else:
        done = (f"{result.classified} classified now, {result.skipped} already done, "
                f"{result.photos_per_second:.1f} photos/s")
    _summary(
        args,
        f"classify: {result.photos} photos ({done}), {result.faces} faces: {people}; "
        f"no_face {result.no_face}, unreadable {result.unreadable} -> {result.predictions_path}\n"
        + (f"kept in place: {len(result.kept_sources)} (see kept_sources in classify.json)\n" if result.kept_sources else "")
        + (f"per photo: {_phase_times(result)}\n" if result.classified else "")
        + f"report: {result.out_dir / REPORT_NAME}",
        {**dataclasses.asdict(result), "report": result.out_dir / REPORT_NAME},
    )
    return 0


def _phase_times(result) -> str:
    """'decode 3 ms, detect 81 ms, ...': the mean time of each phase over the photos this run classified."""
    return ", ".join(f"{phase} {1000 * seconds / result.classified:.0f} ms" for phase, seconds in result.phase_seconds.items())


def _classify_on_ray(args) -> int:
    local_only = [name for name, value in (("--sort", args.sort), ("--annotate", args.annotate), ("--workers", args.workers)) if value]
    if local_only:
        raise FaceclsError(
            f"{', '.join(local_only)}: local-only (the Ray engine writes predictions only). Received with --engine ray; "
            "drop them, or sort with the local engine."
        )
    from facecls.ray_engine import classify_on_ray, parse_actors

    result = classify_on_ray(
        Path(args.model_dir),
        args.paths,
        Path(args.out),
        unknown_threshold=args.unknown_threshold,
        address=args.address,
        actors=parse_actors(args.actors) if args.actors is not None else None,
    )
    people = ", ".join(f"{label} {count}" for label, count in result.label_counts.items()) or "none"
    _summary(
        args,
        f"classify (ray): {result.photos} photos ({result.classified} classified now, {result.skipped} already done, "
        f"{result.photos_per_second:.1f} photos/s), {result.faces} faces: {people}; "
        f"no_face {result.no_face}, unreadable {result.unreadable} -> {result.predictions_path}",
        dataclasses.asdict(result),
    )
    return 0


def command_export(args) -> int:
    from facecls.export import export_model_dir

    result = export_model_dir(
        Path(args.model_dir),
        Path(args.out) if args.out else None,
        export_format=args.format,
        quantization=args.quantize,
        representative=Path(args.representative) if args.representative else None,
    )
    if result.check is None:
        check = "not checked (pass --representative to compare it with the Keras model on real crops)"
    else:
        verdict = "within tolerance" if result.check.within_tolerance else "OUTSIDE the stated tolerance"
        check = (
            f"on {result.check.crops} crops: max probability difference {result.check.max_difference:.2g}, "
            f"top-1 agreement {result.check.agreement:.1%} ({verdict})"
        )
    _summary(
        args,
        f"export: {result.export_format} ({result.quantization}) {result.size_bytes / 1e6:.1f} MB in "
        f"{result.seconds:.0f} s; {check} -> {result.model_path}",
        dataclasses.asdict(result),
    )
    return 0


def command_demo(args) -> int:
    from facecls.demo import demo

    result = demo(Path(args.out), Path(args.lfw_home) if args.lfw_home else None, people=args.people,
                  photos_per_person=args.photos_per_person, settings=_run_settings(args), workers=args.workers)
    _run_summary(args, result.run, {"scrape": result.scrape.scrape_dir, "people": result.scrape.people})
    return 0


def command_report(args) -> int:
    from facecls.report import write_report

    path = write_report(Path(args.folder))
    _summary(args, f"report: {path}", {"report": path})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facecls",
        description="Turn a scrape of photos laid out as <scrape>/<person>/* into a face classifier, "
        "then classify folders of photos.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log what each stage does")
    _add_output_options(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ingest = commands.add_parser(
        "ingest",
        help="index a scrape: decode, reject unusable files with a reason, find duplicates -> OUT/ingest.csv",
        description="Index <scrape>/<person>/* into OUT/ingest.csv: one row per file with its real format, size, "
        "sha256, duplicate group and a status (ok, unreadable, not_image, too_small, too_large, duplicate, "
        "near_duplicate). The scrape is never modified.",
    )
    ingest.add_argument("scrape", help="folder with one subfolder of photos per person")
    ingest.add_argument("--out", required=True, help="run folder to write into")
    _finish(ingest, command_ingest, (IngestSettings,))

    crop = commands.add_parser(
        "crop",
        help="find faces with MTCNN and crop the target face of each photo -> OUT/crop/",
        description="Detect faces in every usable photo of OUT/ingest.csv and write square face crops to "
        "OUT/crop/faces/<person>/, with OUT/crop/photos.csv (every detection, a status per photo), "
        "OUT/crop/crops.csv and a contact sheet per person in OUT/crop/sheets/. Reruns reuse finished photos. "
        "OUT/crop/corrections.csv, if you write one (lines path,face: the face number to train on, or none), "
        "overrides which face of a photo is trained on.",
    )
    crop.add_argument("scrape", help="the scrape folder that was ingested")
    crop.add_argument("--out", required=True, help="run folder holding ingest.csv")
    crop.add_argument("--ingest-manifest", help="ingest manifest to read (default OUT/ingest.csv)")
    _finish(crop, command_crop, (DetectSettings, CropSettings), workers=True)

    curate = commands.add_parser(
        "curate",
        help="split the crops into train/val/test by photo group, balance, flip -> OUT/curate/",
        description="Split OUT/crop/crops.csv into train, val and test, stratified by person and grouped so a "
        "photo, its near-duplicates and its flips share one split; balance the training split and add flips. "
        "Writes OUT/curate/splits.csv and curate.json.",
    )
    curate.add_argument("--out", required=True, help="run folder holding crop/")
    _finish(curate, command_curate, (CurateSettings,))

    train = commands.add_parser(
        "train",
        help="train MobileNetV2 on the curated crops -> a model dir",
        description="Train MobileNetV2 (ImageNet-pretrained, new head, then fine-tuning of its top) on "
        "OUT/curate/splits.csv and write a self-describing model dir (default OUT/model).",
    )
    train.add_argument("--out", required=True, help="run folder holding crop/ and curate/")
    train.add_argument("--model-dir", help="where to write the model dir (default OUT/model)")
    _finish(train, command_train, (TrainSettings,))

    calibrate = commands.add_parser(
        "calibrate",
        help="recalibrate 'unknown' of an existing model dir from its run's crops",
        description="Recalibrate the open set (openset.npz, unknown_threshold) of MODEL_DIR in place, from the "
        "identity chips of the run's training crops and the other faces of its photos. The crop folder is --crops, "
        "else the one MODEL_DIR was calibrated from, else crop/ beside MODEL_DIR; the splits are curate/splits.csv "
        "beside it.",
    )
    calibrate.add_argument("model_dir", help="a model dir written by facecls train or run")
    calibrate.add_argument("--crops", help="the run's crop folder, RUN/crop (default: found from the model dir)")
    _finish(calibrate, command_calibrate)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure a model dir on a labelled folder of raw photos",
        description="Detect and crop the faces of FOLDER/<person>/* with the model's own settings, classify them "
        "and write accuracy (95%% CI), per-person precision/recall/F1, the confusion matrix and the misclassified "
        "faces to OUT (default MODEL_DIR/evaluation/<folder name>).",
    )
    evaluate.add_argument("model_dir", help="a model dir written by facecls train or run")
    evaluate.add_argument("folder", help="labelled photos laid out as FOLDER/<person>/*")
    evaluate.add_argument("--out", help="where to write the metrics and plots")
    _finish(evaluate, command_evaluate, workers=True)

    run = commands.add_parser(
        "run",
        help="the whole chain: ingest, crop, curate, train, evaluate -> OUT/",
        description="From a scrape laid out as SCRAPE/<person>/* to a trained model and a report in OUT: "
        "ingest, crop, curate, train and evaluate on the test split. Rerunning reuses finished work.",
    )
    run.add_argument("scrape", help="folder with one subfolder of photos per person")
    run.add_argument("--out", required=True, help="run folder to write into")
    run.add_argument("--model-dir", help="where to write the model dir (default OUT/model)")
    _finish(run, command_run, RUN_SETTINGS, workers=True)

    classify = commands.add_parser(
        "classify",
        help="classify folders of photos with a model dir: one row per face, unknown for strangers",
        description="Find every face in PATH... (files and folders, recursively, decoded by content) with the model's "
        "own detect/crop settings and write OUT/predictions.csv and .jsonl: one row per face (label: a person of the "
        "model or unknown), one row per photo without a face (no_face) or file that cannot be decoded (unreadable). "
        "Photos are sorted into OUT/<label>/ (each recognised person's folder, else unknown/ or no_face/; unreadable "
        "files stay where they are). Rerunning skips photos already in OUT.",
    )
    classify.add_argument("model_dir", help="a model dir written by facecls train or run")
    classify.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="photo files or folders; with --engine ray also s3://... (any pyarrow filesystem) and Parquet/CSV lists "
        "with a uri column",
    )  # fmt: skip
    classify.add_argument("--out", required=True, help="folder for predictions and sorted photos")
    classify.add_argument(
        "--sort",
        choices=("copy", "link", "move", "none"),
        default=None,
        help="how photos go into OUT/<label>/: copy, link (hard link; symbolic link across file systems), "
        "move (the source is removed once its copies and rows are safe) or none (default copy; local engine only)",
    )
    classify.add_argument("--annotate", action="store_true", help="also write copies with boxes and labels to OUT/annotated/")
    classify.add_argument(
        "--unknown-threshold",
        type=float,
        default=None,
        help="a face scoring below this against every person is unknown, 0 never; the score is 0.5 at a "
        "person's calibrated acceptance distance (default: the model dir's threshold; an uncalibrated model compares it with the softmax probability and never says "
        "unknown without it)",
    )
    _add_workers_option(classify)
    classify.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local worker processes (default), or Ray Data on a Ray cluster: rows as Parquet in OUT/predictions/ "
        '(needs pip install "facecls[ray]")',
    )  # fmt: skip
    classify.add_argument("--address", default=None, help="with --engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT)")
    classify.add_argument("--actors", default=None, metavar="N|MIN,MAX", help="with --engine ray: actors, one CPU each (default 1 to all CPUs)")
    _finish(classify, command_classify)

    export = commands.add_parser(
        "export",
        help="export a model dir as TFLite (float32, float16, int8) or a SavedModel, for phones and servers",
        description="Write the model of MODEL_DIR as TFLite or a TensorFlow SavedModel, with labels.txt and "
        "preprocessing.json (input size, RGB 0-255 float input, scaling inside the model, detection and crop "
        "settings) beside it, into OUT (default MODEL_DIR-export). With --representative, the export's outputs "
        "are compared with the Keras model's on those face crops.",
    )
    export.add_argument("model_dir", help="a model dir written by facecls train or run")
    export.add_argument("--format", choices=("tflite", "savedmodel"), default="tflite", help="(default %(default)s)")
    export.add_argument(
        "--quantize",
        choices=("none", "float16", "int8"),
        default="none",
        help="TFLite only: float16 weights (half the size) or int8 weights and activations, calibrated on "
        "--representative (default %(default)s)",
    )
    export.add_argument(
        "--representative",
        help="folder of face crops of the model's people, e.g. RUN/crop/faces: calibrates int8 (required for it) "
        "and checks the export against the Keras model",
    )
    export.add_argument("--out", help="folder to write into (default MODEL_DIR-export)")
    _finish(export, command_export)

    demo = commands.add_parser(
        "demo",
        help="try facecls without a scrape: LFW photos of two people, the whole chain and its report",
        description="Download Labeled Faces in the Wild through scikit-learn (~200 MB, once), copy the original "
        "photos of the people with the most photos into OUT/scrape/<person>/, and run the whole chain into OUT/run/, "
        "ending with OUT/run/report.html.",
    )
    demo.add_argument("--out", default="runs/demo", help="folder for the demo scrape and run (default %(default)s)")
    demo.add_argument(
        "--lfw-home",
        metavar="DIR",
        help="a scikit-learn data home holding an LFW download (DIR/lfw_home/lfw/<Person_Name>/); nothing is "
        "downloaded then (default: scikit-learn's data home, downloading LFW if it is missing)",
    )
    demo.add_argument("--people", type=int, default=2, help="how many people (default %(default)s)")
    demo.add_argument(
        "--photos-per-person", type=int, default=150,
        help="people with at least this many photos qualify; this many of each are used (default %(default)s)",
    )
    _finish(demo, command_demo, RUN_SETTINGS, workers=True)

    report = commands.add_parser(
        "report",
        help="(re)build report.html of a run folder or a classify output folder",
        description="Write FOLDER/report.html from the manifests in FOLDER: a run folder (facecls run, or the stages "
        "done so far) or a classify output folder. Thumbnails go to FOLDER/report_files/.",
    )
    report.add_argument("folder", help="a run folder or a classify output folder")
    _finish(report, command_report)

    for subparser in commands.choices.values():
        _add_output_options(subparser, argparse.SUPPRESS)
    return parser


def _finish(parser: argparse.ArgumentParser, handler, settings: tuple = (), workers: bool = False) -> None:
    """The end of every command's options: --workers if it detects faces, then an option for every
    field of its settings records, then its handler."""
    if workers:
        _add_workers_option(parser)
    _add_settings_options(parser, settings)
    parser.set_defaults(handler=handler)


def _add_output_options(parser: argparse.ArgumentParser, default) -> None:
    # On the main parser (default False) and on each command (SUPPRESS, so it does not reset
    # the main parser's value): `facecls --json run ...` and `facecls run ... --json` both work.
    parser.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars")
    parser.add_argument("--json", action="store_true", default=default,
                        help="print the closing summary as one JSON object on one line")


def _first_missing_folder(out: str | None) -> Path | None:
    """The outermost folder of ``out`` that does not exist yet: what this command may create."""
    if not out:
        return None
    missing = None
    for folder in [Path(out), *Path(out).parents]:
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_if_nothing_written(folder: Path | None) -> None:
    """Remove a folder this command created when it failed before writing anything but locks into it."""
    from facecls.manifest import LOCK_NAME

    if folder is None or not folder.is_dir() or folder.is_symlink():
        return
    entries = list(folder.rglob("*"))
    if all(entry.is_dir() or entry.name == LOCK_NAME for entry in entries):
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        silence_tensorflow_start_up()  # its C++ start-up lines would print before our one-line errors
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    progress_setting = os.environ.get("TQDM_DISABLE")
    warning_setting = os.environ.get("PYTHONWARNINGS")
    if args.quiet:
        # tqdm reads TQDM_* variables when it is first imported (stages import it lazily, after
        # this), and worker processes inherit them, as they inherit PYTHONWARNINGS.
        os.environ["TQDM_DISABLE"] = "1"
        # Libraries' warnings too (Pillow on odd EXIF, absl from Keras); facecls's own still show.
        os.environ["PYTHONWARNINGS"] = "ignore"
    absl_level = logging.getLogger("absl").level
    created = _first_missing_folder(getattr(args, "out", None))
    try:
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise FaceclsError(f"--workers must be at least 1. Received: {args.workers}. Leave it out for one per core.")
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
                logging.getLogger("absl").setLevel(logging.ERROR)
            return args.handler(args)
    except FaceclsError as error:
        _remove_if_nothing_written(created)
        if args.debug:
            raise
        print(f"facecls: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _remove_if_nothing_written(created)
        print("facecls: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM) or args.debug:
            raise
        _remove_if_nothing_written(created)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" while writing {error.filename}" if error.filename else ""
            print(f"facecls: error: no space left on the device{where}. Free some space and rerun the same command: "
                  "finished work is reused.", file=sys.stderr)  # fmt: skip
        else:
            print(f"facecls: error: {error.filename or 'an output'}: {error.strerror}. Choose an output folder you can "
                  "write to, or fix its permissions, and rerun the same command.", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if args.quiet and progress_setting is None:
            os.environ.pop("TQDM_DISABLE", None)
        logging.getLogger("absl").setLevel(absl_level)
        if args.quiet:
            if warning_setting is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = warning_setting


if __name__ == "__main__":
    sys.exit(main())
