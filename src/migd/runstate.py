"""/run/migd: the lock that serializes boot apply, admin apply and the watchdog, and what apply leaves behind.

- `lock`: flock on /run/migd/lock; a second migd waits up to lock_timeout, then exits 5 (busy) saying who holds it.
- `state.json`: what was applied, when, per GPU: instances, placements, MIG UUIDs, names.
- `devices.env`: MIG device UUIDs by name (see devices_env), so docker compose files say ${MIGD_TRAIN} instead
  of a UUID that changes at every boot.
Files are written atomically (temp file + rename) with mode 0644 under a 0755 directory owned by root; the lock is
0600 (a lock file others can open is a lock others can hold). A run directory owned by someone else or writable by
others is refused, never written into.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .errors import LockBusy, MigdError
from .model import name_variable

RUN_DIR = "/run/migd"
DIR_MODE = 0o755  # others read state.json and devices.env (docker compose --env-file)
FILE_MODE = 0o644
LOCK_MODE = 0o600  # flock needs only an open file: a lock others can open is a lock others can hold (a DoS)


class RunDirError(MigdError):
    """/run/migd is not what migd made it: owned by someone else, writable by others, or not a directory."""


def ensure_run_dir(directory: str) -> str:
    """Create the run directory (0755), or check the one that is there: a directory (not a symlink) owned by us and
    writable by nobody else, so no one can plant files or links where migd writes as root."""
    d = directory
    try:
        os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)  # whatever the umask
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        return ensure_run_dir(directory)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"{d} is not a directory: remove it (migd recreates it)")
    if st.st_uid != os.geteuid():
        raise RunDirError(f"{d} is owned by uid {st.st_uid}, not {os.geteuid()}: remove it (migd recreates it)")
    if st.st_mode & 0o022:
        raise RunDirError(f"{d} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}): "
                          f"chmod go-w {d}")
    return d


def _open_lock(path: str, create: bool) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, LOCK_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunDirError(f"{path} is not a regular file: remove it")
        # The lock is truncated and chmod'ed: as a hard link (or someone else's file) that would hit another file.
        if st.st_nlink != 1:
            raise RunDirError(f"{path} has {st.st_nlink} hard links: it may be another file planted as the lock; "
                              f"remove it (migd recreates it)")
        if st.st_uid != os.geteuid():
            raise RunDirError(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: remove it (migd recreates it)")
        if stat.S_IMODE(st.st_mode) != LOCK_MODE:
            os.fchmod(fd, LOCK_MODE)  # a lock file left by an older migd with mode 0644
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(timeout: float, wait: bool = True, shared: bool = False, *, directory: str) -> Iterator[None]:
    """Hold /run/migd/lock. Raises LockBusy after `timeout` seconds (at once when wait is False).

    shared: a reader's lock (the watchdog's check): readers run together, but never while an apply (exclusive)
    changes the GPUs, so a check never sees a half-applied layout and an apply never starts under a check."""
    path = os.path.join(ensure_run_dir(directory), "lock")
    fd = _open_lock(path, create=True)
    try:
        deadline = time.monotonic() + (timeout if wait else 0)
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _holders(fd)
                    raise LockBusy(f"another migd holds {path}{' (' + holder + ')' if holder else ''}; "
                                   f"gave up after {timeout:g} s") from None
                time.sleep(0.1)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def check_lock(timeout: float, *, directory: str) -> Iterator[None]:
    """The lock a check (`migd check`, each migd-watch round) holds: shared, so it never reads a half-applied layout.
    An apply holding it past `timeout`: LockBusy (`migd check` fails with exit 5, migd-watch skips the round). A run
    dir this user cannot use (run by hand without /run/migd): nothing to serialize with, so it checks unlocked and
    says so (debug)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(timeout, shared=True, directory=directory))
        except LockBusy:
            raise
        except (OSError, RunDirError) as e:
            from .log import get_logger

            get_logger().debug("check_unlocked", msg=f"checking without the lock: {e}")
        yield


