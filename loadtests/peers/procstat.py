"""CPU time of a server process and its children, from `/proc/<pid>/stat` (Linux).

A server's CPU per request is (CPU after - CPU before) / requests over a timed run. The CPU of a
tree is utime + stime of the process and every live descendant (worker processes, KServe's
helpers), plus cutime + cstime of each: the time of children that already exited and were
reaped. Threads are already summed into their process's fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    utime: int  # clock ticks, this process's threads in user mode
    stime: int  # ... in kernel mode
    cutime: int  # reaped children, user mode
    cstime: int  # reaped children, kernel mode

    @property
    def ticks(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """One `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the last `)`."""
    head, _, tail = text.rpartition(")")
    if not head:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()  # fields[0] is field 3 (state), so field n is fields[n - 3]
    return ProcStat(
        pid=pid,
        ppid=int(fields[4 - 3]),
        utime=int(fields[14 - 3]),
        stime=int(fields[15 - 3]),
        cutime=int(fields[16 - 3]),
        cstime=int(fields[17 - 3]),
    )


def _read(path: Path) -> ProcStat | None:
    try:
        return parse_stat(path.read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone between listing and reading, or not a process folder


def tree_cpu_seconds(pid: int, proc: Path = PROC, ticks_per_second: int | None = None) -> float:
    """CPU seconds used so far by `pid`, its live descendants and their reaped children."""
    hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
    stats = [stat for entry in proc.iterdir() if entry.name.isdigit() if (stat := _read(entry / "stat"))]
    children: dict[int, list[ProcStat]] = {}
    root = None
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
        if stat.pid == pid:
            root = stat
    if root is None:
        raise ProcessLookupError(f"no process {pid} under {proc}")
    ticks, pending = 0, [root]
    while pending:
        stat = pending.pop()
        ticks += stat.ticks
        pending.extend(children.get(stat.pid, ()))
    return ticks / hz
