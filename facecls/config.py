"""Settings of every stage: the one place where each setting is declared.

Each settings record is a frozen dataclass whose fields are declared with ``setting``: the
default, the allowed values and a help text. The CLI builds its options from these fields
(facecls.cli), and ``__post_init__`` checks every value against them, for the CLI, the Python
API and stored configs alike. ``settings_from_dict`` rejects unknown keys and suggests the
closest known one, so a typo in a stored config never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from facecls.errors import FaceclsError

T = TypeVar("T")

FACE_POLICIES = ("consensus", "largest", "most_confident", "all", "skip")
BALANCE_POLICIES = ("undersample", "oversample", "weight", "none")
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
CROP_FORMATS = ("jpg", "png")
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


def setting(default: Any, help: str, *, between: tuple[float, float] | None = None, choices: tuple | None = None,
            flag: str | None = None) -> Any:
    """Declare a settings field: its default, what it means, what it allows and (if not ``--<name>``) its CLI flag.

    Args:
        default: the default value; the field's annotation is its type (int, float, str or bool).
        help: one line for ``--help``, saying what the setting does.
        between: the inclusive range a number must lie in.
        choices: the values allowed.
        flag: the CLI option, when it is not the field name with dashes (e.g. ``--detect-batch``).
    """
    metadata = {"help": help, "between": between, "choices": choices, "flag": flag}
    declared = {key: value for key, value in metadata.items() if value is not None}
    return dataclasses.field(default=default, metadata=declared)


# What a value of each field type may be (a float field takes an integer too; bool is never a number).
_TYPES = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"), "str": (str, "a string"),
          "bool": (bool, "true or false")}  # fmt: skip


def check_settings(settings: Any) -> None:
    """Check every field of a settings record against its declaration (type, range, choices).

    Raises:
        FaceclsError: the first field whose value is not allowed, naming what is allowed and what was received.
    """
    for field in dataclasses.fields(settings):
        name, value = field.name, getattr(settings, field.name)
        allowed, described = _TYPES[str(field.type)]
        wrong_type = not isinstance(value, allowed) or (isinstance(value, bool) and allowed is not bool)
        if wrong_type or (isinstance(value, float) and not math.isfinite(value)):
            raise FaceclsError(f"{name} must be {described}. Received: {value!r}")
        if "between" in field.metadata:
            low, high = field.metadata["between"]
            if not (low <= value <= high):
                raise FaceclsError(f"{name} must be between {low} and {high}. Received: {value}")
        if "choices" in field.metadata and value not in field.metadata["choices"]:
            choices = ", ".join(map(str, field.metadata["choices"]))
            raise FaceclsError(f"{name} must be one of {choices}. Received: {value!r}")


def unknown_key_problem(data: dict[str, Any], known: Sequence[str]) -> str | None:
    """The first key of ``data`` not in ``known`` as "key 'x'. Did you mean 'y'? Allowed: ...", or None."""
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"key {key!r}.{hint} Allowed: {', '.join(known)}"
    return None


def settings_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a settings record from a dict (a stored config), checking every key and value.

    Raises:
        FaceclsError: not a dict, an unknown key (with the closest known one), or a value not allowed.
    """
    if not isinstance(data, dict):
        raise FaceclsError(f"{cls.__name__} must be an object of settings. Received: {type(data).__name__}")
    problem = unknown_key_problem(data, sorted(field.name for field in dataclasses.fields(cls)))
    if problem:
        raise FaceclsError(f"Unknown {cls.__name__} {problem}")
    try:
        return cls(**data)
    except FaceclsError as error:
        raise FaceclsError(f"{cls.__name__} {error}") from None


def settings_to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


