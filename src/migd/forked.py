"""Work done in a short-lived forked child: how migd-watch reads the GPUs without ever holding the driver library.

libnvidia-ml keeps ~20 MiB mapped after its first nvmlInit, and nvmlShutdown does not give it back (measured on an
H200, issue 12): a resident process that called it once holds it for ever. So migd-watch's resident process never
calls nvmlInit: each round, `call(fn, limit)` forks a child that runs `fn` (open NVML, read, compare, close, and a
re-apply if one is due), sends back what it returned and the events it logged (log.divert), and exits; the parent
logs those events (log.replay), so one process writes the journal and tests capture every event.

A child that has not answered within `limit` seconds (a call wedged in the driver) is killed with SIGKILL and
`Hung` is raised: the resident process goes on (it is never inside NVML itself) and reports it. A child killed
while inside the driver may stay unreapable until the driver lets go; it is reaped later (`reap`).

Fork, not spawn: the child starts with everything the parent imported (no interpreter start, no imports: a few ms
of CPU per round). The parent is migd-watch itself, so only its own trusted data crosses the pipe (pickle).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import time
from typing import Any, Callable, List, Set, TypeVar

T = TypeVar("T")

_MAX_REPLY = 64 << 20  # a reply is a few KB; a child sending more than this is broken
_unreaped: Set[int] = set()  # killed children not reaped yet (stuck in the driver)


class Hung(Exception):
    """The child did not answer within the limit; it was killed."""

    def __init__(self, pid: int, seconds: float):
        self.pid, self.seconds = pid, seconds
        super().__init__(f"no answer within {seconds:g} s; its reader process (pid {pid}) was killed")


class ChildFailed(Exception):
    """The child ended without an answer, or raised something that cannot be sent back (its type and text)."""


def call(fn: Callable[[], T], limit: float) -> T:
    """fn() in a forked child; its result, or its exception raised here. Raises Hung, ChildFailed."""
    from . import log

    reap()
    r, w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice (the child inherits buffers)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        _child(fn, w, log)
    os.close(w)
    try:
        data = _read(r, pid, limit)
    finally:
        os.close(r)
    if data is None:
        raise Hung(pid, limit)
    _wait(pid)
    if not data:
        raise ChildFailed("the reader process ended without an answer")
    outcome, value, events = pickle.loads(data)
    log.replay(events)
    if outcome == "raised":
        raise value
    if outcome == "failed":
        raise ChildFailed(value)
    return value  # type: ignore[no-any-return]


def _child(fn: Callable[[], Any], w: int, log: Any) -> None:
    code = 0
    try:
        # Not the parent's handlers, and no stopping half-way: systemd's SIGTERM to the unit's cgroup (or a ^C to
        # the process group) must not cut a re-apply between two changes; a round ends in well under the hang
        # limit, and a hung one is SIGKILLed (by the parent, or by systemd after TimeoutStopSec=).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        events: List[Any] = log.divert()
        try:
            reply: Any = ("ok", fn(), events)
        except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
            reply = ("raised", e, events)
        try:
            data = pickle.dumps(reply)
            pickle.loads(data)  # an exception that cannot be rebuilt there is sent as text
        except Exception:  # noqa: BLE001
            data = pickle.dumps(("failed", f"{type(reply[1]).__name__}: {reply[1]}", events))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child (it would run the parent's code)
        code = 1
    finally:
        os._exit(code)


def _read(r: int, pid: int, limit: float) -> Any:
    """The child's whole reply (b"" if it ended without one), or None when it was killed for taking too long."""
    chunks: List[bytes] = []
    size = 0
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        ready = select.select([r], [], [], max(left, 0.0))[0] if left > 0 else []
        if not ready:
            _kill(pid)
            return None
        chunk = os.read(r, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPLY:
            _kill(pid)
            return b""


REAP_WAIT_S = 2.0  # how long a killed child is waited for before it is left to reap() later


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _unreaped.add(pid)
    deadline = time.monotonic() + REAP_WAIT_S  # a killed process goes at once, unless stuck inside the driver
    while pid in reap() and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def reap() -> List[int]:
    """Reap killed children that have ended since; returns those still there."""
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _unreaped.discard(pid)
    return sorted(_unreaped)
