"""sd_notify for the units: STATUS= lines, and what an exit code means where systemd names it otherwise.

`systemctl status migd` shows an exit code with systemd's name for it (its exit-status table: 3 NOTIMPLEMENTED,
4 NOPERMISSION, 5 NOTINSTALLED, from the LSB init-script codes). migd's codes are documented and scripted against
(`migd check` exits 3 on drift, 4 when pending), so they stay; migd.service's STATUS= line says what the exit
means instead (NotifyAccess=main in the unit).
"""

from __future__ import annotations

import os

from . import errors as E

MEANINGS = {E.EXIT_OK: "ok", E.EXIT_FAILURE: "failure", E.EXIT_USAGE: "invalid configuration or usage",
            E.EXIT_DRIFT: "drift", E.EXIT_PENDING: "MIG mode change pending", E.EXIT_BUSY: "busy: lock held"}
# systemd's names (src/basic/exit-status.c) for migd's codes where they do not mean what migd means
MISLEADING = {E.EXIT_DRIFT: "NOTIMPLEMENTED", E.EXIT_PENDING: "NOPERMISSION", E.EXIT_BUSY: "NOTINSTALLED"}
STATUS_MAX = 400  # one line in `systemctl status`


class Notifier:
    """sd_notify through sdnotify; silent when not under systemd (no NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        self._n = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._n = sdnotify.SystemdNotifier()

    def __call__(self, text: str) -> None:
        if self._n is not None:
            self._n.notify(text)


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
