"""What ``facecls classify`` writes per photo: the prediction records, their rows, and the files that hold them.

One row per face (or one row saying ``no_face`` / ``unreadable``) goes to ``predictions.csv`` and
``predictions.jsonl``. ``PredictionWriter`` appends a photo's rows in one write to each file, so
a killed run leaves whole photos or a partial last line; ``repair_outputs`` drops that line and
any photo missing a row before a rerun goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from facecls.errors import FaceclsError
from facecls.manifest import atomic_write_bytes, csv_text
from facecls.outputs import NO_FACE, PREDICTIONS_CSV, PREDICTIONS_JSONL, UNKNOWN, UNREADABLE

PHOTO_STATUSES = ("ok", NO_FACE, UNREADABLE)
PROBABILITY_PREFIX = "p_"
BASE_COLUMNS = (
    "path", "face", "status", "label", "score", "x", "y", "w", "h",
    "reason", "best_match", "probability", "confidence", "faces", "sha256", "sorted_to",
)  # fmt: skip
SYNC_SECONDS = 1.0  # rows not asked to be durable reach the disk at least this often


@dataclass(frozen=True)
class FacePrediction:
    """One face of a photo: where it is and who it is."""

    face: int  # index among the photo's classified faces, largest first
    label: str  # a person of the model, or "unknown"
    score: float  # compared with the threshold: the open-set score of the label (of the nearest person when
    # unknown; facecls.openset), or the probability
    best_match: str  # the classifier's most probable person, even when label is "unknown" or another person
    probability: float  # softmax probability of best_match
    x: float  # box in pixels of the EXIF-oriented photo
    y: float
    width: float
    height: float
    confidence: float  # the face detector's
    probabilities: dict[str, float] = field(default_factory=dict)  # softmax probability of each person


@dataclass(frozen=True)
class PhotoPrediction:
    """Everything classify found in one photo."""

    path: str
    status: str  # ok | no_face | unreadable
    reason: str  # why no_face or unreadable ("" when ok)
    width: int
    height: int
    faces: tuple[FacePrediction, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # per phase: decode, detect, crop, classify

    @property
    def labels(self) -> tuple[str, ...]:
        """The distinct people recognised in the photo, in face order (no "unknown")."""
        return tuple(dict.fromkeys(face.label for face in self.faces if face.label != UNKNOWN))


def prediction_columns(labels: Sequence[str]) -> list[str]:
    """Columns of predictions.csv: the fixed ones, then one probability column per person."""
    return list(BASE_COLUMNS) + [PROBABILITY_PREFIX + label for label in labels]


def prediction_rows(
    photo: PhotoPrediction, sha256: str, labels: Sequence[str], sorted_to: Sequence[str] = ()
) -> list[dict]:
    """The rows of one photo: one per face, or one row saying no_face / unreadable.

    ``sorted_to`` lists where the photo was sorted, relative to the output folder.
    """
    empty_probabilities = {PROBABILITY_PREFIX + label: None for label in labels}
    sorted_cell = list(sorted_to) or None
    if not photo.faces:
        row = dict.fromkeys(BASE_COLUMNS)
        row.update(path=photo.path, status=photo.status, reason=photo.reason, faces=0, sha256=sha256,
                   sorted_to=sorted_cell)  # fmt: skip
        return [{**row, **empty_probabilities}]
    rows = []
    for face in photo.faces:
        row = {
            "path": photo.path,
            "face": face.face,
            "status": photo.status,
            "label": face.label,
            "score": face.score,
            "x": face.x,
            "y": face.y,
            "w": face.width,
            "h": face.height,
            "reason": "",
            "best_match": face.best_match,
            "probability": face.probability,
            "confidence": face.confidence,
            "faces": len(photo.faces),
            "sha256": sha256,
            "sorted_to": sorted_cell,
        }
        row.update({PROBABILITY_PREFIX + label: face.probabilities.get(label) for label in labels})
        rows.append(row)
    return rows


def _csv_bytes(rows: list[dict], columns: list[str], header: bool = False) -> bytes:
    return csv_text(rows, columns, header=header).encode("utf-8")


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def whole_lines(path: Path) -> bytes:
    """The file's content up to its last newline (a killed run may have left half a line)."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def repair_outputs(out_dir: Path, columns: list[str]) -> tuple[set[tuple[str, str]], list[dict]]:
    """Drop half-written lines and incomplete photos; returns (done keys, rows) of complete photos.

    A photo counts once all its rows are in predictions.csv (the commit point);
    predictions.jsonl is written just before it and trimmed to the same photos.
    """
    csv_path, jsonl_path = out_dir / PREDICTIONS_CSV, out_dir / PREDICTIONS_JSONL
    data = whole_lines(csv_path)
    header = _csv_bytes([], columns, header=True)
    if not data:
        rows: list[dict] = []
    else:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
        if reader.fieldnames != columns:
            raise FaceclsError(
                f"{csv_path} has the columns of another model ({', '.join(reader.fieldnames or [])}). "
                "Choose another --out folder, or delete it to start over."
            )
        rows = list(reader)
    by_key: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["path"], row["sha256"]), []).append(row)
    complete = {key: photo_rows for key, photo_rows in by_key.items() if len(photo_rows) == max(1, int(photo_rows[0]["faces"] or 0))}
    kept_rows = [row for key, photo_rows in complete.items() for row in photo_rows]
    if len(kept_rows) != len(rows) or data != (csv_path.read_bytes() if csv_path.exists() else b"") or not data:
        atomic_write_bytes(csv_path, header + (_csv_bytes(kept_rows, columns) if kept_rows else b""))
    seen: set[tuple[str, str, str]] = set()
    lines = []
    for line in whole_lines(jsonl_path).splitlines(keepends=True):
        try:
            record = json.loads(line)
            key = (record["path"], record["sha256"])
            face = str(record["face"])
        except (ValueError, KeyError, TypeError):
            continue
        if key in complete and (key + (face,)) not in seen:
            seen.add(key + (face,))
            lines.append(line)
    content = b"".join(lines)
    if not jsonl_path.exists() or jsonl_path.read_bytes() != content:
        atomic_write_bytes(jsonl_path, content)
    return set(complete), kept_rows


