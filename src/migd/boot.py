"""`migd boot` (migd.service): wait for the NVIDIA driver while one can still appear, then apply through the engine.

nvmlInit failing at boot means one of three things: no driver is installed at all (a GPU-less host sharing a fleet
file: nothing will appear, so no waiting that would hold every later unit); one is installed but its module is not
loaded yet, or is still being built by DKMS (udev/modules-load/dkms still busy: wait up to driver_wait_timeout); or
the library is installed but there is no module for the running kernel and no build queued (a DKMS build that
failed after a kernel update: fail at once, saying so). `driverfiles` tells them apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence, Tuple

from . import driverfiles, notify
from . import errors as E
from .backend import Backend
from .driverfiles import DriverFiles
from .errors import DriverError, MigdError
from .hostenv import HostEnv
from .log import get_logger
from .model import Config, GpuEntry

if TYPE_CHECKING:
    from .engine import Engine

log = get_logger()

_DRIVER_ABSENT = (E.DRIVER_NOT_LOADED, E.LIBRARY_NOT_FOUND)


class NoDriverInstalled(MigdError):
    """Neither libnvidia-ml nor an nvidia kernel module is installed: waiting cannot help."""

    def __init__(self, found: DriverFiles):
        self.found = found
        super().__init__(f"no NVIDIA driver installed on this host ({found.describe()})")


class DriverNotLoaded(MigdError):
    """A driver is installed, but NVML did not come up within driver_wait_timeout."""


def wait_for_driver(make: Callable[[], Backend], timeout: float, env: HostEnv) -> Backend:
    """Open a backend, retrying with backoff while an installed NVIDIA driver is not loaded yet (what is installed:
    env.driver_files; waiting: env.clock).

    Raises NoDriverInstalled at the first failure when nothing of a driver is installed; DriverNotLoaded at once
    when the library is but no module can appear (none for this kernel, no build queued: looked at again before each
    retry, so a DKMS build that fails meanwhile ends the wait), after `timeout` seconds otherwise. Logs the wait
    once (info), each retry at debug, and the driver coming up."""
    clock = env.clock
    deadline = clock.monotonic() + timeout
    delay, attempt = 0.25, 0
    found = None
    while True:
        attempt += 1
        backend = make()
        try:
            backend.open()
            if attempt > 1:
                log.info("driver_ready", msg=f"NVIDIA driver ready after {attempt} attempts", attempts=attempt)
            return backend
        except DriverError as e:
            if e.code not in _DRIVER_ABSENT:
                raise
            code = E.code_name(e.code)
            if found is None:
                found = env.driver_files()
                if not found.installed:
                    raise NoDriverInstalled(found) from None
                if not found.module_may_appear:  # no module for this kernel and none being built: nothing to wait for
                    raise DriverNotLoaded(no_module_message(found)) from None
                log.info("driver_wait", msg=f"waiting up to {timeout:g} s for the NVIDIA driver to load ({code}): "
                                            f"{found.describe()}", code=code, library=found.library or "",
                         module=found.module or "")
            else:
                log.debug("driver_retry", msg=f"NVIDIA driver not loaded yet ({code}), attempt {attempt}",
                          attempt=attempt, code=code)
                now = env.driver_files()
                if now.installed and not now.module_may_appear:
                    raise DriverNotLoaded(no_module_message(now)) from None
            left = deadline - clock.monotonic()
            if left <= 0:
                raise DriverNotLoaded(not_loaded_message(found, timeout)) from None
            clock.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def no_module_message(found: DriverFiles) -> str:
    """The library is there, but no nvidia module for the running kernel and no build queued: failed at once."""
    if found.build is not None and found.build.failed_log:
        fix = f"fix the build ({found.build.failed_log}) or reinstall the driver for the running kernel"
    else:
        fix = "rebuild or reinstall the driver for the running kernel (`dkms status`)"
    return (f"{driverfiles.LIBRARY} installed but no nvidia kernel module for this kernel and no module build "
            f"queued: not waiting for the driver: {found.describe()}; {fix}")


def not_loaded_message(found: DriverFiles, timeout: float) -> str:
    after = f"after {timeout:g} s (driver_wait_timeout)"
    if found.module and not found.module_loaded:
        return (f"nvidia kernel module installed but not loaded {after}: {found.describe()}; see `dmesg` for why, "
                "`modprobe nvidia` to load it")
    if not found.module:
        return (f"{driverfiles.LIBRARY} installed but no nvidia kernel module for this kernel, none loaded {after}: "
                f"{found.describe()}; rebuild or reinstall the driver for the running kernel (`dkms status`)")
    return f"NVIDIA driver loaded but NVML not ready {after}: {found.describe()}; see `dmesg` and `nvidia-smi`"


def run(cfg: Config, open_backend: Callable[[], Backend], env: HostEnv,
        make_engine: Callable[[Backend], Engine], status: Callable[[str], None] = lambda _: None) -> int:
    """What migd.service does: nothing for a host no entry is for; else wait for the driver, apply every selected
    GPU through the engine, and with on_pending = "reboot-once" reboot once for a mode change left pending. Returns
    the exit code. Failures fail the unit, never the boot (nothing Requires= migd.service). `status` gets the
    unit's STATUS= line: the exit code in words, and why (notify.exit_status)."""
    try:
        code, why = _run(cfg, open_backend, env, make_engine)
    except MigdError as e:
        status(notify.exit_status(e.exit_code, str(e)))
        raise
    status(notify.exit_status(code, why))
    return code


