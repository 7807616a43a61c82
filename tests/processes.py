"""Starting a facecls command and SIGKILLing it at a chosen moment, for the crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import pytest


def kill_when(command: list[str], ready, timeout: float = 400) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` is true; fails if it ended first."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a full pipe would stall the command
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None and not ready():
                assert time.monotonic() < deadline, "the kill point never came"
                time.sleep(0.01)
            if process.poll() is not None:
                stderr.seek(0)
                pytest.fail("the command finished before the kill point: " + stderr.read().decode()[-2000:])
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
