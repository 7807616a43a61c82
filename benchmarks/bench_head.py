"""facecls' own training loops vs the library ones, on the cached tensors train_model uses.

Head: ``train._fit_head`` (L-BFGS on the softmax-regression objective, one history entry per
iteration) vs scikit-learn's ``LogisticRegression(C=head_l2_c)`` with the same sample weights.
Fine-tuning: ``train._fit`` (one compiled step over arrays in memory, early stopping on val loss,
best weights restored) vs ``model.fit`` with ``keras.callbacks.EarlyStopping(restore_best_weights=True)``.
Both sides start from the same weights and see the same data (5-celebrity train crops and their
mirrors, scored on val); printed: seconds, epochs, val loss and accuracy, and the ratio.

    .venv/bin/python benchmarks/bench_head.py [--image-size 96] [--fine-tune-epochs 10] [--repeats 2] [--only head|fine-tune]
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

from facecls.config import TrainSettings  # noqa: E402
from facecls.model import PROBABILITIES_LAYER, build_classifier, load_base, predict_batched, split_classifier, unfreeze_top  # noqa: E402
from facecls.train import _fit, _fit_head, _read_views  # noqa: E402


def val_scores(model: keras.Model, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    probabilities = np.clip(predict_batched(model, inputs, 64), 1e-7, 1.0)
    loss = float(np.mean(-np.log(probabilities[np.arange(len(targets)), targets])))
    return loss, float(np.mean(probabilities.argmax(axis=1) == targets))


def objective(features, targets, weights, kernel, bias, c: float) -> float:
    """The head's objective: (sum_i w_i CE_i + |kernel|^2 / (2 C)) / sum_i w_i."""
    logits = features.astype(np.float64) @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float((np.sum(-weights * log_p[np.arange(len(targets)), targets]) + np.sum(kernel**2) / (2 * c)) / np.sum(weights))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("head", "fine-tune"), help="measure one of the two loops")
    args = parser.parse_args(argv)
    settings = TrainSettings(weights=str(WEIGHTS_035_H5), fine_tune_epochs=args.fine_tune_epochs,
                             patience=args.fine_tune_epochs + 1)  # no early stop: both run every epoch
    scratch = tempfile.TemporaryDirectory(prefix="facecls-bench-crops-")  # removed when main returns
    crops_dir = Path(scratch.name)
    items = make_celebrity_crops(crops_dir, args.image_size)
    items = list(items) + [dataclasses.replace(item, flipped=True) for item in items if item.split == "train"]
    labels = sorted({item.person for item in items})
    train_items = [item for item in items if item.split == "train"]
    val_items = [item for item in items if item.split == "val"]

    keras.utils.set_random_seed(settings.seed)
    base = load_base(settings.alpha, args.image_size, settings.weights)
    classifier = build_classifier(base, len(labels), settings.dropout)
    parts = split_classifier(classifier, settings.fine_tune_from)
    base.trainable = False

    def tensors(split_items):
        pixels = _read_views([(item.crop_path, item.flipped) for item in split_items], crops_dir, args.image_size)
        cut = predict_batched(parts.bottom, pixels, 32)
        return cut, predict_batched(parts.pooled, cut, 64), np.array([labels.index(item.person) for item in split_items])

    train_cut, train_pooled, train_targets = tensors(train_items)
    val_cut, val_pooled, val_targets = tensors(val_items)
    weights = np.ones(len(train_targets), np.float32)
    dense = parts.head.get_layer(PROBABILITIES_LAYER)
    start_head = [np.zeros_like(value) for value in dense.get_weights()]

    print(f"{len(train_targets)} training examples (flips included), {len(val_targets)} val, "
          f"{train_pooled.shape[1]} pooled features")
    from sklearn.linear_model import LogisticRegression

    for _ in range(args.repeats if args.only != "fine-tune" else 0):
        dense.set_weights(start_head)
        started = time.perf_counter()
        history = _fit_head(parts.head, (train_pooled, train_targets, weights), (val_pooled, val_targets), settings)
        ours_seconds = time.perf_counter() - started
        kernel, bias = (np.asarray(value, np.float64) for value in dense.get_weights())
        ours = (objective(train_pooled, train_targets, weights, kernel, bias, settings.head_l2_c),
                *val_scores(parts.head, val_pooled, val_targets))
        started = time.perf_counter()
        reference = LogisticRegression(C=settings.head_l2_c, max_iter=settings.head_epochs, tol=1e-8).fit(
            train_pooled.astype(np.float64), train_targets, sample_weight=weights)
        sklearn_seconds = time.perf_counter() - started
        dense.set_weights([reference.coef_.T.astype(np.float32), reference.intercept_.astype(np.float32)])
        theirs = (objective(train_pooled, train_targets, weights, reference.coef_.T, reference.intercept_,
                            settings.head_l2_c), *val_scores(parts.head, val_pooled, val_targets))
        print(f"head  _fit_head: {ours_seconds:.2f} s, {len(history['loss'])} iterations, objective {ours[0]:.6f}, "
              f"val loss {ours[1]:.4f}, val accuracy {ours[2]:.3f} (with per-iteration train and val curves)")
        print(f"head  LogisticRegression: {sklearn_seconds:.2f} s, {int(reference.n_iter_[0])} iterations, objective "
              f"{theirs[0]:.6f}, val loss {theirs[1]:.4f}, val accuracy {theirs[2]:.3f} (no curves); "
              f"time ratio sklearn/ours {sklearn_seconds / ours_seconds:.2f}")

    if args.only == "fine-tune":  # from the fitted head, as train_model fine-tunes
        _fit_head(parts.head, (train_pooled, train_targets, weights), (val_pooled, val_targets), settings)
    fitted_head = [value.copy() for value in parts.top.get_weights()]
    unfreeze_top(base, parts.top_layers)
    for _ in range(args.repeats if args.only != "head" else 0):
        parts.top.set_weights(fitted_head)
        keras.utils.set_random_seed(settings.seed)
        started = time.perf_counter()
        history = _fit(parts.top, "fine_tune", settings.fine_tune_learning_rate, settings.fine_tune_epochs,
                       (train_cut, train_targets, weights), (val_cut, val_targets), settings)
        ours_seconds = time.perf_counter() - started
        ours = val_scores(parts.top, val_cut, val_targets)
        parts.top.set_weights(fitted_head)
        keras.utils.set_random_seed(settings.seed)
        parts.top.compile(optimizer=keras.optimizers.Adam(settings.fine_tune_learning_rate),
                          loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True)
        started = time.perf_counter()
        fitted = parts.top.fit(train_cut, train_targets, sample_weight=weights, validation_data=(val_cut, val_targets),
                               batch_size=settings.batch_size, epochs=settings.fine_tune_epochs, shuffle=True,
                               callbacks=[stopping], verbose=0)
        keras_seconds = time.perf_counter() - started
        theirs = val_scores(parts.top, val_cut, val_targets)
        epochs, keras_epochs = len(history["loss"]), len(fitted.history["loss"])
        print(f"fine-tune _fit: {ours_seconds:.2f} s, {epochs} epochs ({ours_seconds / epochs:.3f} s/epoch), "
              f"best val loss {min(history['val_loss']):.4f}, restored val loss {ours[0]:.4f}, accuracy {ours[1]:.3f}")
        print(f"fine-tune fit+EarlyStopping: {keras_seconds:.2f} s, {keras_epochs} epochs "
              f"({keras_seconds / keras_epochs:.3f} s/epoch), best val loss {min(fitted.history['val_loss']):.4f}, "
              f"restored val loss {theirs[0]:.4f}, accuracy {theirs[1]:.3f}; s/epoch ratio keras/ours "
              f"{(keras_seconds / keras_epochs) / (ours_seconds / epochs):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
