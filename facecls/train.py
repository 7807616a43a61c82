"""The train stage: split face crops -> a model dir.

Phase 1 trains the softmax head with the base frozen; phase 2 fine-tunes the base from
``TrainSettings.fine_tune_from`` on at a low learning rate, BatchNorm frozen. The frozen part of the network
is deterministic (BatchNorm runs in inference mode), so its output is computed once per crop
and per flip and both phases train on that cache: phase 1 on pooled features, phase 2 on the
tensor entering the first fine-tuned layer. The trained layers are shared with the full
classifier (pixels in, probabilities out), which is what the model dir stores.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from facecls.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before keras imports TensorFlow: quiet, at facecls's log level

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from facecls import modeldir  # noqa: E402
from facecls.config import CropSettings, DetectSettings, TrainSettings  # noqa: E402
from facecls.curate import SplitItem  # noqa: E402
from facecls.errors import FaceclsError  # noqa: E402
from facecls.images import read_crops  # noqa: E402
from facecls.manifest import output_lock  # noqa: E402
from facecls.openset import (  # noqa: E402
    OPEN_SET_FORMAT,
    OpenSetCalibration,
    calibrate_classifier,
    strangers_from_crops,
)
from facecls.model import (  # noqa: E402
    DEEPEST_CUT,
    PROBABILITIES_LAYER,
    build_classifier,
    load_base,
    predict_batched,
    split_classifier,
    unfreeze_top,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CURVES_FILE = "training_curves.png"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and how long each part took."""

    model_dir: Path
    labels: tuple[str, ...]
    history: dict[str, dict[str, list[float]]]  # {"head": {"loss": [...], ...}, "fine_tune": {...}}
    val_accuracy: float | None  # of the saved model on the val split; None without val items
    val_loss: float | None
    head_epochs_run: int
    fine_tune_epochs_run: int
    fine_tune_kept: bool  # False when fine-tuning did not beat the head alone on val loss
    train_count: int  # training examples, flips included
    val_count: int
    cache_seconds: float  # reading crops and running the frozen part once
    head_seconds: float
    fine_tune_seconds: float
    seconds: float  # the whole run, saving included
    calibration: OpenSetCalibration | None = None  # how 'unknown' was calibrated; None: not asked to

    @property
    def epochs_run(self) -> int:
        return self.head_epochs_run + self.fine_tune_epochs_run


def resolve_labels(items: list[SplitItem], labels: list[str] | None) -> tuple[str, ...]:
    """Sorted person names, or the given labels after checking every item's person is among them."""
    people = {item.person for item in items}
    if labels is None:
        return tuple(sorted(people))
    if len(set(labels)) != len(labels):
        raise FaceclsError(f"labels must be distinct. Received: {list(labels)}")
    unknown = sorted(people - set(labels))
    if unknown:
        raise FaceclsError(
            f"Every person must be one of the labels {list(labels)}. Received items of: {', '.join(unknown)}"
        )
    return tuple(labels)


def _check_items(items: list[SplitItem], labels: tuple[str, ...]) -> None:
    for item in items:
        if item.split not in SPLITS:
            raise FaceclsError(f"split must be one of {', '.join(SPLITS)}. Received: {item.split!r} for {item.crop_path}")
        if item.flipped and item.split != "train":
            raise FaceclsError(
                f"Flipped crops are allowed only in the train split. Received a flipped {item.split} item: "
                f"{item.crop_path}. Rerun curate."
            )
        if not item.weight > 0:
            raise FaceclsError(f"weight must be above 0. Received: {item.weight} for {item.crop_path}")
    train_people = {item.person for item in items if item.split == "train"}
    if len(labels) < 2:
        raise FaceclsError(f"Training needs at least 2 people. Received: {len(labels)} ({', '.join(labels)})")
    missing = [label for label in labels if label not in train_people]
    if missing:
        raise FaceclsError(
            f"Every person needs crops in the train split. Received none for: {', '.join(missing)}. "
            "Add photos of them or leave them out."
        )


