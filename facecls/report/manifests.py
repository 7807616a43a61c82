"""A folder's manifests as the report reads them: one a stage has not written yet reads as None."""

from __future__ import annotations

from pathlib import Path

from facecls.manifest import read_csv, read_json


def _read_optional_csv(path: Path) -> list[dict[str, str]] | None:
    return read_csv(path) if path.is_file() else None


def _read_optional_json(path: Path):
    return read_json(path) if path.is_file() else None
