"""Real face crops of the shared 5-celebrity photos, for model, train and evaluate tests.

Made with the crop stage's own ``FaceCropper`` (MTCNN, largest face, 25% margin, square),
once per process and image size, in a temporary folder.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from facecls.config import CropSettings, DetectSettings
from facecls.curate import SplitItem
from facecls.images import write_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CELEBRITIES = SHARED / "data" / "5-celebrity-faces"
WEIGHTS_035_H5 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
WEIGHTS_035_KERAS3 = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.weights.h5"
WEIGHTS_100_H5 = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_tfslim.h5"


@functools.lru_cache(maxsize=None)
def celebrity_crops(image_size: int, workers: int = 1) -> tuple[Path, tuple[SplitItem, ...]]:
    """Crop every 5-celebrity photo (and its identity chip); returns (crops folder, one unflipped item per crop).

    Items keep the dataset's own train/val split; a photo without a face is left out.
    """
    from facecls.crop import chip_path_of
    from facecls.faces import FaceCropper

    photos = sorted(CELEBRITIES.glob("*/*/*.*"))
    crops_dir = Path(tempfile.mkdtemp(prefix=f"facecls-celebrity-crops-{image_size}-"))
    atexit.register(shutil.rmtree, crops_dir, True)
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
    return crops_dir, tuple(items)
