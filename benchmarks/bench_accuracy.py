"""Accuracy of the default chain against the textbook baseline on the shared photos, side by side.

Configurations (``--configs``):
- ``textbook``: box crop with a 25% margin, no alignment (the chain before issue 5);
- ``default``: the current defaults (aligned, tight crop).
Both train with the current ``TrainSettings`` defaults, for each ``--alphas``.

- 5-celebrity: train on train/ (its own val split held out of it for early stopping), then
  evaluate on val/ (raw photos, detected and cropped with the model's settings); a val photo
  without a face counts as an error.
- scraped-celebs-6: the leakage-free split of ``facecls run`` over ``--seeds`` seeds; test
  accuracy mean and min.
- Open set: ``unknown`` calibrated as ``facecls run`` does (facecls.openset; "known recall" is
  leave-one-out over the training faces); stranger rejection measured on the other people of the
  scrape's multi-face photos plus every face of the other data set (people the model never saw); "open-set accuracy" is
  the share of the held-out (val+test) known faces classify names rightly, the identity
  network choosing who a face could be and MobileNetV2 naming the most probable of them.
- Training time: seconds per model (cropping excluded; it is shared by all models).

Usage: .venv/bin/python benchmarks/bench_accuracy.py [--seeds 5] [--alphas 0.35 1.0]
       [--configs textbook default] [--out benchmarks/out/accuracy]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from facecls.config import CropSettings, CurateSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.crop import chip_path_of, crop, read_crops_manifest  # noqa: E402
from facecls.curate import curate  # noqa: E402
from facecls.evaluate import crops_from_labelled_folder, evaluate_crops, load_split_crops  # noqa: E402
from facecls.ingest import ingest  # noqa: E402
from facecls.modeldir import load_model_dir  # noqa: E402
from facecls.identity import IdentityEncoder  # noqa: E402
from facecls.images import read_rgb  # noqa: E402
from facecls.model import predict_batched  # noqa: E402
from facecls.openset import calibrate_from_crops, load_open_set  # noqa: E402
from facecls.train import train_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIVE = SHARED / "data" / "5-celebrity-faces"
SIX = SHARED / "data" / "scraped-celebs-6"
WEIGHTS = {
    0.35: SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5",
    1.0: SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5",
}
CONFIGS = {
    "textbook": CropSettings(margin=0.25, align=False),
    "default": CropSettings(),
}


def prepare(scrape: Path, out: Path, crop_settings: CropSettings) -> Path:
    ingested = ingest(scrape, out)
    crop(scrape, ingested.manifest_path, out / "crop", DetectSettings(), crop_settings)
    return out / "crop"


def train_and_calibrate(items, crops_dir, settings, model_dir, crop_settings, other_crops_dir):
    """Train and calibrate; stranger rejection over the scrape's other people and every face of the other data set."""
    started = time.perf_counter()
    train_model(items, crops_dir, settings, model_dir, crop_settings, DetectSettings())
    seconds = time.perf_counter() - started
    calibration = calibrate_from_crops(model_dir, crops_dir, items)
    rejected, count = other_set_rejected(model_dir, other_crops_dir)
    rejection = ((calibration.stranger_rejection or 0.0) * calibration.stranger_count + rejected) / (calibration.stranger_count + count)
    return seconds, dataclasses.replace(calibration, stranger_rejection=rejection, stranger_count=calibration.stranger_count + count)


def other_set_rejected(model_dir: Path, other_crops_dir: Path) -> tuple[int, int]:
    """(unknown, faces) over the crops of another crop folder, decided as classify decides."""
    loaded = load_model_dir(model_dir)
    records = read_crops_manifest(other_crops_dir / "crops.csv")
    crops = np.stack([read_rgb(other_crops_dir / record.crop_path) for record in records])
    chips = np.stack([read_rgb(other_crops_dir / chip_path_of(record.crop_path)) for record in records])
    open_set = load_open_set(model_dir, loaded.labels)
    named, _ = open_set.decide(IdentityEncoder().embed(chips), predict_batched(loaded.model, crops),
                               loaded.info.unknown_threshold)
    return int(np.sum(named < 0)), len(records)


