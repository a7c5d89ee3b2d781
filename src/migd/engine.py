"""The engine: everything cli, boot and watch do to GPUs, in one place, over one backend and one config.

- `Engine.desired()` / `plans()`: which layout each GPU gets, and the actions that would take it there;
- `Engine.apply()`: under the exclusive lock, per GPU: run the plan, verify by re-planning, roll the GPU back to
  its previous layout on a failure (never destroying an instance with processes), optionally stop and restart the
  client units holding a GPU (--stop-clients), then record the result (state.json + devices.env);
- `Engine.check()` / `compare()`: does the live layout match (under the shared lock, so never a half-applied one);
- `Engine.status()`: the live GPUs with the names and match state the config gives them.

Results are typed (dataclasses, enums); the exit-code policy for every verb lives here (`exit_code_of`).
"""

from __future__ import annotations

import os
from ._record import dataclass, field, replace
from enum import Enum
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import drift, layout, pergpu, report, runstate, schema
from . import errors as E
from .backend import Backend
from .errors import DriverError
from .hostenv import HostEnv
from .holders import describe, pids_holding
from .layout import DesiredGpu, DesiredInstance, desired_for
from .log import get_logger
from .model import Config, Gpu, GpuEntry, GpuInfo, GpuSelector, GpuState, SelectorKind
from .plan import Action, ActionKind, GpuPlan, plan_gpu

log = get_logger()


class Outcome(str, Enum):
    """What apply did to one GPU."""

    UNCHANGED = "unchanged"
    APPLIED = "applied"
    PENDING = "pending"
    REFUSED = "refused"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


class CheckStatus(str, Enum):
    """How one GPU's live layout compares with its config."""

    OK = "ok"
    DRIFT = "drift"
    PENDING = "pending"
    LOST = "lost"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


# --- the exit-code policy, for every verb -------------------------------------------------------------------------

_OUTCOME_EXIT = {Outcome.UNCHANGED: E.EXIT_OK, Outcome.APPLIED: E.EXIT_OK, Outcome.PENDING: E.EXIT_PENDING}
_STATUS_EXIT = {CheckStatus.OK: E.EXIT_OK, CheckStatus.DRIFT: E.EXIT_DRIFT, CheckStatus.PENDING: E.EXIT_PENDING}
_SEVERITY = (E.EXIT_FAILURE, E.EXIT_DRIFT, E.EXIT_PENDING, E.EXIT_OK)  # the worst present decides


def exit_code_of(codes: Iterable[int]) -> int:
    present = set(codes)
    return next((c for c in _SEVERITY if c in present), E.EXIT_OK)


def outcome_exit(outcome: Outcome) -> int:
    return _OUTCOME_EXIT.get(outcome, E.EXIT_FAILURE)


def status_exit(status: CheckStatus) -> int:
    return _STATUS_EXIT.get(status, E.EXIT_FAILURE)


def exit_for(e: Union[E.MigdError, OSError, KeyboardInterrupt]) -> Tuple[int, str]:
    """An exception that ends a verb: its exit code and the journal event that says it ("": nothing to say).
    The CLI's one mapping; what the event's text says is the CLI's to word."""
    if isinstance(e, KeyboardInterrupt):
        return 130, ""
    if isinstance(e, BrokenPipeError):  # `migd plan | head`: the reader went away, nothing is wrong
        return E.EXIT_OK, ""
    if isinstance(e, E.ConfigError):  # nothing touched
        return E.EXIT_USAGE, "config_invalid"
    if isinstance(e, E.UsageError):  # bad --simulate spec or state file; a ValueError from a bug is no usage error
        return E.EXIT_USAGE, "usage"
    if isinstance(e, E.MigdError):  # its own code: lock busy 5, a driver error 1
        return e.exit_code, "failed"
    return E.EXIT_FAILURE, "failed"  # an OSError: a file or directory migd needs is unusable


class ConfigChanged(E.MigdError):
    """The config an apply was asked for is no longer the one on disk (see Engine.apply's still_declared)."""


# --- results ------------------------------------------------------------------------------------------------------


