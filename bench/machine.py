"""One line describing the machine a benchmark ran on, printed with every result."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    """OS, CPU model, cores, memory, Python and the 1-minute load average."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: the CPU model is only informative
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
        f"{mem_gb:.0f} GB, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )
