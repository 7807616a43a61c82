"""facecls classify against a naive loop, open-set 'unknown' rates, and memory at 1,000 / 5,000 photos.

One run does it all on the shared photos (../shared/data):

1. Trains a model on some people of scraped-celebs-6 (ingest -> crop -> curate -> train, alpha
   0.35 weights from ../shared/weights) and calibrates 'unknown' on the scrape's own data.
2. Open set: classifies the held-out photos of the known people and every photo of people the
   model never saw (the other scraped people, 5-celebrity-faces, hard cases without the known
   people); prints the known recall (faces not called unknown) and the strangers' rejection.
3. Speed: the same photos (scraped-celebs-6 + 5-celebrity-faces, repeated to --photos) through
   ``facecls.classifier.classify`` and through a naive loop -- per photo ``MTCNN.detect_faces``
   on the full photo, then ``model.predict`` on each crop -- each in a fresh process timed end
   to end (imports and model loading included); prints photos/s of both and the ratio (goal >= 3x).
4. Memory: ``classify`` on 1,000 and 5,000 photos (repeats), each in a fresh process; prints the
   peak PSS and RSS of that process and its detector workers together (goal: flat, <= 2 GB).

    .venv/bin/python benchmarks/bench_classify.py
    .venv/bin/python benchmarks/bench_classify.py --photos 300 --memory-counts 1000 5000
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from process_memory import tree_memory_bytes  # noqa: E402  (beside this script)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_224_no_top_imagenet.h5"
KNOWN = ("angelina_jolie", "brad_pitt", "messi")
# Words that name the known people in the hard-cases manifest: those files are not strangers.
KNOWN_WORDS = {"angelina_jolie": ("jolie",), "brad_pitt": ("pitt",), "messi": ("messi",)}
# Hard cases that show known people although the manifest does not name them (seen by eye):
# the group selfie has Angelina Jolie and Brad Pitt among its ten faces.
SHOWS = {"selfie-many-people.jpg": ("angelina_jolie", "brad_pitt")}


def photo_files(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def train_known(work: Path, known: tuple[str, ...], image_size: int):
    """A model dir trained on ``known`` and calibrated; returns (model dir, crop dir, calibration, held-out items)."""
    from facecls.config import CropSettings, CurateSettings, DetectSettings, TrainSettings
    from facecls.crop import crop, read_crops_manifest
    from facecls.curate import curate
    from facecls.ingest import ingest
    from facecls.openset import calibrate_model_dir
    from facecls.train import train_model

    scrape = work / "scrape"
    scrape.mkdir(parents=True)
    for person in known:
        (scrape / person).symlink_to(DATA / "scraped-celebs-6" / person)
    crop_settings, detect_settings = CropSettings(image_size=image_size), DetectSettings()
    ingest(scrape, work / "run")
    crop(scrape, work / "run" / "ingest.csv", work / "run" / "crop", detect_settings, crop_settings)
    split = curate(work / "run" / "crop" / "crops.csv", work / "run" / "curate", CurateSettings())
    model_dir = work / "model"
    train_model(split.items, work / "run" / "crop", TrainSettings(weights=str(WEIGHTS)), model_dir, crop_settings, detect_settings)
    others = [record.crop_path for record in read_crops_manifest(work / "run" / "crop" / "others.csv")]
    calibration = calibrate_model_dir(model_dir, work / "run" / "crop", split.items, others)
    held_out = [item for item in split.items if item.split in ("val", "test") and not item.flipped]
    return model_dir, work / "run" / "crop", calibration, held_out


def stranger_photos(known: tuple[str, ...]) -> list[Path]:
    photos = photo_files(*(DATA / "scraped-celebs-6" / person for person in sorted(os.listdir(DATA / "scraped-celebs-6"))
                           if (DATA / "scraped-celebs-6" / person).is_dir() and person not in known))
    photos += photo_files(DATA / "5-celebrity-faces")
    words = [word for person in known for word in KNOWN_WORDS.get(person, (person,))]
    with open(DATA / "hard-cases" / "manifest.csv", newline="") as file:
        for row in csv.DictReader(file):
            text = " ".join(row.values()).lower()
            shown = SHOWS.get(row["file"], ())
            if row["pillow_decode"] == "decodes" and not any(word in text for word in words) and not set(shown) & set(known):
                photos.append(DATA / "hard-cases" / row["category"] / row["file"])
    return photos


def open_set_report(model_dir: Path, crop_dir: Path, held_out, known: tuple[str, ...]) -> None:
    """Known recall and stranger rejection of classify with the model dir's calibrated threshold.

    The known faces are the val+test faces the threshold was calibrated on, re-detected and
    cropped by classify (a face not found counts as a miss); the strangers were never seen.
    """
    import numpy as np

    from facecls.classifier import UNKNOWN, Classifier
    from facecls.crop import read_crops_manifest

    boxes = {record.crop_path: record for record in read_crops_manifest(crop_dir / "crops.csv")}
    scrape = DATA / "scraped-celebs-6"
    with Classifier(model_dir, workers=2) as classifier:
        known_paths = [scrape / boxes[item.crop_path].source_path for item in held_out]
        kept = correct = missing = 0
        known_scores = []
        for item, photo in zip(held_out, classifier.classify_paths(known_paths)):
            record = boxes[item.crop_path]
            if not photo.faces:
                missing += 1
                continue
            # the face the crop stage chose for this person: the detection nearest its box
            face = min(photo.faces, key=lambda face: abs(face.x - record.x) + abs(face.y - record.y))
            kept += face.label != UNKNOWN
            correct += face.label == item.person
            known_scores.append(face.score)
        strangers = stranger_photos(known)
        by_source: dict[str, list[bool]] = {}
        scores = []
        for photo in classifier.classify_paths(strangers):
            source = Path(photo.path).relative_to(DATA).parts[0]
            for face in photo.faces:
                by_source.setdefault(source, []).append(face.label == UNKNOWN)
                scores.append(face.score)
        threshold = classifier.unknown_threshold
        # the score the open-set file holds (classify's score_name may lag behind a change of score)
        score_name = str(classifier.open_set.to_arrays()["score"]) if classifier.open_set is not None else classifier.score_name
    count = len(held_out)
    rejected = [value for values in by_source.values() for value in values]
    print(f"open set: model knows {', '.join(known)}; unknown_threshold {threshold:.3f} ({score_name})")
    print(f"  known people, held-out photos: recall {kept / count:.3f} (not called unknown), "
          f"accuracy {correct / count:.3f}  [{count} faces, {missing} not found]")
    print(f"  strangers ({len(strangers)} photos of other people): rejection {np.mean(rejected) if rejected else 0:.3f} "
          f"(called unknown)  [{len(rejected)} faces]")
    print("    " + ", ".join(f"{source} {np.mean(values):.3f} of {len(values)}" for source, values in sorted(by_source.items())))
    if scores and known_scores:
        print(f"  scores: known median {np.median(known_scores):.3f}, 5th percentile {np.percentile(known_scores, 5):.3f}; "
              f"strangers median {np.median(scores):.3f}, 75th percentile {np.percentile(scores, 75):.3f}")


def repeated(photos: list[Path], count: int, folder: Path) -> Path:
    """``count`` symbolic links to ``photos`` in turn (distinct paths, so each is classified)."""
    folder.mkdir(parents=True)
    for index in range(count):
        source = photos[index % len(photos)]
        (folder / f"{index:05d}-{source.name}").symlink_to(source)
    return folder


def run_naive(model_dir: Path, paths: list[Path]) -> float:
    """The naive loop; returns seconds including loading MTCNN and the model."""
    import numpy as np
    from mtcnn import MTCNN

    from facecls.align import crop_face
    from facecls.detect import _from_mtcnn
    from facecls.images import ImageDecodeError, decode_image
    from facecls.modeldir import load_model_dir

    started = time.perf_counter()
    loaded = load_model_dir(model_dir)
    detector = MTCNN()
    settings = loaded.info.crop_settings
    for path in paths:
        try:
            pixels = decode_image(path).pixels
        except ImageDecodeError:
            continue
        for face in detector.detect_faces(pixels):
            if face["confidence"] >= loaded.info.detect_settings.min_confidence:
                crop = crop_face(pixels, _from_mtcnn(face, 1.0), settings)
                loaded.model.predict(crop[None].astype(np.float32), verbose=0)
    return time.perf_counter() - started


def run_facecls(model_dir: Path, folder: Path, out: Path) -> float:
    from facecls.classifier import classify

    started = time.perf_counter()
    classify(model_dir, [folder], out)
    return time.perf_counter() - started


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and all its descendants) of ``command``.

    CPU seconds hold up when other jobs share the machine; wall seconds are what a user waits.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure_memory(model_dir: Path, photos: list[Path], count: int, work: Path) -> tuple[float, int, int]:
    """Peak RSS and PSS (process tree) of classify on ``count`` photos in a fresh process; (seconds, bytes, bytes)."""
    folder = repeated(photos, count, work / f"memory-{count}")
    command = [sys.executable, __file__, "--classify-only", str(model_dir), str(folder), str(work / f"memory-out-{count}")]
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    peak_rss = peak_pss = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_rss, peak_pss
        while not stop.is_set():
            rss, pss = tree_memory_bytes(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    stop.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"classify on {count} photos failed with exit status {code}")
    return time.perf_counter() - started, peak_rss, peak_pss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300, help="photos in the speed comparison (default %(default)s)")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--model-dir", help="use this model dir (trained on --known people); skips training and the open-set report")
    parser.add_argument("--classify-only", nargs=3, metavar=("MODEL_DIR", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--naive-only", nargs=2, metavar=("MODEL_DIR", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.classify_only:
        run_facecls(Path(args.classify_only[0]), Path(args.classify_only[1]), Path(args.classify_only[2]))
        return 0
    if args.naive_only:
        run_naive(Path(args.naive_only[0]), sorted(Path(args.naive_only[1]).iterdir()))
        return 0
    if not DATA.is_dir() or not WEIGHTS.is_file():
        print(f"skipped: {SHARED} with data/ and weights/ is needed")
        return 0
    work = Path(tempfile.mkdtemp(prefix="facecls-bench-classify-"))
    try:
        if args.model_dir:
            model_dir = Path(args.model_dir)
        else:
            started = time.perf_counter()
            model_dir, crop_dir, calibration, held_out = train_known(work, KNOWN, args.image_size)
            print(f"model: trained on {', '.join(KNOWN)} at {args.image_size}px in {time.perf_counter() - started:.0f} s")
            rejection = "n/a" if calibration.stranger_rejection is None else f"{calibration.stranger_rejection:.3f}"
            print(f"calibration (crops): threshold {calibration.threshold:.3f}, held-out known recall "
                  f"{calibration.known_recall:.3f} of {calibration.known_count}, others.csv rejection {rejection} "
                  f"of {calibration.stranger_count}")
            open_set_report(model_dir, crop_dir, held_out, KNOWN)

        photos = photo_files(DATA / "scraped-celebs-6", DATA / "5-celebrity-faces")
        folder = repeated(photos, args.photos, work / "speed")
        paths = sorted(folder.iterdir())
        # Both sides run in a fresh process, timed from its start: imports and loading count for both.
        facecls_seconds, facecls_cpu = timed(
            [sys.executable, __file__, "--classify-only", str(model_dir), str(folder), str(work / "speed-out")]
        )
        count = len(paths)
        print(f"speed, {count} photos ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}):", flush=True)
        print(f"  facecls classify: {count / facecls_seconds:.2f} photos/s, {facecls_cpu / count:.3f} CPU s/photo", flush=True)
        if not args.skip_naive:
            naive_seconds, naive_cpu = timed([sys.executable, __file__, "--naive-only", str(model_dir), str(folder)])
            print(f"  naive loop:       {count / naive_seconds:.2f} photos/s, {naive_cpu / count:.3f} CPU s/photo")
            print(f"  ratio: {naive_seconds / facecls_seconds:.2f}x photos/s, {naive_cpu / facecls_cpu:.2f}x less CPU per photo "
                  f"(load average now {os.getloadavg()[0]:.1f})")
        for count in args.memory_counts:
            seconds, rss, pss = measure_memory(model_dir, photos, count, work)
            print(f"memory, {count} photos: peak PSS {pss / 2**30:.2f} GB, peak RSS {rss / 2**30:.2f} GB "
                  f"(process + detector workers), {count / seconds:.2f} photos/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
