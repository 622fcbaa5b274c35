"""Declared sizes vs the machine's memory: refuse to materialise what cannot fit.

A header may declare a tensor far larger than RAM (a sparse file costs nothing on disk), so
every path that materialises a whole tensor (or any selection above CHECK_ABOVE bytes) asks
``check_fits_in_memory`` first and gets a clear InsufficientMemoryError instead of swapping or
being killed by the OOM killer.
"""

from __future__ import annotations

import sys

from .errors import InsufficientMemoryError

# Below this, a read is never checked (reading /proc/meminfo costs ~20 us; small reads are many).
CHECK_ABOVE = 16 << 20


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when limited."""
    try:
        with open("/proc/self/cgroup", "rb") as f:
            rel = next((ln.split(b"::", 1)[1].strip().decode() for ln in f if ln.startswith(b"0::")), None)
        if rel is None:
            return None
        base = "/sys/fs/cgroup" + rel.rstrip("/")
        with open(base + "/memory.max", "rb") as f:
            limit = f.read().strip()
        if limit == b"max":
            return None
        with open(base + "/memory.current", "rb") as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError, StopIteration):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping: the smaller of MemAvailable
    (Linux /proc/meminfo) and the cgroup v2 limit's headroom; None where unknown (other
    platforms), in which case nothing is checked."""
    if not sys.platform.startswith("linux"):
        return None
    vals = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(vals) if vals else None


def _fmt(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise InsufficientMemoryError when allocating ``nbytes`` (a Python int, any size) for
    ``what`` (e.g. "tensor 'x' of a.safetensors as float32") exceeds ``available_memory()``.
    Does nothing where the available memory is unknown (non-Linux)."""
    nbytes = int(nbytes)
    if nbytes <= 0:
        return
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise InsufficientMemoryError(
            f"{what} needs {_fmt(nbytes)} ({nbytes} bytes) but only {_fmt(avail)} of memory is available: "
            f"read it in tiles (reader.read(name, index), reader.float32(name, index)) "
            f"or free memory"
        )


def check_read(nbytes: int, what: str) -> None:
    """check_fits_in_memory for reads above CHECK_ABOVE bytes (smaller ones are not checked)."""
    if nbytes > CHECK_ABOVE:
        check_fits_in_memory(nbytes, what)