class _EpochProgress:
    """Log each epoch and show a tqdm bar on stderr (library code never prints).

    A phase may stop before its maximum (converged, or early stopping), so the bar counts
    towards that maximum and its time left is an upper bound; ``finish`` leaves one line
    saying how the phase ended.
    """

    def __init__(self, phase: str, epochs: int):
        self.phase = phase
        self.bar = tqdm(
            total=epochs, desc=phase, unit="epoch", leave=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} epochs at most [{elapsed}, at most {remaining} left{postfix}]",
        )

    def update(self, epoch: int, logs: dict[str, float]) -> None:
        summary = {key: round(value, 4) for key, value in logs.items()}
        logger.info("%s epoch %d: %s", self.phase, epoch + 1, summary)
        self.bar.set_postfix(summary, refresh=False)
        self.bar.update(1)

    def finish(self, outcome: str) -> None:
        """Replace the bar by one line: the phase, how it ended, its time."""
        logger.info("%s: %s", self.phase, outcome)
        elapsed = self.bar.format_interval(self.bar.format_dict["elapsed"])
        self.bar.bar_format = "{desc}"
        self.bar.set_description_str(f"{self.phase}: {outcome} in {elapsed}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def _fit(
    model: keras.Model,
    phase: str,
    learning_rate: float,
    epochs: int,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    settings: TrainSettings,
) -> dict[str, list[float]]:
    """Adam on weighted cross-entropy, early stopping on val loss, best weights restored.

    Kept over ``model.fit`` + ``EarlyStopping``: 0.24 vs 0.48-0.50 s/epoch, same val loss and
    accuracy (benchmarks/bench_head.py, 5-celebrity at 96 px, 10 epochs).

    What ``model.fit`` with ``EarlyStopping(restore_best_weights=True)`` does, as one compiled
    train step over arrays already in memory: on the cached tensors an epoch is a few
    milliseconds of work per batch, and fit's per-epoch machinery (data adapter, callbacks,
    metric objects) cost as much again (fine-tune phase on 5-celebrity: 0.32 vs 0.19 s/epoch).
    """
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables
    optimizer.build(variables)  # creating its slots inside the step would trace the step twice
    # One trace for every batch size (the last batch of an epoch is smaller): tracing the
    # gradient of the fine-tuned layers takes about a second.
    input_spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    target_spec = tf.TensorSpec((None,), tf.int64)

    @tf.function(input_signature=[input_spec, target_spec, tf.TensorSpec((None,), tf.float32)])
    def train_step(inputs, targets, weights):
        with tf.GradientTape() as tape:
            probabilities = model(inputs, training=True)
            loss = cross_entropy(targets, probabilities, sample_weight=weights)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, axis=1), targets), tf.float32))
        return loss, correct

    @tf.function(input_signature=[input_spec, target_spec])
    def val_step(inputs, targets):
        probabilities = tf.clip_by_value(model(inputs, training=False), 1e-7, 1.0)
        picked = tf.gather(probabilities, targets, axis=1, batch_dims=1)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, axis=1), targets), tf.float32))
        return tf.reduce_sum(-tf.math.log(picked)), correct

    inputs, targets, weights = train
    count = len(targets)
    generator = np.random.default_rng(settings.seed)
    batch_size = settings.batch_size
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history.update(val_loss=[], val_accuracy=[])
    monitor = "val_loss" if val is not None else "loss"
    best_loss, best_values, waited, best_epoch = np.inf, None, 0, 0
    progress = _EpochProgress(phase, epochs)
    try:
        for epoch in range(epochs):
            order = generator.permutation(count)
            loss_sum = correct_sum = 0.0
            for start in range(0, count, batch_size):
                rows = order[start : start + batch_size]
                loss, correct = train_step(inputs[rows], targets[rows], weights[rows])
                loss_sum += float(loss) * len(rows)
                correct_sum += float(correct)
            logs = {"loss": loss_sum / count, "accuracy": correct_sum / count}
            if val is not None:
                val_inputs, val_targets = val
                val_loss = val_correct = 0.0
                for start in range(0, len(val_targets), 64):
                    loss, correct = val_step(val_inputs[start : start + 64], val_targets[start : start + 64])
                    val_loss += float(loss)
                    val_correct += float(correct)
                logs.update(val_loss=val_loss / len(val_targets), val_accuracy=val_correct / len(val_targets))
            for key, value in logs.items():
                history[key].append(value)
            progress.update(epoch, logs)
            if logs[monitor] < best_loss:
                best_loss, best_values, waited, best_epoch = (
                    logs[monitor], [variable.numpy() for variable in variables], 0, epoch + 1
                )
            else:
                waited += 1
                if waited >= settings.patience:
                    break
        run = len(history["loss"])
        if run < epochs:
            progress.finish(f"stopped early after {run} of at most {epochs} epochs ({monitor} did not improve for "
                            f"{waited}), kept epoch {best_epoch}")
        else:
            progress.finish(f"ran all {epochs} epochs, kept epoch {best_epoch}")
    finally:
        progress.close()
    if best_values is not None:
        for variable, value in zip(variables, best_values):
            variable.assign(value)
    return history


