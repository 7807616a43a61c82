"""The model builder: MobileNetV2 base, classification head, and the parts training caches.

The classifier takes float32 RGB pixels in [0, 255]; scaling to [-1, 1] happens inside the
graph so training and inference cannot drift apart. The head reads two descriptions of the face:
the globally pooled last feature map (what the photo shows) and a 3x3 grid of the mid-level map
``block_13_expand_relu`` (which parts sit where: eyes, nose and mouth fall in fixed cells of an
aligned crop). ImageNet's last layer discards that layout; keeping it is what tells look-alike
people apart (see ``build_classifier``). BatchNorm keeps its ImageNet statistics
while the base is fine-tuned: ``unfreeze_top`` leaves every BatchNormalization layer
non-trainable, which in Keras 3 means inference mode. The base is also called with
``training=False``, but Keras 3.15 lets the ``training=True`` of ``fit`` override that
inside a functional model, so that alone does not freeze the statistics.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from facecls.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before keras imports TensorFlow: quiet, at facecls's log level
# TensorFlow warns about retracing each time a new model first predicts; that is expected here.
if logging.getLogger("tensorflow").level == logging.NOTSET:
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from facecls.config import IMAGENET_WEIGHTS_URL, imagenet_weights_file_name, weights_hint  # noqa: E402
from facecls.errors import FaceclsError, one_line  # noqa: E402

# Layer names of the classifier; the model-dir reader and classify find the parts by them.
PIXELS_LAYER = "pixels"
SCALE_LAYER = "scale_to_minus_one_one"
GLOBAL_POOL_LAYER = "global_pool"
GRID_POOL_LAYER = "grid_pool"
GRID_FLATTEN_LAYER = "grid_flatten"
FEATURES_LAYER = "features"
DROPOUT_LAYER = "dropout"
PROBABILITIES_LAYER = "probabilities"

# The mid-level base layer whose map the head also reads, pooled to a GRID x GRID grid, and the
# first layer of its block: the deepest place the base can be cut for fine-tuning while the cut
# still lies below that layer.
MID_LAYER = "block_13_expand_relu"
DEEPEST_CUT = "block_13_expand"
GRID = 3


def _download_imagenet_weights(alpha: float, cache_dir: Path | None) -> Path:
    file_name = imagenet_weights_file_name(alpha)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)  # Keras silently uses /tmp if it is missing
    try:
        # Keras reports the download on stdout; library code keeps stdout for the CLI.
        with contextlib.redirect_stdout(sys.stderr):
            path = keras.utils.get_file(
                file_name,
                IMAGENET_WEIGHTS_URL + file_name,
                cache_subdir="models",
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
    except Exception as error:
        raise FaceclsError(
            f"Cannot download the ImageNet weights {file_name} ({one_line(error, 160)}). "
            f"{weights_hint(alpha)}, or copy that file into the Keras cache (~/.keras/models)."
        ) from None
    return Path(path)


def load_base(alpha: float, image_size: int, weights: str, cache_dir: Path | None = None) -> keras.Model:
    """Build a no-top MobileNetV2 for square ``image_size`` inputs and load pretrained weights.

    Args:
        alpha: width multiplier; the weights must have been trained with the same alpha.
        image_size: input side in pixels; weights trained at 224 work at any size.
        weights: ``"imagenet"`` (downloaded by Keras, or found in its cache) or a path to a
            ``.h5`` (Keras 2 layout) or ``.weights.h5`` (Keras 3) no-top weights file.
        cache_dir: Keras cache folder for the ImageNet download (default ``~/.keras``).

    Raises:
        FaceclsError: the weights cannot be downloaded, are missing, are not a weights file,
            or were trained with another alpha.
    """
    base = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, weights=None
    )
    if weights == "imagenet":
        path = _download_imagenet_weights(alpha, cache_dir)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FaceclsError(f"Weights file {path} not found. {weights_hint(alpha)}, or --weights imagenet.")
        if not path.name.endswith(".h5"):
            raise FaceclsError(
                f"Weights file {path} must end with .h5 or .weights.h5. {weights_hint(alpha)}."
            )
    try:
        base.load_weights(str(path))
    except ValueError as error:
        message = one_line(error, 240)
        if "hape" in message or "could not be loaded" in message or "layers" in message:
            reason = f"its arrays do not fit MobileNetV2 alpha {alpha} ({message})"
        else:
            reason = f"it is not a MobileNetV2 weights file ({message})"
        raise FaceclsError(f"Cannot load weights {path}: {reason}. {weights_hint(alpha)}.") from None
    except (OSError, KeyError, TypeError) as error:
        raise FaceclsError(
            f"Cannot load weights {path}: not a readable HDF5 weights file ({one_line(error, 240)}). "
            f"{weights_hint(alpha)}."
        ) from None
    return base


def grid_pooling(map_side: int, grid: int = GRID) -> tuple[int, int, int]:
    """(cells per side, window, stride) of an average pooling that tiles a square map into a grid.

    Windows overlap where the side does not divide (14 -> 3 windows of 6 at stride 4), so every
    position is covered and the layer is a plain ``AveragePooling2D``.
    """
    cells = max(1, min(grid, map_side))
    stride = max(1, map_side // cells)
    return cells, map_side - (cells - 1) * stride, stride


def build_classifier(base: keras.Model, num_classes: int, dropout: float) -> keras.Model:
    """Put a softmax head on ``base``; the result maps [0, 255] RGB pixels to class probabilities.

    The head's input (layer ``features``) joins the global average of the last feature map with a
    3x3 grid average of ``MID_LAYER``. On scraped-celebs-6 (frozen 0.35 base, logistic regression,
    20 seeded splits) that lifted mean test accuracy from 0.790 to 0.840, and from 0.747 to 0.800
    with the 1.0 base. A 2x2 grid gave 0.805 and block_14_expand_relu 0.829; block_12_expand_relu
    gave 0.852, within noise of 0.840, but lies below the block_13_expand cut where fine-tuning starts.
    """
    if num_classes < 2:
        raise FaceclsError(f"A classifier needs at least 2 classes. Received: {num_classes}")
    image_size = base.input_shape[1]
    two_maps = keras.Model(base.input, [base.get_layer(MID_LAYER).output, base.output], name=base.name)
    pixels = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=PIXELS_LAYER)
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=SCALE_LAYER)(pixels)
    mid_map, last_map = two_maps(scaled, training=False)
    _, window, stride = grid_pooling(int(mid_map.shape[1]))
    features = _pool_features(
        (
            keras.layers.GlobalAveragePooling2D(name=GLOBAL_POOL_LAYER),
            keras.layers.AveragePooling2D(pool_size=window, strides=stride, name=GRID_POOL_LAYER),
            keras.layers.Flatten(name=GRID_FLATTEN_LAYER),
            keras.layers.Concatenate(name=FEATURES_LAYER),
        ),
        mid_map,
        last_map,
    )
    dropped = keras.layers.Dropout(dropout, name=DROPOUT_LAYER)(features)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name=PROBABILITIES_LAYER)(dropped)
    return keras.Model(pixels, probabilities, name="facecls_classifier")


def _pool_features(layers: tuple, mid_map, last_map):
    global_pool, grid_pool, grid_flatten, concatenate = layers
    return concatenate([global_pool(last_map), grid_flatten(grid_pool(mid_map))])


def _pooling_layers(classifier: keras.Model) -> tuple:
    return tuple(
        classifier.get_layer(name) for name in (GLOBAL_POOL_LAYER, GRID_POOL_LAYER, GRID_FLATTEN_LAYER, FEATURES_LAYER)
    )


def base_of(classifier: keras.Model) -> keras.Model:
    """The MobileNetV2 base nested inside a classifier."""
    nested = [layer for layer in classifier.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise FaceclsError(
            f"Expected a facecls classifier with one nested base model. Received a model with {len(nested)}."
        )
    return nested[0]


def _producer(tensor) -> keras.layers.Layer:
    return tensor._keras_history.operation


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def cut_points(base: keras.Model) -> list[str]:
    """Names of base layers where the base can be split with one tensor crossing the cut."""
    return [layer.name for layer in base.layers[1:] if _crossing_problem(base, layer.name) is None]


def _crossing_problem(base: keras.Model, layer_name: str) -> str | None:
    names = [layer.name for layer in base.layers]
    index = names.index(layer_name)
    cut_layer = base.layers[index]
    cut_inputs = _as_list(cut_layer.input)
    if len(cut_inputs) != 1:
        return f"{layer_name} takes {len(cut_inputs)} inputs"
    cut_tensor = cut_inputs[0]
    top_layers = {id(layer) for layer in base.layers[index:]}
    for layer in base.layers[index:]:
        for tensor in _as_list(layer.input):
            if tensor is not cut_tensor and id(_producer(tensor)) not in top_layers:
                return f"{layer.name} also reads {_producer(tensor).name}, which lies below the cut"
    return None


@dataclass(frozen=True)
class ClassifierParts:
    """A classifier cut in two at a base layer; both parts share the classifier's layers.

    ``bottom`` maps pixels to the tensor entering the cut layer, ``top`` maps that tensor to
    class probabilities, and ``pooled`` maps it to the pooled features the head reads.
    ``head`` maps pooled features to probabilities. Training any part trains the classifier.
    """

    bottom: keras.Model
    top: keras.Model
    pooled: keras.Model
    head: keras.Model
    top_layers: tuple[keras.layers.Layer, ...]  # base layers from the cut on (the ones fine-tuned)


def split_classifier(classifier: keras.Model, cut_layer_name: str) -> ClassifierParts:
    """Cut ``classifier`` before base layer ``cut_layer_name`` (its input crosses the cut).

    The cut must lie at or below ``DEEPEST_CUT``: the head reads ``MID_LAYER``, which has to be
    computed above the cut.

    Raises:
        FaceclsError: the layer does not exist, lies above ``DEEPEST_CUT``, or more than one
            tensor crosses the cut (a residual connection spans it).
    """
    base = base_of(classifier)
    names = [layer.name for layer in base.layers]
    if cut_layer_name not in names[1:]:
        raise FaceclsError(
            f"fine_tune_from must name a layer of {base.name}, such as block_13_expand or block_10_expand. "
            f"Received: {cut_layer_name!r}"
        )
    if names.index(cut_layer_name) > names.index(DEEPEST_CUT):
        raise FaceclsError(
            f"fine_tune_from must be {DEEPEST_CUT} or a layer below it, because the head reads {MID_LAYER}. "
            f"Received: {cut_layer_name!r}"
        )
    problem = _crossing_problem(base, cut_layer_name)
    if problem is not None:
        deepest = names.index(DEEPEST_CUT)
        allowed = [name for name in cut_points(base) if name.endswith("_expand") and names.index(name) <= deepest]
        raise FaceclsError(
            f"fine_tune_from must be a layer where only one tensor crosses the cut ({problem}). "
            f"Received: {cut_layer_name!r}. Allowed block boundaries: {', '.join(allowed)}"
        )
    index = names.index(cut_layer_name)
    cut_tensor = _as_list(base.layers[index].input)[0]
    base_bottom = keras.Model(base.input, cut_tensor, name="base_bottom")
    base_top = keras.Model(cut_tensor, base.outputs, name="base_top")

    scale = classifier.get_layer(SCALE_LAYER)
    pooling_layers = _pooling_layers(classifier)
    features_layer = classifier.get_layer(FEATURES_LAYER)
    dropout_layer = classifier.get_layer(DROPOUT_LAYER)
    dense_layer = classifier.get_layer(PROBABILITIES_LAYER)

    pixels = keras.Input(shape=classifier.input_shape[1:], dtype="float32", name=PIXELS_LAYER)
    bottom = keras.Model(pixels, base_bottom(scale(pixels), training=False), name="classifier_bottom")

    cut_input = keras.Input(shape=tuple(cut_tensor.shape[1:]), dtype="float32", name="cut")
    pooled_features = _pool_features(pooling_layers, *base_top(cut_input, training=False))
    pooled = keras.Model(cut_input, pooled_features, name="classifier_pooled")
    top = keras.Model(cut_input, dense_layer(dropout_layer(pooled_features)), name="classifier_top")

    feature_input = keras.Input(shape=(features_layer.output.shape[-1],), dtype="float32", name="pooled")
    head = keras.Model(feature_input, dense_layer(dropout_layer(feature_input)), name="classifier_head")
    return ClassifierParts(
        bottom=bottom, top=top, pooled=pooled, head=head, top_layers=tuple(base.layers[index:])
    )


def unfreeze_top(base: keras.Model, top_layers: tuple[keras.layers.Layer, ...]) -> list[str]:
    """Make ``top_layers`` of ``base`` trainable and the rest frozen; returns the trainable names.

    BatchNormalization layers stay frozen (inference mode, moving statistics and scale kept).
    """
    base.trainable = True
    chosen = {id(layer) for layer in top_layers}
    trainable = []
    for layer in base.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable


def predict_batched(model: keras.Model, inputs: np.ndarray, batch_size: int = 32):
    """Run ``model`` over ``inputs`` in fixed-size batches (one traced graph, all cores).

    ``model.predict`` often runs on one core here; ``predict_on_batch`` with a constant batch
    shape is several times faster. The last batch is padded and the padding dropped.

    Returns:
        An array, or a list of arrays for a model with several outputs.
    """
    expected = tuple(model.input_shape[1:])
    if inputs.ndim != len(expected) + 1 or tuple(inputs.shape[1:]) != expected:
        raise FaceclsError(
            f"Model input must have shape (N, {', '.join(map(str, expected))}). Received: {inputs.shape}"
        )
    count = len(inputs)
    batch_size = max(1, min(batch_size, count)) if count else batch_size
    chunks: list[list[np.ndarray]] = []
    for start in range(0, count, batch_size):
        batch = np.asarray(inputs[start : start + batch_size], dtype=np.float32)
        filled = len(batch)
        if filled < batch_size:
            padding = np.zeros((batch_size - filled, *expected), dtype=np.float32)
            batch = np.concatenate([batch, padding])
        outputs = model.predict_on_batch(batch)
        chunks.append([np.asarray(output)[:filled] for output in _as_list(outputs)])
    if not chunks:
        shapes = [tuple(int(size) for size in tensor.shape[1:]) for tensor in _as_list(model.output)]
        results = [np.zeros((0, *shape), dtype=np.float32) for shape in shapes]
    else:
        results = [np.concatenate(parts) for parts in zip(*chunks)]
    return results if isinstance(model.output, (list, tuple)) else results[0]
