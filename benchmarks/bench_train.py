"""Per-epoch training time: facecls' cached training vs a plain model.fit over images.

Both train the same classifier (same weights, a head then fine-tuning from the same layer,
same fine-tuning epochs, batch size and learning rate) on 5-celebrity train crops plus their
mirrors, and are scored on the val crops. The plain recipe trains its head with minibatch
Adam for --plain-head-epochs; facecls fits its head (L2-regularised softmax regression) by
full-batch steps until it converges -- an epoch is one pass over the training set either way.
Early stopping of the fine-tuning is off (patience above the epoch count) so both run every
fine-tuning epoch. Also printed: the whole time to a trained model.

    .venv/bin/python benchmarks/bench_train.py [--image-size 224] [--plain-head-epochs 40] [--fine-tune-epochs 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from celebrity_crops import make_celebrity_crops  # noqa: E402
from shared_data import WEIGHTS_035_H5  # noqa: E402

from facecls.config import CropSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.evaluate import load_split_crops  # noqa: E402
from facecls.images import read_rgb  # noqa: E402
from facecls.model import build_classifier, load_base, predict_batched, split_classifier, unfreeze_top  # noqa: E402
from facecls.modeldir import load_model_dir  # noqa: E402
from facecls.train import train_model  # noqa: E402


def plain_fit(items, crops_dir: Path, settings: TrainSettings, image_size: int, labels, val, head_epochs: int) -> dict:
    """The textbook recipe: model.fit over images, base frozen, then the top unfrozen."""
    keras.utils.set_random_seed(settings.seed)
    train_items = [item for item in items if item.split == "train"]
    pixels = np.stack(
        [read_rgb(crops_dir / item.crop_path)[:, ::-1] if item.flipped else read_rgb(crops_dir / item.crop_path)
         for item in train_items]
    ).astype(np.float32)
    targets = np.array([labels.index(item.person) for item in train_items])
    val_targets = np.array([labels.index(label) for label in val.labels])
    base = load_base(settings.alpha, image_size, settings.weights)
    classifier = build_classifier(base, len(labels), settings.dropout)
    parts = split_classifier(classifier, settings.fine_tune_from)
    times = {}
    for phase, learning_rate, epochs in (
        ("head", 1e-3, head_epochs),
        ("fine_tune", settings.fine_tune_learning_rate, settings.fine_tune_epochs),
    ):
        if phase == "head":
            base.trainable = False
        else:
            unfreeze_top(base, parts.top_layers)
        classifier.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        history = classifier.fit(
            pixels, targets, validation_data=(val.pixels.astype(np.float32), val_targets), epochs=epochs,
            batch_size=settings.batch_size, verbose=0,
            callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=settings.patience, restore_best_weights=True)],
        )
        times[phase] = (time.perf_counter() - started, len(history.history["loss"]))
    accuracy = float(np.mean(predict_batched(classifier, val.pixels).argmax(axis=1) == val_targets))
    return {"times": times, "val_accuracy": accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--plain-head-epochs", type=int, default=40)
    parser.add_argument("--fine-tune-epochs", type=int, default=TrainSettings.fine_tune_epochs)
    parser.add_argument("--weights", default=str(WEIGHTS_035_H5))
    parser.add_argument("--fine-tune-from", default=TrainSettings.fine_tune_from)
    args = parser.parse_args(argv)

    epochs = max(args.plain_head_epochs, args.fine_tune_epochs)
    settings = TrainSettings(
        weights=args.weights, fine_tune_epochs=args.fine_tune_epochs, patience=epochs + 1,
        fine_tune_from=args.fine_tune_from,
    )
    crop_started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="facecls-bench-crops-")  # removed when main returns
    crops_dir = Path(scratch.name)
    crops = make_celebrity_crops(crops_dir, args.image_size)
    items = list(crops) + [dataclasses.replace(item, flipped=True) for item in crops if item.split == "train"]
    val = load_split_crops(items, crops_dir, "val")
    labels = sorted({item.person for item in items})
    print(f"crops: {len(crops)} faces at {args.image_size}px in {time.perf_counter() - crop_started:.1f} s; "
          f"{sum(item.split == 'train' for item in items)} training items with mirrors, {len(val.labels)} val")

    with tempfile.TemporaryDirectory() as folder:
        result = train_model(items, crops_dir, settings, Path(folder) / "model",
                             CropSettings(image_size=args.image_size), DetectSettings())
        loaded = load_model_dir(result.model_dir)
        val_targets = np.array([labels.index(label) for label in val.labels])
        saved_accuracy = float(np.mean(predict_batched(loaded.model, val.pixels).argmax(axis=1) == val_targets))
    plain = plain_fit(items, crops_dir, settings, args.image_size, labels, val, args.plain_head_epochs)

    cached = {"head": (result.head_seconds, result.head_epochs_run),
              "fine_tune": (result.fine_tune_seconds, result.fine_tune_epochs_run)}
    print(f"{'phase':<10} {'cached s/epoch':>15} {'plain s/epoch':>14} {'speed-up':>9}")
    for phase in ("head", "fine_tune"):
        cached_per_epoch = cached[phase][0] / cached[phase][1]
        plain_per_epoch = plain["times"][phase][0] / plain["times"][phase][1]
        print(f"{phase:<10} {cached_per_epoch:>15.3f} {plain_per_epoch:>14.3f} {plain_per_epoch / cached_per_epoch:>8.1f}x")
    cached_total = result.cache_seconds + result.head_seconds + result.fine_tune_seconds
    plain_total = sum(seconds for seconds, _ in plain["times"].values())
    print(f"epochs: facecls head {result.head_epochs_run} (L-BFGS iterations over the full batch, to convergence) + fine-tune "
          f"{result.fine_tune_epochs_run}; plain head {plain['times']['head'][1]} + fine-tune {plain['times']['fine_tune'][1]}")
    print(f"time to a trained model (caching, head, fine-tuning): facecls {cached_total:.1f} s, plain {plain_total:.1f} s, "
          f"{plain_total / cached_total:.1f}x")
    print(f"val accuracy: cached {result.val_accuracy:.3f} (saved model {saved_accuracy:.3f}), "
          f"plain {plain['val_accuracy']:.3f}; fine-tune kept: {result.fine_tune_kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
