"""migd-watch: re-check the live MIG layout against the config and log drift, under systemd's watchdog.

Two threads:
- the **checker** wakes every watch_interval (or on SIGHUP), opens NVML, reads, closes (no handle is held between
  checks), and logs drift once per change and once when it clears; it skips a round while apply holds the lock;
- the **main thread** sends WATCHDOG=1 only while the checker is not stuck inside one check for longer than the
  watchdog interval, so a hung NVML call stops the pings and systemd kills and restarts the service
  (Result=watchdog). STATUS= carries a one-line summary that says what is wrong, if anything.

Every problem is logged once when it appears and once when it clears: per GPU (drift, lost, a re-apply held back
or given up) and per round (GPUs unreadable, the layout unusable, the check itself failing). A config that selects
no GPU on this host is watched without opening NVML at all.

drift_policy = "reapply" re-applies a drifted GPU through the same `Engine.apply` as `migd apply`; whether and when
(busy, backoff, given up) is decided by `reapply.ReapplyPolicy`, a pure object: this module reads, logs and loops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from . import config as config_mod
from . import errors as E
from . import forked, layout, publish, runstate
from .engine import ApplyResult, CheckStatus, ConfigChanged, Engine, GpuResult
from .layout import DesiredGpu
from .errors import ConfigError, DriverError, LockBusy
from .log import get_logger, lean
from .model import GpuState
from .reapply import ReapplyPolicy, ReapplyTrack, Say, Verdict, cannot_start
from .site import Site

log = get_logger()

KILL_GRACE_S = 10.0  # after the hang limit, the time a killed reader process is given to go
T = TypeVar("T")
# round problem -> the event (and text) that says it cleared; any other problem clears as check_recovered
_RECOVERED = {"read_failed": ("read_recovered", "GPUs readable again")}
_STATUS_WORDS = {CheckStatus.DRIFT: "drifted", CheckStatus.PENDING: "pending a MIG mode change",
                 CheckStatus.LOST: "lost", CheckStatus.ERROR: "unreadable"}


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


class GpuTrack(ReapplyTrack):
    """What the watcher remembers about one GPU between rounds, so each change is logged once: the re-apply
    policy's track, and the (status, found) last logged."""

    def __init__(self) -> None:
        super().__init__()
        self.reported: Optional[Tuple[CheckStatus, str]] = None


# what a reader process carries back of the watcher: per-GPU tracking, "no driver" said, re-apply skip reason, and
# publish's metrics trouble
_Carried = Tuple[Dict[int, GpuTrack], bool, str, Optional[Tuple[str, str]]]


