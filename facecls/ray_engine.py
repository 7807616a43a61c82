"""Classify on a Ray cluster: the classify stage with Ray Data instead of local worker processes.

The pipeline: ``read_binary_files`` reads each photo's bytes (``num_cpus=0``: with the actors
holding every CPU a read task that needs one is never scheduled, ray#44687), then
``map_batches`` runs ``PhotoClassifier`` on an actor pool; each actor loads the model dir once
and turns bytes into rows with ``Classifier.classify_bytes``, the local path's own decode ->
detect -> crop -> classify, so a photo gives the same rows on either engine. The driver alone
writes the rows, a Parquet file at a time and atomically, under ``OUT/predictions/``: a killed
driver leaves whole files only, and a retried Ray task can never add a photo twice.

Inputs: local files and folders (listed as the local engine lists them), object-store prefixes
or files (``s3://``, ``gs://``, anything ``pyarrow.fs.FileSystem.from_uri`` opens), and Parquet or
CSV lists of photos with a ``uri`` column (optionally ``sha256``, which lets a rerun skip a
finished photo without reading it). A rerun skips every photo whose rows are complete, keyed by
URI and content hash.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from facecls.classifier import Classifier, ClassifyResult, iter_input_files, sha256_or_empty
from facecls.outputs import SUMMARY_NAME, UNREADABLE
from facecls.predictions import PROBABILITY_PREFIX, PhotoPrediction, RowCounts, prediction_columns, prediction_rows
from facecls.errors import FaceclsError, ImageDecodeError
from facecls.ingest import MAX_FILE_BYTES_PER_PIXEL
from facecls.paths import check_output_folder
from facecls.manifest import atomic_write_bytes, output_lock, read_json, write_json

logger = logging.getLogger(__name__)

PREDICTIONS_FOLDER = "predictions"
PART_PREFIX = "part-"
LIST_SUFFIXES = (".csv", ".parquet")
INSTALL_HINT = 'pip install "facecls[ray]"'
# Measured about 0.9 GB per actor (MTCNN, MobileNetV2, the identity network): declared so Ray
# places no more actors on a node than its memory holds, before its OOM killer has to strike.
ACTOR_MEMORY_BYTES = 1_200_000_000
ACTOR_CPUS = 1  # MTCNN uses one core; TensorFlow's thread pools are limited to it
# A Parquet file is written once this many photos wait, or this long after the last one.
PHOTOS_PER_FILE = 5000
FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class PhotoSource:
    """One photo to classify: where it is, and its content hash when a list gave one."""

    uri: str  # a local absolute path, or a URI with its scheme (s3://bucket/key)
    sha256: str = ""


@dataclass(frozen=True)
class FileSystemGroup:
    """Photos on one pyarrow filesystem, read by one ``read_binary_files``."""

    filesystem: Any  # pyarrow.fs.FileSystem
    prefix: str  # put before a path of the filesystem to give the photo's URI ("" for local files)
    sources: tuple[PhotoSource, ...]


def parse_actors(text: str) -> tuple[int, int]:
    """``N`` or ``MIN,MAX`` -> (min, max) actors.

    Raises:
        FaceclsError: not one or two whole numbers of at least 1, or MIN over MAX.
    """
    parts = text.split(",")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1 or sizes[0] > sizes[-1]:
        raise FaceclsError(f"--actors must be N or MIN,MAX with 1 <= MIN <= MAX. Received: {text!r}")
    return sizes[0], sizes[-1]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise FaceclsError(f"--engine ray needs Ray Data, which is not installed ({error}). Install it: {INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------- inputs


def _is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


class _FileSystems:
    """Opens each pyarrow filesystem once and splits URIs into (group key, filesystem path)."""

    def __init__(self):
        self.opened: dict[tuple[str, str, str], tuple[Any, str]] = {}

    def locate(self, uri: str) -> tuple[tuple[str, str, str], Any, str, str]:
        """(group key, filesystem, prefix, path) of a URI or local path."""
        from urllib.parse import urlsplit

        import pyarrow.fs

        if not _is_uri(uri):
            path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
            key = ("", "", "")
            if key not in self.opened:
                self.opened[key] = (pyarrow.fs.LocalFileSystem(), "")
            return key, self.opened[key][0], "", path
        parts = urlsplit(uri)
        key = (parts.scheme, parts.netloc, parts.query)
        bare = uri.split("?", 1)[0]
        if key not in self.opened:
            try:
                filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
            except (pyarrow.ArrowInvalid, OSError) as error:
                raise FaceclsError(f"{uri}: pyarrow cannot open this filesystem ({error}). Check the URI and credentials.") from None
            if not bare.endswith(path):
                raise FaceclsError(f"{uri}: cannot tell the filesystem path in this URI (pyarrow reads {path!r}).")
            self.opened[key] = (filesystem, bare[: len(bare) - len(path)])
        filesystem, prefix = self.opened[key]
        return key, filesystem, prefix, bare[len(prefix) :]


def _read_list(filesystem, path: str, shown: str) -> list[tuple[str, str]]:
    """(uri, sha256 or "") of each row of a Parquet or CSV list of photos."""
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.lower().endswith(".parquet"):
            table = pyarrow.parquet.read_table(path, filesystem=filesystem)
        else:
            with filesystem.open_input_stream(path) as stream:
                table = pyarrow.csv.read_csv(stream, convert_options=pyarrow.csv.ConvertOptions(strings_can_be_null=False))
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise FaceclsError(f"{shown}: cannot read this photo list ({error}). Pass a Parquet or CSV file with a uri column.") from None
    if "uri" not in table.column_names:
        raise FaceclsError(
            f"{shown}: a photo list needs a 'uri' column (and optionally 'sha256'). Received columns: {', '.join(table.column_names)}"
        )
    uris = [str(value) if value is not None else "" for value in table.column("uri").to_pylist()]
    hashes = table.column("sha256").to_pylist() if "sha256" in table.column_names else [""] * len(uris)
    return [(uri, str(sha256 or "")) for uri, sha256 in zip(uris, hashes) if uri]


def list_photos(inputs: Sequence[str]) -> tuple[list[FileSystemGroup], list[str]]:
    """The photos of the inputs, grouped by filesystem; and the local files that are not regular files.

    A folder or prefix is listed recursively (local folders as the local engine lists them);
    an input file named ``*.csv`` or ``*.parquet`` is a list of photos (relative URIs in it are
    relative to its folder); a photo listed twice is classified once.

    Raises:
        FaceclsError: no input, an input that does not exist, a list without a ``uri`` column.
    """
    import pyarrow.fs

    if not inputs:
        raise FaceclsError("classify needs at least one photo file, folder, prefix or list. Received none.")
    systems = _FileSystems()
    found: dict[str, str] = {}  # uri -> sha256 ("" unknown), in input order

    def add(uri: str, sha256: str = "") -> None:
        found[uri] = found.get(uri) or sha256

    for item in map(str, inputs):
        _, filesystem, prefix, path = systems.locate(item)
        if not _is_uri(item):
            if not os.path.lexists(path):
                raise FaceclsError(f"Input not found: {item}. Pass existing photo files, folders, prefixes or lists.")
            if path.lower().endswith(LIST_SUFFIXES) and os.path.isfile(path):
                folder = os.path.dirname(path)
                for uri, sha256 in _read_list(filesystem, path, item):
                    add(uri if _is_uri(uri) else os.path.join(folder, uri), sha256)
            else:
                for photo in iter_input_files([Path(path)]):
                    add(photo)
            continue
        info = filesystem.get_file_info(path)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise FaceclsError(f"Input not found: {item}. Pass existing photo files, folders, prefixes or lists.")
        if info.type == pyarrow.fs.FileType.File and path.lower().endswith(LIST_SUFFIXES):
            folder = prefix + path.rsplit("/", 1)[0]
            query = "?" + item.split("?", 1)[1] if "?" in item else ""
            for uri, sha256 in _read_list(filesystem, path, item):
                add(uri if _is_uri(uri) else f"{folder}/{uri}{query}", sha256)
        elif info.type == pyarrow.fs.FileType.File:
            add(item)
        else:
            query = "?" + item.split("?", 1)[1] if "?" in item else ""
            files = filesystem.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
            for file in sorted((file for file in files if file.type == pyarrow.fs.FileType.File), key=lambda file: file.path):
                add(prefix + file.path + query)
    groups: dict[tuple, tuple[Any, str, list[PhotoSource]]] = {}
    not_regular = []
    for uri, sha256 in found.items():
        key, filesystem, prefix, path = systems.locate(uri)
        uri = prefix + path  # remote URIs without their query: the filesystem carries its options
        if not _is_uri(uri):
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                regular = False
            if not regular:  # a pipe would block a read task, a missing file fail the whole job
                not_regular.append(uri)
                continue
        groups.setdefault(key, (filesystem, prefix, []))[2].append(PhotoSource(uri, sha256))
    return [FileSystemGroup(filesystem, prefix, tuple(sources)) for filesystem, prefix, sources in groups.values()], not_regular


# ---------------------------------------------------------------- the actors


def prediction_schema(labels: Sequence[str]):
    """The Parquet schema of the predictions: predictions.csv's columns, typed."""
    import pyarrow as pa

    types = {"face": pa.int64(), "faces": pa.int64()}
    for name in ("score", "x", "y", "w", "h", "probability", "confidence"):
        types[name] = pa.float64()
    return pa.schema(
        [(name, pa.float64() if name.startswith(PROBABILITY_PREFIX) else types.get(name, pa.string())) for name in prediction_columns(labels)]
    )


