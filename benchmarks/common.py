"""What the benchmark scripts share: the repository on ``sys.path`` (they run as ``python benchmarks/NAME.py``,
which puts this folder first on the path, so ``from common import ...`` finds this module), the machine's name,
this process's memory, and the FiTv2-XL depth the partial-depth runs scale to."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))          # the scripts import the repository's packages without an install

XL_FULL_DEPTH = 36                         # blocks of FiTv2-XL; benchmarks run fewer and scale per block


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mib() -> float:
    """This process's resident set size now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mib() -> float:
    """VmHWM: this process's peak RSS, in MiB (Linux). (ru_maxrss would do, but Linux carries it over from the
    parent across fork + exec, so a child would report the benchmark parent's peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
