"""HTML reports: what a run did (``<run>/report.html``) and what classify found (``<out>/report.html``).

A report is one HTML file that opens from disk in any browser, with no network: images are
relative links to files beside it (the run's own crops, or small JPEG thumbnails of photos
written to ``report_files/``), charts are inline SVG, and the only script is a small inline
pager that shows each gallery a page of thumbnails at a time (without JavaScript every page
shows). Everything on the page is read from the folder's manifests, so ``facecls report`` can
rebuild it at any time, also for a run folder that is only partly done (after ``facecls crop``,
say, to review the faces before training).

The package, one job a file: ``html`` (escaping, tables, galleries, the page shell), ``charts``
(inline SVG), ``thumbnails`` (the JPEGs in ``report_files/``), ``run_report`` and
``classify_report`` (the two pages' sections), and here ``write_report``, which picks the page.
"""

from __future__ import annotations

from pathlib import Path

from facecls.errors import FaceclsError
from facecls.layout import RunLayout
from facecls.outputs import PREDICTIONS_CSV
from facecls.report.classify_report import write_classify_report
from facecls.report.html import PAGE_SIZE, REPORT_NAME
from facecls.report.run_report import write_run_report
from facecls.report.thumbnails import FACE_THUMB_MARGIN, FACE_THUMB_SIDE, FILES_FOLDER, PHOTO_THUMB_SIDE

__all__ = [
    "FACE_THUMB_MARGIN", "FACE_THUMB_SIDE", "FILES_FOLDER", "PAGE_SIZE", "PHOTO_THUMB_SIDE", "REPORT_NAME",
    "write_classify_report", "write_report", "write_run_report",
]  # fmt: skip


def write_report(folder: Path) -> Path:
    """(Re)build the report of a run folder or a classify output folder.

    Raises:
        FaceclsError: the folder is neither.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FaceclsError(f"{folder} is not a folder. Pass a run folder (facecls run --out) or a classify output folder.")
    if RunLayout(folder).ingest_manifest.is_file():
        return write_run_report(folder)
    if (folder / PREDICTIONS_CSV).is_file():
        return write_classify_report(folder)
    raise FaceclsError(
        f"{folder} is neither a run folder (ingest.csv) nor a classify output folder ({PREDICTIONS_CSV}). "
        "Pass the --out folder of facecls run or facecls classify."
    )
