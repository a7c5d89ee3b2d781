"""Loaded by every Python process started with this directory first on PYTHONPATH (tests/test_simulated_host.py):
an audit hook that refuses, and reports on stderr, anything a simulated migd run must never do to the real machine.

- a write outside the directories in $MIGD_GUARD_ALLOW (colon-separated): `open` for writing (builtin or os.open),
  rename/replace, mkdir/rmdir/remove, chmod/chown, link/symlink, truncate, utime;
- starting any program (subprocess, exec*, posix_spawn, spawn, system; a fork of migd itself is allowed, under
  this same hook);
- loading a native library other than Python's own (the real libnvidia-ml).

Each violation prints one `MIGD-GUARD-VIOLATION ...` line on stderr (fd 2, no file opened) and raises
PermissionError, so the test sees it even where migd handles the error.
"""

import os
import sys
import threading
from typing import Any, Tuple

_ALLOW = tuple(os.path.realpath(p) for p in os.environ.get("MIGD_GUARD_ALLOW", "").split(":") if p)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.rename": 2, "os.replace": 2, "os.mkdir": 1, "os.rmdir": 1, "os.remove": 1, "os.chmod": 1,
                "os.chown": 1, "os.link": 2, "os.symlink": 2, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1}
# os.fork is migd-watch's own reader process (forked.py): the same program, under this same hook; a program
# started (exec, spawn, system) is what must never happen.
_PROCESS_EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty",
                   "pty.spawn")


_DIR_FD_ARG = {"os.rename": (2, 3), "os.replace": (2, 3), "os.mkdir": (2,), "os.rmdir": (1,), "os.remove": (1,),
               "os.chmod": (2,), "os.chown": (3,), "os.link": (2, 3), "os.symlink": (2,), "os.utime": (4,)}
_opening = threading.local()  # os.open's dir_fd: its audit event does not carry it


def _under(dir_fd: object, path: object) -> object:
    """A path relative to a directory fd, made absolute (migd writes through directory fds: safefile)."""
    if not isinstance(dir_fd, int) or dir_fd < 0 or not isinstance(path, (str, bytes)):
        return path
    path = os.fsdecode(path)
    if os.path.isabs(path):
        return path
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)


def _allowed(path: object) -> bool:
    if isinstance(path, int):
        return True  # an fd opened earlier (that open was checked)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return True
    real = os.path.realpath(path)
    return any(real == a or real.startswith(a + os.sep) for a in _ALLOW)


def _violation(event: str, args: Tuple[Any, ...]) -> None:
    os.write(2, f"MIGD-GUARD-VIOLATION {event} {args!r}\n".encode("utf-8", "backslashreplace"))
    raise PermissionError(f"guard: {event} {args!r}")


def _hook(event: str, args: Tuple[Any, ...]) -> None:
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                 (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes and not _allowed(_under(getattr(_opening, "dir_fd", None), path)):
            _violation(event, args)
    elif event in _PATH_EVENTS:
        fds = [args[i] if i < len(args) else None for i in _DIR_FD_ARG.get(event, ())]
        for k, path in enumerate(args[:_PATH_EVENTS[event]]):
            if not _allowed(_under(fds[k] if k < len(fds) else (fds[0] if fds else None), path)):
                _violation(event, args)
    elif event in _PROCESS_EVENTS or event == "ctypes.dlopen" and args and args[0] is not None:
        _violation(event, args)


def _open(path, flags, mode=0o777, *, dir_fd=None, _real=os.open):
    _opening.dir_fd = dir_fd
    try:
        return _real(path, flags, mode, dir_fd=dir_fd)
    finally:
        _opening.dir_fd = None


if _ALLOW:
    os.open = _open
    sys.addaudithook(_hook)
