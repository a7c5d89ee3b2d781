"""/run/migd: the lock that serializes boot apply, admin apply and the watchdog, and what apply leaves behind.

- `lock`: flock on /run/migd/lock; a second migd waits up to lock_timeout, then exits 5 (busy) saying who holds it.
- `state.json`: what was applied, when, per GPU: instances, placements, MIG UUIDs, names.
- `devices.env`: `MIGD_<NAME>=MIG-…` for named instances (unique names), `MIGD_GPU<i>_<NAME>` always, and
  `MIGD_GPU<i>_MIG<k>` by MIG device order, so docker compose files say ${MIGD_TRAIN} instead of a UUID that
  changes at every boot.
Files are written atomically (temp file + rename) with mode 0644 under a 0755 directory owned by root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from typing import Dict, Iterator, List, Optional

from .errors import LockBusy

RUN_DIR = "/run/migd"


def run_dir() -> str:
    return os.environ.get("MIGD_RUN_DIR") or RUN_DIR


def ensure_run_dir() -> str:
    d = run_dir()
    os.makedirs(d, mode=0o755, exist_ok=True)
    return d


@contextlib.contextmanager
def locked(timeout: float, wait: bool = True) -> Iterator[None]:
    """Hold /run/migd/lock. Raises LockBusy after `timeout` seconds (at once when wait is False)."""
    path = os.path.join(ensure_run_dir(), "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + (timeout if wait else 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    raise LockBusy(f"another migd holds {path}{' (' + holder + ')' if holder else ''}; "
                                   f"gave up after {timeout:g} s") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def is_locked() -> bool:
    """True while another process holds the lock (the watchdog skips its check then)."""
    path = os.path.join(run_dir(), "lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def env_name(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.upper())


def write_results(gpus: List[dict], config_path: str) -> None:
    """gpus: [{index, uuid, name, outcome, mig, instances: [{name, profile, placement, gi_id, uuid}]}]."""
    d = ensure_run_dir()
    doc = {"applied_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config_path, "boot_id": _boot_id(),
           "gpus": gpus}
    atomic_write(os.path.join(d, "state.json"), json.dumps(doc, indent=2) + "\n")
    atomic_write(os.path.join(d, "devices.env"), devices_env(gpus))


def devices_env(gpus: List[dict]) -> str:
    lines = ["# Written by migd at every apply: MIG device UUIDs by name. Use in docker compose as ${MIGD_<NAME>}."]
    counts: Dict[str, int] = {}
    for g in gpus:
        for inst in g.get("instances", []):
            if inst.get("name"):
                counts[inst["name"]] = counts.get(inst["name"], 0) + 1
    for g in gpus:
        for k, inst in enumerate(g.get("instances", [])):
            uuid = inst.get("uuid")
            if not uuid:
                continue
            lines.append(f"MIGD_GPU{g['index']}_MIG{k}={uuid}")
            if inst.get("name"):
                lines.append(f"MIGD_GPU{g['index']}_{env_name(inst['name'])}={uuid}")
                if counts[inst["name"]] == 1:
                    lines.append(f"MIGD_{env_name(inst['name'])}={uuid}")
    return "\n".join(lines) + "\n"


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None
