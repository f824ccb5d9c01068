"""Telling a live process from a reused pid: its start time, read from /proc (Linux; elsewhere unknown)."""

from __future__ import annotations


def process_start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), or None if no such process is alive (a zombie
    counts as gone). A pid with the same start time is the same process, not a later one given its number."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]
