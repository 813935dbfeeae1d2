"""--tune_malloc: glibc's thresholds, applied for real in a fresh process (skipped on other C libraries)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from serving.malloc import tune_malloc

# A fresh interpreter: allocate 1 MiB (a catdog request body and then some) and 8 MiB, and print
# whether each got a mapping of its own (mallinfo2's count of mapped blocks).
PROBE = """
import ctypes, sys
from serving.malloc import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    print(tune_malloc({}))
for size in (1 << 20, 8 << 20):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    print(size, libc.mallinfo2().hblks - before)
    libc.free(block)
"""


def _probe(mode: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.splitlines()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_request_sized_blocks_come_from_the_heap_once_tuned() -> None:
    assert _probe("default") == ["1048576 1", "8388608 1"]  # glibc's default: each its own mapping
    said, *blocks = _probe("tuned")
    assert said.startswith("malloc: blocks up to 4 MiB from the heap")
    assert blocks == ["1048576 0", "8388608 1"]  # 1 MiB from the heap; above the threshold, still mapped


def test_the_operators_settings_are_left_alone() -> None:
    for name in ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_"):
        assert tune_malloc({name: "1"}) == f"malloc: left as configured ({name} set)"
