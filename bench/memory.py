"""Peak CPU memory of the current process, for benchmarks that run each measurement in a fresh
subprocess.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the wrong tool there: a child started by
``subprocess`` (vfork + exec) inherits its parent's high-water mark, so under a large parent
(``python -m bench`` after its step section: ~1.2 GB) every smaller peak read as the parent's.
Linux keeps the high-water mark of the process's own memory map in ``VmHWM`` and lets a process
reset it to the current RSS (``/proc/self/clear_refs``, value 5; Linux >= 4.0).
"""
from __future__ import annotations

import platform
import resource


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; ``ru_maxrss`` elsewhere, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return _ru_maxrss_bytes()


def reset_peak_rss() -> bool:
    """Set this process's RSS high-water mark to its current RSS; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """High-water mark of this process's own RSS since exec or the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _ru_maxrss_bytes()


def _ru_maxrss_bytes() -> int:
    scale = 1 if platform.system() == "Darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