def _fit_head(
    head: keras.Model,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    settings: TrainSettings,
) -> dict[str, list[float]]:
    """Phase 1: L2-regularised softmax regression on the cached pooled features, to convergence.

    Kept over ``LogisticRegression(C)``: the same objective to 6 digits and the same val accuracy
    in 22-52 s vs 98-106 s (benchmarks/bench_head.py, 5-celebrity at 96 px), and it records the
    per-iteration train and val curves of history.json, which scikit-learn has no callback for.

    Minimises ``(sum_i w_i CE_i + |kernel|^2 / (2 C)) / sum_i w_i`` -- the objective of
    scikit-learn's ``LogisticRegression(C)`` with sample weights -- by L-BFGS from zero weights,
    so the result is the problem's unique optimum whatever the seed. One history entry ("epoch")
    is one L-BFGS iteration, a full pass over the training set; at most ``head_epochs``. No
    dropout and no early stopping: the small val split plays no part in fitting the head.

    Full-batch Adam, used before, stalled on the 3,008 pooled features of the grid head: its
    first steps overshoot into saturated answers, and the huge gradients it then remembers shrink
    its later steps until the convergence test stops it far from the optimum (5-celebrity val
    0.76 instead of 1.00).
    """
    from scipy.optimize import minimize

    features = np.asarray(train[0], dtype=np.float64)
    targets = np.asarray(train[1], dtype=np.int64)
    weights = np.asarray(train[2], dtype=np.float64)
    dense = head.get_layer(PROBABILITIES_LAYER)
    kernel_shape = tuple(dense.kernel.shape)
    classes = kernel_shape[1]
    total_weight = float(np.sum(weights))
    penalty_scale = 1.0 / (2.0 * settings.head_l2_c * total_weight)

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[:-classes].reshape(kernel_shape), theta[-classes:]

    def log_probabilities(inputs: np.ndarray, theta: np.ndarray) -> np.ndarray:
        kernel, bias = unpack(theta)
        logits = inputs @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def cross_entropy(log_p: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray | None = None) -> float:
        return float(np.average(-log_p[np.arange(len(labels)), labels], weights=sample_weights))

    last = {}  # the last point evaluated: L-BFGS reports the iterate it just evaluated to the callback

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, _ = unpack(theta)
        log_p = log_probabilities(features, theta)
        last.update(theta=theta.copy(), log_p=log_p)
        residual = np.exp(log_p)
        residual[np.arange(len(targets)), targets] -= 1.0
        residual *= (weights / total_weight)[:, None]
        gradient = np.concatenate([
            (features.T @ residual + 2.0 * penalty_scale * kernel).ravel(), residual.sum(axis=0)
        ])
        return cross_entropy(log_p, targets, weights) + penalty_scale * float(np.sum(kernel**2)), gradient

    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history.update(val_loss=[], val_accuracy=[])
        val_features = np.asarray(val[0], dtype=np.float64)
    progress = _EpochProgress("head", settings.head_epochs)

    def record(intermediate_result) -> None:
        theta = intermediate_result.x
        same = "theta" in last and np.array_equal(theta, last["theta"])
        log_p = last["log_p"] if same else log_probabilities(features, theta)
        logs = {
            "loss": cross_entropy(log_p, targets, weights),
            "accuracy": float(np.mean(log_p.argmax(axis=1) == targets)),
        }
        if val is not None:
            val_log_p = log_probabilities(val_features, theta)
            logs["val_loss"] = cross_entropy(val_log_p, val[1])
            logs["val_accuracy"] = float(np.mean(val_log_p.argmax(axis=1) == val[1]))
        for key, value in logs.items():
            history[key].append(value)
        progress.update(len(history["loss"]) - 1, logs)

    start = np.zeros(kernel_shape[0] * classes + classes)
    try:
        result = minimize(
            objective, start, jac=True, method="L-BFGS-B", callback=record,
            options={"maxiter": settings.head_epochs, "ftol": 1e-10, "gtol": 1e-7},
        )
        run = len(history["loss"])
        if result.status == 0:
            progress.finish(f"converged after {run} of at most {settings.head_epochs} epochs (L-BFGS iterations)")
        else:
            progress.finish(f"stopped after {run} of at most {settings.head_epochs} epochs, not converged "
                            f"({' '.join(str(result.message).split()).lower()})")
    finally:
        progress.close()
    if not history["loss"]:  # converged at the start (nothing to learn): keep one entry
        record(result)
    kernel, bias = unpack(result.x)
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return history


