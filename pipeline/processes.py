"""Telling a live process from a reused pid, and a process's parent: read from /proc (Linux; elsewhere
unknown)."""

from __future__ import annotations

import os


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if no such process is
    alive (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if not fields or fields[0] == "Z" else fields


def process_start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), or None if no such process is alive. A pid with
    the same start time is the same process, not a later one given its number."""
    fields = _stat(pid)
    return None if fields is None else fields[19]


def live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process visible here ({} without /proc)."""
    try:
        names = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return {}
    table = {}
    for name in names:
        fields = _stat(name)
        if fields is not None:
            table[int(name)] = (int(fields[1]), fields[19])
    return table
