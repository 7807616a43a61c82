"""Accuracy of the default training chain on the shared photos, for alpha 0.35 and 1.0.

- 5-celebrity: train on train/ (its own val split held out of it for early stopping), then
  ``facecls evaluate`` on val/ (raw photos, detected and cropped with the model's settings).
- scraped-celebs-6: the leakage-free split of ``facecls run`` over 5 seeds; test accuracy
  mean and min.

Usage: .venv/bin/python benchmarks/bench_accuracy.py [--seeds 5] [--alphas 0.35 1.0] [--out benchmarks/out/accuracy]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from facecls.config import CropSettings, CurateSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.crop import crop  # noqa: E402
from facecls.curate import curate  # noqa: E402
from facecls.evaluate import crops_from_labelled_folder, evaluate_crops, load_split_crops  # noqa: E402
from facecls.ingest import ingest  # noqa: E402
from facecls.modeldir import load_model_dir  # noqa: E402
from facecls.train import train_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = {
    0.35: SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5",
    1.0: SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5",
}


def prepare(scrape: Path, out: Path, crop_settings: CropSettings) -> Path:
    ingested = ingest(scrape, out)
    crop(scrape, ingested.manifest_path, out / "crop", DetectSettings(), crop_settings)
    return out / "crop"


def five_celebrity(alpha: float, out: Path, crop_settings: CropSettings) -> tuple[float, float]:
    crops_dir = prepare(SHARED / "data" / "5-celebrity-faces" / "train", out / "five", crop_settings)
    curated = curate(crops_dir / "crops.csv", out / "five" / "curate", CurateSettings(test_fraction=0.0, val_fraction=0.15))
    started = time.perf_counter()
    model_dir = out / "five" / f"model-{alpha}"
    train_model(curated.items, crops_dir, TrainSettings(alpha=alpha, weights=str(WEIGHTS[alpha])), model_dir,
                crop_settings, DetectSettings())
    seconds = time.perf_counter() - started
    loaded = load_model_dir(model_dir)
    found = crops_from_labelled_folder(loaded, SHARED / "data" / "5-celebrity-faces" / "val")
    report = evaluate_crops(loaded, found.crops, out / "five" / f"val-{alpha}")
    # photos of val without a detected face count as errors
    total = report.count + len(found.without_face)
    return report.correct / total, seconds


def scraped(alpha: float, seeds: int, out: Path, crop_settings: CropSettings) -> tuple[list[float], float]:
    crops_dir = prepare(SHARED / "data" / "scraped-celebs-6", out / "six", crop_settings)
    accuracies, seconds = [], []
    for seed in range(seeds):
        curated = curate(crops_dir / "crops.csv", out / "six" / f"curate-{seed}", CurateSettings(seed=seed))
        model_dir = out / "six" / f"model-{alpha}-{seed}"
        started = time.perf_counter()
        train_model(curated.items, crops_dir, TrainSettings(alpha=alpha, weights=str(WEIGHTS[alpha]), seed=seed),
                    model_dir, crop_settings, DetectSettings())
        seconds.append(time.perf_counter() - started)
        test = load_split_crops(curated.items, crops_dir, "test")
        report = evaluate_crops(load_model_dir(model_dir), test, out / "six" / f"test-{alpha}-{seed}")
        accuracies.append(report.accuracy)
        print(f"  scraped-celebs-6 alpha {alpha} seed {seed}: {report.accuracy:.3f} ({report.correct}/{report.count})",
              flush=True)
    return accuracies, statistics.mean(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.35, 1.0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/accuracy"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.WARNING)
    crop_settings = CropSettings()
    rows = []
    for alpha in args.alphas:
        five, five_seconds = five_celebrity(alpha, args.out, crop_settings)
        print(f"  5-celebrity alpha {alpha}: val {five:.3f}", flush=True)
        six, six_seconds = scraped(alpha, args.seeds, args.out, crop_settings)
        rows.append((alpha, five, five_seconds, statistics.mean(six), min(six), six_seconds))
    print()
    print("| alpha | 5-celebrity val | train s | scraped-celebs-6 test mean | min | train s/seed |")
    print("|---|---|---|---|---|---|")
    for alpha, five, five_seconds, mean, low, seconds in rows:
        print(f"| {alpha} | {five:.3f} | {five_seconds:.0f} | {mean:.3f} | {low:.3f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