@dataclass
class GpuResult:
    gpu: int
    outcome: Outcome
    message: str = ""
    done: List[Action] = field(default_factory=list)
    holders: List[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return outcome_exit(self.outcome)

    @property
    def pending(self) -> bool:
        """Its MIG mode change is left pending: nothing a client sees has changed yet."""
        return self.outcome == Outcome.PENDING


def exit_code(results: Sequence[GpuResult]) -> int:
    return exit_code_of(r.exit_code for r in results)


@dataclass
class ApplyResult:
    gpus: Dict[int, GpuResult]
    record_error: Optional[str] = None  # state.json / devices.env could not be written

    @property
    def exit_code(self) -> int:
        return exit_code_of([r.exit_code for r in self.gpus.values()]
                            + ([E.EXIT_FAILURE] if self.record_error else []))


@dataclass(frozen=True)
class GpuCheck:
    gpu: int
    status: CheckStatus
    expected: str
    found: str
    diff: str = ""  # what differs, in report.drift_text's wording ("" when ok)
    comparison: Optional[drift.Comparison] = None  # the typed records the three strings above word (lost: None)


@dataclass
class CheckResult:
    gpus: List[GpuCheck]

    @property
    def exit_code(self) -> int:
        return exit_code_of(status_exit(g.status) for g in self.gpus)

    @property
    def status(self) -> CheckStatus:
        for s in (CheckStatus.ERROR, CheckStatus.LOST, CheckStatus.DRIFT, CheckStatus.PENDING):
            if any(g.status == s for g in self.gpus):
                return s
        return CheckStatus.OK


@dataclass
class StatusView:
    gpus: List[Gpu]  # lost GPUs with an empty state
    names: Dict[int, Dict[int, str]]  # gpu -> GI id -> configured name
    managed: Dict[int, str]  # gpu -> "file:line (matches)" / "(drift)"


# --- the engine ---------------------------------------------------------------------------------------------------


class Engine:
    """One backend (opened by the caller) and one config (None: status without names)."""

    def __init__(self, backend: Backend, cfg: Optional[Config], env: HostEnv, host: Optional[str] = None):
        self.backend = backend
        self.cfg = cfg
        self.env = env  # everything outside the GPU: run dir, systemctl, clock (simulated GPUs: the simulated host)
        # whose view of a fleet file: `validate --host`'s, else this machine's static name (boot matches on it too)
        self.host = host if host is not None else env.hostname().name
        self._infos: Optional[List[GpuInfo]] = None

    @property
    def run_dir(self) -> str:
        return self.env.run_dir

    @property
    def simulated(self) -> bool:
        return self.env.simulated

    @property
    def config(self) -> Config:
        if self.cfg is None:
            raise ValueError("this engine has no config")
        return self.cfg

    @property
    def persistence(self) -> Optional[bool]:
        """True: turn persistence mode on; None: leave it as it is (persistence_mode = false)."""
        return self.config.daemon.persistence_mode or None

    def infos(self) -> List[GpuInfo]:
        if self._infos is None:
            self._infos = self.backend.gpus()
        return self._infos

    def desired(self) -> Dict[int, DesiredGpu]:
        return desired_layouts(self.config, self.infos(), self.host)

    def plans(self, desired: Dict[int, DesiredGpu]) -> Dict[int, GpuPlan]:
        infos = self.infos()
        states = pergpu.each(self.backend.state, list(desired))  # each GPU read on its own thread
        return {i: plan_gpu(infos[i], d, states[i], self.persistence) for i, d in desired.items()}

    # --- apply ----------------------------------------------------------------------------------------------

    def apply(self, desired: Dict[int, DesiredGpu], gpus: Optional[Sequence[int]] = None,
              stop_clients: bool = False, on_gpu_done: Optional[Callable[[GpuResult], None]] = None,
              still_declared: Optional[Callable[[], bool]] = None) -> ApplyResult:
        """Apply `gpus` (default: every selected one) under the exclusive lock, then record every selected GPU.
        on_gpu_done(result) is called once per GPU as soon as its result is final (from the thread that applied it),
        before the apply as a whole ends: a terminal shows each GPU's result while the others are still applied.

        still_declared (the watchdog's re-apply): asked once the lock is held; False (the config changed on disk,
        maybe applied by `migd apply` while this one waited for the lock) raises ConfigChanged, nothing touched."""
        started = self.env.clock.monotonic()
        told: Dict[int, GpuResult] = {}

        def final(result: GpuResult, retry_possible: bool = False) -> None:
            # --stop-clients may run a pending or refused GPU again: its first result is not final then
            if on_gpu_done is not None and not retry_possible and result.gpu not in told:
                told[result.gpu] = result
                on_gpu_done(result)

        infos = self.infos()
        targets = sorted(desired) if gpus is None else sorted(gpus)
        with runstate.locked(self.config.daemon.lock_timeout, directory=self.run_dir):
            if still_declared is not None and not still_declared():
                raise ConfigChanged(f"{self.config.path} changed on disk: its layout is no longer the one to apply")
            results: Dict[int, GpuResult] = {}
            if gpus is None:
                unmatched = layout.unmatched_while_lost(self.config, infos, self.host)
                results.update({info.index: _lost_at_start(info, unmatched) for info in infos if info.unknown})
                for lost in results.values():
                    final(lost)
            results.update(self._run(targets, desired, lambda r: final(
                r, stop_clients and r.outcome in (Outcome.PENDING, Outcome.REFUSED))))
            blocked = [i for i, r in results.items() if r.outcome in (Outcome.PENDING, Outcome.REFUSED)]
            if stop_clients and blocked:
                from . import clients

                stopped = clients.stop_holding_units(self.backend, blocked, self.config.daemon.stop_clients,
                                                     self.env.systemctl)
                if stopped:
                    try:
                        results.update(self._run(blocked, desired, final))
                    finally:
                        self.env.systemctl("start", stopped)
                        log.info("clients_restarted", msg=f"restarted {', '.join(stopped)}", units=stopped)
            for i in sorted(results):
                final(results[i])  # pending or refused, and not run again
            outcome = ApplyResult(dict(sorted(results.items())))
            outcome.record_error = self.record(desired, outcome.gpus)
            # CDI refresh and the metrics file, under the lock (which keeps metrics writers apart); never raises.
            # Imported here: read verbs never load it.
            from . import publish

            publish.after_apply(self.backend, self.config, self.env, desired, outcome.gpus, outcome.exit_code == E.EXIT_OK,
                                started)
        return outcome

    def _holders(self, i: int) -> Tuple[List[str], str]:
        """Who holds GPU i, and what to add so those units start after migd at the next boot ("" if nothing)."""
        try:
            holders = [h for h in describe(pids_holding(self.backend.device_nodes(i))) if h.pid != os.getpid()]
        except Exception as e:  # naming holders is for the message: a failure says so, never "no one"
            log.warning("holders_unreadable", msg=f"GPU {i}: cannot name the processes holding it: {_unexpected(e)}",
                        gpu=i, exc_info=e)
            return [f"(unknown: {_unexpected(e)})"], ""
        return [str(h) for h in holders], self._ordering_advice([h.unit for h in holders if h.unit])

    def _ordering_advice(self, units: List[str]) -> str:
        """For a pending mode change: the holders' units that do not start after migd.service, and the gpu_clients
        line that would make them (issue 23)."""
        from . import gpuclients

        if not units:
            return ""
        names = self.config.daemon.gpu_clients
        add, before = gpuclients.unordered(units, names, self.env.unit_property)
        return gpuclients.pending_advice(add, before, names, self.config.path)

    def _run(self, indices: Sequence[int], desired: Dict[int, DesiredGpu],
             done: Optional[Callable[[GpuResult], None]] = None) -> Dict[int, GpuResult]:
        """Apply each GPU on its own thread (pergpu): their reads and changes overlap; each GPU's calls, and its
        rollback, stay in their order on its thread. done(result): called on that thread once the GPU's result is
        final (a progress line)."""
        infos = self.infos()
        out: Dict[int, GpuResult] = {}

        def one(i: int) -> None:
            try:
                out[i] = apply_gpu(self.backend, infos[i], desired[i], self.persistence, self._holders)
            except DriverError as e:  # reading the GPU failed before anything changed
                if e.code == E.GPU_IS_LOST:  # fell off the bus since migd started: the same report as mid-apply
                    msg = f"GPU {i}: lost (fell off the bus) before it was applied: {e.reason}; check `dmesg` " \
                          "for Xid errors"
                    log.critical("gpu_lost", msg=msg, gpu=i, call=e.call)
                    out[i] = GpuResult(i, Outcome.LOST, msg)
                else:
                    msg = f"GPU {i}: cannot read it, nothing changed: {e.reason}"
                    log.error("gpu_unreadable", msg=msg, gpu=i, code=E.code_name(e.code))
                    out[i] = GpuResult(i, Outcome.FAILED, msg)
            except Exception as e:  # a bug or an answer migd did not expect: this GPU fails, the others go on
                msg = f"GPU {i}: {_unexpected(e)}; nothing changed"
                log.error("gpu_error", msg=msg, gpu=i, error=type(e).__name__, exc_info=e)
                out[i] = GpuResult(i, Outcome.FAILED, msg)
            if done is not None:
                done(out[i])

        pergpu.each(one, indices)
        return {i: out[i] for i in indices}

    def current_infos(self) -> List[GpuInfo]:
        """The GPUs' infos re-read (a MIG mode change may change what a GPU reports), or the ones read before the
        apply where that fails: a GPU lost during the apply must not stop the report about the others."""
        before = self.infos()
        try:
            self._infos = self.backend.gpus()
        except DriverError:
            self._infos = before
        return self._infos

    # --- record ---------------------------------------------------------------------------------------------

    def record(self, desired: Dict[int, DesiredGpu], results: Dict[int, GpuResult]) -> Optional[str]:
        """Write state.json and devices.env from the live layout of every selected GPU (and every lost one).
        Returns None, or why they could not be written (apply then exits 1)."""
        infos = self.current_infos()
        docs = []
        gpus = sorted(set(desired) | set(results))
        read = pergpu.settle(self.backend.state, [i for i in gpus if i in desired and not infos[i].unknown])
        for i in gpus:
            result = results.get(i)
            state: Optional[GpuState] = None
            names: Dict[int, str] = {}
            info = infos[i]
            if i in read:
                try:
                    state = read[i].get()
                    names = drift.names_by_gi(plan_gpu(info, desired[i], state))
                except DriverError as e:
                    state = None
                    if e.code == E.GPU_IS_LOST:
                        info = replace(info, lost=True)
            if info.lost and result is not None and result.outcome != Outcome.LOST:
                # lost after its own work was done (while the others were applied, or now): the record and the exit
                # code say lost, never "applied" with MIG devices that are gone
                result = results[i] = GpuResult(i, Outcome.LOST, f"{result.message}; then lost (fell off the bus): "
                                                "check `dmesg` for Xid errors", result.done)
                log.critical("gpu_lost", msg=result.message, gpu=i)
            doc = schema.gpu(info, state, names)
            doc["outcome"] = result.outcome.value if result else None  # None: not part of this apply
            doc["message"] = result.message if result else ""
            docs.append(doc)
        try:
            runstate.write_results(docs, self.config.path, simulated=self.simulated, directory=self.run_dir,
                                   unmanaged=[i for i, d in desired.items() if d.unmanaged],
                                   boot_id=_boot_id(self.env))
        except (OSError, runstate.RunDirError) as e:
            where = self.run_dir
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            msg = f"cannot write {where}/state.json and devices.env: {why}; they are stale"
            log.error("state_write_failed", msg=msg, error=why)
            return msg
        return None

    # --- check ----------------------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        """compare() under the shared lock: an apply in progress is waited for (up to lock_timeout, then exit 5),
        so a half-applied layout is never reported as drift."""
        with runstate.check_lock(self.config.daemon.lock_timeout, directory=self.run_dir):
            return self.compare(self.desired())

    def compare(self, desired: Dict[int, DesiredGpu]) -> CheckResult:
        infos = self.infos()
        rows = [GpuCheck(info.index, CheckStatus.LOST, "", "lost (fell off the bus)") for info in infos if info.lost]
        rows += [GpuCheck(info.index, CheckStatus.ERROR, "", f"unreadable: {info.unreadable}")
                 for info in infos if info.unreadable and not info.lost]
        states = self.states(list(desired))
        for i, d in desired.items():
            rows.append(self.compare_gpu(infos[i], d, states[i].get()))
        return CheckResult(sorted(rows, key=lambda r: r.gpu))

    def states(self, gpus: Sequence[int]) -> Dict[int, pergpu.Done[GpuState]]:
        """Each GPU's live state, read on its own thread: GPU -> its state, or the error reading it raised."""
        return pergpu.settle(self.backend.state, gpus)

    def compare_gpu(self, info: GpuInfo, desired: DesiredGpu, state: Optional[GpuState] = None) -> GpuCheck:
        state = state if state is not None else self.backend.state(info.index)
        compared = drift.compare(info, desired, state)
        expected, found, diff = report.comparison_texts(compared)
        return GpuCheck(info.index, CheckStatus(compared.match.value), expected, found, diff, compared)

    # --- status ---------------------------------------------------------------------------------------------

    def status(self, desired: Optional[Dict[int, DesiredGpu]] = None,
               only: Optional[Iterable[int]] = None) -> StatusView:
        infos = self.infos()
        gpus, names, managed = [], {}, {}
        wanted = set(only) if only is not None else None
        read = self.states([info.index for info in infos
                            if not info.lost and (wanted is None or info.index in wanted)])
        for info in infos:
            if wanted is not None and info.index not in wanted:
                continue
            if info.unknown:
                gpus.append(Gpu(info, GpuState(False, False, None)))
                continue
            try:
                state = read[info.index].get()
            except DriverError:
                if wanted is None:
                    raise
                continue  # after an apply: a GPU lost meanwhile is left out, apply said why
            gpus.append(Gpu(info, state))
            if desired and info.index in desired:
                plan = plan_gpu(info, desired[info.index], state, self.persistence)
                names[info.index] = drift.names_by_gi(plan)
                matches = drift.layout_matches(plan)
                managed[info.index] = desired[info.index].entry.where + (" (matches)" if matches else " (drift)")
        return StatusView(gpus, names, managed)

    def status_doc(self, view: StatusView, description: str) -> schema.Doc:
        docs = [schema.gpu(g.info, None if g.info.unknown else g.state, view.names.get(g.info.index))
                for g in view.gpus]
        return schema.status(docs, self.backend.driver_version(), description, self.simulated)


def _boot_id(env: HostEnv) -> Optional[str]:
    try:
        return env.boot_id()
    except OSError:
        return None


def desired_layouts(cfg: Config, infos: Sequence[GpuInfo], host: Optional[str] = None) -> Dict[int, DesiredGpu]:
    """layout.desired_for with the planner's fit check: a layout that fits no GPU of that model is a config error."""
    return desired_for(cfg, infos, fits=_fits_empty, host=host)


def _fits_empty(info: GpuInfo, desired: DesiredGpu) -> Optional[str]:
    empty = plan_gpu(info, desired, GpuState(mig_current=True, mig_pending=True, persistence=None))
    return empty.refused.reason if empty.refused is not None else None


# --- one GPU ------------------------------------------------------------------------------------------------------


def apply_gpu(backend: Backend, info: GpuInfo, desired: DesiredGpu, persistence: Optional[bool] = None,
              describe_holders: Optional[Callable[[int], Tuple[List[str], str]]] = None) -> GpuResult:
    """Apply one GPU. Raises (DriverError, or an unexpected exception) only before anything changed; once a change
    is made, any failure is this GPU's result (rolled back where it can be)."""
    g = info.index
    glog = log.bind(gpu=g)
    before = backend.state(g, fresh=True)  # never act on a snapshot: processes may have started since
    plan = plan_gpu(info, desired, before, persistence)
    if plan.refusal:
        glog.error("gpu_refused", msg=f"{plan.refusal}; nothing changed", pids=list(plan.busy_pids))
        return GpuResult(g, Outcome.REFUSED, plan.refusal)
    if plan.noop:
        glog.info("gpu_unchanged", msg=f"GPU {g}: already matches {desired.entry.where}")
        return GpuResult(g, Outcome.UNCHANGED, f"GPU {g}: already matches")

    result = GpuResult(g, Outcome.APPLIED)
    slot_gi: Dict[int, int] = {a.slot: a.live_gi for a in plan.assignments if a.live_gi is not None}
    try:
        for action in plan.actions:
            if action.kind == ActionKind.SET_MIG_MODE:
                pending = _set_mode(backend, g, bool(action.enabled))
                if pending is not None:
                    result.done.append(action)
                    holders, advice = describe_holders(g) if describe_holders else ([], "")
                    held = f": held by {', '.join(holders)}" if holders else ""
                    msg = (f"GPU {g}: MIG mode change to {'on' if action.enabled else 'off'} is pending "
                           f"({E.code_name(pending)}){held}; stop the GPU's clients and run migd apply again, "
                           f"or reboot{advice}")
                    glog.warning("mode_pending", msg=msg, status=E.code_name(pending), holders=holders)
                    return GpuResult(g, Outcome.PENDING, msg, result.done, holders)
            else:
                _run(backend, action, slot_gi)
            result.done.append(action)
            shown = action
            if action.kind in (ActionKind.CREATE_GI, ActionKind.CREATE_CI):  # the log names the GI the driver made
                shown = replace(action, gi_id=slot_gi[action.slot])  # type: ignore[index]
            glog.info(action.kind.value, msg=str(shown), **_fields(shown))
        # Verify: re-read and re-plan. A read that fails here comes after changes: a failure like any other.
        after = backend.state(g)
        if not plan_gpu(info, desired, after, persistence).noop:
            raise DriverError(E.UNKNOWN, "verify", g, "live layout differs from the plan after apply")
    except Exception as e:  # noqa: BLE001 - a driver error, or one migd did not expect: roll back either way
        return _fail(backend, info, before, result, e)
    result.message = (f"GPU {g}: applied {len(result.done)} change{'s' if len(result.done) != 1 else ''}"
                      + report.changes_summary(result.done))
    glog.info("gpu_applied", msg=result.message, changes=len(result.done))
    return result


def _set_mode(backend: Backend, g: int, enabled: bool) -> Optional[int]:
    """Set MIG mode; None when it took effect, else the activation status that left it pending."""
    status = backend.set_mig_mode(g, enabled)
    current, _ = backend.mig_mode(g)  # the mode alone: the instances are read by the verify that follows
    if current == enabled:
        return None
    return status if status != E.SUCCESS else E.RESET_REQUIRED


def _run(backend: Backend, a: Action, slot_gi: Dict[int, int]) -> None:
    if a.kind == ActionKind.SET_PERSISTENCE:
        backend.set_persistence(a.gpu, bool(a.enabled))
    elif a.kind == ActionKind.DESTROY_CI:
        assert a.gi_id is not None and a.ci_id is not None
        backend.destroy_compute_instance(a.gpu, a.gi_id, a.ci_id)
    elif a.kind == ActionKind.DESTROY_GI:
        assert a.gi_id is not None
        backend.destroy_gpu_instance(a.gpu, a.gi_id)
    elif a.kind == ActionKind.CREATE_GI:
        assert a.slot is not None and a.profile_id is not None and a.placement is not None
        slot_gi[a.slot] = backend.create_gpu_instance(a.gpu, a.profile_id, a.placement)
    elif a.kind == ActionKind.CREATE_CI:
        assert a.slot is not None and a.profile_id is not None and a.placement is not None
        backend.create_compute_instance(a.gpu, slot_gi[a.slot], a.profile_id, a.placement)
    else:
        raise ValueError(f"unknown action {a.kind}")


def _fields(a: Action) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for key in ("gi_id", "ci_id", "profile_id", "enabled"):
        value = getattr(a, key)
        if value is not None:
            out[key] = value
    if a.profile_name:
        out["profile"] = a.profile_name
    if a.placement is not None:
        out["placement"] = str(a.placement)
    return out


def _unexpected(e: BaseException) -> str:
    """An exception migd did not expect, for a message: its type and text (escaped: it may quote /proc or driver
    bytes)."""
    return E.printable(f"internal error ({type(e).__name__}: {e})")


def _fail(backend: Backend, info: GpuInfo, before: GpuState, result: GpuResult, error: Exception) -> GpuResult:
    g = info.index
    glog = log.bind(gpu=g)
    if isinstance(error, DriverError) and error.code == E.GPU_IS_LOST:
        msg = f"GPU {g}: lost (fell off the bus) during apply: {error.reason}; check `dmesg` for Xid errors"
        glog.critical("gpu_lost", msg=msg, call=error.call)
        return GpuResult(g, Outcome.LOST, msg, result.done)
    if isinstance(error, DriverError):
        reason = error.reason
        glog.error("apply_failed", msg=f"GPU {g}: {reason}; rolling back to the previous layout",
                   call=error.call, code=E.code_name(error.code), done=len(result.done))
    else:
        reason = _unexpected(error)
        glog.error("apply_failed", msg=f"GPU {g}: {reason}; rolling back to the previous layout",
                   error=type(error).__name__, done=len(result.done), exc_info=error)
    try:
        _restore(backend, info, before)
    except DriverError as e2:
        if e2.code == E.GPU_IS_LOST:  # lost while rolling back: say so (state.json records it lost)
            msg = f"GPU {g}: {reason}; then lost (fell off the bus) during the rollback: {e2.reason}"
            glog.critical("gpu_lost", msg=msg, call=e2.call)
            return GpuResult(g, Outcome.LOST, msg, result.done)
        msg = f"GPU {g}: {reason}; rollback failed too: {e2.reason}"
        glog.critical("rollback_failed", msg=msg)
        return GpuResult(g, Outcome.FAILED, msg, result.done)
    except Exception as e2:  # noqa: BLE001 - RuntimeError (no way back), or unexpected
        msg = f"GPU {g}: {reason}; rollback failed too: {e2 if isinstance(e2, RuntimeError) else _unexpected(e2)}"
        glog.critical("rollback_failed", msg=msg)
        return GpuResult(g, Outcome.FAILED, msg, result.done)
    msg = f"GPU {g}: {reason}; rolled back to the previous layout"
    glog.warning("rolled_back", msg=msg)
    return GpuResult(g, Outcome.ROLLED_BACK, msg, result.done)


def previous_layout(info: GpuInfo, before: GpuState) -> DesiredGpu:
    """The layout a GPU had, as a desired layout with exact placements (for rollback)."""
    entry = GpuEntry(number=0, selector=GpuSelector(SelectorKind.INDEX, (info.index,)), mig=before.mig_current,
                     where="previous layout")
    items = []
    for gi in before.instances:
        profile = info.profile_by_id(gi.profile_id)
        if profile is None:
            raise RuntimeError(f"unknown profile {gi.profile_id} in the previous layout")
        by_id = {c.id: c for c in profile.compute_profiles}
        compute = tuple(by_id[ci.profile_id] for ci in gi.compute if ci.profile_id in by_id)
        if len(compute) != len(gi.compute):
            raise RuntimeError(f"unknown compute profile in GPU instance {gi.id}")
        items.append(DesiredInstance(profile, compute, pin=gi.placement,
                                     compute_pins=tuple(ci.placement for ci in gi.compute)))
    return DesiredGpu(entry, before.mig_current, tuple(items))


def _restore(backend: Backend, info: GpuInfo, before: GpuState) -> None:
    g = info.index
    target = previous_layout(info, before)
    now = backend.state(g)
    plan = plan_gpu(info, target, now)
    if plan.refusal:
        raise RuntimeError(plan.refusal)
    slot_gi: Dict[int, int] = {a.slot: a.live_gi for a in plan.assignments if a.live_gi is not None}
    for action in plan.actions:
        if action.kind == ActionKind.SET_MIG_MODE:
            backend.set_mig_mode(g, bool(action.enabled))
        else:
            _run(backend, action, slot_gi)
        log.info("rollback_" + action.kind.value, msg="rollback: " + str(action), gpu=g, **_fields(action))
    if not plan_gpu(info, target, backend.state(g)).noop:
        raise RuntimeError("layout after rollback differs from the previous one")


def _lost_at_start(info: GpuInfo, unmatched: Sequence[str] = ()) -> GpuResult:
    maybe = f" ({'; '.join(unmatched)})" if unmatched else ""
    if not info.lost:  # unreadable: a failed read is an error for this GPU, never "no MIG" or "not selected"
        msg = (f"GPU {info.index}: cannot read what it is or its MIG mode, not configured{maybe}: "
               f"{info.unreadable}; the other GPUs are")
        log.error("gpu_unreadable", msg=msg, gpu=info.index)
        return GpuResult(info.index, Outcome.FAILED, msg)
    msg = (f"GPU {info.index}: lost (fell off the bus) before migd could read it: not configured{maybe}; the other "
           "GPUs are; check `dmesg` for Xid errors")
    log.critical("gpu_lost", msg=msg, gpu=info.index)
    return GpuResult(info.index, Outcome.LOST, msg)