def five_celebrity(alpha: float, out: Path, crop_settings: CropSettings, five_crops: Path, six_crops: Path) -> dict:
    curated = curate(five_crops / "crops.csv", out / "five-curate", CurateSettings(test_fraction=0.0, val_fraction=0.15))
    model_dir = out / f"five-model-{alpha}"
    seconds, calibration = train_and_calibrate(
        curated.items, five_crops, TrainSettings(alpha=alpha, weights=str(WEIGHTS[alpha])), model_dir, crop_settings,
        six_crops,
    )
    loaded = load_model_dir(model_dir)
    found = crops_from_labelled_folder(loaded, FIVE / "val")
    report = evaluate_crops(loaded, found.crops, out / f"five-val-{alpha}")
    total = report.count + len(found.without_face)
    return {"accuracy": report.correct / total, "seconds": seconds, "calibration": calibration}


def scraped(alpha: float, seeds: int, out: Path, crop_settings: CropSettings, six_crops: Path, five_crops: Path) -> list[dict]:
    results = []
    for seed in range(seeds):
        curated = curate(six_crops / "crops.csv", out / f"six-curate-{seed}", CurateSettings(seed=seed))
        model_dir = out / f"six-model-{alpha}-{seed}"
        seconds, calibration = train_and_calibrate(
            curated.items, six_crops, TrainSettings(alpha=alpha, weights=str(WEIGHTS[alpha]), seed=seed), model_dir,
            crop_settings, five_crops,
        )
        test = load_split_crops(curated.items, six_crops, "test")
        report = evaluate_crops(load_model_dir(model_dir), test, out / f"six-test-{alpha}-{seed}")
        print(f"  scraped-celebs-6 alpha {alpha} seed {seed}: {report.accuracy:.3f} ({report.correct}/{report.count}), "
              f"unknown: recall {calibration.known_recall:.2f} rejection {calibration.stranger_rejection:.2f}, "
              f"open-set accuracy (val+test) {calibration.known_accuracy:.3f}", flush=True)
        results.append({"accuracy": report.accuracy, "seconds": seconds, "calibration": calibration})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.35, 1.0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["textbook", "default"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/accuracy"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for config in args.configs:
        crop_settings = CONFIGS[config]
        out = args.out / config
        five_crops = prepare(FIVE / "train", out / "five", crop_settings)
        six_crops = prepare(SIX, out / "six", crop_settings)
        for alpha in args.alphas:
            five = five_celebrity(alpha, out, crop_settings, five_crops, six_crops)
            print(f"  {config} 5-celebrity alpha {alpha}: val {five['accuracy']:.3f}", flush=True)
            six = scraped(alpha, args.seeds, out, crop_settings, six_crops, five_crops)
            accuracies = [result["accuracy"] for result in six]
            calibrations = [five["calibration"]] + [result["calibration"] for result in six]
            rows.append((
                config, alpha, five["accuracy"], statistics.mean(accuracies), min(accuracies),
                statistics.mean(calibration.known_recall for calibration in calibrations),
                statistics.mean(calibration.stranger_rejection for calibration in calibrations),
                statistics.mean(result["calibration"].known_accuracy for result in six),
                five["seconds"], statistics.mean(result["seconds"] for result in six),
            ))
    print()
    print("| config | alpha | 5-celebrity val | scraped-celebs-6 test mean | min | unknown: known recall | "
          "stranger rejection | scraped-6 open-set accuracy (val+test) | train s (5-celebrity) | train s/seed (scraped-6) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config, alpha, five, mean, low, recall, rejection, open_accuracy, five_seconds, six_seconds in rows:
        print(f"| {config} | {alpha} | {five:.3f} | {mean:.3f} | {low:.3f} | {recall:.3f} | {rejection:.3f} | "
              f"{open_accuracy:.3f} | {five_seconds:.0f} | {six_seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