@dataclass(frozen=True)
class IngestSettings:
    """How ingest decides which files are usable."""

    min_side: int = setting(32, "photos with a shorter side (pixels) are too_small", between=(1, 10_000))
    max_megapixels: float = setting(50.0, "larger photos are too_large (a decompression-bomb guard)", between=(0.01, 1_000))
    near_duplicate_distance: int = setting(
        4, "max perceptual-hash (64-bit dHash) distance for near duplicates", between=(0, 32)
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class DetectSettings:
    """How MTCNN is run."""

    detect_side: int = setting(640, "detect on a copy downscaled to this longest side", between=(64, 8192))
    min_confidence: float = setting(
        0.90, "MTCNN confidence a face needs (a photo with none left is low_confidence)", between=(0.0, 1.0)
    )
    # Of the 14 detections at 0.8-0.9 in scraped-celebs-6, one was a clear frontal face (0.88, 0.3 from
    # its person's consensus); the 13 others (background faces, blur, a logo) were all 0.6 or more from
    # it. Under 0.8 MTCNN's own output stage drops most of what it finds.
    candidate_confidence: float = setting(
        0.80, "face_policy consensus: train on a face down to this confidence that the identity network agrees on",
        between=(0.0, 1.0))
    min_face_fraction: float = setting(0.04, "ignore faces under this fraction of the photo's shorter side", between=(0.0, 1.0))
    # With the networks compiled (facecls.detect) a batch of 8 costs the same CPU as 8 single calls
    # (0.044 s/photo, 83 shared photos), and one photo per call makes its boxes independent of which
    # photos it was batched with.
    batch_size: int = setting(
        1, "same-size photos per MTCNN call (above 1 a photo's boxes depend on the photos batched with it, "
        "so a resumed run may differ slightly)", between=(1, 256), flag="--detect-batch",
    )  # fmt: skip

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class CropSettings:
    """How a detected face becomes a crop."""

    # 0.25 gives about the same scale aligned or not. Tight aligned crops let ImageNet features describe
    # the face rather than hair and background: scraped-celebs-6 mean test accuracy (5 seeds, frozen
    # features) 0.81 / 0.84 / 0.80 / 0.78 / 0.73 / 0.71 at margin 0 / 0.05 / 0.1 / 0.15 / 0.25 / 0.4,
    # against 0.78 for the 0.25 box crop.
    margin: float = setting(
        0.05, "added on each side of the face: a fraction of the 112-pixel face template when aligned, "
        "of the box's longer side otherwise", between=(0.0, 1.0),
    )  # fmt: skip
    image_size: int = setting(224, "crop size in pixels, the model's input size", between=(32, 1024))
    # As face recognition networks are trained; the same crop path serves training, evaluate and classify.
    align: bool = setting(True, "rotate and scale each face on its 5 MTCNN keypoints (eyes level, one place and size)")
    # "consensus" takes the face that agrees with the identity of the person's other photos
    # (facecls.faces); "largest" took a wrong face in 2 of the 8 multi-face photos of scraped-celebs-6
    # (Donald Trump for sydney_sweeney, a chest for messi).
    face_policy: str = setting("consensus", "which face of a photo is the person's", choices=FACE_POLICIES)
    # dlib separates people at 0.6 between two faces; a centre of many faces is nearer its own people.
    # In scraped-celebs-6 and 5-celebrity-faces, 95% of the photos' own faces were within 0.47,
    # sunglasses, profiles and blur at 0.51-0.56; other people's faces (bystanders, 29 planted
    # intruders) 0.58-0.96; a shirt at 0.52, blurred background faces 0.6-0.74, the lying-down face
    # aligned onto its nose 0.77. Confidence is the second signal: a face MTCNN is sure of
    # (facecls.faces.SURE_CONFIDENCE) agrees under sure_agree_distance. The shirt and chest scored
    # 0.90-0.92; the real faces at 0.51-0.56, 0.995-1.0.
    agree_distance: float = setting(
        0.5, "a face is the person's under this identity distance to the consensus of their other photos",
        between=(0.0, 2.0))
    sure_agree_distance: float = setting(0.55, "agree_distance for a face MTCNN is sure of (0.99 or more)", between=(0.0, 2.0))
    # The two at 0.90-0.92 in scraped-celebs-6 were a shirt and a chest, real bystanders scored
    # 0.947-1.0. Fewer negatives cost little; a shirt among them teaches the wrong thing.
    other_min_confidence: float = setting(
        0.95, "the faces of a photo that are not the person's calibrate unknown from this confidence up",
        between=(0.0, 1.0),
    )  # fmt: skip
    # Lossless by default: training reads the crops from disk while classify crops in memory, and JPEG
    # (quality 95) moved the features of the same face by a cosine of 0.97-0.997 between the two.
    crop_format: str = setting("png", "file format of the crops", choices=CROP_FORMATS)

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class CurateSettings:
    """How crops are split and balanced."""

    val_fraction: float = setting(0.15, "share of each person's photos for validation", between=(0.0, 0.5))
    test_fraction: float = setting(0.15, "share of each person's photos for the test", between=(0.0, 0.5))
    balance: str = setting("weight", "how to even out people with more photos", choices=BALANCE_POLICIES)
    flip: bool = setting(True, "add horizontal flips to the training split")
    seed: int = setting(0, "seed of the split", between=(0, 2**32 - 1))

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class TrainSettings:
    """How MobileNetV2 is trained."""

    alpha: float = setting(0.35, "MobileNetV2 width", choices=ALPHAS)
    weights: str = setting(
        "imagenet", "'imagenet' (downloaded by Keras, needs internet) or the path of a MobileNetV2 no-top "
        "weights file (.h5 or .weights.h5) for the chosen alpha",
    )  # fmt: skip
    dropout: float = setting(
        0.2, "dropout before the softmax while fine-tuning (the head is fitted without it)", between=(0.0, 0.9)
    )
    # Phase 1 is L2-regularised softmax regression on the pooled features, fitted by L-BFGS until it
    # converges. scraped-celebs-6 mean test accuracy (5 seeds, with fine-tuning) 0.821 / 0.828 / 0.800
    # at C 0.3 / 1 / 3, against 0.76 for the minibatch head with dropout and early stopping it replaced.
    head_l2_c: float = setting(
        1.0, "inverse L2 strength of the head (scikit-learn's C): higher fits the training faces closer",
        between=(1e-6, 1e6),
    )  # fmt: skip
    head_epochs: int = setting(
        2000, "max full-batch (L-BFGS) epochs of phase 1, the new head; it stops once converged",
        between=(1, 100000),
    )  # fmt: skip
    fine_tune_epochs: int = setting(
        20, "max epochs of phase 2, fine-tuning the top of the base; 0 skips it", between=(0, 1000)
    )
    # With the grid head, scraped-celebs-6 mean test accuracy over 20 seeded splits was 0.841 for the
    # head alone, 0.821 after fine-tuning at 1e-4 and 0.840 at 1e-5: a gentle step that costs nothing
    # here and lets a larger scrape adapt the top of the base to faces.
    fine_tune_learning_rate: float = setting(1e-5, "learning rate of phase 2", between=(1e-8, 1.0))
    # At most block_13_expand, the block whose expanded map the head reads as a 3x3 grid (facecls.model).
    fine_tune_from: str = setting(
        "block_13_expand", "first layer of the base trained in phase 2, at most block_13_expand ('' skips phase 2)"
    )
    batch_size: int = setting(32, "training batch size of phase 2", between=(1, 4096))
    patience: int = setting(5, "phase 2 stops after this many epochs without a lower validation loss", between=(1, 1000))
    seed: int = setting(0, "seed of training", between=(0, 2**32 - 1))

    def __post_init__(self):
        check_settings(self)