class Watcher:
    def __init__(self, config_path: str, site: Site, notify: Optional[Notifier] = None):
        self.config_path = config_path
        lean()  # the resident process: never loads structlog (and with it asyncio, ssl): see log.py
        _preload(site.simulated)
        self.site = site  # the backend factory and the host environment (migd.site)
        self.env = site.env
        self.run_dir = site.env.run_dir
        self.no_driver_said = False  # "no driver installed: nothing selected here" logged once
        self.notify = notify or Notifier()
        # Invalid (or, as root, not root's alone) at start: exit 2, which migd-watch.service does not restart
        # (RestartPreventExitStatus=2): the unit fails visibly, STATUS= and the journal say why.
        try:
            self.loaded = config_mod.fingerprint(config_path)  # before reading: a change while reading shows later
            self.cfg = config_mod.load(config_path, owner=config_mod.trusted_owner())
        except ConfigError as e:
            self.notify(f"STATUS=invalid configuration, not watching: {_first(e)}")
            raise
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.reload_requested = False
        self.busy_since: Optional[float] = None  # monotonic start of the check in progress
        self.gpus: Dict[int, GpuTrack] = {}
        self.problem: Optional[Tuple[str, str]] = None  # (event, text) of the round-level failure being reported
        self.reload_error = ""  # the last SIGHUP found the config invalid (the previous one is kept)
        self.reapply_skip = ""  # why the last re-apply could not start (lock busy, driver): logged once per change
        # The config on disk changed and does not load: the one held is no longer the declared layout, so drift is
        # reported but never "repaired" back to it (a stale layout must not revert what `migd apply` just did).
        self.stale = ""
        self.checks = 0
        self.summary = "starting"
        self.clock = self.env.clock.monotonic  # re-apply backoff; tests step it
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    @property
    def managed(self) -> bool:
        """Does the config select anything on this host? If not, NVML is never opened (no driver needed)."""
        return bool(layout.for_host(self.cfg, self.env.hostname().name))

    def _nothing(self) -> str:
        return f"no GPU managed by {self.config_path} on this host"

    # --- main thread ------------------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        if self.managed:
            log.info("watch_started", msg=f"watching {self.config_path} every {self.cfg.daemon.watch_interval:g} s",
                     interval=self.cfg.daemon.watch_interval, watchdog=self.watchdog_s)
        else:
            self._log_nothing()
        checker = threading.Thread(target=self._checker, name="migd-checker", daemon=True)
        checker.start()
        self.notify("READY=1")
        tick = min(self.watchdog_s / 3, 5.0) if self.watchdog_s else 5.0
        while not self.stopping.wait(tick):
            if self._progressing():
                self.notify("WATCHDOG=1")
            self.notify(f"STATUS={self.summary}")
        self.notify("STOPPING=1")
        log.info("watch_stopped", msg="migd-watch stopping", checks=self.checks)
        return E.EXIT_OK

    def _log_nothing(self) -> None:
        log.info("watch_nothing", msg=f"{self.config_path} selects no GPU on this host: nothing to watch, GPUs not "
                                      "read (systemctl reload migd-watch after changing it)")

    def _progressing(self) -> bool:
        started = self.busy_since
        # The reader process is killed at the hang limit; this thread is stuck only if it is still busy after that.
        limit = self._hang_limit() + KILL_GRACE_S
        if started is not None and self.env.clock.monotonic() - started > limit:
            if not getattr(self, "_hang_logged", False):
                self._hang_logged = True
                log.error("check_hung", msg=f"a layout check has not returned for {self.env.clock.monotonic() - started:.0f} s;"
                                            " withholding the watchdog ping so systemd restarts migd-watch")
            return False
        return True

    def _on_hup(self, *_: object) -> None:
        self.reload_requested = True
        self.wake.set()

    def _on_term(self, *_: object) -> None:
        self.stopping.set()
        self.wake.set()

    # --- checker thread ---------------------------------------------------------------------------------------

    def _checker(self) -> None:
        while not self.stopping.is_set():
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            self.busy_since = self.env.clock.monotonic()
            try:
                self.check_once()
            except Exception as e:  # check_once handles its own; never let the checker die silently
                self._round_done({}, ("check_failed", f"layout check failed: {type(e).__name__}: {e}"))
            finally:
                self.busy_since = None
            self.wake.wait(self.cfg.daemon.watch_interval)
            self.wake.clear()

    def _on_disk_change(self) -> None:
        """The config changed on disk since it was loaded (an admin edited it, maybe ran `migd apply` with it, as
        the README's Ansible recipe does without reloading migd-watch): load it now, as SIGHUP would. From then
        on its layout is the declared one; the old one is never re-applied over it."""
        now = config_mod.fingerprint(self.config_path)
        if now == self.loaded:
            return
        log.info("config_changed", msg=f"{self.config_path} changed on disk: reloading it (the layout it declares "
                                       "is the one to keep from now on)")
        self._reload()
        self.stale = self.reload_error
        if self.stale:
            log.warning("reapply_stopped", msg=f"not re-applying drift: {self.config_path} changed on disk and "
                                               f"does not load, so the layout held is stale ({self.stale})")

    def _reload(self) -> None:
        self.loaded = config_mod.fingerprint(self.config_path)
        try:
            cfg = config_mod.load(self.config_path, owner=config_mod.trusted_owner())
        except ConfigError as e:
            self.reload_error = _first(e)
            log.error("config_invalid", msg=f"keeping the previous config: {self.reload_error}")
            return
        if self.stale:
            log.info("reapply_allowed", msg=f"{self.config_path} loads again: re-applying drift resumes")
        was_managed, self.cfg, self.reload_error, self.stale = self.managed, cfg, "", ""
        self.gpus.clear()  # re-log the state against the new config; a given-up re-apply is tried again
        log.info("config_reloaded", msg=f"reloaded {self.config_path}", entries=len(self.cfg.entries))
        if not self.managed:
            if was_managed:
                self._log_nothing()
            self.summary = self._nothing()

    def check_once(self) -> Dict[int, CheckStatus]:
        """One round: returns gpu -> status ("ok", "drift", "pending", "lost", "error"); logs changes only.

        The round holds /run/migd/lock shared, so an apply (exclusive) never runs under it: the check never reads a
        half-applied layout, and an apply waits for the check in progress. While an apply runs, the round is
        skipped."""
        self._on_disk_change()
        if not self.managed:  # nothing selected on this host: no NVML, no lock; any earlier problem is moot
            self._round_done({}, None)
            return {}
        statuses: Dict[int, CheckStatus] = {}
        reapply: List[int] = []
        problem: Optional[Tuple[str, str]] = None
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(runstate.check_lock(0, directory=self.run_dir))  # never waits for an apply
            except LockBusy:
                log.debug("check_skipped", msg="apply in progress (lock held): skipping this check")
                return {}
            self.checks += 1
            try:
                statuses, reapply, problem = self._in_child(self._read_round)
            except forked.Hung as e:  # like a hung read before: said once, the round fails, the next one retries
                log.debug("reader_killed", msg=f"reader process {e.pid} killed", pid=e.pid)
                problem = ("check_hung", f"a layout check has not returned for {e.seconds:g} s (an NVML call hung "
                                         "in the driver): its reader process was killed")
            except forked.ChildFailed as e:
                if self.stopping.is_set():  # stopping: not a failure worth a line
                    return {}
                problem = ("check_failed", f"layout check failed: {e}")
        if reapply:
            try:
                self._in_child(lambda: self._reapply(reapply))
            except forked.Hung as e:
                log.debug("reader_killed", msg=f"re-apply process {e.pid} killed", pid=e.pid)
                problem = ("check_hung", f"a re-apply has not returned for {e.seconds:g} s (an NVML call hung in "
                                         "the driver): its process was killed")
            except Exception as e:  # noqa: BLE001
                log.debug("check_traceback", msg="re-apply failed", exc_info=True)
                problem = ("check_failed", f"re-apply failed: {type(e).__name__}: {e}")
        self._round_done(statuses, problem)
        return statuses

    def _read_round(self) -> Tuple[Dict[int, CheckStatus], List[int], Optional[Tuple[str, str]]]:
        """Read and compare (in the reader process): the statuses, the GPUs to re-apply, and the round's problem."""
        try:
            statuses, reapply = self._check()
        except NothingHere:
            return {}, [], None  # a GPU-less host: nothing selected here, nothing to read; not a problem
        except DriverError as e:
            return {}, [], ("read_failed", f"cannot read GPUs: {e}")
        except ConfigError as e:  # e.g. the layout fits no GPU of a model found on this host
            return {}, [], ("config_unusable", f"cannot check: {_first(e)}")
        except Exception as e:  # noqa: BLE001 - reported (once) and retried next round, never fatal
            log.debug("check_traceback", msg="layout check failed", exc_info=True)
            return {}, [], ("check_failed", f"layout check failed: {type(e).__name__}: {e}")
        return statuses, reapply, None

    def _hang_limit(self) -> float:
        return self.watchdog_s if self.watchdog_s else 60.0

    def _in_child(self, work: Callable[[], T]) -> T:
        """work() in a short-lived reader process (forked.py), so this process never loads libnvidia-ml; what
        work() changed of this watcher (what was logged per GPU, per process) comes back with its result."""
        def job() -> Tuple[T, _Carried]:
            return work(), (self.gpus, self.no_driver_said, self.reapply_skip, publish.carried())

        result, (self.gpus, self.no_driver_said, self.reapply_skip, trouble) = forked.call(job, self._hang_limit())
        publish.restore(trouble)
        return result

    def _round_done(self, statuses: Dict[int, CheckStatus], problem: Optional[Tuple[str, str]]) -> None:
        """The one place a round ends (checked, or failed): log the round's problem on change, set STATUS=."""
        if problem != self.problem:
            if problem is not None:
                log.error(problem[0], msg=problem[1])
            elif self.problem is not None:
                event, what = _RECOVERED.get(self.problem[0], ("check_recovered", "layout checks work again"))
                log.info(event, msg=f"{what} (after: {self.problem[1]})", after=self.problem[0])
            self.problem = problem
        self.summary = self._summary(statuses)

    def _summary(self, statuses: Dict[int, CheckStatus]) -> str:
        """One line for `systemctl status`: what is wrong first, "N GPU(s) match the layout" only when they do."""
        if self.problem is not None:
            text = self.problem[1]
        elif not statuses:
            text = self._nothing()
        else:
            by_status: Dict[CheckStatus, List[int]] = {}
            for i, s in sorted(statuses.items()):
                if s != CheckStatus.OK:
                    by_status.setdefault(s, []).append(i)
            if not by_status:
                text = f"{len(statuses)} GPU(s) match the layout"
            else:
                bad = sum(len(v) for v in by_status.values())
                words = {s: _STATUS_WORDS.get(s, s.value) for s in by_status}
                if len(by_status) == 1:
                    (s, v), = by_status.items()
                    text = f"{bad} of {len(statuses)} GPU(s) {words[s]}: {', '.join(map(str, v))}"
                else:
                    text = f"{bad} of {len(statuses)} GPU(s) not as configured: " + "; ".join(
                        f"{words[s]}: {', '.join(map(str, v))}" for s, v in by_status.items())
            given_up = sorted(i for i, t in self.gpus.items() if t.given_up and i in statuses)
            if given_up:
                text += f"; re-apply given up on GPU {', '.join(map(str, given_up))}"
        if self.reload_error:
            text += f"; reload failed, previous config kept: {self.reload_error}"
        trouble = publish.metrics_trouble()
        if trouble:
            text += f"; {trouble}"
        return f"{text} (check #{self.checks})"

    def _engine(self, read_only: bool) -> Engine:
        # The service writes the per-boot profile cache (if boot did not), so each later round reads identity,
        # mode and instances only.
        return self.site.engine(self.site.open_backend(read_only=read_only, cache_write=True), self.cfg)

    def _track(self, gpu: int) -> GpuTrack:
        return self.gpus.setdefault(gpu, GpuTrack())

    def _check(self) -> Tuple[Dict[int, CheckStatus], List[int]]:
        """Read and compare every GPU; log per-GPU changes; return the statuses and the GPUs to re-apply."""
        engine = self._engine(read_only=True)
        statuses: Dict[int, CheckStatus] = {}
        reapply = []
        desired: Optional[Dict[int, DesiredGpu]] = None
        nothing_here = False
        try:
            try:
                engine.backend.open()
            except DriverError as e:
                nothing_here = self._nothing_here(e)
                if nothing_here:
                    raise NothingHere() from None
                raise
            self.no_driver_said = False
            infos = engine.infos()
            for info in infos:
                if info.lost:  # once per change, like drift
                    self._report(info.index, CheckStatus.ERROR, "", "lost (fell off the bus); see dmesg for Xid errors")
                    statuses[info.index] = CheckStatus.LOST
                elif info.unreadable:  # a failed read of what it is or its MIG mode: never "no MIG"
                    self._report(info.index, CheckStatus.ERROR, "", f"unreadable: {info.unreadable}")
                    statuses[info.index] = CheckStatus.ERROR
            desired = engine.desired()
            states = engine.states(list(desired))  # each GPU read on its own thread
            for i, d in desired.items():
                state = states[i].get()
                row = engine.compare_gpu(infos[i], d, state)
                self._report(i, row.status, row.expected, row.found, row.diff)
                statuses[i] = row.status
                if self._wants_reapply(i, row.status, row.found, state):
                    reapply.append(i)
        finally:
            # metrics file, under the check's shared lock; nothing selected here: a successful check of no GPU
            publish.after_check(self.cfg, self.env, engine.backend, desired, no_gpus=nothing_here)
            engine.backend.close()
        return statuses, reapply

    def _nothing_here(self, e: DriverError) -> bool:
        """NVML cannot start because no NVIDIA driver is installed at all, and the entries for this host select
        only "all" or model globs (a fleet file shared with GPU-less hosts): nothing is selected here, so there is
        nothing to read (as `migd boot` says "nothing to do"). Said once."""
        if e.code not in (E.LIBRARY_NOT_FOUND, E.DRIVER_NOT_LOADED) or layout.naming_a_gpu(layout.for_host(self.cfg)):
            return False
        found = self.env.driver_files()
        if found.installed:
            return False
        if not self.no_driver_said:
            self.no_driver_said = True
            log.info("watch_nothing", msg=f"{self.config_path} selects no GPU on this host (no NVIDIA driver "
                                          f"installed: {found.describe()}; its entries select only \"all\" or model "
                                          "globs): nothing to watch", library="", module="")
        return True

    def _policy(self) -> ReapplyPolicy:
        """The re-apply rules for the config held now (its policy and interval; stale or not), on this clock."""
        return ReapplyPolicy(lambda: self.clock(), self.cfg.daemon.drift_policy, self.cfg.daemon.watch_interval,
                             self.config_path, stale=bool(self.stale))

    def _wants_reapply(self, i: int, status: CheckStatus, found: str, state: GpuState) -> bool:
        """drift_policy = "reapply": re-apply this GPU now? Each reason not to is logged once per change."""
        decision = self._policy().decide(self._track(i), i, status, found, busy=any(gi.busy for gi in state.instances))
        _say(decision.says)
        return decision.verdict == Verdict.REAPPLY

    def _report(self, gpu: int, status: CheckStatus, expected: str, found: str, diff: str = "") -> None:
        track = self._track(gpu)
        previous = track.reported
        if previous == (status, found):
            return
        track.reported = (status, found)
        where = f"GPU {gpu}"
        if status == CheckStatus.OK:
            if previous is not None:
                log.info("drift_cleared", msg=f"{where}: layout matches again: {found}", gpu=gpu, found=found)
            else:
                log.info("layout_ok", msg=f"{where}: layout matches: {found}", gpu=gpu, found=found)
        elif status == CheckStatus.ERROR:
            log.error("check_error", msg=f"{where}: cannot check: {found}", gpu=gpu, error=found)
        else:
            # what differs, worded like `migd check` (report.drift_text); both layouts in the fields
            log.warning("drift", msg=f"{where}: {status}: {diff or found}", gpu=gpu, status=status,
                        expected=expected, found=found, diff=diff)

    def _reapply(self, gpus: List[int]) -> None:
        """The same engine apply as `migd apply` and `migd boot`: lock, apply, verify, roll back, record."""
        try:
            engine = self._engine(read_only=False)
            engine.backend.open()
            try:
                # asked again once the lock is held: an admin's `migd apply` of an edited config may have run
                # while this re-apply waited for it
                result = engine.apply(engine.desired(), gpus=gpus,
                                      still_declared=lambda: config_mod.fingerprint(self.config_path) == self.loaded)
            finally:
                engine.backend.close()
        except ConfigChanged as e:  # nothing changed; the next round reloads the config and checks against it
            log.info("reapply_superseded", msg=f"not re-applying: {e}; checking against it next round")
            self.wake.set()
            return
        except (LockBusy, DriverError, ConfigError) as e:  # nothing changed; the next round decides again
            _say([cannot_start(self.reapply_skip, str(e))])
            self.reapply_skip = str(e)
            return
        self.reapply_skip = ""
        for i in gpus:
            if i in result.gpus:
                self._reapply_done(i, result.gpus[i])
        self._reapply_recorded(result)

    def _reapply_done(self, i: int, r: GpuResult) -> None:
        """The one place a GPU's re-apply ends: the policy updates its track and says what to log."""
        _say(self._policy().finished(self._track(i), i, r))

    def _reapply_recorded(self, result: ApplyResult) -> None:
        if result.record_error:
            log.error("reapply_not_recorded", msg=result.record_error)


class NothingHere(Exception):
    """No NVIDIA driver installed and nothing names a GPU: the check has nothing to read (Watcher._nothing_here)."""


def _preload(simulated: bool) -> None:
    """Import, once, what every reader process runs (pynvml and the NVML backend, the metrics writer; the simulator
    for simulated GPUs): a forked reader starts with them instead of importing them each round. Importing pynvml
    loads no library: nvmlInit does, and only reader processes call it."""
    import importlib

    import pynvml  # noqa: F401  (backend/nvml.py imports it only when a backend is made)

    for name in (".backend.nvml", ".metrics", ".cdi") + ((".sim.fakelib",) if simulated else ()):
        importlib.import_module(name, __package__)


def _say(says: Sequence[Say]) -> None:
    """Log what the re-apply policy said, each as its own event at its level."""
    for say in says:
        getattr(log, say.level.value)(say.event, msg=say.msg, **dict(say.fields))


def _first(e: ConfigError) -> str:
    """A config error on one line: its problems, each naming file:line, joined."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