def model_dir_files(model_dir: Path) -> dict[str, bytes]:
    """The files of a model dir, to ship to actors on nodes that cannot read its path."""
    return {path.name: path.read_bytes() for path in sorted(Path(model_dir).iterdir()) if path.is_file()}


class PhotoClassifier:
    """Ray Data callable class: a batch of photos (``uri``, ``bytes``) in, their prediction rows out.

    Loads the model dir once per actor (from ``model_dir_files``, shipped through the object
    store, so nodes need no shared folder), with TensorFlow's thread pools limited to the actor's CPU.
    """

    def __init__(self, model_files, unknown_threshold: float | None, batch_size: int):
        import tempfile

        import ray

        from facecls.detect import limit_tensorflow_threads
        from facecls.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        limit_tensorflow_threads(ACTOR_CPUS)
        self._model_dir = tempfile.TemporaryDirectory(prefix="facecls-model-")  # removed with the actor
        for name, content in ray.get(model_files).items():
            Path(self._model_dir.name, name).write_bytes(content)
        self.classifier = Classifier(Path(self._model_dir.name), unknown_threshold, workers=1, batch_size=batch_size)
        self.schema = prediction_schema(self.classifier.labels)

    def __call__(self, batch: dict) -> Any:
        import pyarrow as pa

        photos = [(str(uri), bytes(content)) for uri, content in zip(batch["uri"], batch["bytes"])]
        rows = [row for photo_rows in self.classifier.classify_bytes(photos) for row in photo_rows]
        return pa.Table.from_pylist(rows, schema=self.schema)


