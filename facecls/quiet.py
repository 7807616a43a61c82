"""Silence TensorFlow's start-up lines in the command-line tool.

TensorFlow 2.21 writes "oneDNN custom operations are on", "All log messages before
absl::InitializeLog()" and the CPU-feature notice straight to file descriptor 2 from C++,
before and regardless of ``TF_CPP_MIN_LOG_LEVEL``; they would print ahead of facecls's own
one-line errors and inside its progress bars. ``silence_tensorflow_start_up`` makes the first
import of TensorFlow, wherever it happens (keras, mtcnn and facecls all import it lazily), run
with descriptor 2 pointed at /dev/null, and creates the CPU device there too (the last notice
comes then). Python exceptions raised by the import still propagate and print as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from contextlib import contextmanager
from typing import Iterator

# TensorFlow's C++ log level wherever facecls imports it: only fatal messages.
TENSORFLOW_LOG_LEVEL = "3"


@contextmanager
def stderr_descriptor_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (what C++ libraries write to)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _set_log_level() -> None:
    """The one place facecls sets ``TF_CPP_MIN_LOG_LEVEL`` (unless the user has)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TENSORFLOW_LOG_LEVEL)


def _start_tensorflow(module) -> None:
    module.config.list_logical_devices()  # creates the CPU device, which prints the last notice


def import_tensorflow_quietly():
    """Import TensorFlow now with descriptor 2 silenced (a worker process, before its progress bars);
    returns the module."""
    _set_log_level()
    if "tensorflow" not in sys.modules:
        with stderr_descriptor_silenced():
            import tensorflow

            _start_tensorflow(tensorflow)
    return sys.modules["tensorflow"]


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with stderr_descriptor_silenced():
            self._loader.exec_module(module)
            _start_tensorflow(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only; later imports find the loaded module
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def silence_tensorflow_start_up() -> None:
    """Make the first import of TensorFlow in this process silent on stderr (no-op once imported)."""
    _set_log_level()
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