class PredictionWriter:
    """Appends a photo's rows to predictions.jsonl, then predictions.csv, each in one write."""

    def __init__(self, out_dir: Path, columns: list[str]):
        self.columns = columns
        self._jsonl = open(out_dir / PREDICTIONS_JSONL, "ab")
        self._csv = open(out_dir / PREDICTIONS_CSV, "ab")
        self._synced = time.monotonic()

    def append(self, rows: list[dict], durable: bool) -> None:
        for file, data in ((self._jsonl, _jsonl_bytes(rows)), (self._csv, _csv_bytes(rows, self.columns))):
            os.write(file.fileno(), data)  # one write per photo: a kill leaves whole photos or a partial last line
        if durable or time.monotonic() - self._synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        for file in (self._jsonl, self._csv):
            os.fsync(file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        self.sync()
        self._jsonl.close()
        self._csv.close()


class RowCounts:
    """Photos, faces, labels and statuses of prediction rows, as a ``ClassifyResult`` reports them."""

    def __init__(self):
        self.photos = 0
        self.faces = 0
        self.labels: Counter = Counter()
        self.statuses: Counter = Counter()

    def add_row(self, row: dict) -> None:
        face = row.get("face")
        if face in (None, "") or str(face) == "0":
            self.photos += 1
            self.statuses[row["status"]] += 1
        if row.get("label"):
            self.faces += 1
            self.labels[row["label"]] += 1

    def add_rows(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self.add_row(row)

    def result_fields(self) -> dict:
        """The ``ClassifyResult`` fields these counts give, for either engine."""
        return {
            "photos": self.photos,
            "faces": self.faces,
            "label_counts": dict(sorted(self.labels.items())),
            "unknown": self.labels.get(UNKNOWN, 0),
            "no_face": self.statuses.get(NO_FACE, 0),
            "unreadable": self.statuses.get(UNREADABLE, 0),
        }
