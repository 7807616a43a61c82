"""The ``facecls`` command: parses arguments, builds settings, calls a stage, prints a summary.

Exit status: 0 ok, 1 a facecls error (one line on stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from facecls.config import (
    BALANCE_POLICIES,
    FACE_POLICIES,
    CropSettings,
    DetectSettings,
    IngestSettings,
)
from facecls.errors import FaceclsError

logger = logging.getLogger("facecls")


def _ingest_settings(args) -> IngestSettings:
    return IngestSettings(
        min_side=args.min_side, max_megapixels=args.max_megapixels, near_duplicate_distance=args.near_duplicate_distance
    )


def _detect_settings(args) -> DetectSettings:
    return DetectSettings(
        detect_side=args.detect_side,
        min_confidence=args.min_confidence,
        min_face_fraction=args.min_face_fraction,
        batch_size=args.detect_batch,
    )


def _crop_settings(args) -> CropSettings:
    return CropSettings(
        margin=args.margin, image_size=args.image_size, face_policy=args.face_policy, crop_format=args.crop_format
    )


def _add_ingest_options(parser: argparse.ArgumentParser) -> None:
    defaults = IngestSettings()
    group = parser.add_argument_group("ingest")
    group.add_argument("--min-side", type=int, default=defaults.min_side, help="photos with a shorter side are too_small (default %(default)s)")
    group.add_argument("--max-megapixels", type=float, default=defaults.max_megapixels, help="larger photos are too_large (default %(default)s)")
    group.add_argument(
        "--near-duplicate-distance",
        type=int,
        default=defaults.near_duplicate_distance,
        help="max perceptual-hash distance (of 64 bits) for near duplicates (default %(default)s)",
    )


def _add_crop_options(parser: argparse.ArgumentParser) -> None:
    detect, crop = DetectSettings(), CropSettings()
    group = parser.add_argument_group("detect and crop")
    group.add_argument("--detect-side", type=int, default=detect.detect_side, help="detect on a copy downscaled to this longest side (default %(default)s)")
    group.add_argument("--min-confidence", type=float, default=detect.min_confidence, help="MTCNN confidence a face needs (default %(default)s)")
    group.add_argument(
        "--min-face-fraction",
        type=float,
        default=detect.min_face_fraction,
        help="ignore faces smaller than this fraction of the photo's shorter side (default %(default)s)",
    )
    group.add_argument("--detect-batch", type=int, default=detect.batch_size, help="same-size photos per MTCNN call (default %(default)s)")
    group.add_argument("--margin", type=float, default=crop.margin, help="margin around the face, fraction of its size (default %(default)s)")
    group.add_argument("--image-size", type=int, default=crop.image_size, help="crop size in pixels, the model's input size (default %(default)s)")
    group.add_argument("--face-policy", choices=FACE_POLICIES, default=crop.face_policy, help="which face to crop when a photo has several (default %(default)s)")
    group.add_argument("--crop-format", choices=("jpg", "png"), default=crop.crop_format, help="file format of the crops (default %(default)s)")
    group.add_argument("--workers", type=int, default=None, help="face-detection processes (default: one per core)")


def _run_folder(path: str) -> Path:
    return Path(path)


def command_ingest(args) -> int:
    from facecls.ingest import ingest

    result = ingest(Path(args.scrape), _run_folder(args.out), _ingest_settings(args))
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.counts.items()))
    print(f"ingest: {sum(result.counts.values())} files of {len(result.people)} people: {counts} -> {result.manifest_path}")
    return 0


def command_crop(args) -> int:
    from facecls.crop import crop

    out = _run_folder(args.out)
    manifest = Path(args.ingest_manifest) if args.ingest_manifest else out / "ingest.csv"
    if not manifest.exists():
        raise FaceclsError(f"Ingest manifest not found: {manifest}. Run `facecls ingest {args.scrape} --out {out}` first.")
    result = crop(
        Path(args.scrape), manifest, out / "crop", _detect_settings(args), _crop_settings(args), workers=args.workers
    )
    counts = ", ".join(f"{status} {count}" for status, count in sorted(result.counts.items()))
    print(
        f"crop: {len(result.photos)} photos ({counts}; {result.reused} reused) -> "
        f"{len(result.crops)} face crops in {result.out_dir / 'faces'}, contact sheets in {result.out_dir / 'sheets'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facecls",
        description="Turn a scrape of photos laid out as <scrape>/<person>/* into a face classifier, "
        "then classify folders of photos.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--verbose", "-v", action="store_true", help="log what each stage does")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ingest = commands.add_parser(
        "ingest",
        help="index a scrape: decode, reject unusable files with a reason, find duplicates -> OUT/ingest.csv",
        description="Index <scrape>/<person>/* into OUT/ingest.csv: one row per file with its real format, size, "
        "sha256, duplicate group and a status (ok, unreadable, not_image, too_small, too_large, duplicate, "
        "near_duplicate). The scrape is never modified.",
    )
    ingest.add_argument("scrape", help="folder with one subfolder of photos per person")
    ingest.add_argument("--out", required=True, help="run folder to write into")
    _add_ingest_options(ingest)
    ingest.set_defaults(handler=command_ingest)

    crop = commands.add_parser(
        "crop",
        help="find faces with MTCNN and crop the target face of each photo -> OUT/crop/",
        description="Detect faces in every usable photo of OUT/ingest.csv and write square face crops to "
        "OUT/crop/faces/<person>/, with OUT/crop/photos.csv (every detection, a status per photo), "
        "OUT/crop/crops.csv and a contact sheet per person in OUT/crop/sheets/. Reruns reuse finished photos.",
    )
    crop.add_argument("scrape", help="the scrape folder that was ingested")
    crop.add_argument("--out", required=True, help="run folder holding ingest.csv")
    crop.add_argument("--ingest-manifest", help="ingest manifest to read (default OUT/ingest.csv)")
    _add_crop_options(crop)
    crop.set_defaults(handler=command_crop)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except FaceclsError as error:
        if args.debug:
            raise
        print(f"facecls: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facecls: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
