"""migd-generator: a systemd generator that orders [daemon] gpu_clients after migd.service (systemd.generator(7)).

systemd runs it at every boot and daemon-reload, before loading units, as
``migd-generator NORMAL_DIR EARLY_DIR LATE_DIR``. For each gpu_clients item it writes
``NORMAL_DIR/<unit, template or prefix>.service.d/50-migd.conf`` with ``After=migd.service``, so the admin's unit
files stay untouched. The generator rules: fast (the config parser only: no NVML, no structlog, no process), and it
never fails the boot: a config it cannot read or that is invalid gives no drop-ins, one line in the journal (see `say`)
and exit status 0.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from . import config as config_mod
from . import gpuclients
from .errors import ConfigError

NAME = "migd-generator"
KMSG = "/dev/kmsg"
DEVLOG = "/run/systemd/journal/dev-log"


def generate(normal_dir: str, config_path: str = config_mod.DEFAULT_PATH) -> List[str]:
    """Write the drop-ins for the config's gpu_clients; returns the files written. Raises ConfigError."""
    cfg = config_mod.load(config_path, owner=config_mod.trusted_owner())
    source = ", ".join(cfg.files)
    written = []
    for pattern in gpuclients.patterns(cfg.daemon.gpu_clients):
        d = os.path.join(normal_dir, pattern.dropin_dir)
        path = os.path.join(d, gpuclients.DROPIN_NAME)
        if path in written:
            continue  # "vllm@*.service" and "vllm@.service": one template drop-in
        os.makedirs(d, mode=0o755, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(gpuclients.dropin_text(source))
        written.append(path)
    return written


def say(message: str, priority: int = 3, kmsg: str = KMSG, devlog: str = DEVLOG) -> None:
    """One line for the journal, with SYSLOG_IDENTIFIER=migd-generator: through /dev/kmsg, as systemd's own
    generators log (journald imports it; the only way at boot, before journald runs); where there is none (a
    container), journald's syslog socket, there from the first daemon-reload on; else stderr, which systemd 252
    discards."""
    line = f"<{priority}>{NAME}[{os.getpid()}]: {message}".encode("utf-8", "backslashreplace")[:1000]
    try:
        fd = os.open(kmsg, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        return
    except OSError:
        pass
    try:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(line, devlog)
        return
    except OSError:
        pass
    sys.stderr.write(f"{NAME}: {message}\n")


def main(argv: Sequence[str], config_path: str = config_mod.DEFAULT_PATH, kmsg: str = KMSG,
         devlog: str = DEVLOG) -> int:
    """Always 0: a generator that fails leaves the boot to go on without it anyway, and says so less clearly."""
    if len(argv) not in (2, 4):
        say("usage: migd-generator NORMAL_DIR [EARLY_DIR LATE_DIR] (systemd runs it; see systemd.generator(7))",
            kmsg=kmsg, devlog=devlog)
        return 0
    why: Optional[str] = None
    try:
        generate(argv[1], config_path)
    except ConfigError as e:
        first = e.problems[0]
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        why = f"{first}{more}"
    except Exception as e:  # noqa: BLE001 - the boot must go on whatever happened here
        why = f"{type(e).__name__}: {e}"
    if why:
        say(f"no GPU client ordered after migd.service: {why}", kmsg=kmsg, devlog=devlog)
    return 0


def run() -> None:
    """The installed script's entry point."""
    sys.exit(main(sys.argv))
