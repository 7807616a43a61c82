"""classify on the local engine against Ray with 1 and 2 actors: steady-state photos/s, CPU s per photo, start-up.

One run measures all three side by side on the same machine and photos (scraped-celebs-6 and
5-celebrity-faces of ../shared/data, linked and repeated to --photos). Each configuration is a
fresh ``facecls classify`` process into a fresh folder; its progress bar (on stderr) says when
each photo was done. Start-up is the time to the first photo done (imports, model loading, for
Ray connecting and starting the actors); the steady state runs from there to the last photo:
photos/s, and CPU seconds per photo of every process involved (the command, its detector
workers, the Ray workers and Ray's own daemons), sampled from /proc. Ray runs on one instance
this script starts (``ray.init``, whose time is printed too); the commands join with --address.

    .venv/bin/python benchmarks/bench_ray.py --model-dir runs/first/model
    .venv/bin/python benchmarks/bench_ray.py --photos 200             # trains a small model first
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
CONFIGS = (("local", []), ("ray, 1 actor", ["--engine", "ray", "--actors", "1"]), ("ray, 2 actors", ["--engine", "ray", "--actors", "2"]))


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


class CpuMeter:
    """CPU seconds of this script's descendants: the command and its workers, and the Ray
    instance this script started (its daemons and workers), but not this script itself.

    Sampled every 0.2 s, keeping each process's last value, so processes that end are counted.
    """

    def __init__(self):
        self.root_pid = os.getpid()
        self.start = {pid: cpu for pid, (_, cpu) in _process_table().items()}
        self.last: dict[int, float] = {}
        self.history: list[tuple[float, float]] = []  # (time, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        table = _process_table()
        tree, stack = set(), [self.root_pid]
        while stack:
            pid = stack.pop()
            tree.add(pid)
            stack.extend(child for child, (parent, _) in table.items() if parent == pid and child not in tree)
        for pid in tree - {self.root_pid}:
            self.last[pid] = table[pid][1]
        self.history.append((time.perf_counter(), self.total()))

    def total(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items())

    def at(self, moment: float) -> float:
        """CPU seconds so far at ``moment`` (the last sample before it)."""
        return max([cpu for sampled, cpu in self.history if sampled <= moment], default=0.0)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


PROGRESS = re.compile(r"classify[^:]*:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def timed_classify(model_dir: Path, folder: Path, out: Path, extra: list[str], address: str):
    """(start-up s, steady photos/s, steady CPU s per photo, wall s) of one ``facecls classify`` process."""
    command = [sys.executable, "-m", "facecls", "classify", str(model_dir), str(folder), "--out", str(out)]
    command += extra + (["--address", address] if extra else ["--sort", "none"])
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meter = CpuMeter()
    done: list[tuple[float, int]] = []  # (time, photos done) from the progress bar
    tail = bytearray()
    while chunk := process.stderr.read1(4096):
        now = time.perf_counter()
        tail = (tail + chunk)[-20000:]
        for line in re.split(rb"[\r\n]", chunk):
            match = PROGRESS.search(line.decode("utf-8", "replace"))
            if match and int(match.group(1)) > (done[-1][1] if done else 0):
                done.append((now, int(match.group(1))))
    process.wait()
    meter.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0 or len(done) < 2:
        raise SystemExit(f"{' '.join(command)} failed or showed no progress:\n{tail.decode('utf-8', 'replace')[-3000:]}")
    (first_time, first_count), (last_time, last_count) = done[0], done[-1]
    rate = (last_count - first_count) / max(last_time - first_time, 1e-9)
    cpu = (meter.at(last_time) - meter.at(first_time)) / max(last_count - first_count, 1)
    return first_time - started, rate, cpu, wall


def photo_folder(work: Path, count: int) -> Path:
    """``count`` photo links (the shared photos, repeated under other names) in a folder of their own."""
    sources = sorted(path for folder in (DATA / "scraped-celebs-6", DATA / "5-celebrity-faces") for path in folder.rglob("*")
                     if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))  # fmt: skip
    folder = work / f"photos-{count}"
    folder.mkdir()
    for number in range(count):
        source = sources[number % len(sources)]
        (folder / f"{number:05d}-{source.name}").symlink_to(source)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="use this model dir (default: train a small one on scraped-celebs-6 first)")
    parser.add_argument("--photos", type=int, default=160, help="photos per run (default %(default)s)")
    args = parser.parse_args(argv)
    if args.photos < 24:
        parser.error(f"--photos must be at least 24 (a steady state needs several batches). Received: {args.photos}")
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
        folder = photo_folder(work, args.photos)
        os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(work)})
        started = time.perf_counter()
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, logging_level="ERROR", _temp_dir=str(work / "ray"))
        ray_start = time.perf_counter() - started
        address = ray.get_runtime_context().gcs_address
        try:
            print(f"ray.init (a new instance, {len(os.sched_getaffinity(0))} CPUs): {ray_start:.1f} s")
            print(f"{args.photos} photos per run; steady state from the first photo done to the last")
            print(f"{'engine':<16}{'photos/s':>10}{'CPU s/photo':>13}{'start-up s':>12}{'wall s':>9}")
            rates = {}
            for name, extra in CONFIGS:
                startup, rate, cpu, wall = timed_classify(model_dir, folder, work / f"out-{len(rates)}", extra, address)
                rates[name] = rate
                print(f"{name:<16}{rate:>10.2f}{cpu:>13.3f}{startup:>12.1f}{wall:>9.1f}", flush=True)
            print("steady-state rate against local: " + ", ".join(f"{name} {rate / rates['local']:.2f}x" for name, rate in rates.items()))
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
