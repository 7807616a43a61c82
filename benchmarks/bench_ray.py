"""classify on the local engine against Ray with 1 and 2 actors: steady-state photos/s, CPU s per photo, start-up.

One run measures all three side by side on the same machine and photos (scraped-celebs-6 and
5-celebrity-faces of ../shared/data, shuffled, linked and repeated as needed). Each
configuration classifies FEW and then MANY photos, each as a fresh ``facecls classify`` process
into a fresh folder, timed end to end, with the CPU seconds of every process involved (the
command, its detector workers, the Ray workers and Ray's own daemons) sampled from /proc. The
difference between the two runs is the steady state (photos/s, CPU s per photo): a progress
bar would not do, as Ray hands results over in bursts. What the FEW run took beyond its photos
at that rate is the fixed start-up cost (imports, model loading, for Ray connecting and
starting the actors). Ray runs on one instance
this script starts (``ray.init``, whose time is printed too); the commands join with --address.

    .venv/bin/python benchmarks/bench_ray.py --model-dir runs/first/model
    .venv/bin/python benchmarks/bench_ray.py --photos 60 240          # trains a small model first
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_memory import process_table  # noqa: E402  (beside this script)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
CONFIGS = (("local", []), ("ray, 1 actor", ["--engine", "ray", "--actors", "1"]), ("ray, 2 actors", ["--engine", "ray", "--actors", "2"]))


class CpuMeter:
    """CPU seconds of this script's descendants: the command and its workers, and the Ray
    instance this script started (its daemons and workers), but not this script itself.

    Sampled every 0.2 s, keeping each process's last value, so processes that end are counted.
    """

    def __init__(self):
        self.root_pid = os.getpid()
        self.start = {pid: cpu for pid, (_, cpu) in process_table().items()}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        table = process_table()
        tree, stack = set(), [self.root_pid]
        while stack:
            pid = stack.pop()
            tree.add(pid)
            stack.extend(child for child, (parent, _) in table.items() if parent == pid and child not in tree)
        for pid in tree - {self.root_pid}:
            self.last[pid] = table[pid][1]

    def total(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items())

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def timed_classify(model_dir: Path, folder: Path, out: Path, extra: list[str], address: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``facecls classify`` process to its end."""
    command = [sys.executable, "-m", "facecls", "--quiet", "classify", str(model_dir), str(folder), "--out", str(out)]
    command += extra + (["--address", address] if extra else ["--sort", "none"])
    meter = CpuMeter()
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    meter.stop()
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return wall, meter.total()


def photo_folder(work: Path, count: int) -> Path:
    """``count`` photo links (the shared photos, repeated under other names) in a folder of their own."""
    sources = sorted(path for folder in (DATA / "scraped-celebs-6", DATA / "5-celebrity-faces") for path in folder.rglob("*")
                     if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))  # fmt: skip
    random.Random(0).shuffle(sources)  # every stretch of the run sees the same mix of photo sizes
    folder = work / f"photos-{count}"
    folder.mkdir()
    for number in range(count):
        source = sources[number % len(sources)]
        (folder / f"{number:05d}-{source.name}").symlink_to(source)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="use this model dir (default: train a small one on scraped-celebs-6 first)")
    parser.add_argument("--photos", type=int, nargs=2, default=[60, 240], metavar=("FEW", "MANY"), help="photos per run (default %(default)s)")
    args = parser.parse_args(argv)
    few, many = args.photos
    if not 0 < few < many:
        parser.error(f"--photos must be two counts, the first smaller. Received: {few} {many}")
    try:
        import ray
    except ImportError:
        raise SystemExit('bench_ray needs Ray Data: pip install -e ".[test]" (or "facecls[ray]")') from None

    with tempfile.TemporaryDirectory(prefix="facecls-bench-ray-") as temporary:
        work = Path(temporary)
        model_dir = Path(args.model_dir) if args.model_dir else None
        if model_dir is None:
            from bench_classify import KNOWN, train_known  # noqa: E402  (beside this script)

            print("training a model on", ", ".join(KNOWN), "(96-pixel crops) ...", flush=True)
            model_dir = train_known(work / "train", KNOWN, 96)[0]
        folders = {count: photo_folder(work, count) for count in (few, many)}
        os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(work)})
        started = time.perf_counter()
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        ray_start = time.perf_counter() - started
        address = ray.get_runtime_context().gcs_address
        try:
            print(f"ray.init (a new instance, {len(os.sched_getaffinity(0))} CPUs): {ray_start:.1f} s")
            print(f"steady state: the difference between runs of {few} and {many} photos")
            print(f"{'engine':<16}{'photos/s':>10}{'CPU s/photo':>13}{'start-up s':>12}   wall s of the two runs")
            rates = {}
            for name, extra in CONFIGS:
                (wall_few, cpu_few), (wall_many, cpu_many) = (
                    timed_classify(model_dir, folders[count], work / f"out-{len(rates)}-{count}", extra, address) for count in (few, many)
                )
                rate = (many - few) / max(wall_many - wall_few, 1e-9)
                cpu = (cpu_many - cpu_few) / (many - few)
                rates[name] = rate
                print(f"{name:<16}{rate:>10.2f}{cpu:>13.3f}{wall_few - few / rate:>12.1f}   {wall_few:.1f}, {wall_many:.1f}", flush=True)
            print("steady-state rate against local: " + ", ".join(f"{name} {rate / rates['local']:.2f}x" for name, rate in rates.items()))
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
