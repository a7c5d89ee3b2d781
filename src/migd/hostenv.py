"""The host environment: everything migd touches outside the GPU, in one object built once at the edge.

Run directory (lock, state.json, devices.env, per-boot profile cache), state directory (reboot-once marker,
persistent caches), the Prometheus textfile default, every process migd starts (`systemctl`), the reboot, whether
the system is still booting, the boot id, the host name, what of a driver is installed, and the clock.

`real()` is the host's own. Simulated GPUs bring their own (`migd.sim.environment`): its run and state directories
belong to the simulated host, its systemctl and reboot act on the simulated host (a reboot reboots it, stopped
units are recorded), so a simulated run cannot reach the real machine by construction: nothing below the edge
opens a host path or starts a process except through this object.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence

from ._record import dataclass

if TYPE_CHECKING:
    from .driverfiles import DriverFiles
    from .hostnames import HostName

RUN_DIR = "/run/migd"
STATE_DIR = "/var/lib/migd"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
MIG_MINORS = "/proc/driver/nvidia-caps/mig-minors"  # Debian's prometheus-node-exporter textfile collector


class Clock(Protocol):
    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock (a class, not the `time` module, so tests can hand in a stepped one)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Systemctl(Protocol):
    def __call__(self, verb: str, units: Sequence[str], no_block: bool = False,
                 quiet: bool = False) -> Optional[str]: ...


def _no_notes() -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class HostEnv:
    """What one run of migd may touch outside the GPU. Built once at the edge (cli, boot, watch), passed down."""

    simulated: bool
    run_dir: str  # lock, state.json, devices.env, profiles.json (per boot)
    state_dir: str  # survives reboots: reboot-once marker, persistent profile cache
    textfile_dir: str  # the default metrics file goes here when the directory exists
    systemctl: Systemctl  # the only way to start a process: `systemctl VERB -- UNIT...`; None or its complaint
    unit_load_state: Callable[[str], Optional[str]]  # systemd's LoadState of a unit, None when it cannot say
    unit_property: Callable[[str, str], Optional[str]]  # one systemd property of a unit (After, Before, ...), or None
    reboot: Callable[[], Optional[str]]  # queue a reboot; None or why it was refused
    system_booting: Callable[[], bool]  # is the system still starting up (the only time migd may reboot it)
    boot_id: Callable[[], str]
    hostname: Callable[[], HostName]  # the name `hosts = [...]` is matched against, and its source
    driver_files: Callable[[], DriverFiles]  # what of an NVIDIA driver is installed
    clock: Clock
    volatile: Callable[[str], Optional[str]]  # the file system a path is on when it does not survive a reboot
    #                                          (tmpfs, ramfs), else None
    notes: Callable[[], Sequence[str]]  # what `migd status` says about the host: a simulated one's systemctl calls
    #                                     and stopped units; nothing for a real one
    mig_minors: Callable[[], str] = lambda: MIG_MINORS  # the driver's MIG device minors table (export --format slurm)

    def metrics_path(self, setting: Optional[str]) -> str:
        """[daemon] metrics_file, or (unset) migd.prom in the textfile directory when it exists; "" = none."""
        if setting is not None:
            return setting
        return os.path.join(self.textfile_dir, "migd.prom") if os.path.isdir(self.textfile_dir) else ""


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _hostname() -> HostName:
    """The static host name (/etc/hostname): final before the network names the host (hostnames.static_host)."""
    from . import hostnames

    return hostnames.static_host()


def _system_booting() -> bool:
    """True while systemd's manager is still starting (`systemctl is-system-running`: initializing/starting)."""
    from . import clients

    return clients.system_state() in ("initializing", "starting")  # None (cannot tell): never reboot on a guess


def _systemctl(verb: str, units: Sequence[str], no_block: bool = False, quiet: bool = False) -> Optional[str]:
    from . import clients

    return clients.systemctl(verb, units, no_block=no_block, quiet=quiet)


def _load_state(unit: str) -> Optional[str]:
    from . import clients

    return clients.load_state(unit)


def _unit_property(unit: str, name: str) -> Optional[str]:
    from . import clients

    return clients.unit_property(unit, name)


def _reboot() -> Optional[str]:
    """Queue a reboot without waiting for it: from inside migd.service's start job a blocking `systemctl reboot`
    would wait on a job that has to stop this very unit."""
    return _systemctl("reboot", (), no_block=True)


_VOLATILE_MAGIC = {0x01021994: "tmpfs", 0x858458F6: "ramfs"}  # statfs(2) f_type, linux/magic.h


def volatile_fs(path: str) -> Optional[str]:
    """"tmpfs"/"ramfs" when `path` (or, while it does not exist yet, its nearest existing parent) is on a file
    system that a reboot empties, else None (also when statfs cannot say: never refuse on a guess)."""
    import ctypes

    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type (a long) comes first on every Linux ABI
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.statfs(os.fsencode(probe), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return _VOLATILE_MAGIC.get(f_type)


def _driver_files() -> DriverFiles:
    from . import driverfiles

    return driverfiles.detect()


def real(run_dir: str = RUN_DIR, state_dir: str = STATE_DIR, textfile_dir: str = TEXTFILE_DIR) -> HostEnv:
    """The machine migd runs on."""
    return HostEnv(simulated=False, run_dir=run_dir, state_dir=state_dir, textfile_dir=textfile_dir,
                   systemctl=_systemctl, unit_load_state=_load_state, unit_property=_unit_property, reboot=_reboot,
                   system_booting=_system_booting, boot_id=_boot_id, hostname=_hostname,
                   driver_files=_driver_files, clock=SystemClock(), volatile=volatile_fs,
                   notes=_no_notes)