def _unfinished(batch, prefix: str, done: dict[str, set[str]]):
    """A read block as (uri, bytes), without the photos whose URI and content hash are done.

    Runs in the read task (fused with it), so a rerun never sends a finished photo to an actor.
    read_binary_files names files without their scheme: ``prefix`` puts it back.
    """
    import hashlib

    import pyarrow as pa

    uris = [prefix + path for path in batch.column("path").to_pylist()]
    keep = [
        index for index, (uri, content) in enumerate(zip(uris, batch.column("bytes").to_pylist()))
        if uri not in done or hashlib.sha256(content).hexdigest() not in done[uri]
    ]  # fmt: skip
    return pa.table({"uri": pa.array([uris[index] for index in keep], pa.string()), "bytes": batch.column("bytes").take(keep)})


# ---------------------------------------------------------------- outputs


def _part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{PART_PREFIX}*.parquet"))


def _read_outputs(folder: Path, labels: Sequence[str]) -> tuple[set[tuple[str, str]], list[dict]]:
    """(done keys, the rows counted in the summary) of the Parquet files of earlier runs.

    A file that cannot be read (torn by a crash, or not written by facecls) is removed: its
    photos are classified again.

    Raises:
        FaceclsError: the files hold the columns of another model.
    """
    import pyarrow.parquet

    columns = prediction_columns(labels)
    done: set[tuple[str, str]] = set()
    rows: list[dict] = []
    for path in _part_files(folder):
        try:
            schema = pyarrow.parquet.read_schema(path)
            table = pyarrow.parquet.read_table(path, columns=["path", "sha256", "face", "faces", "status", "label"])
        except (OSError, ValueError) as error:
            logger.warning("Removing %s, which cannot be read (%s): its photos are classified again", path, error)
            path.unlink()
            continue
        if schema.names != columns:
            raise FaceclsError(
                f"{path} has the columns of another model ({', '.join(schema.names)}). "
                "Choose another --out folder, or delete it to start over."
            )
        photo_rows = table.to_pylist()
        done.update((row["path"], row["sha256"]) for row in photo_rows)
        rows.extend(photo_rows)
    return done, rows


