"""The facecls command: ingest and crop through ``main([...])``, one-line errors, exit statuses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from facecls.cli import main
from facecls.errors import FaceclsError


@pytest.fixture
def scrape(two_person_scrape, data_dir):
    """Two people, two real photos each, and a truncated file."""
    shutil.copy2(data_dir / "hard-cases" / "corrupt" / "truncated.jpg", two_person_scrape / "mindy_kaling")
    return two_person_scrape


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("facecls: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_ingest_then_crop(scrape, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["ingest", str(scrape), "--out", str(run)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("ingest: 5 files of 2 people: ok 4, unreadable 1")
    assert (run / "ingest.csv").exists()

    assert main(["crop", str(scrape), "--out", str(run), "--workers", "1", "--image-size", "96"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("crop: 4 photos (")
    assert "0 reused" in summary and "4 face crops" in summary
    crops = sorted((run / "crop" / "faces").rglob("*.png"))  # lossless by default
    assert len(crops) == 4
    from facecls.images import decode_image

    assert decode_image(crops[0]).pixels.shape == (96, 96, 3)

    assert main(["crop", str(scrape), "--out", str(run), "--workers", "1", "--image-size", "96"]) == 0
    assert "4 reused" in capsys.readouterr().out


def test_ingest_of_a_missing_folder_is_exit_1_with_one_line(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "absent"), "--out", str(tmp_path / "run")]) == 1
    line = one_line_error(capsys)
    assert "Scrape folder not found" in line and "absent" in line


def test_ingest_of_one_person_is_exit_1(scrape, tmp_path, capsys):
    shutil.rmtree(scrape / "mindy_kaling")
    assert main(["ingest", str(scrape), "--out", str(tmp_path / "run")]) == 1
    assert "at least two people" in one_line_error(capsys)


def test_crop_before_ingest_names_the_command_to_run(scrape, tmp_path, capsys):
    assert main(["crop", str(scrape), "--out", str(tmp_path / "run")]) == 1
    line = one_line_error(capsys)
    assert "Ingest manifest not found" in line and "facecls ingest" in line


def test_crop_option_out_of_range_is_exit_1(scrape, tmp_path, capsys):
    """(Every other range, for every command: test_config.py.)"""
    run = tmp_path / "run"
    assert main(["ingest", str(scrape), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["crop", str(scrape), "--out", str(run), "--margin", "1.5"]) == 1
    assert "margin must be between 0.0 and 1.0. Received: 1.5" in one_line_error(capsys)
    assert not (run / "crop").exists()  # failed before any detection


def test_ingest_option_out_of_range_is_exit_1(scrape, tmp_path, capsys):
    assert main(["ingest", str(scrape), "--out", str(tmp_path / "run"), "--max-megapixels", "0"]) == 1
    assert "max_megapixels must be between" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(FaceclsError, match="Scrape folder not found"):
        main(["--debug", "ingest", str(tmp_path / "absent"), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("command", [[], ["ingest"], ["crop"]])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: facecls{''.join(' ' + word for word in command)}")
    if command == ["crop"]:
        assert "--margin" in out and "--face-policy" in out
    if command == ["ingest"]:
        assert "--max-megapixels" in out


@pytest.mark.parametrize(
    "argv",
    [["ingest"], ["crop", "scrape", "--out", "run", "--face-policy", "biggest"], ["crop", "x", "--out", "y", "--margin", "wide"], ["nonsense"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: facecls" in capsys.readouterr().err


def test_installed_command_exit_status(tmp_path):
    # The console script and python -m facecls wire main()'s return value to the exit status.
    result = subprocess.run(
        [sys.executable, "-m", "facecls", "ingest", str(tmp_path / "absent"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("facecls: error: Scrape folder not found")
    assert len(result.stderr.strip().splitlines()) == 1