def _best_val(history: dict[str, list[float]]) -> tuple[float, float]:
    """Val loss and accuracy of the epoch whose weights ``_fit`` kept (the first lowest val loss)."""
    losses = np.array(history["val_loss"], dtype=np.float64)
    best = int(np.argmin(np.where(np.isnan(losses), np.inf, losses)))
    return float(losses[best]), float(history["val_accuracy"][best])


def training_curves_png(history: dict[str, dict[str, list[float]]]) -> bytes:
    """Loss and accuracy per epoch over both phases, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    phases = [(name, history[name]) for name in ("head", "fine_tune") if history.get(name)]
    for position, metric in enumerate(("loss", "accuracy"), start=1):
        axes = figure.add_subplot(1, 2, position)
        offset = 0
        for name, curves in phases:
            count = len(curves.get(metric, []))
            epochs = np.arange(offset + 1, offset + count + 1)
            axes.plot(epochs, curves.get(metric, []), label=f"{name} train")
            if f"val_{metric}" in curves:
                axes.plot(epochs, curves[f"val_{metric}"], linestyle="--", label=f"{name} val")
            if offset:
                axes.axvline(offset + 0.5, color="gray", linewidth=0.8)
            offset += count
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def train_model(
    items: Iterable[SplitItem],
    crops_dir: Path,
    train_settings: TrainSettings,
    model_dir: Path,
    crop_settings: CropSettings,
    detect_settings: DetectSettings,
    labels: list[str] | None = None,
    calibrate: bool = True,
) -> TrainResult:
    """Train a classifier on the train split (val for early stopping) and write a model dir.

    With ``calibrate`` the open set (``unknown``) is calibrated on the trained classifier before
    the model dir is saved, once and atomically: a model dir is never seen uncalibrated.

    Args:
        items: split items from curate; test items are ignored here.
        crops_dir: the folder the items' ``crop_path`` is relative to.
        train_settings: how to train.
        model_dir: where the model dir is written (replaced if it is one already).
        crop_settings: how the crops were made; ``image_size`` is the model's input size.
        detect_settings: how faces were detected; stored so classify detects the same way.
        labels: class order; sorted person names by default.
        calibrate: calibrate ``unknown`` (``facecls.openset.calibrate_classifier``) from the
            train items' identity chips, with the crop stage's other faces as the negatives.

    Raises:
        FaceclsError: bad items (fewer than 2 people, a person without train crops, unknown
            split), unreadable crops or crops of the wrong size, unusable weights, missing
            identity chips (with ``calibrate``), or a ``model_dir`` that holds something other
            than a model dir.
    """
    started = time.perf_counter()
    items = list(items)
    crops_dir = Path(crops_dir)
    model_dir = Path(model_dir)
    label_order = resolve_labels(items, labels)
    _check_items(items, label_order)
    if not crops_dir.is_dir():
        raise FaceclsError(f"Crops folder {crops_dir} not found. Run the crop stage first or pass its output folder.")
    modeldir.check_replaceable(model_dir)
    # One trainer per model dir: a second one refuses before the heavy work, not at the save.
    with output_lock(model_dir.parent):
        train_items = [item for item in items if item.split == "train"]
        val_items = [item for item in items if item.split == "val"]
        if not val_items:
            logger.warning("No val items: early stopping watches the training loss and no val accuracy is reported.")
        fine_tune = bool(train_settings.fine_tune_from) and train_settings.fine_tune_epochs > 0

        keras.utils.set_random_seed(train_settings.seed)
        image_size = crop_settings.image_size
        base = load_base(train_settings.alpha, image_size, train_settings.weights)
        classifier = build_classifier(base, len(label_order), train_settings.dropout)
        parts = split_classifier(classifier, train_settings.fine_tune_from if fine_tune else DEEPEST_CUT)
        base.trainable = False

        # Each distinct (crop, flipped) view goes through the frozen part once.
        views = sorted({(item.crop_path, item.flipped) for item in train_items + val_items})
        view_index = {view: index for index, view in enumerate(views)}
        pixels = read_crops(crops_dir, [path for path, _ in views], image_size, "crop",
                            "Re-crop with the same image_size (the crop stage's image_size).", [flip for _, flip in views])
        cut = predict_batched(parts.bottom, pixels, batch_size=32)
        pooled = predict_batched(parts.pooled, cut, batch_size=64)
        del pixels
        cache_seconds = time.perf_counter() - started
        logger.info("Cached the frozen part for %d crops in %.1f s", len(views), cache_seconds)

        class_of = {label: index for index, label in enumerate(label_order)}

        def arrays(split_items: list[SplitItem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rows = np.array([view_index[(item.crop_path, item.flipped)] for item in split_items], dtype=np.int64)
            targets = np.array([class_of[item.person] for item in split_items], dtype=np.int64)
            weights = np.array([item.weight for item in split_items], dtype=np.float32)
            return rows, targets, weights

        train_rows, train_targets, train_weights = arrays(train_items)
        val_rows, val_targets, _ = arrays(val_items)
        has_val = len(val_items) > 0

        phase_started = time.perf_counter()
        history = {
            "head": _fit_head(
                parts.head,
                (pooled[train_rows], train_targets, train_weights),
                (pooled[val_rows], val_targets) if has_val else None,
                train_settings,
            )
        }
        head_seconds = time.perf_counter() - phase_started

        fine_tune_seconds = 0.0
        fine_tune_kept = False
        val_loss = val_accuracy = None
        if has_val:  # the head as trained: its last epoch
            val_loss, val_accuracy = history["head"]["val_loss"][-1], history["head"]["val_accuracy"][-1]
        if fine_tune:
            phase_started = time.perf_counter()
            head_weights = parts.top.get_weights()
            trainable_layers = unfreeze_top(base, parts.top_layers)
            logger.info("Fine-tuning %d base layers from %s", len(trainable_layers), train_settings.fine_tune_from)
            history["fine_tune"] = _fit(
                parts.top,
                "fine_tune",
                train_settings.fine_tune_learning_rate,
                train_settings.fine_tune_epochs,
                (cut[train_rows], train_targets, train_weights),
                (cut[val_rows], val_targets) if has_val else None,
                train_settings,
            )
            fine_tune_kept = True
            if has_val:
                tuned_loss, tuned_accuracy = _best_val(history["fine_tune"])
                if tuned_loss < val_loss:
                    val_loss, val_accuracy = tuned_loss, tuned_accuracy
                else:
                    logger.info("Fine-tuning did not lower the val loss (%.4f >= %.4f); keeping the head-only weights.",
                                tuned_loss, val_loss)
                    parts.top.set_weights(head_weights)
                    fine_tune_kept = False
            base.trainable = False
            fine_tune_seconds = time.perf_counter() - phase_started

        head_epochs_run = len(history["head"]["loss"])
        fine_tune_epochs_run = len(history.get("fine_tune", {}).get("loss", []))
        metrics: dict[str, Any] = {
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "val_count": len(val_items),
            "train_count": len(train_items),
            "head_epochs_run": head_epochs_run,
            "fine_tune_epochs_run": fine_tune_epochs_run,
            "fine_tune_kept": fine_tune_kept,
        }
        info = modeldir.new_model_info(label_order, crop_settings, detect_settings, train_settings, metrics)
        calibration = open_set = None
        if calibrate:
            open_set, calibration = calibrate_classifier(
                classifier, label_order, crops_dir, items, *strangers_from_crops(crops_dir, items)
            )
            info = dataclasses.replace(info, unknown_threshold=calibration.threshold, open_set_format=OPEN_SET_FORMAT)
        modeldir.save_model_dir(
            model_dir, classifier, info, history=history, extra_files={CURVES_FILE: training_curves_png(history)},
            open_set=None if open_set is None else open_set.to_arrays(),
        )
        seconds = time.perf_counter() - started
        logger.info("Trained %s in %.1f s (val accuracy %s)", model_dir, seconds, val_accuracy)
        return TrainResult(
            model_dir=model_dir,
            labels=label_order,
            history=history,
            val_accuracy=val_accuracy,
            val_loss=val_loss,
            head_epochs_run=head_epochs_run,
            fine_tune_epochs_run=fine_tune_epochs_run,
            fine_tune_kept=fine_tune_kept,
            train_count=len(train_items),
            val_count=len(val_items),
            cache_seconds=cache_seconds,
            head_seconds=head_seconds,
            fine_tune_seconds=fine_tune_seconds,
            seconds=seconds,
            calibration=calibration,
        )