def _run(cfg: Config, open_backend: Callable[[], Backend], env: HostEnv,
         make_engine: Callable[[Backend], Engine]) -> Tuple[int, str]:
    from . import layout, rebootonce
    from .engine import Outcome

    host = env.hostname()  # the static name: final now, before the network may rename the host
    mine = layout.for_host(cfg, host.name)
    fleet = any(entry.hosts for entry in cfg.entries)
    if fleet:  # which name `hosts = [...]` was matched against, said once per boot
        log.info("boot_host", msg=f"matching hosts = [...] against {E.printable(host.name)} ({host.source}): "
                                  f"{len(mine)} of {len(cfg.entries)} entries apply", host=host.name,
                 source=host.source)
    if not mine:  # no entry at all, or none for this host in a fleet file
        what = f"{cfg.path} selects no GPU on this host{f' ({E.printable(host.name)})' if fleet else ''}"
        log.info("boot_nothing", msg=f"{what}: nothing to do")
        return E.EXIT_OK, f"nothing to do: {what}"
    try:
        backend = wait_for_driver(open_backend, cfg.daemon.driver_wait_timeout, env)
    except NoDriverInstalled as e:
        return _no_driver(e, mine)
    try:
        engine = make_engine(backend)
        desired = engine.desired()
        log.info("boot_apply", msg=f"applying {cfg.path} to {len(desired)} GPU(s)", gpus=sorted(desired))
        result = engine.apply(desired)  # every outcome and a record error are logged: nothing printed twice
        code = result.exit_code
        uuids = {info.index: info.uuid for info in engine.infos()}
        pending = [rebootonce.Pending(i, uuids.get(i, "")) for i, r in result.gpus.items()
                   if r.outcome == Outcome.PENDING]
        if rebootonce.after_boot_apply(cfg, pending, code, env):
            # the reboot is queued: the change takes effect then
            gpus = ", ".join(f"GPU {p.gpu}" for p in pending)
            return E.EXIT_OK, f"rebooting once to let MIG mode take effect on {gpus}"
        level = log.info if code == E.EXIT_OK else log.error
        level("boot_done", msg=f"boot apply finished: exit {code}", exit=code)
        bad = [r.message for r in result.gpus.values() if r.exit_code != E.EXIT_OK]
        why = "; ".join(bad + ([result.record_error] if result.record_error else [])) or "; ".join(
            r.message for r in result.gpus.values())
        return code, why
    finally:
        backend.close()


def _no_driver(e: NoDriverInstalled, entries: Sequence[GpuEntry]) -> Tuple[int, str]:
    """No driver installed: nothing to do for a fleet file's "all"/glob entries (they fit GPU-less hosts); an
    error when an entry names a GPU by index, UUID or PCI id (the admin expects that GPU here)."""
    from . import layout

    named = layout.naming_a_gpu(entries)
    if not named:
        log.info("no_driver", msg=f"{e}: nothing to do", library="", module="")
        return E.EXIT_OK, f"{e}: nothing to do"
    first = named[0]
    why = f"{e}, but {first.label} ({first.where}) selects GPU {first.selector}: install the NVIDIA driver"
    log.error("no_driver", msg=why, exit=E.EXIT_FAILURE)
    return E.EXIT_FAILURE, why
