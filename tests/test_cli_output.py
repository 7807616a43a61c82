"""--quiet and --json, on the main parser or after the command, for scripting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from facecls.cli import main


@pytest.fixture
def scrape(two_person_scrape):
    return two_person_scrape


@pytest.mark.parametrize("position", ["before", "after"])
def test_json_prints_the_summary_as_one_object(scrape, tmp_path, capsys, position):
    command = ["ingest", str(scrape), "--out", str(tmp_path / "run")]
    assert main(["--json", *command] if position == "before" else [*command, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    recorded = json.loads((tmp_path / "run" / "ingest.json").read_text())
    assert summary["command"] == "ingest" and summary["counts"] == recorded["counts"] == {"ok": 4}
    assert summary["people"] == ["jerry_seinfeld", "mindy_kaling"]
    assert summary["manifest"] == str(tmp_path / "run" / "ingest.csv")


def test_quiet_drops_the_progress_bars_and_keeps_the_summary(scrape, tmp_path):
    # A fresh process, as a user runs it: tqdm takes TQDM_DISABLE when the stages first import it.
    def ingest(*flags):
        return subprocess.run(
            [sys.executable, "-m", "facecls", *flags, "ingest", str(scrape), "--out", str(tmp_path / "run")],
            capture_output=True, text=True, check=True,
        )

    loud = ingest()
    assert "ingest: 100%" in loud.stderr  # the progress bar
    quiet = ingest("--quiet")
    assert "ingest:" not in quiet.stderr and "%" not in quiet.stderr
    assert quiet.stdout.startswith("ingest: 4 files of 2 people: ok 4")
