"""facecls's crop path against plain MTCNN, one photo at a time, on the shared photos.

Both sides decode with ``facecls.images.decode_image`` (decoding time included) and see the
same full-size photos: all of scraped-celebs-6, the readable hard cases and 5-celebrity-faces.
Prints photos/s for both, their ratio, and the recall of facecls against plain MTCNN: the
fraction of faces plain MTCNN finds at ``min_confidence`` or more that some facecls detection
overlaps with IoU >= 0.5 (full-resolution coordinates). Faces facecls misses are listed.

    .venv/bin/python benchmarks/bench_crop.py                       # default settings
    .venv/bin/python benchmarks/bench_crop.py --detect-sides 640 960 1280
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
MIN_IOU = 0.5


def shared_photos() -> list[Path]:
    """Every photo file of the three shared sets (the manifests and notes left out)."""
    photos = []
    for name in ("scraped-celebs-6", "hard-cases", "5-celebrity-faces"):
        folder = SHARED_DATA / name
        photos += sorted(
            path for path in folder.rglob("*") if path.is_file() and path.parent != folder
        )
    return photos


def iou(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> float:
    x1, y1, w1, h1 = first
    x2, y2, w2, h2 = second
    overlap_w = max(0.0, min(x1 + w1, x2 + w2) - max(x1, x2))
    overlap_h = max(0.0, min(y1 + h1, y2 + h2) - max(y1, y2))
    overlap = overlap_w * overlap_h
    union = w1 * h1 + w2 * h2 - overlap
    return overlap / union if union > 0 else 0.0


class PlainMTCNN:
    """Plain mtcnn: decode, then ``MTCNN().detect_faces(pixels)`` one photo at a time."""

    def __init__(self, first_photo: Path):
        from mtcnn import MTCNN

        from facecls import images

        self.images = images
        self.detector = MTCNN()
        self.detector.detect_faces(images.decode_image(first_photo).pixels)  # build the graphs untimed

    def run(self, paths: list[Path], found: dict[str, list[tuple]]) -> None:
        for path in paths:
            try:
                pixels = self.images.decode_image(path).pixels
            except self.images.ImageDecodeError:
                continue
            faces = self.detector.detect_faces(pixels)
            found[str(path)] = [(*map(float, face["box"]), float(face["confidence"]), pixels.shape[:2]) for face in faces]


class Facecls:
    """facecls's FaceCropper with default settings except ``detect_side``; workers warmed up untimed."""

    def __init__(self, detect_side: int | None, workers: int | None, first_photo: Path):
        from facecls.config import CropSettings, DetectSettings
        from facecls.faces import FaceCropper

        self.settings = DetectSettings() if detect_side is None else DetectSettings(detect_side=detect_side)
        self.cropper = FaceCropper(self.settings, CropSettings(), workers=workers)
        start = time.perf_counter()
        list(self.cropper.faces_in_files([first_photo] * (2 * self.cropper.workers), chunk_size=1))
        self.startup = time.perf_counter() - start

    def cpu_seconds(self) -> float:
        """CPU time used so far by the worker processes (Linux /proc), 0 with workers=1."""
        ticks = 0
        for pid in getattr(self.cropper._pool, "_processes", None) or {}:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def run(self, paths: list[Path], found: dict[str, list[tuple]]) -> None:
        for faces in self.cropper.faces_in_files(paths):
            if faces.status != "unreadable":
                found[faces.path] = [(d.x, d.y, d.width, d.height, d.confidence) for d in faces.detections]


