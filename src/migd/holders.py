"""Who holds a GPU: processes with its device node open, and the systemd unit each belongs to.

This is what `fuser -v /dev/nvidia*` shows in the runbook, plus the unit name, so a pending mode change can say
"held by nv-hostengine (pid 2180, nvidia-dcgm.service)".
"""

from __future__ import annotations

import os
from ._record import dataclass
from typing import Iterable, List, Optional

from .errors import printable

__all__ = ["Holder", "describe", "pids_holding", "printable", "unit_of"]

PROC = "/proc"


@dataclass(frozen=True)
class Holder:
    pid: int
    comm: str
    unit: Optional[str]

    def __str__(self) -> str:
        return f"{printable(self.comm)} (pid {self.pid}{', ' + printable(self.unit) if self.unit else ''})"


def _read_text(path: str) -> str:
    """A /proc file's text. Its bytes are the process's to choose (prctl(PR_SET_NAME), cgroup names a delegated
    user creates): never assumed UTF-8, undecodable bytes kept visible as \\xNN."""
    with open(path, "rb") as f:
        return f.read(65536).decode("utf-8", errors="backslashreplace")


def pids_holding(paths: Iterable[str], proc: str = PROC) -> List[int]:
    """PIDs with any of `paths` open. Unreadable processes are skipped (not root, or gone meanwhile)."""
    wanted = {os.path.realpath(p) for p in paths}
    found = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        fd_dir = os.path.join(proc, name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in wanted:
                found.append(int(name))
                break
    return sorted(found)


def unit_of(pid: int, proc: str = PROC) -> Optional[str]:
    """The systemd unit a process runs in, from its cgroup path (e.g. .../system.slice/nvidia-dcgm.service)."""
    try:
        lines = _read_text(os.path.join(proc, str(pid), "cgroup")).splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")) and not part.startswith("init.scope"):
                return part
    return None


def comm_of(pid: int, proc: str = PROC) -> str:
    try:
        return _read_text(os.path.join(proc, str(pid), "comm")).strip()
    except OSError:
        return "?"


def describe(pids: Iterable[int], proc: str = PROC) -> List[Holder]:
    out = []
    for pid in pids:
        unit = unit_of(pid, proc)
        out.append(Holder(pid, printable(comm_of(pid, proc)), printable(unit) if unit is not None else None))
    return out
