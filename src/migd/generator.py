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
TYPE_CHECKING = False  # not typing's: importing typing alone costs ~7 ms, as much as the rest of a quiet run
if TYPE_CHECKING:
    from typing import List, Sequence

NAME = "migd-generator"
DEFAULT_CONFIG = "/etc/migd.toml"  # config.DEFAULT_PATH (tests/test_gpuclients.py checks they agree)
KMSG = "/dev/kmsg"
DEVLOG = "/run/systemd/journal/dev-log"
_KEY = b"gpu_clients"


def may_set_gpu_clients(config_path: str) -> bool:
    """False only when neither the config nor a file in its drop-in directory can set gpu_clients: the key's name
    (or a TOML escape that could spell it in a quoted key) appears in none. Then nothing is parsed, and the common
    boot (no gpu_clients) costs the interpreter's start and a few reads. Anything unreadable: True, so the parser
    reports it."""
    paths = [config_path]
    directory = os.path.join(os.path.dirname(config_path), "migd.d")
    try:
        paths += [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(".toml")]
    except FileNotFoundError:
        pass
    except OSError:
        return True
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            return True
        if _KEY in data or b"\\u" in data or b"\\U" in data:
            return True
    return False


def generate(normal_dir: str, config_path: str = DEFAULT_CONFIG) -> List[str]:
    """Write the drop-ins for the config's gpu_clients; returns the files written. Raises ConfigError."""
    from . import config as config_mod
    from . import gpuclients

    cfg = config_mod.load(config_path, owner=config_mod.trusted_owner())
    source = ", ".join(cfg.files)
    written: List[str] = []
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


def main(argv: Sequence[str], config_path: str = DEFAULT_CONFIG, kmsg: str = KMSG, devlog: str = DEVLOG) -> int:
    """Always 0: a generator that fails leaves the boot to go on without it anyway, and says so less clearly."""
    if len(argv) not in (2, 4):
        say("usage: migd-generator NORMAL_DIR [EARLY_DIR LATE_DIR] (systemd runs it; see systemd.generator(7))",
            kmsg=kmsg, devlog=devlog)
        return 0
    why = ""
    try:
        if may_set_gpu_clients(config_path):  # the common case returns before importing the parser
            generate(argv[1], config_path)
    except Exception as e:  # noqa: BLE001 - the boot must go on whatever happened here
        from .errors import ConfigError

        if isinstance(e, ConfigError):
            more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
            why = f"{e.problems[0]}{more}"
        else:
            why = f"{type(e).__name__}: {e}"
    if why:
        say(f"no GPU client ordered after migd.service: {why}", kmsg=kmsg, devlog=devlog)
    return 0


def run() -> None:
    """The installed script's entry point."""
    sys.exit(main(sys.argv))