class _PartWriter:
    """Writes complete photos' rows to numbered Parquet files, each atomically."""

    def __init__(self, folder: Path, labels: Sequence[str]):
        self.folder = folder
        self.schema = prediction_schema(labels)
        existing = _part_files(folder)
        self.number = int(existing[-1].stem[len(PART_PREFIX) :]) + 1 if existing else 0
        self.rows: list[dict] = []
        self.photos = 0
        self.written = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.photos += 1
        if self.photos >= PHOTOS_PER_FILE or time.monotonic() - self.written >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import io

        import pyarrow as pa
        import pyarrow.parquet

        self.written = time.monotonic()
        if not self.rows:
            return
        buffer = io.BytesIO()
        pyarrow.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), buffer)
        atomic_write_bytes(self.folder / f"{PART_PREFIX}{self.number:06d}.parquet", buffer.getvalue())
        self.number += 1
        self.rows, self.photos = [], 0


# ---------------------------------------------------------------- the stage


def classify_on_ray(
    model_dir: Path,
    inputs: Sequence[str | Path],
    out_dir: Path,
    unknown_threshold: float | None = None,
    address: str | None = None,
    actors: tuple[int, int] | None = None,
) -> ClassifyResult:
    """Classify every photo of ``inputs`` on a Ray cluster into ``out_dir/predictions/*.parquet``.

    Rows have exactly predictions.csv's columns; ``classify.json`` records the model's
    fingerprint and the counts. A rerun skips photos whose rows are complete.

    Args:
        model_dir: a model dir written by the train stage (its files are shipped to the actors).
        inputs: local files and folders, object-store URIs (files or prefixes), Parquet/CSV lists.
        out_dir: local output folder.
        unknown_threshold: overrides the model dir's threshold.
        address: the cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None: the one this
            process is connected to, else Ray's default (``RAY_ADDRESS``, or a new local instance).
        actors: (min, max) actors, one CPU each; None: 1 to the cluster's CPUs.

    Raises:
        FaceclsError: Ray not installed or unreachable, a bad input or model dir, an output
            folder in use or holding predictions of another model.
    """
    ray = _import_ray()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    inputs = [str(item) for item in inputs]
    # Outputs inside an input folder would be read back as photos on the next run.
    check_output_folder(out_dir, [Path(item) for item in inputs if not _is_uri(item)])
    with output_lock(out_dir):
        # More than one worker: this process only checks the model dir; the actors load it.
        classifier = Classifier(Path(model_dir), unknown_threshold, workers=2)
        labels, fingerprint = classifier.labels, classifier.fingerprint()
        summary_path = out_dir / SUMMARY_NAME
        if summary_path.exists():
            previous = read_json(summary_path)
            if isinstance(previous, dict) and previous.get("fingerprint") not in (None, fingerprint):
                raise FaceclsError(
                    f"{out_dir} holds predictions of another model or threshold ({previous.get('model_dir')}). "
                    "Choose another --out folder, or delete it to start over."
                )
        groups, not_regular = list_photos(inputs)
        folder = out_dir / PREDICTIONS_FOLDER
        folder.mkdir(exist_ok=True)
        done, old_rows = _read_outputs(folder, labels)
        base_summary = {
            "engine": "ray",
            "model_dir": str(Path(model_dir).resolve()),
            "fingerprint": fingerprint,
            "labels": list(labels),
            "score": classifier.score_name,
            "unknown_threshold": classifier.unknown_threshold,
        }
        write_json(summary_path, {**base_summary, "state": "running"})
        done_paths: dict[str, set[str]] = {}
        for path, sha256 in done:
            done_paths.setdefault(path, set()).add(sha256)
        counts = RowCounts()
        counts.add_rows(old_rows)
        writer = _PartWriter(folder, labels)
        total = sum(len(group.sources) for group in groups) + len(not_regular)
        progress = tqdm(total=total, desc="classify (ray)", unit="photo")
        skipped = classified = 0
        for path in not_regular:
            if (path, "") in done:
                skipped += 1
            else:
                rows = _unreadable_rows(path, labels)
                writer.add(rows)
                counts.add_rows(rows)
                classified += 1
            progress.update(1)
        todo, recheck = [], {}
        for group in groups:
            sources = []
            for source in group.sources:
                sha256 = source.sha256
                if not sha256 and source.uri in done_paths and not group.prefix:
                    # a local file: hashed here, as the local engine does, with its size limit
                    sha256 = sha256_or_empty(source.uri, classifier.cropper.max_pixels * MAX_FILE_BYTES_PER_PIXEL)
                if sha256 and (source.uri, sha256) in done:
                    skipped += 1
                    progress.update(1)
                    continue
                if not sha256 and source.uri in done_paths:
                    recheck[source.uri] = done_paths[source.uri]  # the read task hashes it
                sources.append(source)
            if sources:
                todo.append(dataclasses.replace(group, sources=tuple(sources)))
        run_started = time.perf_counter()
        returned: set[str] = set()
        try:
            if todo:
                connected_here = _connect(ray, address)
                try:
                    for rows in _run_pipeline(ray, todo, Path(model_dir), classifier, recheck, actors):
                        key = (rows[0]["path"], rows[0]["sha256"])
                        returned.add(key[0])
                        if key in done:  # a task Ray retried after its rows had come
                            continue
                        done.add(key)
                        writer.add(rows)
                        counts.add_rows(rows)
                        classified += 1
                        progress.update(1)
                finally:
                    if connected_here:
                        ray.shutdown()
                for group in todo:
                    for source in group.sources:
                        if source.uri in returned:
                            continue
                        if source.uri in recheck:  # unchanged since the earlier run: its rows stand
                            skipped += 1
                        else:  # gone between listing and reading
                            rows = prediction_rows(PhotoPrediction(source.uri, UNREADABLE, "not found when read", 0, 0), "", labels)
                            writer.add(rows)
                            counts.add_rows(rows)
                            classified += 1
                        progress.update(1)
        finally:
            writer.flush()
            progress.close()
        rate = classified / max(time.perf_counter() - run_started, 1e-9)
        result = ClassifyResult(
            out_dir=out_dir,
            predictions_path=folder,
            **counts.result_fields(),
            skipped=skipped,
            classified=classified,
            sorted_files=0,
            seconds=round(time.perf_counter() - started, 2),
            photos_per_second=round(rate, 2),
        )
        summary = {**base_summary, "state": "finished"}
        summary.update({key: value for key, value in dataclasses.asdict(result).items() if key not in ("out_dir", "predictions_path")})
        write_json(summary_path, summary)
    return result


