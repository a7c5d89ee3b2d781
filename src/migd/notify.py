"""sd_notify for the units: STATUS= lines, and what an exit code means where systemd names it otherwise.

`systemctl status migd` shows an exit code with systemd's name for it (its exit-status table: 3 NOTIMPLEMENTED,
4 NOPERMISSION, 5 NOTINSTALLED, from the LSB init-script codes). migd's codes are documented and scripted against
(`migd check` exits 3 on drift, 4 when pending), so they stay; migd.service's STATUS= line says what the exit
means instead (NotifyAccess=main in the unit).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from . import errors as E

if TYPE_CHECKING:
    import socket

MEANINGS = {E.EXIT_OK: "ok", E.EXIT_FAILURE: "failure", E.EXIT_USAGE: "invalid configuration or usage",
            E.EXIT_DRIFT: "drift", E.EXIT_PENDING: "MIG mode change pending", E.EXIT_BUSY: "busy: lock held"}
# systemd's names (src/basic/exit-status.c) for migd's codes where they do not mean what migd means
MISLEADING = {E.EXIT_DRIFT: "NOTIMPLEMENTED", E.EXIT_PENDING: "NOPERMISSION", E.EXIT_BUSY: "NOTINSTALLED"}
STATUS_MAX = 400  # one line in `systemctl status`


class Notifier:
    """sd_notify (systemd's notify protocol, an AF_UNIX datagram to $NOTIFY_SOCKET); silent when not under systemd.

    `__call__(text, barrier=True)` then waits until systemd has read it (BARRIER=1, systemd >= 246): a process
    that exits right after its last STATUS= would otherwise race systemd, which drops a message from a main PID it
    has already reaped (NotifyAccess=main)."""

    def __init__(self) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path  # "@": the abstract namespace

    def __call__(self, text: str, barrier: bool = False) -> None:
        if not self._address:
            return
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode("utf-8", "backslashreplace"), self._address)
                if barrier:
                    _barrier(sock, self._address)
        except OSError:  # systemd gone or not listening: nothing to tell
            pass


def _barrier(sock: socket.socket, address: str, timeout_ms: int = 5000) -> None:
    """sd_notify_barrier(): send BARRIER=1 with the write end of a pipe; systemd closes its copy once it has
    processed every message before it, which the read end sees as a hang-up."""
    import select
    import socket

    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, w.to_bytes(4, sys.byteorder))], 0,
                     address)
        os.close(w)
        w = -1
        poll = select.poll()
        poll.register(r, select.POLLHUP)
        poll.poll(timeout_ms)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def exit_status(code: int, why: str) -> str:
    """The STATUS= line for a unit's exit: "exit 4 = MIG mode change pending (not NOPERMISSION, systemd's name for
    4): GPU 0: ..." - one line, at most STATUS_MAX characters."""
    meaning = MEANINGS.get(code, f"exit {code}")
    text = f"exit {code} = {meaning}"
    if code in MISLEADING:
        text += f" (not {MISLEADING[code]}, systemd's name for {code})"
    why = " ".join(why.split())
    if why:
        text += f": {why}"
    return text if len(text) <= STATUS_MAX else text[:STATUS_MAX - 1] + "…"
