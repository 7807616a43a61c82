"""Memory of a process tree, read from /proc: shared by the benchmarks that measure it."""

from __future__ import annotations

import os
from collections import defaultdict


def tree_memory_bytes(root_pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over ``root_pid`` and all its descendants, from /proc.

    RSS counts the shared libraries (TensorFlow) once per process; PSS splits shared pages
    between the processes using them, so its sum is what the tree really occupies.
    """
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    rss = pss = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as file:
                for line in file:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss
