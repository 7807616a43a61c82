"""Real face crops of the shared 5-celebrity photos, for model, train and evaluate tests.

Made with the crop stage's own ``FaceCropper`` (MTCNN, largest face, square) into a folder; the
session fixture ``celebrity_crops`` (conftest.py) makes them once per test run at 96 pixels.
"""

from __future__ import annotations

from pathlib import Path

from facecls.config import CropSettings, DetectSettings
from facecls.curate import SplitItem
from facecls.images import write_image
from shared_data import CELEBRITIES


def make_celebrity_crops(crops_dir: Path, image_size: int, workers: int = 1) -> tuple[SplitItem, ...]:
    """Crop every 5-celebrity photo (and its identity chip) into ``crops_dir``; one unflipped item per crop.

    Items keep the dataset's own train/val split; a photo without a face is left out.
    """
    from facecls.crop import chip_path_of
    from facecls.faces import FaceCropper

    photos = sorted(CELEBRITIES.glob("*/*/*.*"))
    items = []
    with FaceCropper(DetectSettings(), CropSettings(image_size=image_size), workers=workers) as cropper:
        for photo, faces in zip(photos, cropper.faces_in_files(photos)):
            if not faces.chosen:
                continue
            split, person = photo.parent.parent.name, photo.parent.name
            crop_path = f"{split}/{person}/{photo.stem}.png"
            write_image(crops_dir / crop_path, faces.chosen[0].crop)
            write_image(crops_dir / chip_path_of(crop_path), faces.chosen[0].chip)
            items.append(SplitItem(crop_path, person, str(photo), photo.stem, split, False, 1.0))
    return tuple(items)
