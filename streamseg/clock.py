"""When this process started: the origin of the end-to-end times a command reports."""

from __future__ import annotations

import os
import time


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (Linux: from ``/proc``, to 10 ms;
    elsewhere: now), so that end-to-end times include the interpreter's and the CLI's own start."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime, after the comm
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.monotonic()
