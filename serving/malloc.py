"""glibc's allocator, tuned for request-sized buffers (`--tune_malloc`, on by default).

A 224x224x3 float image is a 602 KB request body; gRPC, protobuf and numpy each hold a copy for a
moment. glibc serves blocks of 128 KB and more with a fresh `mmap` (its threshold rises only after
such a block is freed) and hands freed memory at the top of the heap back to the kernel once more
than twice that threshold is free. Under load each copy then lands on fresh pages, which the
kernel faults in and zeroes again on every call. Two `mallopt` settings keep blocks up to
`MMAP_THRESHOLD_BYTES` on the heap and up to `TRIM_THRESHOLD_BYTES` of freed memory in the
process for the next request. Measured on catdog-sized float requests (8 streams, h2load, 2-core
VM, interleaved rounds): 409 req/s against 380 and 4% less server CPU per request.

Settings the operator gave (`GLIBC_TUNABLES`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`)
are left alone, and so is any other C library (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping

MMAP_THRESHOLD_BYTES = 4 << 20  # blocks above this still get their own mapping (and go back at once)
TRIM_THRESHOLD_BYTES = 64 << 20  # freed memory kept for reuse before the heap's top is trimmed
# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
OPERATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc(environ: Mapping[str, str] = os.environ) -> str:
    """Apply the two settings to this process; returns what was done, for the start-up log."""
    given = [name for name in OPERATOR_SETTINGS if name in environ]
    if given:
        return f"malloc: left as configured ({', '.join(given)} set)"
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return f"malloc: not glibc ({libc_name or 'unknown C library'}), left alone"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return "malloc: mallopt refused the thresholds, left alone"
    return (
        f"malloc: blocks up to {MMAP_THRESHOLD_BYTES >> 20} MiB from the heap, "
        f"{TRIM_THRESHOLD_BYTES >> 20} MiB of freed memory kept for reuse (--tune_malloc)"
    )
