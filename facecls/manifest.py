"""Reading and writing manifests (CSV and JSON) atomically, and locking an output folder.

Every output file is written to a temporary name in the same folder and renamed into
place, so an interrupted run never leaves a truncated manifest behind.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from facecls.errors import FaceclsError

# Temporary files of atomic writes: .<name>.<random><suffix>, renamed into place when complete.
TEMPORARY_SUFFIX = ".facecls-partial"
# The file output_lock holds in an output folder.
LOCK_NAME = ".facecls.lock"


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _FILE_MODE)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _jsonable(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def to_json(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, to_json(value))


def read_json(path: Path, max_bytes: int | None = None) -> Any:
    """Parse a JSON file; ``max_bytes`` refuses larger files (of untrusted origin) before parsing.

    Raises:
        FaceclsError: missing, too large, not JSON, or nested too deeply to parse.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(-1 if max_bytes is None else max_bytes + 1)
    except FileNotFoundError:
        raise FaceclsError(f"{path}: file not found.") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise FaceclsError(f"{path}: larger than the {max_bytes} bytes allowed; facecls never writes one so large.")
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise FaceclsError(f"{path}: not valid JSON ({reason}). Delete it and rerun the stage that writes it.") from None


def _row(record: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    return dict(record)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return value


def csv_text(records: Iterable[Any], fieldnames: list[str], header: bool = True) -> str:
    """Records (dataclasses or dicts) as CSV text, every value read back exactly by ``read_csv``.

    The csv module quotes a field holding "\\n" (our line end) but not one holding a lone
    "\\r", which its reader then takes for a line end: rows with one are written fully quoted.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction="raise", lineterminator="\n")
    quoted = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction="raise", lineterminator="\n", quoting=csv.QUOTE_ALL)
    if header:
        writer.writeheader()
    for record in records:
        row = {key: _cell(value) for key, value in _row(record).items()}
        (quoted if any("\r" in str(value) for value in row.values()) else writer).writerow(row)
    return buffer.getvalue()


def write_csv(path: Path, records: Iterable[Any], fieldnames: list[str]) -> None:
    """Write records (dataclasses or dicts) as CSV, atomically."""
    atomic_write_text(path, csv_text(records, fieldnames))


def write_stage_outputs(out_dir: Path, manifest_name: str, records: list, record_type: type, summary_name: str,
                        summary: dict[str, Any]) -> Path:
    """A stage's manifest (one row per record, columns the record's fields), then its summary, both
    atomically; returns the manifest's path."""
    manifest_path = Path(out_dir) / manifest_name
    write_csv(manifest_path, records, field_names(record_type))
    write_json(Path(out_dir) / summary_name, summary)
    return manifest_path


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return list(csv.DictReader(file))
    except FileNotFoundError:
        raise FaceclsError(f"{path}: manifest not found. Run the stage that writes it first.") from None


def field_names(record_type: type) -> list[str]:
    return [field.name for field in dataclasses.fields(record_type)]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_held_locks: set[str] = set()


def _remove_partial_files(folder: Path) -> None:
    """Delete temporary files that a killed write left behind.

    Only hidden files ending in ``TEMPORARY_SUFFIX`` (no other program names its files so),
    without following symbolic links; ours alone, as the caller holds the folder's lock.
    """
    for root, folders, names in os.walk(folder, followlinks=False):
        for name in names:
            if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
                path = Path(root, name)
                with contextlib.suppress(OSError):
                    if path.is_file() and not path.is_symlink():
                        path.unlink()


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on an output folder for the duration of a stage.

    A second facecls process writing to the same folder fails at once with a clear
    message instead of interleaving its files with ours. Re-entrant within a process,
    so ``run`` can hold its run folder while the stages it calls lock it again.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FaceclsError(
            f"{folder}: cannot create this output folder ({error.strerror or error}). Choose a folder you can write to."
        ) from None
    lock_path = folder / LOCK_NAME
    key = str(lock_path.resolve())
    if key in _held_locks:
        yield
        return
    with open(lock_path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "unknown"
            raise FaceclsError(
                f"{folder} is in use by another facecls process (pid {owner}). "
                "Wait for it to finish or choose another output folder."
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        _remove_partial_files(folder)
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)
            fcntl.flock(lock_file, fcntl.LOCK_UN)