def _holders(fd: int) -> str:
    """Who holds the lock: from /proc/locks (the kernel's word), else the pid the last exclusive holder wrote."""
    try:
        st = os.fstat(fd)
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        pids = []
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":  # "->": a waiter, not a holder
                    continue
                if parts[5] == inode and parts[4].isdigit() and int(parts[4]) not in pids:
                    pids.append(int(parts[4]))
        if pids:
            from .holders import describe

            return ", ".join(str(h) for h in describe(pids))
    except (OSError, ValueError):
        pass
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def atomic_write(path: str, text: str, mode: int = FILE_MODE) -> None:
    """Write a file so that readers see the old content or the new, never a mix: a fresh temp file (O_EXCL and
    O_NOFOLLOW, so nothing planted there is followed or reused), fsync, chmod, rename over the target."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
            os.fchmod(fd, mode)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_results(gpus: List[Dict[str, Any]], config_path: str, simulated: bool = False, *, directory: str,
                  boot_id: Optional[str], unmanaged: Sequence[int] = ()) -> None:
    """gpus: schema.gpu() objects with `outcome` and `message` (README "JSON output"). unmanaged: GPUs whose
    instances another tool owns (instances = "unmanaged"): listed in state.json, named in devices.env only by a
    comment (they come and go with that tool: a variable would go stale)."""
    from . import schema

    d = ensure_run_dir(directory)
    doc = schema.state_file(gpus, config_path, time.strftime("%Y-%m-%dT%H:%M:%S%z"), boot_id, simulated)
    atomic_write(os.path.join(d, "state.json"), schema.dumps(doc) + "\n")
    atomic_write(os.path.join(d, "devices.env"), devices_env(gpus, unmanaged))


def devices_env(gpus: List[Dict[str, Any]], unmanaged: Sequence[int] = ()) -> str:
    """MIG device UUIDs as variables. Per GPU i, MIG devices (compute instances) counted k = 0, 1, ... in MIG device
    order (GPU instances by placement, their compute instances by placement): MIGD_GPU<i>_MIG<k>. A named instance:
    MIGD_GPU<i>_<NAME> (and MIGD_<NAME> where the name is used once on the host) -> its first compute instance, and
    with several compute instances also MIGD_GPU<i>_<NAME>_CI<j> (and MIGD_<NAME>_CI<j>) for each. A variable that
    would be written twice with different values is left out (with a comment), never written ambiguously; config
    validation refuses the names that could cause that (see config.py)."""
    lines = ["# Written by migd at every apply: MIG device UUIDs by name. Use in docker compose as ${MIGD_<NAME>}."]
    lines += [f"# GPU {i}: MIG mode only (instances = \"unmanaged\"): its MIG devices are another tool's, not listed"
              for i in unmanaged]
    gpus = [g for g in gpus if g.get("index") not in set(unmanaged)]
    counts: Dict[str, int] = {}
    for g in gpus:
        for inst in g.get("instances", []):
            if inst.get("name"):
                var = name_variable(inst["name"])
                counts[var] = counts.get(var, 0) + 1
    values: Dict[str, List[str]] = {}  # variable -> every value something wants it to have, in order
    for g in gpus:
        k = 0
        for inst in g.get("instances", []):
            uuids = [ci["uuid"] for ci in inst.get("compute", []) if ci.get("uuid")]
            for uuid in uuids:
                values.setdefault(f"MIGD_GPU{g['index']}_MIG{k}", []).append(uuid)
                k += 1
            if not inst.get("name") or not uuids:
                continue
            var = name_variable(inst["name"])
            prefixes = [f"MIGD_GPU{g['index']}_{var}"] + ([f"MIGD_{var}"] if counts[var] == 1 else [])
            for prefix in prefixes:
                values.setdefault(prefix, []).append(uuids[0])
                if len(uuids) > 1:
                    for j, uuid in enumerate(uuids):
                        values.setdefault(f"{prefix}_CI{j}", []).append(uuid)
    for var, vals in values.items():
        if len(vals) == 1:
            lines.append(f"{var}={vals[0]}")
        else:
            lines.append(f"# {var} left out: {len(vals)} MIG devices would have this name")
    return "\n".join(lines) + "\n"
