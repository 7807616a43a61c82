"""A small real model for the classify and open-set tests; the session fixture ``open_set_model``
(conftest.py) trains it once per test run.

Trained on four of the 5-celebrity people (96-pixel crops, alpha 0.35, head only) and
calibrated for 'unknown' on their train crops (val measured); the fifth person, never seen, is the stranger.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from facecls.config import CropSettings, DetectSettings, TrainSettings
from facecls.curate import SplitItem
from shared_data import CELEBRITIES, WEIGHTS_035_H5

SIZE = 96
STRANGER = "madonna"


class OpenSetModel(NamedTuple):
    model_dir: Path
    calibration: object  # facecls.openset.OpenSetCalibration
    crops_dir: Path
    known: tuple[SplitItem, ...]  # items of the four known people
    stranger: tuple[str, ...]  # crop paths of the stranger's faces


def make_open_set_model(folder: Path, crops_dir: Path, items: tuple[SplitItem, ...]) -> OpenSetModel:
    """Train and calibrate the model into ``folder / "model"`` from the 96-pixel celebrity crops."""
    from facecls.openset import calibrate_model_dir
    from facecls.train import train_model

    known = tuple(item for item in items if item.person != STRANGER)
    stranger = tuple(item.crop_path for item in items if item.person == STRANGER)
    settings = TrainSettings(weights=str(WEIGHTS_035_H5), fine_tune_from="")  # the head fitted to convergence
    train_model(list(known), crops_dir, settings, folder / "model", CropSettings(image_size=SIZE), DetectSettings(),
                calibrate=False)  # fmt: skip
    calibration = calibrate_model_dir(folder / "model", crops_dir, list(known), [])  # the stranger stays unseen
    return OpenSetModel(folder / "model", calibration, crops_dir, known, stranger)


def val_photos(person: str) -> list[Path]:
    return sorted((CELEBRITIES / "val" / person).iterdir())
