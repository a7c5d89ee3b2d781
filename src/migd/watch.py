"""migd-watch: re-check the live MIG layout against the config and log drift, under systemd's watchdog.

Two threads:
- the **checker** wakes every watch_interval (or on SIGHUP), opens NVML, reads, closes (no handle is held between
  checks), and logs drift once per change and once when it clears; it skips a round while apply holds the lock;
- the **main thread** sends WATCHDOG=1 only while the checker is not stuck inside one check for longer than the
  watchdog interval, so a hung NVML call stops the pings and systemd kills and restarts the service
  (Result=watchdog). STATUS= carries a one-line summary.

drift_policy = "reapply" re-applies a drifted GPU, but only when none of its instances has processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Dict, Optional, Tuple

from . import config as config_mod
from . import errors as E
from . import publish, report, runstate
from .errors import ConfigError, DriverError, LockBusy
from .log import get_logger
from .plan import plan_gpu

log = get_logger()


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


class Watcher:
    def __init__(self, config_path: str, simulate: Optional[str] = None, sim_state: Optional[str] = None,
                 notify: Optional[Notifier] = None):
        self.config_path = config_path
        self.simulate, self.sim_state = simulate, sim_state
        self.notify = notify or Notifier()
        # Invalid (or, as root, not root's alone) at start: exit 2, systemd shows why.
        self.cfg = config_mod.load(config_path, owner=config_mod.trusted_owner())
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.reload_requested = False
        self.busy_since: Optional[float] = None  # monotonic start of the check in progress
        self.last: Dict[int, Tuple[str, str]] = {}  # gpu -> (status, found): log on change only
        self.checks = 0
        self.summary = "starting"
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    # --- main thread ------------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        checker = threading.Thread(target=self._checker, name="migd-checker", daemon=True)
        checker.start()
        log.info("watch_started", msg=f"watching {self.config_path} every {self.cfg.daemon.watch_interval:g} s",
                 interval=self.cfg.daemon.watch_interval, watchdog=self.watchdog_s)
        self.notify("READY=1")
        tick = min(self.watchdog_s / 3, 5.0) if self.watchdog_s else 5.0
        while not self.stopping.wait(tick):
            if self._progressing():
                self.notify("WATCHDOG=1")
            self.notify(f"STATUS={self.summary}")
        self.notify("STOPPING=1")
        log.info("watch_stopped", msg="migd-watch stopping", checks=self.checks)
        return E.EXIT_OK

    def _progressing(self) -> bool:
        started = self.busy_since
        limit = self.watchdog_s if self.watchdog_s else 60.0
        if started is not None and time.monotonic() - started > limit:
            if not getattr(self, "_hang_logged", False):
                self._hang_logged = True
                log.error("check_hung", msg=f"a layout check has not returned for {time.monotonic() - started:.0f} s;"
                                            " withholding the watchdog ping so systemd restarts migd-watch")
            return False
        return True

    def _on_hup(self, *_) -> None:
        self.reload_requested = True
        self.wake.set()

    def _on_term(self, *_) -> None:
        self.stopping.set()
        self.wake.set()

    # --- checker thread ---------------------------------------------------------------------------------------

    def _checker(self) -> None:
        while not self.stopping.is_set():
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            self.busy_since = time.monotonic()
            try:
                self.check_once()
            except Exception as e:  # never let the checker die silently: that would look like progress
                log.error("check_failed", msg=f"layout check failed: {type(e).__name__}: {e}", exc_info=True)
            finally:
                self.busy_since = None
            self.wake.wait(self.cfg.daemon.watch_interval)
            self.wake.clear()

    def _reload(self) -> None:
        try:
            self.cfg = config_mod.load(self.config_path, owner=config_mod.trusted_owner())
            self.last.clear()  # re-log the state against the new config
            log.info("config_reloaded", msg=f"reloaded {self.config_path}", entries=len(self.cfg.entries))
        except ConfigError as e:
            log.error("config_invalid", msg=f"keeping the previous config: {str(e).splitlines()[0]}")

    def check_once(self) -> Dict[int, str]:
        """One round: returns gpu -> status ("ok", "drift", "pending", "error"); logs changes only.

        The round holds /run/migd/lock shared, so an apply (exclusive) never runs under it: the check never reads a
        half-applied layout, and an apply waits for the check in progress. While an apply runs, the round is
        skipped."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(runstate.locked(0, wait=False, shared=True))
            except LockBusy:
                log.debug("check_skipped", msg="apply in progress (lock held): skipping this check")
                return {}
            except (OSError, runstate.RunDirError) as e:  # e.g. run by hand without /run/migd: check unlocked
                log.debug("check_unlocked", msg=f"checking without the lock: {e}")
            statuses, reapply = self._check()
        if reapply:
            self._reapply(reapply)
        bad = {s for s in statuses.values() if s != "ok"}
        self.summary = (f"{len(statuses)} GPU(s) match the layout" if not bad else
                        f"{sum(1 for s in statuses.values() if s != 'ok')} of {len(statuses)} GPU(s): "
                        + ", ".join(sorted(bad))) + f" (check #{self.checks})"
        return statuses

    def _check(self) -> Tuple[Dict[int, str], list]:
        from . import layout
        from .backend import make_backend

        self.checks += 1
        backend = make_backend(simulate=self.simulate, sim_state=self.sim_state, read_only=True)
        statuses: Dict[int, str] = {}
        reapply = []
        try:
            backend.open()
            infos = backend.gpus()
            for info in infos:
                if info.lost:  # once per change, like drift
                    self._report(info.index, "error", "", "lost (fell off the bus); see dmesg for Xid errors")
                    statuses[info.index] = "lost"
            desired = layout.desired_for(self.cfg, infos)
            for i, d in desired.items():
                state = backend.state(i)
                status, expected, found = report.compare(infos[i], state, plan_gpu(infos[i], d, state), d.mig)
                self._report(i, status, expected, found)
                statuses[i] = status
                if status == "drift" and self.cfg.daemon.drift_policy == "reapply":
                    if any(gi.busy for gi in state.instances):
                        log.warning("drift_not_reapplied", msg=f"GPU {i}: drifted, but its instances have "
                                    "processes: not re-applying", gpu=i)
                    else:
                        reapply.append(i)
        except ConfigError as e:
            self._report(-1, "error", "", str(e).splitlines()[0])
        except DriverError as e:
            self._report(-1, "error", "", str(e))
        finally:
            publish.after_check(self.cfg, backend)  # metrics file, under the check's shared lock
            backend.close()
        return statuses, reapply

    def _report(self, gpu: int, status: str, expected: str, found: str) -> None:
        previous = self.last.get(gpu)
        if previous == (status, found):
            return
        self.last[gpu] = (status, found)
        where = f"GPU {gpu}" if gpu >= 0 else "migd-watch"
        if status == "ok":
            if previous is not None:
                log.info("drift_cleared", msg=f"{where}: layout matches again: {found}", gpu=gpu, found=found)
            else:
                log.info("layout_ok", msg=f"{where}: layout matches: {found}", gpu=gpu, found=found)
        elif status == "error":
            log.error("check_error", msg=f"{where}: cannot check: {found}", gpu=gpu, error=found)
        else:
            log.warning("drift", msg=f"{where}: {status}: expected {expected}; found {found}", gpu=gpu,
                        status=status, expected=expected, found=found)

    def _reapply(self, gpus) -> None:
        from . import apply as engine
        from . import layout
        from .backend import make_backend

        try:
            with runstate.locked(self.cfg.daemon.lock_timeout):
                backend = make_backend(simulate=self.simulate, sim_state=self.sim_state)
                backend.open()
                try:
                    started, results = time.monotonic(), {}
                    infos = backend.gpus()
                    desired = layout.desired_for(self.cfg, infos)
                    for i in gpus:
                        r = results[i] = engine.apply_gpu(backend, infos[i], desired[i],
                                                          self.cfg.daemon.persistence_mode or None)
                        log.info("drift_reapplied", msg=f"GPU {i}: re-applied after drift: {r.outcome}", gpu=i,
                                 outcome=r.outcome)
                    publish.after_apply(backend, self.cfg, desired, results, started)  # CDI refresh, metrics
                finally:
                    backend.close()
        except (LockBusy, DriverError) as e:
            log.warning("reapply_skipped", msg=f"not re-applying now: {e}")
