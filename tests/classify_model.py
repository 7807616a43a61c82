"""A small real model for the classify and open-set tests, trained once per process.

Trained on four of the 5-celebrity people (96-pixel crops, alpha 0.35, head only) and
calibrated for 'unknown' on their train crops (val measured); the fifth person, never seen, is the stranger.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from celebrity_crops import CELEBRITIES, WEIGHTS_035_H5, celebrity_crops
from facecls.config import CropSettings, DetectSettings, TrainSettings

SIZE = 96
STRANGER = "madonna"


@functools.lru_cache(maxsize=None)
def open_set_model():
    """(model dir, calibration, crops dir, items of the known people, crop paths of the stranger)."""
    from facecls.openset import calibrate_model_dir
    from facecls.train import train_model

    crops_dir, items = celebrity_crops(SIZE)
    known = [item for item in items if item.person != STRANGER]
    stranger = [item.crop_path for item in items if item.person == STRANGER]
    folder = Path(tempfile.mkdtemp(prefix="facecls-classify-model-"))
    atexit.register(shutil.rmtree, folder, True)
    settings = TrainSettings(weights=str(WEIGHTS_035_H5), fine_tune_from="")  # the head fitted to convergence
    train_model(known, crops_dir, settings, folder / "model", CropSettings(image_size=SIZE), DetectSettings(),
                calibrate=False)
    calibration = calibrate_model_dir(folder / "model", crops_dir, known, [])  # the stranger stays unseen
    return folder / "model", calibration, crops_dir, tuple(known), tuple(stranger)


def val_photos(person: str) -> list[Path]:
    return sorted((CELEBRITIES / "val" / person).iterdir())
