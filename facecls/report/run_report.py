"""The run report: what each stage of a run folder did, from its manifests (``<run>/report.html``)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from facecls import modeldir
from facecls.errors import FaceclsError
from facecls.layout import CORRECTIONS_NAME, RunLayout
from facecls.manifest import read_csv
from facecls.report.charts import _line_chart
from facecls.report.html import (
    Thumb, _e, _file_uri, _gallery, _interval, _number, _plural, _table, _url, _value, _write_page,
)
from facecls.report.manifests import _read_optional_csv, _read_optional_json
from facecls.report.thumbnails import _photo_thumbnail, _Thumbnails

READABLE_DROPS = ("unreadable", "not_image", "too_small", "too_large")


def write_run_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report.html`` from the run folder's manifests; returns its path.

    Raises:
        FaceclsError: ``run_dir`` holds no ``ingest.csv`` (not a run folder).
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not layout.ingest_manifest.is_file():
        raise FaceclsError(f"{run_dir} is not a run folder: ingest.csv is missing. Pass the --out folder of facecls run.")
    run_summary = _read_optional_json(layout.run_summary) or {}
    ingest_summary = _read_optional_json(layout.ingest_summary) or {}
    scrape = Path(run_summary.get("scrape") or ingest_summary.get("scrape") or ".")
    # The run's own model/ first: run.json holds absolute paths, stale once a run folder is moved.
    model_dir = layout.model_dir
    if not (model_dir / modeldir.INFO_FILE).is_file() and run_summary.get("model_dir"):
        model_dir = Path(run_summary["model_dir"])
    ingest_rows = read_csv(layout.ingest_manifest)
    photos = _read_optional_csv(layout.photos_manifest)
    crops = _read_optional_csv(layout.crops_manifest)
    others = _read_optional_csv(layout.others_manifest) or []
    splits = _read_optional_csv(layout.splits_manifest)
    curate_summary = _read_optional_json(layout.curate_summary)
    metrics = _read_optional_json(layout.metrics)
    info = _read_optional_json(model_dir / modeldir.INFO_FILE)
    history = _read_optional_json(model_dir / modeldir.HISTORY_FILE)
    crop_warnings = (_read_optional_json(layout.crop_summary) or {}).get("warnings") or []

    thumbnails = _Thumbnails(run_dir)
    max_pixels = int(float((ingest_summary.get("settings") or {}).get("max_megapixels", 50)) * 1e6)

    def photo_thumb(relative: str, sha256: str) -> str:
        source = scrape / relative
        key = sha256[:16] or hashlib.sha256(relative.encode()).hexdigest()[:16]
        return thumbnails.request(f"photos/{key}.jpg", lambda: _photo_thumbnail(source, max_pixels))

    people = sorted({row["person"] for row in ingest_rows if row["person"]})
    split_of = {row["crop_path"]: row["split"] for row in splits or [] if row["flipped"] != "true"}
    person_of_crop = {row["crop_path"]: row["person"] for row in splits or []}
    kept = Counter(person_of_crop[crop_path] for crop_path in split_of) if splits is not None else None
    sections = [
        ("funnel", "Scrape funnel", _funnel_section(people, ingest_rows, photos, kept, scrape, photo_thumb)),
        ("faces", "Faces per person", _faces_section(run_dir, people, photos, crops, others, split_of, scrape, photo_thumb)),
        ("splits", "Split and balance", _splits_section(people, splits, curate_summary)),
        ("training", "Training", _training_section(history, info) + _open_set_text(run_summary.get("open_set"))),
        ("test", "Test results", _test_section(metrics)),
        ("mistakes", "Misclassified test faces", _mistakes_section(run_dir, metrics)),
        ("settings", "Settings and versions", _settings_section(
            _stage_settings(run_dir, run_summary, ingest_summary, curate_summary, info), run_summary, info, model_dir)),
    ]
    faces_kept = len(split_of) if splits is not None else (len(crops) if crops is not None else None)
    accuracy = ""
    if metrics:
        low, high = metrics["accuracy_95_interval"]
        accuracy = (f'<span data-summary="accuracy">test accuracy {metrics["accuracy"]:.3f} '
                    f"(95% CI {low:.3f}–{high:.3f}) on {metrics['count']} faces</span>")
    header = (
        f"<h1>facecls run report: {_e(run_dir.name)}</h1>"
        f"<p>scrape {_e(scrape)} &middot; run folder {_e(run_dir.resolve())}</p>"
        f'<p class="chips"><span>{len(people)} people</span><span data-summary="files">{len(ingest_rows)} files</span>'
        + (f'<span data-summary="faces">{faces_kept} faces kept</span>' if faces_kept is not None else "")
        + (f"<span>{accuracy}</span>" if accuracy else "")
        + (f'<span data-summary="stranger-rejection">{_rejection(run_summary["open_set"])}</span>'
           if run_summary.get("open_set") else "")
        + "</p>"
        + "".join(f'<p data-warning="crop">warning: {_e(warning)}</p>' for warning in crop_warnings)
    )
    return _write_page(run_dir, f"facecls run {run_dir.name}", header, sections, thumbnails)


def _funnel_section(people, ingest_rows, photos, kept_by_person: Counter | None, scrape: Path, photo_thumb) -> str:
    faces_by_photo = {row["path"]: int(row["crops"]) for row in photos or []}
    stages = ("files", "readable", "unique", "face", "kept")
    totals: Counter = Counter()
    rows = []
    drops = defaultdict(list)  # person -> [(stage, path, status, reason, sha256)]
    for person in people:
        mine = [row for row in ingest_rows if row["person"] == person]
        readable = [row for row in mine if row["status"] not in READABLE_DROPS]
        unique = [row for row in readable if row["status"] == "ok"]
        counts = {"files": len(mine), "readable": len(readable), "unique": len(unique)}
        for row in mine:
            if row["status"] != "ok":
                drops[person].append(("ingest", row["path"], row["status"], row["reason"], row["sha256"]))
        if photos is not None:
            counts["face"] = sum(1 for row in unique if faces_by_photo.get(row["path"], 0) > 0)
            for row in photos:
                if row["person"] == person and int(row["crops"]) == 0:
                    drops[person].append(("crop", row["path"], row["status"], row["reason"], row["sha256"]))
        if kept_by_person is not None:
            counts["kept"] = kept_by_person[person]
        totals.update(counts)
        cells = [f'<a href="#person-{_e(person)}">{_e(person)}</a>']
        for stage in stages:
            value = counts.get(stage)
            if value is None:
                cells.append('<span class="muted">not run</span>')
                continue
            share = 100 * value / max(counts["files"], 1)
            cells.append(f'<span data-person="{_e(person)}" data-stage="{stage}">{value}</span>'
                         f'<div class="bar" style="width:{share:.0f}%"></div>')
        rows.append(cells)
    rows.append(["<b>all people</b>"] + [f'<b data-stage-total="{stage}">{totals[stage]}</b>' if stage in totals
                                          else "" for stage in stages])
    outside = [row for row in ingest_rows if not row["person"]]
    table = _table(["person", "files", "readable photos", "unique photos", "photos with a face", "faces kept"], rows,
                   "funnel")
    explain = (
        '<p class="muted">readable: decodes as an image of a usable size (drops: unreadable, not_image, too_small, '
        "too_large). unique: not a copy of another photo (drops: duplicate, near_duplicate; the largest copy is kept). "
        "with a face: MTCNN found a face that passed the confidence, size and shape filters and agrees with the person's "
        "other photos (drops: no_face, low_confidence, wrong_person, excluded by you). "
        "kept: face crops in the train, val or test split.</p>"
    )
    if outside:
        explain += (f'<p data-outside="{len(outside)}">{len(outside)} files lie outside any person\'s folder and are '
                    f"ignored: {_e(', '.join(row['path'] for row in outside[:10]))}{' …' if len(outside) > 10 else ''}</p>")
    parts = [table, explain, "<h3>Every dropped file and why</h3>"]
    for person in people:
        listed = drops[person]
        if not listed:
            continue
        tiles = []
        for stage, relative, status, reason, sha256 in listed:
            decodable = status not in ("unreadable", "not_image", "too_large")
            tiles.append(Thumb(
                src=photo_thumb(relative, sha256) if decodable else "",
                caption=f"{status}: {reason}",
                title=f"{relative} ({stage} stage)",
                href=_file_uri(scrape / relative),
                flag="wide " + ("noface" if stage == "crop" else ""),
            ))
        by_status = Counter(status for _, _, status, _, _ in listed)
        label = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        parts.append(f'<details open data-drops="{_e(person)}" data-count="{len(listed)}"><summary>{_e(person)}: '
                     f"{len(listed)} dropped ({_e(label)})</summary>{_gallery(tiles, 'drops-' + person)}</details>")
    return "".join(parts)


def _faces_section(run_dir, people, photos, crops, others, split_of, scrape, photo_thumb) -> str:
    if crops is None or photos is None:
        return '<p class="muted">The crop stage has not run yet: `facecls crop` writes the faces shown here.</p>'
    crop_dir = RunLayout(run_dir).crop_dir
    faces_in_photo = {row["path"]: int(row["faces"]) for row in photos}
    photo_row = {row["path"]: row for row in photos}

    def overridden(row) -> bool:
        """The training face of a multi-face photo is not its largest (older photos.csv: never)."""
        photo = photo_row.get(row["source_path"], {})
        return bool(photo.get("largest_face")) and photo.get("chosen_face") != photo.get("largest_face")

    parts = [
        '<p class="key"><span style="border-color:#fb8500">photo with several faces: check the right one was taken</span>'
        '<span style="border-color:#bf3989">not the largest face: the one that agrees with the person\'s other photos</span>'
        '<span style="border-color:#9a6700">rejected: no face agrees with the person\'s other photos</span>'
        '<span style="border-color:#cf222e">photo that gave no face</span>'
        '<span style="border-color:transparent;border-bottom-color:#8c959f">train</span>'
        '<span style="border-color:transparent;border-bottom-color:#0969da">val</span>'
        '<span style="border-color:transparent;border-bottom-color:#8250df">test</span></p>'
        '<p class="muted">Least certain first: faces from photos with several faces, then by detector confidence. '
        "Hover a face for why it was chosen; click it to open its photo.</p>"
        f'<p data-corrections="how">To correct a choice, write <code>{_e(crop_dir / CORRECTIONS_NAME)}</code> with the '
        "header <code>path,face</code> and one line per photo: its path as shown here, then the face number to "
        "train on (shown on each face) or <code>none</code> to leave the photo out, e.g. "
        "<code>messi/a1b2.jpg,none</code>. The next <code>facecls run</code> with the same arguments honours it "
        "without detecting again.</p>"
    ]
    for person in people:
        mine = [row for row in crops if row["person"] == person]
        mine.sort(key=lambda row: (row["photo_status"] == "ok", not overridden(row), float(row["confidence"]), row["crop_path"]))
        tiles = [
            Thumb(
                src=_url(crop_dir / row["crop_path"], run_dir),
                caption=f"face {row['face_index']}" + (" · not the largest" if overridden(row) else ""),
                title=f"{row['source_path']} · confidence {float(row['confidence']):.3f} · "
                f"{faces_in_photo.get(row['source_path'], 1)} face(s) in the photo · {split_of.get(row['crop_path'], 'no split')}"
                + (f" · chosen by {photo_row[row['source_path']].get('chosen_by')}" if photo_row.get(row["source_path"], {}).get("chosen_by") else "")
                + (f" · {photo_row[row['source_path']]['reason']}" if photo_row.get(row["source_path"], {}).get("reason") else ""),
                href=_file_uri(scrape / row["source_path"]),
                flag=" ".join(filter(None, ["several" if row["photo_status"] != "ok" else "",
                                            "overridden" if overridden(row) else "",
                                            split_of.get(row["crop_path"], "")])),
            )
            for row in mine
        ]
        missing = [row for row in photos if row["person"] == person and int(row["crops"]) == 0]
        missing_tiles = [
            Thumb(src=photo_thumb(row["path"], row["sha256"]), caption=f"{row['status']}: {row['reason']}",
                  title=row["path"], href=_file_uri(scrape / row["path"]),
                  flag="wide noface" + (" otherperson" if row["status"] == "wrong_person" else ""))
            for row in missing
        ]
        strangers = [row for row in others if row["person"] == person]
        stranger_tiles = [
            Thumb(src=_url(crop_dir / row["crop_path"], run_dir), title=f"another face in {row['source_path']}",
                  href=_file_uri(scrape / row["source_path"]))
            for row in strangers
        ]
        several = sum(1 for row in mine if row["photo_status"] != "ok")
        not_largest = sum(1 for row in mine if overridden(row))
        rejected = sum(1 for row in missing if row["status"] == "wrong_person")
        parts.append(
            f'<h3 id="person-{_e(person)}" data-not-largest="{not_largest}" data-rejected="{rejected}">{_e(person)}: {len(mine)} faces'
            f"{f', {several} from photos with several faces' if several else ''}"
            f"{f', {not_largest} not the largest' if not_largest else ''}"
            f"{f', {rejected} rejected as another person' if rejected else ''}"
            f"{', ' + _plural(len(missing), 'photo') + ' without a face' if missing else ''}</h3>"
            + _gallery(tiles, "faces-" + person)
            + (f"<p>Photos that gave no face:</p>{_gallery(missing_tiles, 'noface-' + person)}" if missing else "")
            + (f'<details><summary>{_plural(len(strangers), "other face")} in the same photos (not trained on; they calibrate '
               f"unknown)</summary>{_gallery(stranger_tiles, 'others-' + person)}</details>" if strangers else "")
        )
    return "".join(parts)


def _splits_section(people, splits, curate_summary) -> str:
    if splits is None or curate_summary is None:
        return '<p class="muted">The curate stage has not run yet.</p>'
    counts = curate_summary["crops_per_person_and_split"]
    training = curate_summary.get("training_items_per_person", {})
    weight = {}
    for row in splits:
        if row["split"] == "train":
            weight.setdefault(row["person"], float(row["weight"]))
    person_of_crop = {row["crop_path"]: row["person"] for row in splits}
    dropped = Counter(person_of_crop.get(path, "") for path in curate_summary.get("dropped_by_undersampling", []))
    repeated: Counter = Counter()
    for path, extra in curate_summary.get("repeated_by_oversampling", {}).items():
        repeated[person_of_crop.get(path, "")] += extra
    rows = []
    for person in people:
        split_counts = counts.get(person, {})
        rows.append([_e(person)] + [f'<span data-person="{_e(person)}" data-split="{split}">{split_counts.get(split, 0)}</span>'
                                    for split in ("train", "val", "test")]
                    + [str(training.get(person, "")), f"{weight.get(person, 1.0):.3f}", str(dropped[person] or ""),
                       str(repeated[person] or "")])
    settings = curate_summary.get("settings", {})
    note = (f'<p class="muted">Split by duplicate group (a photo, its near-duplicates and flips share one split), '
            f"seed {_e(settings.get('seed'))}; balance policy <b>{_e(settings.get('balance'))}</b>; "
            f"flips {'added to train' if settings.get('flip') else 'off'}.</p>")
    return _table(["person", "train crops", "val crops", "test crops", "training items (flips, balance)",
                   "sample weight", "dropped by undersampling", "extra copies (oversampling)"], rows) + note


def _training_section(history, info) -> str:
    if not history or not info:
        return '<p class="muted">No model yet: `facecls train` writes the curves shown here.</p>'
    phases = [(name, history[name]) for name in ("head", "fine_tune") if history.get(name)]
    charts = []
    marks = []
    offset = 0
    for name, curves in phases[:-1]:
        offset += len(curves.get("loss", []))
        marks.append(offset + 1)
    for metric in ("loss", "accuracy"):
        train = [value for _, curves in phases for value in curves.get(metric, [])]
        val = [value for _, curves in phases for value in curves.get(f"val_{metric}", [])]
        series = [(f"train {metric}", train, "#0969da", False)]
        if val:
            series.append((f"val {metric}", val, "#cf222e", True))
        charts.append(_line_chart(metric, series, marks))
    metrics = info.get("metrics", {})
    epochs = ", ".join(f"{name.replace('_', '-')} {len(curves.get('loss', []))} epochs" for name, curves in phases)
    kept = metrics.get("fine_tune_kept")
    text = (f"<p>{_e(epochs)}; val accuracy {_number(metrics.get('val_accuracy'))} on {metrics.get('val_count', 0)} "
            f"faces{'' if kept is None or len(phases) < 2 else '; fine-tuning kept' if kept else '; fine-tuning did not lower the val loss, head-only weights kept'}. "
            '<span class="muted">The dotted line marks the start of fine-tuning.</span></p>')
    return text + f'<div class="wrap">{"".join(charts)}</div>'


def _rejection(open_set: dict) -> str:
    if open_set.get("stranger_rejection") is None:
        return "unknown: no other people's faces in the scrape to measure it on"
    rejected = round(open_set["stranger_rejection"] * open_set["stranger_count"])
    return f"unknown rejects {rejected} of {open_set['stranger_count']} other people's faces"


def _open_set_text(open_set) -> str:
    if not open_set:
        return ""
    return (f"<p><b>Unknown</b>: threshold {_number(open_set.get('unknown_threshold'))} keeps "
            f"{_number(open_set.get('known_recall'))} of the held-out faces of the model's people; "
            f"{_e(_rejection(open_set))} (faces cut from photos of several people, <a href=\"#faces\">shown with "
            "each person</a>).</p>")


def _test_section(metrics) -> str:
    if not metrics:
        return '<p class="muted">No evaluation yet (facecls run evaluates the test split).</p>'
    labels = metrics["labels"]
    matrix = metrics["confusion_matrix"]
    low, high = metrics["accuracy_95_interval"]
    parts = [f'<p>Accuracy <b>{metrics["accuracy"]:.3f}</b> (95% Wilson interval {low:.3f}–{high:.3f}): '
             f'{metrics["correct"]} of {metrics["count"]} test faces right.</p>']
    column_totals = [sum(row[column] for row in matrix) for column in range(len(labels))]
    header = ["true \\ predicted"] + [_e(label) for label in labels] + ["faces"]
    rows = []
    for index, (label, row) in enumerate(zip(labels, matrix)):
        total = sum(row)
        cells = [_e(label)]
        for column, value in enumerate(row):
            alpha = value / total if total else 0
            colour = "#fff" if alpha > 0.6 else "#1f2328"
            cells.append(f'<span data-true="{_e(label)}" data-predicted="{_e(labels[column])}">{value}</span>')
            cells[-1] = (f'<div style="background:rgba(9,105,218,{alpha:.2f});color:{colour};margin:-3px -8px;'
                         f'padding:3px 8px">{cells[-1]}</div>')
        cells.append(str(total))
        rows.append(cells)
    table = _table(header, rows, "confusion")
    parts.append("<h3>Confusion matrix</h3>" + table.replace("<td><div", '<td class="cell"><div'))
    per_person_rows = []
    for index, label in enumerate(labels):
        true_positive = matrix[index][index]
        support = sum(matrix[index])
        f1 = next((person["f1"] for person in metrics["per_person"] if person["person"] == label), None)
        per_person_rows.append([
            _e(label),
            _interval(true_positive, column_totals[index]),
            _interval(true_positive, support),
            _number(f1, 2),
            f'<span data-support="{_e(label)}">{support}</span>',
        ])
    parts.append("<h3>Per person</h3>" + _table(["person", "precision (95% CI)", "recall (95% CI)", "F1", "test faces"],
                                                per_person_rows)
                 + '<p class="muted">Intervals are Wilson score intervals: with a handful of test faces per person '
                   "they are wide, so small differences between people mean little.</p>")
    return "".join(parts)


def _mistakes_section(run_dir, metrics) -> str:
    if not metrics:
        return '<p class="muted">No evaluation yet.</p>'
    crop_dir = RunLayout(run_dir).crop_dir
    tiles = []
    for mistake in metrics["mistakes"]:
        image = crop_dir / mistake["identifier"]
        tiles.append(Thumb(
            src=_url(image, run_dir) if image.is_file() else "",
            caption=f"true {mistake['true_label']} ({mistake['true_score']:.2f}) → "
            f"{mistake['predicted_label']} ({mistake['predicted_score']:.2f})",
            title=mistake["identifier"],
            flag="wide",
        ))
    return ('<p class="muted">Most confident mistakes first; the numbers are the probabilities of the true and the '
            "predicted person.</p>" + _gallery(tiles, "mistakes", empty="No test face was misclassified."))


def _settings_section(settings: dict, run_summary, info, model_dir) -> str:
    parts = [_settings_table(settings)]
    if info:
        versions = info.get("versions", {})
        parts.append("<h3>Model</h3>" + _table(
            None,
            [["model dir", _e(model_dir)], ["labels (output order)", _e(", ".join(info["labels"]))],
             ["created", _e(info.get("created", ""))],
             ["unknown threshold", _number(info.get("unknown_threshold"))]]
            + [[_e(name), f'<span data-version="{_e(name)}">{_e(version)}</span>'] for name, version in versions.items()],
            "text",
        ))
    if run_summary.get("seconds") is not None:
        parts.append(f'<p class="muted">The run took {run_summary["seconds"]:.0f} s; rerunning the same command reuses '
                     "finished work.</p>")
    return "".join(parts)


def _stage_settings(run_dir: Path, run_summary, ingest_summary, curate_summary, info) -> dict:
    """Each stage's settings: from run.json, else from what each stage done so far recorded."""
    if run_summary.get("settings"):
        return run_summary["settings"]
    crop_summary = _read_optional_json(RunLayout(run_dir).crop_summary) or {}
    found = {
        "ingest": ingest_summary.get("settings"),
        "detect": crop_summary.get("detect_settings"),
        "crop": crop_summary.get("crop_settings"),
        "curate": (curate_summary or {}).get("settings"),
        "train": (info or {}).get("train_settings"),
    }
    return {stage: values for stage, values in found.items() if values}


def _settings_table(settings: dict) -> str:
    rows = []
    for stage, values in settings.items():
        for key, value in (values or {}).items():
            rows.append([_e(stage), _e(key), f'<span data-setting="{_e(stage)}.{_e(key)}">{_e(_value(value))}</span>'])
    return _table(["stage", "setting", "value"], rows, "text")