def _unreadable_rows(path: str, labels: Sequence[str]) -> list[dict]:
    """The row the local engine writes for a local file that is not a regular file (or is gone)."""
    from facecls import images

    try:
        images.decode_image(Path(path))
        reason = "changed while listed"
    except ImageDecodeError as error:
        reason = error.reason
    return prediction_rows(PhotoPrediction(path, UNREADABLE, reason, 0, 0), "", labels)


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster unless this process already is; returns whether it connected here."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise FaceclsError(f"Cannot connect to the Ray cluster at {address or 'the default address'} ({error}). Check --address.") from None
    return True


def _run_pipeline(ray, groups, model_dir: Path, classifier: Classifier, recheck: dict, actors):
    """Yields each photo's rows (a list of dicts) as the actors finish it."""
    from ray.data import ActorPoolStrategy, DataContext

    from facecls.faces import task_size

    context = DataContext.get_current()
    context.enable_progress_bars = False  # facecls's own bar counts photos
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run notices would break facecls's bar
    datasets = []
    for group in groups:
        dataset = ray.data.read_binary_files(
            [source.uri[len(group.prefix) :] for source in group.sources],
            include_paths=True,
            filesystem=group.filesystem,
            ignore_missing_paths=True,
            num_cpus=0,
        )
        done = {source.uri: recheck[source.uri] for source in group.sources if source.uri in recheck}
        datasets.append(
            dataset.map_batches(_unfinished, fn_kwargs={"prefix": group.prefix, "done": done}, batch_format="pyarrow", num_cpus=0)
        )
    dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    if actors is None:
        actors = (1, max(1, int(ray.cluster_resources().get("CPU", 1))))
    dataset = dataset.map_batches(
        PhotoClassifier,
        fn_constructor_kwargs={
            "model_files": ray.put(model_dir_files(model_dir)),
            "unknown_threshold": classifier.unknown_threshold,
            "batch_size": classifier.batch_size,
        },
        compute=ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
        batch_size=task_size(classifier.info.detect_settings),
        batch_format="numpy",
        num_cpus=ACTOR_CPUS,
        memory=ACTOR_MEMORY_BYTES,
    )
    pending: dict[tuple[str, str], list[dict]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            key = (row["path"], row["sha256"])
            pending.setdefault(key, []).append(row)
            if len(pending[key]) == max(1, row["faces"] or 0):
                yield pending.pop(key)
