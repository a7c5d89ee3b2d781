"""Who runs a `migd apply` from a shell, for the audit trail in the journal (README "Logging": the audit trail).

Every change an apply makes is a journal event (gpu_applied, create_gi, apply_failed, ...), the same names boot
logs; run from a shell, each also carries who ran it: the real and effective uid, the kernel's login uid (set at
login by pam_loginuid, kept across sudo and su: /proc/self/loginuid), what sudo says (SUDO_USER, SUDO_UID) and
the terminal. SUDO_* come from the environment, which whoever runs migd as root controls: recorded as given,
beside the login uid the kernel vouches for. Every value is escaped: nothing here can break a journal line.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

UNSET_LOGINUID = 4294967295  # (uid_t)-1: no login session (a unit, a boot script)


def login_uid(proc_self: str = "/proc/self") -> Optional[int]:
    """The login uid, or None when there is none (not logged in: a system service) or it cannot be read."""
    try:
        with open(os.path.join(proc_self, "loginuid"), "rb") as f:
            raw = f.read(32)
    except OSError:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    return None if value == UNSET_LOGINUID else value


def terminal() -> str:
    """The controlling terminal of stdin/stdout/stderr (/dev/pts/3), or "" when none is a terminal."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return _printable(os.ttyname(fd))
        except OSError:
            continue
    return ""


def actor(proc_self: str = "/proc/self", environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The audit fields (journal MIGD_<KEY>): uid, euid, loginuid, sudo_user, sudo_uid, tty; absent ones left out."""
    env = os.environ if environ is None else environ
    out = {"uid": str(os.getuid()), "euid": str(os.geteuid())}
    auid = login_uid(proc_self)
    if auid is not None:
        out["loginuid"] = str(auid)
    for key in ("SUDO_USER", "SUDO_UID"):
        value = env.get(key)
        if value:
            out[key.lower()] = _printable(value[:64])
    tty = terminal()
    if tty:
        out["tty"] = tty
    return out


def describe(fields: Dict[str, str]) -> str:
    """"uid 0 (sudo by alice, uid 1000; login uid 1000) on /dev/pts/3" for the message line."""
    text = f"uid {fields['uid']}" + (f" (euid {fields['euid']})" if fields.get("euid") != fields["uid"] else "")
    extra = []
    if fields.get("sudo_user") or fields.get("sudo_uid"):
        extra.append("sudo by " + ", ".join(x for x in (fields.get("sudo_user", ""),
                                                       f"uid {fields['sudo_uid']}" if fields.get("sudo_uid") else "")
                                           if x))
    extra.append(f"login uid {fields['loginuid']}" if "loginuid" in fields else "no login session")
    text += f" ({'; '.join(extra)})"
    if fields.get("tty"):
        text += f" on {fields['tty']}"
    return text


def _printable(value: str) -> str:
    """Anything not printable (control bytes, undecodable bytes from the environment) as an escape."""
    return "".join(c if c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF else
                   (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("unicode_escape")
                    .decode("ascii")) for c in value)