def compare(plain: dict[str, list[tuple]], ours: dict[str, list[tuple]], min_confidence: float, min_face_fraction: float):
    """Faces plain MTCNN found at min_confidence, and the ones facecls missed, as (path, box, confidence, croppable).

    croppable: the face is at least min_face_fraction of the photo's shorter side, so it could be cropped.
    """
    faces, missed = [], []
    for path, found in plain.items():
        for x, y, width, height, confidence, (photo_height, photo_width) in found:
            if confidence < min_confidence:
                continue
            croppable = max(width, height) >= min_face_fraction * min(photo_width, photo_height)
            face = (path, (x, y, width, height), confidence, croppable)
            faces.append(face)
            if not any(iou((x, y, width, height), tuple(other[:4])) >= MIN_IOU for other in ours.get(path, [])):
                missed.append(face)
    return faces, missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detect-sides", type=int, nargs="+", default=[None], help="DetectSettings.detect_side values to try (default: the default setting)")
    parser.add_argument("--workers", type=int, default=None, help="facecls worker processes (default: facecls's default)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (quick check)")
    parser.add_argument("--slices", type=int, default=6, help="alternate the contenders over this many slices of the photos, so load from other processes hits both alike")
    args = parser.parse_args(argv)

    from facecls.config import DetectSettings
    from facecls.faces import default_workers

    if not SHARED_DATA.is_dir():
        print(f"bench_crop: {SHARED_DATA} is absent; the benchmark needs the shared photos.", file=sys.stderr)
        return 1
    paths = shared_photos()[: args.limit]
    defaults = DetectSettings()
    print(
        f"{len(paths)} files from {SHARED_DATA}; {os.cpu_count()} cores; facecls workers {args.workers or default_workers()}; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )

    plain_side = PlainMTCNN(paths[0])
    contenders = [Facecls(side, args.workers, paths[0]) for side in args.detect_sides]
    seconds = [0.0] * (1 + len(contenders))
    found: list[dict[str, list[tuple]]] = [{} for _ in seconds]
    cpu = [0.0] * len(seconds)
    step = -(-len(paths) // args.slices)
    for offset in range(0, len(paths), step):
        chunk = paths[offset : offset + step]
        for index, contender in enumerate([plain_side, *contenders]):
            clock = time.process_time if index == 0 else contender.cpu_seconds
            start, cpu_start = time.perf_counter(), clock()
            contender.run(chunk, found[index])
            seconds[index] += time.perf_counter() - start
            cpu[index] += clock() - cpu_start
    for contender in contenders:
        contender.cropper.close()

    plain_rate = len(paths) / seconds[0]
    print(
        f"plain MTCNN, one photo at a time: {seconds[0]:.1f} s ({cpu[0]:.1f} s CPU), {plain_rate:.2f} photos/s, "
        f"{len(found[0])} readable photos; load average at end {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for index, contender in enumerate(contenders, start=1):
        faces, missed = compare(found[0], found[index], defaults.min_confidence, defaults.min_face_fraction)
        croppable = [face for face in faces if face[3]]
        missed_croppable = [face for face in missed if face[3]]
        recall = 1.0 - len(missed) / len(faces) if faces else 1.0
        recall_croppable = 1.0 - len(missed_croppable) / len(croppable) if croppable else 1.0
        side = contender.settings.detect_side
        rate = len(paths) / seconds[index]
        rows.append((side, seconds[index], rate, rate / plain_rate, recall, len(missed), len(faces), recall_croppable, len(missed_croppable), len(croppable)))
        print(
            f"facecls detect_side {side}: {seconds[index]:.1f} s ({cpu[index]:.1f} s CPU in the workers; "
            f"CPU per photo {cpu[0] / cpu[index]:.2f}x less than plain; +{contender.startup:.1f} s worker start-up, untimed), "
            f"{rate:.2f} photos/s, ratio {rate / plain_rate:.2f}x, recall {recall:.4f} ({len(faces) - len(missed)}/{len(faces)}), "
            f"croppable-face recall {recall_croppable:.4f}"
        )
        for path, (x, y, width, height), confidence, is_croppable in missed:
            photo = Path(path).relative_to(SHARED_DATA)
            note = "" if is_croppable else f" (under min_face_fraction {defaults.min_face_fraction}: never cropped anyway)"
            print(f"    missed: {photo} face {width:.0f}x{height:.0f} px at ({x:.0f}, {y:.0f}), confidence {confidence:.3f}{note}")

    print(f"\nplain MTCNN: {seconds[0]:.1f} s, {plain_rate:.2f} photos/s")
    print("detect_side  facecls s  photos/s  ratio  recall (missed/faces)  croppable recall (missed/faces)")
    for side, secs, rate, ratio, recall, missed, total, recall_c, missed_c, total_c in rows:
        print(f"{side:>11}  {secs:>9.1f}  {rate:>8.2f}  {ratio:>5.2f}  {recall:.4f} ({missed}/{total})       {recall_c:.4f} ({missed_c}/{total_c})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
