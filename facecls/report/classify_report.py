"""The classify report: what ``facecls classify`` found in a folder of photos (``<out>/report.html``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from facecls.errors import FaceclsError
from facecls.manifest import read_csv
from facecls.outputs import NO_FACE, PREDICTIONS_CSV, SUMMARY_NAME, UNKNOWN, UNREADABLE
from facecls.report.charts import _histogram
from facecls.report.html import Thumb, _e, _file_uri, _gallery, _plural, _table, _write_page
from facecls.report.manifests import _read_optional_json
from facecls.report.thumbnails import FaceBox, _face_thumbnails, _photo_thumbnail, _Thumbnails


def write_classify_report(out_dir: Path) -> Path:
    """Write ``<out_dir>/report.html`` for a classify output folder; returns its path.

    Raises:
        FaceclsError: ``out_dir`` holds no predictions.csv.
    """
    out_dir = Path(out_dir)
    if not (out_dir / PREDICTIONS_CSV).is_file():
        raise FaceclsError(f"{out_dir} holds no {PREDICTIONS_CSV}. Pass the --out folder of facecls classify.")
    rows = read_csv(out_dir / PREDICTIONS_CSV)
    summary = _read_optional_json(out_dir / SUMMARY_NAME) or {}
    labels = list(summary.get("labels") or sorted({row["best_match"] for row in rows if row["best_match"]}))
    threshold = summary.get("unknown_threshold")
    faces = [row for row in rows if row["label"]]
    no_face = [row for row in rows if row["status"] == NO_FACE]
    unreadable = [row for row in rows if row["status"] == UNREADABLE]
    thumbnails = _Thumbnails(out_dir)

    def source(row) -> Path:
        """The photo, or its sorted copy when the original was moved away."""
        original = Path(row["path"])
        if original.exists():
            return original
        for folder in [row["label"] or NO_FACE, UNKNOWN, NO_FACE, *labels]:
            copy = out_dir / folder / original.name
            if copy.is_file():
                return copy
        return original

    face_urls: dict[tuple[str, str], str] = {}
    by_photo: dict[str, list[dict]] = defaultdict(list)
    for row in faces:
        by_photo[row["path"]].append(row)
    for path, photo_rows in by_photo.items():
        photo_rows.sort(key=lambda row: int(row["face"]))
        names = [f"faces/{row['sha256'][:2]}/{row['sha256'][:16]}-{row['face']}.jpg" for row in photo_rows]
        boxes = [FaceBox(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"])) for row in photo_rows]
        urls = thumbnails.request_group(
            names, lambda photo=source(photo_rows[0]), boxes=boxes: _face_thumbnails(photo, boxes)
        )
        for row, url in zip(photo_rows, urls):
            face_urls[(path, row["face"])] = url

    def face_tile(row, caption: str) -> Thumb:
        return Thumb(
            src=face_urls[(row["path"], row["face"])],
            caption=caption,
            title=f"{row['path']} · face {int(row['face']) + 1} of {row['faces']} · score {float(row['score']):.3f} · "
            f"best match {row['best_match']} (p {float(row['probability']):.2f})",
            href=_file_uri(source(row)),
            flag="unknown" if row["label"] == UNKNOWN else "",
        )

    galleries = []
    for label in labels + [UNKNOWN]:
        mine = sorted((row for row in faces if row["label"] == label), key=lambda row: float(row["score"]))
        caption = (lambda row: f"{row['best_match']}? {float(row['score']):.2f}") if label == UNKNOWN else \
            (lambda row: f"{float(row['score']):.2f}")
        tiles = [face_tile(row, caption(row)) for row in mine]
        photos_count = len({row["path"] for row in mine})
        galleries.append(
            f'<h3 id="label-{_e(label)}">{_e(label)}: {len(mine)} faces in {photos_count} photos</h3>'
            + _gallery(tiles, "label-" + label,
                       empty="no face was called unknown" if label == UNKNOWN else f"no face was named {label}")
        )
    no_face_tiles = [
        Thumb(src=thumbnails.request(f"photos/{row['sha256'][:16]}.jpg", lambda row=row: _photo_thumbnail(source(row))),
              caption=row["reason"], title=row["path"], href=_file_uri(source(row)), flag="wide noface")
        for row in no_face
    ]
    unreadable_rows = [[_e(row["path"]), _e(row["reason"])] for row in unreadable]
    sections = [
        ("summary", "Summary", _classify_summary(summary, labels, faces, no_face, unreadable, rows)),
        ("scores", "Score distributions", _score_section(labels, faces, summary, threshold)),
        ("faces", "Faces by label", '<p class="muted">Least certain first (lowest score). Click a face to open its '
                                    "photo.</p>" + "".join(galleries)),
        ("no-face", "Photos without a face", _gallery(no_face_tiles, "no_face", empty="none")),
        ("unreadable", "Unreadable files",
         (_table(["file", "reason"], unreadable_rows, "unreadable text") if unreadable_rows else '<p class="muted">none</p>')),
    ]
    header = (
        f"<h1>facecls classify report: {_e(out_dir.name)}</h1>"
        f"<p>model {_e(summary.get('model_dir', ''))} &middot; output {_e(out_dir.resolve())}</p>"
        f'<p class="chips"><span data-summary="photos">{len({row["path"] for row in rows})} photos</span>'
        f'<span data-summary="faces">{len(faces)} faces</span><span>{len(no_face)} without a face</span>'
        f"<span>{len(unreadable)} unreadable</span></p>"
    )
    return _write_page(out_dir, f"facecls classify {out_dir.name}", header, sections, thumbnails)


def _classify_summary(summary, labels, faces, no_face, unreadable, rows) -> str:
    counts = Counter(row["label"] for row in faces)
    photos = defaultdict(set)
    for row in faces:
        photos[row["label"]].add(row["path"])
    table_rows = [[f'<a href="#label-{_e(label)}">{_e(label)}</a>', f'<span data-label-count="{_e(label)}">{counts[label]}</span>',
                   str(len(photos[label]))] for label in labels + ["unknown"]]
    table_rows.append(["no_face (photos)", f'<span data-label-count="no_face">{len(no_face)}</span>', str(len(no_face))])
    table_rows.append(["unreadable (files)", f'<span data-label-count="unreadable">{len(unreadable)}</span>',
                       str(len(unreadable))])
    threshold = summary.get("unknown_threshold")
    score = summary.get("score", "probability")
    explain = (
        f"<p>Score: <b>{_e(score)}</b>"
        + (" (softmax probability of the predicted person)" if score == "probability"
           else " (how typical the face is of the predicted person, by its identity descriptor: the share of"
                " held-out faces of known people lying farther from their own person)")
        + (f"; faces scoring under <b>{threshold:.3f}</b> are <i>unknown</i>." if threshold is not None
           else "; no threshold: no face is called unknown.")
        + (f" Photos were sorted into the label folders ({_e(summary.get('sort'))})." if summary.get("sort") not in (None, "none") else "")
        + "</p>"
    )
    if summary.get("seconds") is not None and not summary.get("classified") and summary.get("skipped"):
        explain += f'<p class="muted">Last run: all {summary["skipped"]} photos were already classified.</p>'
    elif summary.get("seconds") is not None:
        explain += (f'<p class="muted">Last run: {summary.get("classified", 0)} photos classified, '
                    f"{summary.get('skipped', 0)} already done, {summary.get('photos_per_second', 0)} photos/s.</p>")
    return _table(["label", "faces", "photos"], table_rows, "summary") + explain


def _score_section(labels, faces, summary, threshold) -> str:
    """One chart per label of predictions.csv: its faces' scores, the legend counting its rows."""
    if not faces:
        return '<p class="muted">No faces found.</p>'
    scores = [float(row["score"]) for row in faces]
    low = min([0.0, *scores] + ([threshold] if threshold is not None else []))
    low = -1.0 if low < 0 else 0.0
    charts, notes = [], []
    for label in labels:
        named = [row for row in faces if row["label"] == label]
        if not named:
            continue
        first = [float(row["score"]) for row in named if row["best_match"] == label]
        other = [float(row["score"]) for row in named if row["best_match"] != label]
        groups = [(label, first, "#0969da")] + ([("MobileNetV2 preferred another", other, "#bf8700")] if other else [])
        charts.append(_histogram(f"named {label}: {len(named)}", groups, low, 1.0, threshold))
    unknown = [float(row["score"]) for row in faces if row["label"] == UNKNOWN]
    if unknown:
        charts.append(_histogram(f"unknown: {len(unknown)}", [(UNKNOWN, unknown, "#8c959f")], low, 1.0, threshold))
        if threshold is not None:
            notes.append(f"{'All' if len(unknown) == len(faces) else 'The'} {_plural(len(unknown), 'face')} called unknown "
                         f"scored under the threshold {threshold:.3f} against every person the model knows: "
                         + (f"all {min(unknown):.3f}" if min(unknown) == max(unknown)
                            else f"from {min(unknown):.3f} to {max(unknown):.3f}")
                         + (" (0: farther from that person than all of their held-out faces)." if min(unknown) == 0 else "."))
    return ('<p class="muted">One chart per label: the score of each face named that person (blue; amber where '
            "MobileNetV2's own first choice was another person) and of each face called unknown (grey, scored "
            "against its nearest person); the red dashed line is the unknown threshold.</p>"
            f'<div class="wrap">{"".join(charts)}</div>'
            + "".join(f'<p data-note="unknown">{_e(note)}</p>' for note in notes))
