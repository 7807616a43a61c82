"""The README's Python API example, run as it stands against a real model dir and real photos."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"



def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "README's Python API section has no python code block"
    return match.group(1)


def test_readme_python_api_example_runs_and_returns_named_records(data_dir, small_run, tmp_path, monkeypatch):
    from facecls.classifier import FacePrediction, PhotoPrediction

    # The example's own paths: runs/first/model and photos/ in the working folder.
    (tmp_path / "runs" / "first").mkdir(parents=True)
    (tmp_path / "runs" / "first" / "model").symlink_to(small_run / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(data_dir / "hard-cases" / "multiple_faces" / "two_people.jpg", photos / "party.jpg")
    shutil.copy2(data_dir / "hard-cases" / "no_face" / "coffee.png", photos / "coffee.png")
    shutil.copy2(data_dir / "hard-cases" / "corrupt" / "truncated.jpg", photos / "broken.jpg")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), str(README), "exec"), namespace)

    photo, faces = namespace["photo"], namespace["faces"]
    lines = printed.getvalue().splitlines()
    labels = ("brad_pitt", "messi", "sydney_sweeney")
    assert lines[0] == str(labels)
    # the folder loop ends on the last file in sorted order: party.jpg, with the same faces as the array call
    assert isinstance(photo, PhotoPrediction) and photo.path.endswith("party.jpg") and photo.status == "ok"
    assert len(faces) == len(photo.faces) >= 2
    assert all(isinstance(face, FacePrediction) for face in faces)
    assert [face.label for face in faces] == [face.label for face in photo.faces]
    assert [face.score for face in faces] == pytest.approx([face.score for face in photo.faces], abs=1e-4)
    assert all(face.label in labels + ("unknown",) and face.best_match in labels for face in faces)
    assert faces[0].width * faces[0].height >= faces[1].width * faces[1].height  # largest first
    folder_lines = [line for line in lines if line.startswith(str(photos.resolve()))]
    assert [line.split()[1] for line in folder_lines] == ["unreadable", "no_face", "ok"]
