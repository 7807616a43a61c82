"""report.html of a run and of a classify output, opened from disk in headless Chromium.

Each page must load with no console error and no request other than file:// (or the data:
favicon), every image must decode, a screenshot goes to tests/artifacts/, and what the page
says is checked against the folder's own manifests.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from report_fixtures import CHROMIUM, classify_inputs, launch_chromium, open_report
from facecls.cli import main
from facecls.report import PAGE_SIZE



def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def browser(data_dir):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium) to test the reports")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) drives Chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def run_page(browser, small_run):
    return small_run, open_report(browser, small_run / "report.html", "run-report.png")


@pytest.fixture(scope="module")
def classify_page(browser, small_classify):
    return small_classify, open_report(browser, small_classify / "report.html", "classify-report.png")


def assert_clean(loaded):
    assert loaded.console_errors == []
    assert loaded.failed_requests == []
    assert loaded.requests and all(url.startswith(("file://", "data:")) for url in loaded.requests), loaded.requests
    assert loaded.broken_images == []
    sources = loaded.page.evaluate("Array.from(document.images).map(image => image.src)")
    assert len(sources) > 5
    assert set(sources) <= set(loaded.requests)  # every image came from disk, through a request seen here
    from PIL import Image

    with Image.open(loaded.screenshot) as screenshot:
        assert screenshot.width == 1280 and screenshot.height > 900


def texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "elements => elements.map(element => element.textContent)")


def attribute_map(page, selector: str, key: str) -> dict[str, str]:
    return page.eval_on_selector_all(
        selector, f"elements => Object.fromEntries(elements.map(e => [e.getAttribute('{key}'), e.textContent]))"
    )


# ---------------------------------------------------------------- the run report


def test_run_report_opens_from_disk_clean_and_every_image_resolves(run_page):
    _, loaded = run_page
    assert_clean(loaded)


def test_run_funnel_counts_are_the_manifests_counts(run_page):
    run_dir, loaded = run_page
    ingest = rows(run_dir / "ingest.csv")
    photos = rows(run_dir / "crop" / "photos.csv")
    splits = rows(run_dir / "curate" / "splits.csv")
    shown = loaded.page.eval_on_selector_all(
        "[data-stage][data-person]",
        "cells => cells.map(cell => [cell.dataset.person, cell.dataset.stage, Number(cell.textContent)])",
    )
    shown = {(person, stage): value for person, stage, value in shown}
    people = sorted({row["person"] for row in ingest if row["person"]})
    assert people == ["brad_pitt", "messi", "sydney_sweeney"]
    for person in people:
        mine = [row for row in ingest if row["person"] == person]
        assert len(mine) == 11 + (person == "messi")
        readable = [row for row in mine if row["status"] not in ("unreadable", "not_image", "too_small", "too_large")]
        unique = [row for row in mine if row["status"] == "ok"]
        with_face = [row for row in photos if row["person"] == person and int(row["crops"]) > 0]
        kept = {row["crop_path"] for row in splits if row["person"] == person and row["flipped"] == "false"}
        assert shown[(person, "files")] == len(mine)
        assert shown[(person, "readable")] == len(readable)
        assert shown[(person, "unique")] == len(unique)
        assert shown[(person, "face")] == len(with_face)
        assert shown[(person, "kept")] == len(kept)
    # each kind of drop really happened, so the funnel narrows where it should
    assert shown[("messi", "readable")] == 11  # the text file named .jpg
    assert shown[("sydney_sweeney", "readable")] == 10  # the truncated JPEG
    assert shown[("brad_pitt", "unique")] == 10  # the byte-identical copy
    assert shown[("messi", "face")] < shown[("messi", "unique")]  # a photo without a face
    totals = attribute_map(loaded.page, "[data-stage-total]", "data-stage-total")
    assert int(totals["files"]) == sum(1 for row in ingest if row["person"])


def test_every_dropped_file_is_listed_with_its_reason(run_page):
    run_dir, loaded = run_page
    ingest = rows(run_dir / "ingest.csv")
    photos = rows(run_dir / "crop" / "photos.csv")
    for person in ("brad_pitt", "messi", "sydney_sweeney"):
        dropped = [row for row in ingest if row["person"] == person and row["status"] != "ok"]
        dropped += [row for row in photos if row["person"] == person and int(row["crops"]) == 0]
        block = loaded.page.locator(f'details[data-drops="{person}"]')
        assert int(block.get_attribute("data-count")) == len(dropped)
        captions = texts(loaded.page, f'details[data-drops="{person}"] figcaption')
        assert sorted(captions) == sorted(f"{row['status']}: {row['reason']}" for row in dropped)
    captions = " ".join(texts(loaded.page, "details[data-drops] figcaption"))
    assert "duplicate: same bytes as brad_pitt/" in captions
    assert "not_image: " in captions and "unreadable: " in captions and "no_face: " in captions


def test_faces_gallery_flags_faces_that_are_not_the_largest_and_photos_of_another_person(run_page):
    run_dir, loaded = run_page
    photos = rows(run_dir / "crop" / "photos.csv")
    page = loaded.page
    for person in ("brad_pitt", "messi", "sydney_sweeney"):
        mine = [row for row in photos if row["person"] == person]
        not_largest = [row for row in mine if row["chosen_face"] and row["chosen_face"] != row["largest_face"]]
        rejected = [row for row in mine if row["status"] == "wrong_person"]
        heading = page.locator(f"h3#person-{person}")
        assert int(heading.get_attribute("data-not-largest")) == len(not_largest)
        assert int(heading.get_attribute("data-rejected")) == len(rejected)
        assert page.locator(f'[data-gallery="faces-{person}"] figure.overridden').count() == len(not_largest)
        assert page.locator(f'[data-gallery="noface-{person}"] figure.otherperson').count() == len(rejected)
    # Donald Trump is the larger face of the sydney_sweeney collage: hers was chosen, and says so
    collage = next(row for row in photos if row["path"] == "sydney_sweeney/0fe487627f0d6d1c.jpg")
    assert collage["chosen_by"] == "consensus" and collage["chosen_face"] != collage["largest_face"]
    assert "not the largest" in " ".join(texts(page, '[data-gallery="faces-sydney_sweeney"] figcaption'))
    how = page.locator('[data-corrections="how"]').inner_text()
    assert str(run_dir / "crop" / "corrections.csv") in how and "path,face" in how and "none" in how


def test_faces_gallery_shows_every_crop_and_flags_photos_with_several_or_no_faces(run_page):
    run_dir, loaded = run_page
    crops = rows(run_dir / "crop" / "crops.csv")
    photos = rows(run_dir / "crop" / "photos.csv")
    page = loaded.page
    for person in ("brad_pitt", "messi", "sydney_sweeney"):
        mine = [row for row in crops if row["person"] == person]
        gallery = f'[data-gallery="faces-{person}"]'
        assert int(page.locator(gallery).get_attribute("data-count")) == len(mine)
        sources = page.eval_on_selector_all(f"{gallery} img", "images => images.map(image => image.getAttribute('src'))")
        assert sorted(sources) == sorted(f"crop/{row['crop_path']}" for row in mine)
        several = sum(1 for row in mine if row["photo_status"] == "multiple_faces")
        assert page.locator(f"{gallery} figure.several").count() == several
        without = [row for row in photos if row["person"] == person and int(row["crops"]) == 0]
        assert page.locator(f'[data-gallery="noface-{person}"] figure.noface').count() == len(without)
    assert page.locator('[data-gallery^="faces-"] figure.several').count() >= 2
    assert page.locator('[data-gallery^="noface-"] figure').count() >= 1


def test_splits_training_test_results_and_settings_match_the_run(run_page):
    run_dir, loaded = run_page
    page = loaded.page
    curate = json.loads((run_dir / "curate" / "curate.json").read_text())
    shown = page.eval_on_selector_all(
        "[data-split]", "cells => cells.map(cell => [cell.dataset.person, cell.dataset.split, Number(cell.textContent)])"
    )
    assert {(person, split): value for person, split, value in shown} == {
        (person, split): count for person, splits in curate["crops_per_person_and_split"].items()
        for split, count in splits.items()
    }

    history = json.loads((run_dir / "model" / "history.json").read_text())
    points = page.eval_on_selector_all(
        "svg.chart polyline", "lines => lines.map(line => line.getAttribute('points').trim().split(' ').length)"
    )
    assert points == [len(history["head"]["loss"])] * 4  # train and val, loss and accuracy

    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    cells = page.eval_on_selector_all(
        "[data-true]", "cells => cells.map(cell => [cell.dataset.true, cell.dataset.predicted, Number(cell.textContent)])"
    )
    labels = metrics["labels"]
    assert {(true, predicted): value for true, predicted, value in cells} == {
        (labels[row], labels[column]): metrics["confusion_matrix"][row][column]
        for row in range(len(labels)) for column in range(len(labels))
    }
    assert f"{metrics['accuracy']:.3f}" in page.locator('[data-summary="accuracy"]').text_content()
    mistakes = texts(page, '[data-gallery="mistakes"] figcaption')
    assert len(mistakes) == len(metrics["mistakes"])
    for caption, mistake in zip(mistakes, metrics["mistakes"]):
        assert caption.startswith(f"true {mistake['true_label']} ") and f"→ {mistake['predicted_label']} " in caption

    settings = attribute_map(page, "[data-setting]", "data-setting")
    assert settings["crop.image_size"] == "96" and settings["train.head_epochs"] == "8"
    assert settings["train.fine_tune_epochs"] == "0" and settings["curate.flip"] == "true"
    info = json.loads((run_dir / "model" / "facecls.json").read_text())
    assert attribute_map(page, "[data-version]", "data-version") == info["versions"]


def test_facecls_report_rebuilds_the_same_page(small_run, tmp_path, capsys):
    run_dir = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    original = (copy / "report.html").read_text()
    shutil.rmtree(copy / "report_files")
    (copy / "report.html").unlink()
    assert main(["report", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"command": "report", "report": str(copy / "report.html")}
    rebuilt = (copy / "report.html").read_text()
    assert rebuilt.replace(str(copy.resolve()), "RUN") == original.replace(str(run_dir.resolve()), "RUN")
    assert sorted(path.name for path in (copy / "report_files").rglob("*.jpg")) == sorted(
        path.name for path in (run_dir / "report_files").rglob("*.jpg")
    )


def test_run_report_says_how_many_of_the_other_peoples_faces_unknown_rejects(run_page):
    run_dir, loaded = run_page
    open_set = json.loads((run_dir / "run.json").read_text())["open_set"]
    others = len(rows(run_dir / "crop" / "others.csv"))
    assert open_set["stranger_count"] == others > 0
    rejected = round(open_set["stranger_rejection"] * others)
    chip = loaded.page.locator('[data-summary="stranger-rejection"]').text_content()
    assert chip == f"unknown rejects {rejected} of {others} other people's faces"
    assert f"unknown rejects {rejected} of {others} other people's faces" in loaded.page.locator("#training").text_content()


def test_training_curves_of_hundreds_of_epochs_have_few_labels_that_never_overlap(browser, small_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    history = json.loads((copy / "model" / "history.json").read_text())
    for phase, epochs in (("head", 470), ("fine_tune", 20)):  # as long as a default run on a real scrape
        history[phase] = {name: [0.5 + 0.4 * (index % 7) / 7 for index in range(epochs)] for name in history["head"]}
    (copy / "model" / "history.json").write_text(json.dumps(history))
    assert main(["report", str(copy)]) == 0
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        page.goto((copy / "report.html").resolve().as_uri(), wait_until="load")
        for chart in page.locator("svg.chart").all():
            boxes = [tick.bounding_box() for tick in chart.locator(".x-tick").all()]
            labels = [int(text) for text in chart.locator(".x-tick").all_text_contents()]
            assert 4 <= len(labels) <= 8 and labels[0] == 1 and labels[-1] >= 450
            assert all(left["x"] + left["width"] < right["x"] for left, right in zip(boxes, boxes[1:])), labels
            assert chart.bounding_box()["width"] <= width - 40  # fits the page, phone width included
        context.close()


def test_report_of_a_run_stopped_after_crop_shows_the_faces_and_says_what_is_missing(run_page, tmp_path, browser):
    run_dir, _ = run_page
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("ingest.csv", "ingest.json"):
        shutil.copy2(run_dir / name, partial / name)
    shutil.copytree(run_dir / "crop", partial / "crop")
    assert main(["report", str(partial)]) == 0
    loaded = open_report(browser, partial / "report.html", "partial-run-report.png")
    assert_clean(loaded)
    page = loaded.page
    crops = rows(partial / "crop" / "crops.csv")
    assert page.locator('[data-gallery^="faces-"] figure').count() == len(crops)
    assert "The curate stage has not run yet" in page.locator("#splits").text_content()
    assert "No evaluation yet" in page.locator("#test").text_content()
    assert page.locator('[data-stage="kept"]').count() == 0
    settings = attribute_map(page, "[data-setting]", "data-setting")  # from crop.json and ingest.json
    assert settings["crop.image_size"] == "96" and settings["ingest.min_side"] == "32"
    assert not any(key.startswith(("train.", "curate.")) for key in settings)


def test_report_of_a_folder_that_is_neither_is_exit_1_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "neither a run folder" in error


# ---------------------------------------------------------------- the classify report


def test_classify_report_opens_from_disk_clean_and_every_image_resolves(classify_page):
    _, loaded = classify_page
    assert_clean(loaded)


def test_classify_galleries_hold_one_thumbnail_per_predictions_row(classify_page):
    out, loaded = classify_page
    predictions = rows(out / "predictions.csv")
    summary = json.loads((out / "classify.json").read_text())
    page = loaded.page
    labels = Counter(row["label"] for row in predictions if row["label"])
    assert labels["unknown"] + sum(labels[label] for label in summary["labels"]) == len(
        [row for row in predictions if row["face"] != ""]
    )
    for label in summary["labels"] + ["unknown"]:
        gallery = page.locator(f'[data-gallery="label-{label}"]')
        assert int(gallery.get_attribute("data-count")) == labels[label], label
        assert page.locator(f'[data-gallery="label-{label}"] figure').count() == labels[label]
        assert int(page.locator(f'[data-label-count="{label}"]').text_content()) == summary["label_counts"].get(label, 0)
    no_face = [row for row in predictions if row["status"] == "no_face"]
    unreadable = [row for row in predictions if row["status"] == "unreadable"]
    assert len(no_face) >= 1 and len(unreadable) >= 1 and sum(labels.values()) >= 6
    assert page.locator('[data-gallery="no_face"] figure').count() == len(no_face) == summary["no_face"]
    assert sorted(texts(page, "table.unreadable td:first-child")) == sorted(row["path"] for row in unreadable)
    # thumbnails link to the photos they were cut from
    links = page.eval_on_selector_all(
        '[data-gallery^="label-"] a', "links => links.map(link => decodeURIComponent(link.href))"
    )
    faces = [row for row in predictions if row["face"] != ""]
    assert sorted(links) == sorted("file://" + row["path"] for row in faces)
    # one histogram per label of predictions.csv: its bars and its legend count that label's rows
    charts = page.eval_on_selector_all(
        "svg.histogram", "charts => charts.map(chart => [chart.getAttribute('aria-label'), "
        "Array.from(chart.querySelectorAll('rect title')).map(t => Number(t.textContent.split(': ')[1]))"
        ".reduce((a, b) => a + b, 0), "
        "Object.fromEntries(Array.from(chart.querySelectorAll('[data-legend]')).map("
        "e => [e.getAttribute('data-legend'), Number(e.getAttribute('data-count'))]))])",
    )
    assert {title.split(": ")[0].removeprefix("named "): total for title, total, _ in charts} == dict(labels)
    for title, total, legend in charts:
        label = title.split(": ")[0].removeprefix("named ")
        mine = [row for row in faces if row["label"] == label]
        assert title.endswith(f": {len(mine)}") and sum(legend.values()) == total == len(mine)
        if label != "unknown":  # named this person though MobileNetV2's first choice was another: amber, counted apart
            assert legend[label] == sum(row["best_match"] == label for row in mine)
            assert legend.get("MobileNetV2 preferred another", 0) == sum(row["best_match"] != label for row in mine)


def test_classify_report_when_every_face_is_a_stranger_says_so_and_empty_people_read_as_empty(browser, classify_page,
                                                                                               tmp_path):
    out, _ = classify_page
    strangers = tmp_path / "strangers"
    shutil.copytree(out, strangers)
    predictions = rows(out / "predictions.csv")
    kept = [row for row in predictions if row["label"] == "unknown" or row["status"] == "no_face"]
    with open(strangers / "predictions.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(predictions[0]))
        writer.writeheader()
        writer.writerows(kept)
    assert main(["report", str(strangers)]) == 0
    page = open_report(browser, strangers / "report.html", "classify-report-strangers.png").page
    unknown = [float(row["score"]) for row in kept if row["label"] == "unknown"]
    summary = json.loads((out / "classify.json").read_text())
    assert texts(page, "svg.histogram [data-legend]") == [f"unknown {len(unknown)}"]
    note = texts(page, '[data-note="unknown"]')
    assert len(note) == 1 and note[0].startswith(
        f"All {len(unknown)} faces called unknown scored under the threshold {summary['unknown_threshold']:.3f}"
    )
    for label in summary["labels"]:
        assert texts(page, f'[data-gallery="label-{label}"]') == [f"no face was named {label}"]


def test_rerun_of_a_finished_classify_says_all_photos_were_already_classified(classify_page, small_run, data_dir,
                                                                              tmp_path, capsys):
    out, _ = classify_page
    again = tmp_path / "again"
    shutil.copytree(out, again)
    inputs = classify_inputs(data_dir)
    capsys.readouterr()
    assert main(["--quiet", "classify", str(small_run / "model"), *inputs, "--out", str(again), "--workers", "1"]) == 0
    photos = len({row["path"] for row in rows(out / "predictions.csv")})
    assert capsys.readouterr().out.startswith(f"classify: {photos} photos (all {photos} photos were already classified), ")
    assert f"Last run: all {photos} photos were already classified." in (again / "report.html").read_text()


def test_classify_report_pages_thousands_of_faces(browser, classify_page, tmp_path):
    """2,500 face rows: the page shows PAGE_SIZE thumbnails at a time and the pager reaches them all."""
    out, _ = classify_page
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy2(out / "classify.json", big / "classify.json")
    predictions = rows(out / "predictions.csv")
    face = next(row for row in predictions if row["label"] and row["label"] != "unknown")
    label = face["label"]
    columns = list(predictions[0])
    with open(big / "predictions.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for number in range(2500):  # the same photo, many boxes: one decode, 2,500 thumbnails
            writer.writerow({**face, "face": number, "faces": 2500, "x": float(face["x"]) + number % 7})
    assert main(["--quiet", "report", str(big)]) == 0
    loaded = open_report(browser, big / "report.html", "classify-report-paged.png")
    page = loaded.page
    gallery = f'[data-gallery="label-{label}"]'
    assert int(page.locator(gallery).get_attribute("data-count")) == 2500
    pages = -(-2500 // PAGE_SIZE)
    assert page.locator(f"{gallery} .page").count() == pages
    assert loaded.broken_images == [] and loaded.console_errors == []


def test_classify_pager_moves_through_pages_and_shows_all_without_javascript(browser, tmp_path, classify_page):
    out, _ = classify_page
    big = tmp_path / "paged"
    big.mkdir()
    shutil.copy2(out / "classify.json", big / "classify.json")
    predictions = rows(out / "predictions.csv")
    face = next(row for row in predictions if row["label"] and row["label"] != "unknown")
    count = PAGE_SIZE * 2 + 5
    with open(big / "predictions.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, list(predictions[0]))
        writer.writeheader()
        for number in range(count):
            writer.writerow({**face, "face": number, "faces": count})
    assert main(["--quiet", "report", str(big)]) == 0
    gallery = f'[data-gallery="label-{face["label"]}"]'

    context = browser.new_context()
    page = context.new_page()
    page.goto((big / "report.html").as_uri())
    visible = f"{gallery} .page:not([hidden]) figure"
    assert page.locator(visible).count() == PAGE_SIZE
    assert page.locator(f"{gallery} .pager-label").text_content() == "page 1 of 3"
    page.locator(f"{gallery} .next").click()
    page.locator(f"{gallery} .next").click()
    assert page.locator(visible).count() == 5
    assert page.locator(f"{gallery} .pager-label").text_content() == "page 3 of 3"
    context.close()

    loaded = open_report(browser, big / "report.html", "classify-report-no-javascript.png", javascript=False)
    shown = loaded.page.eval_on_selector_all(f"{gallery} figure", "figures => figures.filter(f => f.offsetParent).length")
    assert shown == count
