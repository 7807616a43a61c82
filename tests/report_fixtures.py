"""A small real run and classify output for the report and Python API tests, made once per test session
(pytest fixtures, registered by conftest.py), and a headless Chromium that opens a report from disk
and records what it did.

The run: three people of the shared scrape (with photos that give no face or several faces),
plus a byte-identical copy, a text file named .jpg and a truncated JPEG, so every step of the
funnel drops something; 96-pixel crops, alpha 0.35, head only. The classify output: strangers,
a group photo, a photo without a face and a corrupt file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

WEIGHTS_NAME = "mobilenet_v2_0.35_224_no_top_imagenet.h5"  # in ../shared/weights
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots; gitignored
CHROMIUM = Path("/usr/bin/chromium")
# As root and headless on a machine without network, Chromium needs these (see the README's tests section).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

# Photos of the shared scrape chosen so the run meets every case: 79de... (a shirt) gives no face of
# messi; 654e... is a face lying sideways; a90e..., 0fe4..., 44f6... hold several faces, and in 0fe4...
# the largest is a bystander's.
PEOPLE = {
    "messi": ["79de6ff31394a5cd.jpg", "a90e498966961870.jpg"],
    "sydney_sweeney": ["654e282a6b93bbc6.jpg", "0fe487627f0d6d1c.jpg"],
    "brad_pitt": ["44f66d3520f96a14.jpg"],
}
PHOTOS_PER_PERSON = 10


def _make_scrape(folder: Path, data_dir: Path) -> Path:
    source = data_dir / "scraped-celebs-6"
    for person, wanted in PEOPLE.items():
        (folder / person).mkdir(parents=True)
        others = [path.name for path in sorted((source / person).iterdir()) if path.name not in wanted]
        for name in wanted + others[: PHOTOS_PER_PERSON - len(wanted)]:
            shutil.copy2(source / person / name, folder / person / name)
    first = sorted((folder / "brad_pitt").iterdir())[0]
    shutil.copy2(first, folder / "brad_pitt" / "copy_of_first.jpg")  # duplicate
    (folder / "messi" / "page.jpg").write_text("<html>not a photo</html>")  # not_image
    shutil.copy2(data_dir / "hard-cases" / "no_face" / "coffee.png", folder / "messi")  # no_face, whatever MTCNN's mood
    shutil.copy2(data_dir / "hard-cases" / "corrupt" / "truncated.jpg", folder / "sydney_sweeney")  # unreadable
    return folder


@pytest.fixture(scope="session")
def small_run(data_dir: Path, weights_dir: Path, tmp_path_factory) -> Path:
    """A finished ``facecls run`` folder (report.html included)."""
    from facecls.cli import main

    folder = tmp_path_factory.mktemp("report-run")
    scrape = _make_scrape(folder / "scrape", data_dir)
    run_dir = folder / "run"
    argv = [
        "--quiet", "run", str(scrape), "--out", str(run_dir), "--weights", str(weights_dir / WEIGHTS_NAME),
        "--image-size", "96", "--head-epochs", "8", "--fine-tune-epochs", "0", "--workers", "1", "--seed", "3",
    ]
    if main(argv) != 0:
        raise RuntimeError("facecls run failed on the small scrape")
    return run_dir


CLASSIFY_INPUTS = (
    "5-celebrity-faces/val/madonna",  # strangers to the model
    "hard-cases/multiple_faces/two_people.jpg",
    "hard-cases/no_face/coffee.png",
    "hard-cases/corrupt/truncated.jpg",
)


def classify_inputs(data_dir: Path) -> list[str]:
    """What ``small_classify`` classifies: CLASSIFY_INPUTS and one photo each of messi and brad_pitt
    not among the training photos (the model misnames the first, so it is unknown, and names the second)."""
    known = [sorted((data_dir / "scraped-celebs-6" / person).iterdir())[-1] for person in ("messi", "brad_pitt")]
    return [str(data_dir / name) for name in CLASSIFY_INPUTS] + [str(path) for path in known]


@pytest.fixture(scope="session")
def small_classify(small_run: Path, data_dir: Path, tmp_path_factory) -> Path:
    """A finished ``facecls classify`` output folder of the small run's model (report.html included)."""
    from facecls.cli import main

    out = tmp_path_factory.mktemp("report-classify") / "classified"
    argv = ["--quiet", "classify", str(small_run / "model"), *classify_inputs(data_dir), "--out", str(out), "--workers", "1"]
    if main(argv) != 0:
        raise RuntimeError("facecls classify failed")
    return out


@dataclass
class LoadedPage:
    """A report as headless Chromium saw it."""

    page: object  # playwright Page, still open
    console_errors: list[str]
    requests: list[str]
    failed_requests: list[str]
    broken_images: list[str]  # src of every <img> with naturalWidth 0 once all were loaded
    screenshot: Path


def open_report(browser, path: Path, screenshot_name: str, javascript: bool = True) -> LoadedPage:
    """Open ``path`` from disk, screenshot it as a reader first sees it, then load every image of every page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=javascript)
    page = context.new_page()
    console_errors: list[str] = []
    requests: list[str] = []
    failed: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / screenshot_name
    page.screenshot(path=str(screenshot), full_page=True)
    broken: list[str] = []
    if javascript:
        # Thumbnails are lazy and paged: show every page and load every image, then look at each.
        page.evaluate(
            """() => {
                document.querySelectorAll('.page[hidden]').forEach(page => { page.hidden = false; });
                document.querySelectorAll('details').forEach(details => { details.open = true; });
                document.querySelectorAll('img').forEach(image => { image.loading = 'eager'; });
            }"""
        )
        page.wait_for_function("() => Array.from(document.images).every(image => image.complete)", timeout=60_000)
        broken = page.evaluate(
            "() => Array.from(document.images).filter(image => !(image.naturalWidth > 0))"
            ".map(image => image.getAttribute('src'))"
        )
    return LoadedPage(page, console_errors, requests, failed, broken, screenshot)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
