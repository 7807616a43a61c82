"""Processes, their CPU time and the memory of a process tree, read from /proc: shared by the benchmarks that measure them."""

from __future__ import annotations

import os
from collections import defaultdict


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
        except (OSError, IndexError, ValueError):
            continue
    return table


def tree_memory_bytes(root_pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over ``root_pid`` and all its descendants, from /proc.

    RSS counts the shared libraries (TensorFlow) once per process; PSS splits shared pages
    between the processes using them, so its sum is what the tree really occupies.
    """
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in process_table().items():
        children[parent].append(pid)
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
