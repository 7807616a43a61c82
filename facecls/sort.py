"""``facecls classify --sort``: photos placed into ``<out>/<label>/`` without ever overwriting, with a journal.

A photo is placed (copied, linked or moved) only after its destinations are in the journal, and a
moved source is removed only once its predictions are committed and its sorted copies exist; an
interrupted run's rerun (``Sorter.recover``) finishes or rolls back each photo by content, so
every photo exists exactly once afterwards. ``FACECLS_KILL_AT`` SIGKILLs the process at a named
step (``SORT_STEPS``), for the fault-injection tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

from facecls.errors import FaceclsError
from facecls.manifest import atomic_write_bytes, sha256_file
from facecls.paths import fit_file_name, path_under
from facecls.predictions import whole_lines

logger = logging.getLogger(__name__)

SORT_MODES = ("copy", "link", "move", "none")
JOURNAL_NAME = ".facecls-sort-journal.jsonl"
PARTIAL_PREFIX = ".facecls-partial-"
# Testing hook: "step" or "step:N" SIGKILLs this process the N-th time sorting reaches that step.
KILL_AT_VARIABLE = "FACECLS_KILL_AT"
SORT_STEPS = ("intent", "write", "fsync", "link", "placed", "commit", "unlink", "done")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_kill_counts: Counter = Counter()


def _kill_point(step: str) -> None:
    """SIGKILL this process at a sorting step when ``FACECLS_KILL_AT`` asks for it (fault-injection tests)."""
    wanted = os.environ.get(KILL_AT_VARIABLE)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name == step:
        _kill_counts[step] += 1
        if _kill_counts[step] == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class Sorter:
    """Places photos into ``<out>/<label>/`` without ever overwriting, with a journal.

    For each photo: the journal records the destinations, the files are placed (copy: a temp
    file, fsynced, linked to a free name; link: a hard link, or a symbolic link across file
    systems), the predictions are committed, then for ``move`` the source is removed if it
    still holds the photo, and the journal records that the photo is done. ``recover``
    finishes or rolls back an interrupted photo, checking content before removing anything.
    """

    def __init__(self, out_dir: Path, mode: str):
        self.out_dir = out_dir
        self.mode = mode
        self.journal_path = out_dir / JOURNAL_NAME
        self._journal = None
        self.placed = 0
        self.kept: list[str] = []  # why sources were left in place

    def _log(self, entry: dict, durable: bool) -> None:
        if self._journal is None:
            self._journal = open(self.journal_path, "ab")
        os.write(self._journal.fileno(), (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        if durable:
            os.fsync(self._journal.fileno())

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _free_name(self, folder: Path, name: str, taken: set[Path]) -> Path:
        stem, suffix = os.path.splitext(name)
        if stem == "" or name.startswith("."):
            stem, suffix = name, ""
        candidate, number = folder / name, 0
        while candidate.exists() or candidate.is_symlink() or candidate in taken:
            number += 1
            candidate = folder / fit_file_name(stem, f"-{number}{suffix}")
        return candidate

    def check_folders(self, folders: Sequence[str]) -> None:
        """Fail before any work if something other than a folder sits where a label folder goes."""
        for folder in folders:
            folder_path = path_under(self.out_dir, folder)
            if os.path.lexists(folder_path) and not folder_path.is_dir():
                raise FaceclsError(
                    f"{folder_path} is a file, where classify sorts photos into a folder of that name. "
                    "Move it away or choose another --out, and rerun the same command."
                )

    def plan(self, source: str, sha256: str, folders: Sequence[str]) -> list[Path]:
        """Free destination names, one per folder, recorded in the journal before anything is placed."""
        taken: set[Path] = set()
        destinations = []
        for folder in folders:
            destination = self._free_name(path_under(self.out_dir, folder), Path(source).name, taken)
            taken.add(destination)
            destinations.append(destination)
        self._log(
            {"op": "intent", "source": source, "sha256": sha256, "mode": self.mode,
             "destinations": [str(path.relative_to(self.out_dir)) for path in destinations]},
            durable=self.mode == "move",
        )  # fmt: skip
        _kill_point("intent")
        return destinations

    def place(self, source: str, destinations: list[Path]) -> list[Path]:
        """Put the photo at each destination (or the next free name if one was taken meanwhile)."""
        placed = []
        for destination in destinations:
            destination.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    self._place_one(Path(source), destination)
                    break
                except FileExistsError:
                    destination = self._free_name(destination.parent, Path(source).name, set(placed))
                    self._log({"op": "renamed", "source": source, "destination": str(destination.relative_to(self.out_dir))}, True)
            placed.append(destination)
            self.placed += 1
        if self.mode == "move":
            for folder in {path.parent for path in placed}:
                _fsync_folder(folder)
        _kill_point("placed")
        return placed

    def _place_one(self, source: Path, destination: Path) -> None:
        if self.mode == "link":
            try:
                os.link(source, destination)
            except FileExistsError:
                raise
            except OSError:  # another file system, or links not supported: a symbolic link
                os.symlink(os.path.abspath(source), destination)
            return
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(handle, "wb") as target, open(source, "rb") as origin:
                shutil.copyfileobj(origin, target, 1 << 20)
                target.flush()
                _kill_point("write")
                if self.mode == "move":
                    os.fsync(target.fileno())
                    _kill_point("fsync")
            shutil.copystat(source, temporary)
            try:
                os.link(temporary, destination)  # fails if the name exists: never overwrites
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system
                if destination.exists():
                    raise FileExistsError(destination) from None
                os.rename(temporary, destination)
            _kill_point("link")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def committed(self) -> None:
        _kill_point("commit")

    def _remove_source(self, source: str, sha256: str) -> None:
        """Unlink a moved photo's source, unless it no longer holds the photo (then keep it and say so)."""
        try:
            current = sha256_file(Path(source))
        except FileNotFoundError:
            return  # already gone
        except OSError as error:
            current = f"unreadable ({error.strerror or error})"
        if current != sha256:
            reason = (
                f"{source}: kept, its content changed after it was classified (its sorted copy holds the photo "
                "that was classified; rerun to classify the new content)"
            )
            logger.warning("%s", reason)
            self.kept.append(reason)
            return
        os.unlink(source)
        _fsync_folder(Path(source).parent)
        _kill_point("unlink")

    def finish(self, source: str, sha256: str, placed: list[Path]) -> None:
        """After the predictions are committed: remove a moved source, mark the photo done."""
        if self.mode == "move":
            if not all(path.exists() for path in placed):
                raise FaceclsError(f"{source}: a sorted copy vanished before the move finished; the source is kept.")
            self._remove_source(source, sha256)
        self._log({"op": "done", "source": source, "sha256": sha256}, durable=False)
        _kill_point("done")

    def recover(self, committed: set[tuple[str, str]]) -> None:
        """Finish or roll back photos an interrupted run left half sorted; then start a new journal.

        Nothing is removed without checking its content: a sorted copy only if it holds the photo
        and the source still does too, a source only if it still holds the photo that was sorted.
        """
        for partial in self.out_dir.glob(f"*/{PARTIAL_PREFIX}*"):
            partial.unlink()
        pending: dict[tuple[str, str], dict] = {}
        for line in whole_lines(self.journal_path).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("op") == "intent":
                pending[(entry["source"], entry["sha256"])] = {**entry, "destinations": list(entry["destinations"])}
            elif entry.get("op") == "renamed":
                for key, intent in pending.items():
                    if key[0] == entry["source"]:
                        intent["destinations"].append(entry["destination"])
            elif entry.get("op") == "done":
                pending.pop((entry["source"], entry["sha256"]), None)
        for (source, sha256), intent in pending.items():
            destinations = [path_under(self.out_dir, name) for name in intent["destinations"]]
            ours = [path for path in destinations if _holds(path, source, sha256)]
            source_holds = _has_content(Path(source), sha256)
            if (source, sha256) in committed:
                # Predictions are in: make sure the photo sits in every folder, then finish a move.
                folders = {path.parent for path in ours}
                missing = [path for path in destinations[: len(set(intent["destinations"]))] if path.parent not in folders]
                if missing and source_holds:
                    saved_mode, self.mode = self.mode, intent["mode"]
                    self.place(source, missing)
                    self.mode = saved_mode
                    ours += missing
                if intent["mode"] == "move" and os.path.lexists(source) and ours and all(path.exists() for path in ours):
                    logger.info("Finishing the interrupted move of %s", source)
                    self._remove_source(source, sha256)
            else:
                # Not committed: the photo is classified again from its source, so remove what was
                # placed for it, unless the source no longer holds it: then the copy is the only one.
                for path in ours:
                    if source_holds or intent["mode"] != "move":
                        path.unlink()
                    else:
                        reason = (
                            f"{path}: kept, the only copy of {source} (it changed or vanished while being sorted); "
                            "it has no prediction row"
                        )
                        logger.warning("%s", reason)
                        self.kept.append(reason)
        self.close()
        if self.journal_path.exists():
            atomic_write_bytes(self.journal_path, b"")


def _has_content(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and sha256_file(path) == sha256
    except OSError:
        return False


def _holds(path: Path, source: str, sha256: str) -> bool:
    """Whether ``path`` is a copy or link of the photo (by content), so it is ours to remove."""
    if path.is_symlink():
        return os.readlink(path) == os.path.abspath(source)
    return _has_content(path, sha256)
