"""One simulated two-node Ray cluster for the whole test session, and proof that it leaves nothing behind.

Two nodes of one CPU each (``ray.cluster_utils.Cluster``): one actor fits on each, so a run
with two actors must use both nodes. Token authentication is off (Ray 2.60 would write
~/.ray/auth_token) and every session file lives under a temporary folder, not /tmp/ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

# The Ray workers take these from the environment the nodes start in: the S3 test's local
# server (moto) accepts any credentials; the region spares pyarrow a lookup.
RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "AWS_ACCESS_KEY_ID": "facecls-test",
    "AWS_SECRET_ACCESS_KEY": "facecls-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024}
AUTH_TOKEN = Path.home() / ".ray" / "auth_token"
DEFAULT_SESSIONS = Path("/tmp/ray")


def processes_mentioning(text: str) -> list[int]:
    """Other processes whose command line or environment contains ``text`` (Ray's workers rename
    themselves, but keep the RAY_TMPDIR they were started with)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as command, open(f"/proc/{entry}/environ", "rb") as environment:
                if text.encode() in command.read() or text.encode() in environment.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _listing(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster (this process is connected to it as a driver); yields its address."""
    ray = pytest.importorskip("ray", reason='the Ray engine tests need Ray Data: pip install -e ".[test]"')
    from ray.cluster_utils import Cluster

    token_existed, sessions_before = AUTH_TOKEN.exists(), _listing(DEFAULT_SESSIONS)
    # Short: Ray's Unix sockets live under it, and their paths may not exceed 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="facecls-ray-")
    # RAY_TMPDIR: where Ray notes the current cluster's address (else /tmp/ray), for every driver.
    environment = {**RAY_ENVIRONMENT, "RAY_TMPDIR": temp_dir}
    sessions = os.path.join(temp_dir, "ray")  # where Ray puts them under RAY_TMPDIR
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "temp_dir": sessions, "include_dashboard": False})
        cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        yield cluster.address
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        deadline = time.monotonic() + 60
        while processes_mentioning(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert not left, f"Ray processes left running: {left}"
    assert token_existed or not AUTH_TOKEN.exists(), f"Ray wrote {AUTH_TOKEN}"
    assert _listing(DEFAULT_SESSIONS) <= sessions_before, f"Ray wrote into {DEFAULT_SESSIONS}"
