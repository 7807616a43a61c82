"""classify --engine ray on a simulated two-node Ray cluster: the local engine's rows, from folders,
Parquet and CSV lists and a local S3 server; a driver killed mid-run resumes without a duplicate.

One Ray cluster serves the session (tests/ray_fixtures.py) and each pipeline run pays for its
actors' start-up (loading MTCNN, MobileNetV2 and the identity network), so the checks share
few runs: the killed run and its rerun prove resuming, the local rows, both list formats and
the two nodes; one more run reads from S3.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared_data import SHARED
from facecls.cli import main
from processes import kill_when
from ray_fixtures import ray_cluster  # noqa: F401  (the session's Ray cluster fixture)

pytestmark = pytest.mark.xdist_group("ray")

HARD = SHARED / "data" / "hard-cases"


@pytest.fixture(scope="module")
def model(open_set_model):
    return open_set_model[0]


def real_photos() -> list[Path]:
    """20 real photos: known people, the stranger, several faces, no face, a truncated file."""
    from classify_model import val_photos

    photos = [photo for person in ("elton_john", "jerry_seinfeld", "mindy_kaling", "ben_afflek", "madonna") for photo in val_photos(person)[:3]]
    photos += [HARD / "no_face" / "rocket.jpg", HARD / "no_face" / "chelsea.png", HARD / "multiple_faces" / "two_people.jpg"]
    photos += [HARD / "corrupt" / "truncated.jpg", HARD / "exif_orientation" / "Leonardo_DiCaprio_2010.jpg"]
    return photos


@pytest.fixture(scope="module")
def photo_inputs(model, tmp_path_factory):
    """(folder of the photos, inputs: a folder, a CSV list with relative URIs, a Parquet list with hashes)."""
    import pyarrow as pa
    import pyarrow.parquet

    root = tmp_path_factory.mktemp("ray") / "photos"
    for part in ("folder", "csv", "parquet"):
        (root / part).mkdir(parents=True)
    for number, photo in enumerate(real_photos()):
        part = ("folder", "folder", "csv", "parquet")[number % 4]
        shutil.copy2(photo, root / part / f"{number:02d}-{photo.name}")
    (root / "folder" / "page.jpg").write_bytes(b"<!doctype html><html><body>not a photo</body></html>")
    os.mkfifo(root / "folder" / "pipe.jpg")  # would block a read task: the driver writes its row
    (root / "folder" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    csv_photos = sorted((root / "csv").iterdir())
    with open(root / "csv" / "photos.csv", "w", newline="") as file:
        csv.writer(file).writerows([["uri"], *[[photo.name] for photo in csv_photos]])
    parquet_photos = sorted((root / "parquet").iterdir())
    table = pa.table({"uri": [str(photo) for photo in parquet_photos], "sha256": [sha(photo) for photo in parquet_photos]})
    pyarrow.parquet.write_table(table, root / "parquet" / "photos.parquet")
    return root, [str(root / "folder"), str(root / "csv" / "photos.csv"), str(root / "parquet" / "photos.parquet")]


@pytest.fixture(scope="module")
def local_rows(model, photo_inputs, tmp_path_factory):
    """predictions.csv rows of the local engine on the same photos (the lists themselves left out)."""
    root, _ = photo_inputs
    files = [path for path in sorted(root.rglob("*")) if path.suffix not in (".csv", ".parquet") and not path.is_dir()]
    out = tmp_path_factory.mktemp("ray-local") / "out"
    assert main(["--quiet", "classify", str(model), *map(str, files), "--out", str(out), "--sort", "none", "--workers", "1"]) == 0
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return rows, json.loads((out / "classify.json").read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parquet_rows(out: Path) -> list[dict]:
    """The rows of OUT/predictions/*.parquet as predictions.csv spells them."""
    import pyarrow.parquet

    rows = []
    for path in sorted((out / "predictions").glob("*.parquet")):
        rows += pyarrow.parquet.read_table(path).to_pylist()
    return [{key: "" if value is None else str(value) for key, value in row.items()} for row in rows]


def as_lines(rows: list[dict]) -> list[tuple]:
    return [tuple(row.items()) for row in rows]


def actor_nodes() -> Counter:
    """Node of each PhotoClassifier actor the cluster has started (alive or dead)."""
    import ray

    actors = ray._private.state.actors().values()
    return Counter(actor["Address"]["NodeID"] for actor in actors if "PhotoClassifier" in actor["ActorClassName"])


@pytest.mark.slow
def test_driver_killed_then_rerun_gives_the_local_rows_once_on_both_nodes(model, photo_inputs, local_rows, ray_cluster, tmp_path, capsys):
    expected, local_summary = local_rows
    _, inputs = photo_inputs
    out = tmp_path / "out"
    command = [sys.executable, "-m", "facecls", "--quiet", "classify", str(model), *inputs, "--out", str(out),
               "--engine", "ray", "--address", ray_cluster, "--actors", "2"]  # fmt: skip
    kill_when(command, lambda: any((out / "predictions").glob("*.parquet")), timeout=600)  # a first Parquet file
    killed_rows = parquet_rows(out)
    assert 0 < len({row["path"] for row in killed_rows}) < len({row["path"] for row in expected})
    (out / "predictions" / "part-999999.parquet").write_bytes(b"PAR1 torn by a crash")

    nodes_before = actor_nodes()
    capsys.readouterr()
    assert main(["--quiet", "--json", "classify", str(model), *inputs, "--out", str(out), "--engine", "ray", "--actors", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    photos = len({row["path"] for row in expected})
    assert summary["skipped"] >= 1 and summary["skipped"] + summary["classified"] == photos == summary["photos"]
    assert not (out / "predictions" / "part-999999.parquet").exists()

    rows = parquet_rows(out)
    assert len(set(as_lines(rows))) == len(rows)  # no duplicate row
    assert sorted(as_lines(rows)) == sorted(as_lines(expected))  # none missing, the local engine's rows
    statuses = Counter(row["status"] for row in expected if row["face"] in ("", "0"))
    assert statuses["no_face"] >= 1 and statuses["unreadable"] == 4 and max(int(row["faces"]) for row in expected) >= 2
    written = json.loads((out / "classify.json").read_text())
    assert written["fingerprint"] == local_summary["fingerprint"] and written["state"] == "finished"
    assert (written["photos"], written["unreadable"], written["no_face"]) == (photos, 4, statuses["no_face"])
    assert len(actor_nodes() - nodes_before) == 2  # the rerun's two actors, one on each node


@pytest.fixture
def s3_server():
    """A local S3 server (moto in server mode on 127.0.0.1); yields the query that points pyarrow at it."""
    moto_server = pytest.importorskip("moto.server", reason='the S3 test needs moto: pip install -e ".[test]"')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield port
    finally:
        server.stop()


@pytest.mark.slow
def test_photos_under_an_s3_prefix_give_the_local_rows(model, local_rows, ray_cluster, s3_server, tmp_path):
    import boto3

    expected, _ = local_rows
    by_hash = {}
    for row in expected:
        by_hash.setdefault(row["sha256"], []).append(row)
    chosen = [real_photos()[index] for index in (0, 15, 17, 18)]  # one face, no face, two faces, truncated
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_server}", region_name="us-east-1")
    client.create_bucket(Bucket="photos")
    for photo in chosen:
        client.upload_file(str(photo), "photos", f"incoming/{photo.name}")
    client.put_object(Bucket="photos", Key="elsewhere/skip.jpg", Body=b"not under the prefix")

    out = tmp_path / "out"
    uri = f"s3://photos/incoming?endpoint_override=127.0.0.1:{s3_server}&scheme=http&region=us-east-1"
    assert main(["--quiet", "classify", str(model), uri, "--out", str(out), "--engine", "ray", "--actors", "1"]) == 0
    rows = parquet_rows(out)
    assert {row["path"] for row in rows} == {f"s3://photos/incoming/{photo.name}" for photo in chosen}
    for photo in chosen:
        got = [{**row, "path": ""} for row in rows if row["path"].endswith("/" + photo.name)]
        assert as_lines(got) == as_lines([{**row, "path": ""} for row in by_hash[sha(photo)]])


def test_without_ray_the_engine_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["classify", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and 'pip install "facecls[ray]"' in message


def test_sorting_annotating_and_bad_actor_counts_are_refused_in_one_line(tmp_path, capsys):
    base = ["classify", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "out")]
    for extra, words in (
        (["--engine", "ray", "--sort", "copy"], "--sort: local-only"),
        (["--engine", "ray", "--annotate"], "--annotate: local-only"),
        (["--engine", "ray", "--actors", "3,1"], "--actors must be N or MIN,MAX"),
        (["--actors", "2"], "add --engine ray"),
    ):
        assert main(base + extra) == 1
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and words in message, message
    assert main(["classify", str(tmp_path), "s3://bucket/photos", "--out", str(tmp_path / "out")]) == 1
    assert "read by the Ray engine only" in capsys.readouterr().err


def test_photo_lists_are_checked_before_any_work(tmp_path):
    from facecls.errors import FaceclsError
    from facecls.ray_engine import list_photos

    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("uri,sha256\na.jpg,\na.jpg,\n" + str(tmp_path / "a.jpg") + ",\n")
    groups, not_regular = list_photos([str(tmp_path / "list.csv")])
    assert [source.uri for group in groups for source in group.sources] == [str(tmp_path / "a.jpg")] and not not_regular
    (tmp_path / "bad.csv").write_text("path\na.jpg\n")
    for inputs, words in (([str(tmp_path / "bad.csv")], "needs a 'uri' column"), ([str(tmp_path / "none")], "Input not found")):
        with pytest.raises(FaceclsError, match=words) as raised:
            list_photos(inputs)
        assert "\n" not in str(raised.value)
