"""Soak: ``facecls classify`` over a few thousand mixed good and hostile files.

Builds a folder of real photos (the shared 5-celebrity val photos and hard cases, copied under
distinct names) mixed with the generated hostile corpus of tests/corpus.py (zero-byte, truncated,
bit-flipped, HTML as .jpg, decompression bombs, 1x1, 30000 px wide, CMYK, 16-bit, animated GIF,
odd names, FIFOs, symlink loops, ...), runs ``python -m facecls classify`` on it in a subprocess
and prints files/s, statuses by kind of file, and the memory of the whole process tree (the main
process and its detector workers, RSS and PSS summed from /proc every 0.2 s): the peak in each
phase (start-up before the first row, each quarter of the rows, the end once every row is written:
summary and report) and a timeline, so a peak can be told apart from growth.

    .venv/bin/python benchmarks/soak_classify.py --files 3000 [--model-dir DIR] [--workers 2]

Without --model-dir the small model of the classify tests is trained first (about a minute).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import build_corpus, restore_permissions  # noqa: E402
from process_memory import tree_memory_bytes  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def good_photos() -> list[Path]:
    photos = sorted((SHARED / "5-celebrity-faces" / "val").glob("*/*"))
    photos += sorted(path for path in (SHARED / "hard-cases").glob("*/*") if path.suffix.lower() in (".jpg", ".png"))
    return [path for path in photos if "corrupt" not in path.parts]


def build_inputs(folder: Path, files: int, good_share: float) -> dict[str, str]:
    """Write about ``files`` entries; returns path -> kind."""
    kinds: dict[str, str] = {}
    sources = good_photos()
    good_wanted = int(files * good_share)
    folder_number = 0
    while len(kinds) < files:
        batch = folder / f"batch_{folder_number:03d}"
        cases = build_corpus(batch, special=True)
        kinds.update({str(batch / name): case.kind for name, case in cases.items()})
        for number in range(max(0, min(60, good_wanted - sum(kind == "good_photo" for kind in kinds.values())))):
            source = sources[(folder_number * 60 + number) % len(sources)]
            target = batch / f"good_{number:03d}_{source.name}"
            shutil.copy2(source, target)
            kinds[str(target)] = "good_photo"
        folder_number += 1
    return kinds


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as file:
            return file.read().count(b"\n")
    except OSError:
        return 0


PHASES = ("start-up", "rows 1/4", "rows 2/4", "rows 3/4", "rows 4/4", "end")


def _phase(out: Path, rows: int, files: int) -> str:
    """Where classify is: before its first row, in a quarter of the rows, or past the last row
    (classify.json says finished: the summary and the report are being written)."""
    try:
        finished = json.loads((out / "classify.json").read_text()).get("state") == "finished"
    except (OSError, ValueError, AttributeError):
        finished = False
    if finished:
        return "end"
    if rows <= 1:  # the header alone
        return "start-up"
    return PHASES[1 + min(3, 4 * (rows - 1) // max(1, files))]


def _thin(samples: list, count: int) -> list:
    """About ``count`` samples spread over the run, each the highest PSS of its stretch, and the last."""
    if len(samples) <= count:
        return samples
    step = len(samples) / count
    picked = [max(samples[int(index * step) : int((index + 1) * step)], key=lambda sample: sample[3])
              for index in range(count)]
    return picked + [samples[-1]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--good-share", type=float, default=0.6, help="share of real photos (default %(default)s)")
    parser.add_argument("--model-dir", help="a facecls model dir (default: train the classify tests' small model)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        from celebrity_crops import make_celebrity_crops
        from classify_model import make_open_set_model

        scratch = tempfile.TemporaryDirectory(prefix="facecls-soak-model-")  # removed when main returns
        trained = Path(scratch.name)
        (trained / "crops").mkdir()
        model_dir = make_open_set_model(trained, trained / "crops", make_celebrity_crops(trained / "crops", 96)).model_dir
    work = Path(tempfile.mkdtemp(prefix="facecls-soak-"))
    try:
        kinds = build_inputs(work / "inputs", args.files, args.good_share)
        out = work / "out"
        command = [sys.executable, "-m", "facecls", "--quiet", "--json", "classify", str(model_dir), str(work / "inputs"),
                   "--out", str(out), "--sort", "none"]  # fmt: skip
        if args.workers:
            command += ["--workers", str(args.workers)]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak_rss = peak_pss = 0
        # Peak PSS per phase: flat over the quarters when memory is bounded, and the end no higher.
        pss_by_phase = dict.fromkeys(PHASES, 0)
        timeline: list[tuple[float, str, int, int]] = []  # (seconds, phase, rows, PSS)
        while process.poll() is None:
            rss, pss = tree_memory_bytes(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            rows = _lines(out / "predictions.csv")
            phase = _phase(out, rows, len(kinds))
            pss_by_phase[phase] = max(pss_by_phase[phase], pss)
            timeline.append((time.perf_counter() - started, phase, rows, pss))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            return 1
        summary = json.loads(stdout.strip().splitlines()[-1])
        statuses: dict[str, Counter] = defaultdict(Counter)
        seen = set()
        with open(out / "predictions.csv", newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                if row["path"] in seen:
                    continue
                seen.add(row["path"])
                statuses[kinds.get(row["path"], "?")][row["status"]] += 1
        missing = set(kinds) - seen
        print(f"files: {len(kinds)} ({sum(k == 'good_photo' for k in kinds.values())} good photos), "
              f"rows for {len(seen)}, missing {len(missing)}")  # fmt: skip
        print(f"wall time {seconds:.1f} s (TensorFlow start-up included): {len(kinds) / seconds:.2f} files/s; "
              f"classify's own rate {summary['photos_per_second']} photos/s")  # fmt: skip
        print(f"peak memory of the process tree (main + detector workers): PSS {peak_pss / 2**20:.0f} MiB, "
              f"RSS {peak_rss / 2**20:.0f} MiB")  # fmt: skip
        print("peak PSS by phase: " + ", ".join(f"{phase} {value / 2**20:.0f}" for phase, value in pss_by_phase.items())
              + " MiB")  # fmt: skip
        print("PSS over time (s, phase, rows, MiB): " + "; ".join(
            f"{at:.0f} {phase} {rows} {pss / 2**20:.0f}" for at, phase, rows, pss in _thin(timeline, 24)))  # fmt: skip
        print("statuses by kind:")
        for kind in sorted(statuses):
            print(f"  {kind:20s} " + ", ".join(f"{status} {count}" for status, count in sorted(statuses[kind].items())))
        return 0 if not missing else 1
    finally:
        for batch in (work / "inputs").glob("batch_*"):
            restore_permissions(batch)
        if args.keep:
            print(f"kept {work} (inputs/, and out/ with predictions.csv and report.html)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
