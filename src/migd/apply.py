"""The apply engine: run each GPU's plan through a backend, verify, roll the GPU back on failure.

Per GPU: execute actions in order; a MIG mode change that stays pending stops that GPU (reported, with who holds
it); a failed call rolls that GPU back to the layout it had before (exact placements, never destroying an
instance with processes); then the live state is re-read and re-planned: anything but "nothing to do" is a
failure. Other GPUs are applied regardless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from . import errors as E
from .errors import DriverError
from .layout import DesiredGpu, DesiredInstance
from .log import get_logger
from .model import GpuEntry, GpuInfo, GpuSelector, GpuState
from .plan import Action, plan_gpu

log = get_logger()

# Outcomes, in order of severity for the exit code.
UNCHANGED, APPLIED, PENDING, REFUSED, FAILED, ROLLED_BACK, LOST = (
    "unchanged", "applied", "pending", "refused", "failed", "rolled_back", "lost")


@dataclass
class GpuResult:
    gpu: int
    outcome: str
    message: str = ""
    done: List[Action] = field(default_factory=list)
    holders: List[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.outcome in (UNCHANGED, APPLIED):
            return E.EXIT_OK
        if self.outcome == PENDING:
            return E.EXIT_PENDING
        return E.EXIT_FAILURE


def exit_code(results: Sequence[GpuResult]) -> int:
    codes = [r.exit_code for r in results]
    if E.EXIT_FAILURE in codes:
        return E.EXIT_FAILURE
    if E.EXIT_PENDING in codes:
        return E.EXIT_PENDING
    return E.EXIT_OK


def apply_gpu(backend, info: GpuInfo, desired: DesiredGpu, persistence: Optional[bool] = None,
              describe_holders=None) -> GpuResult:
    g = info.index
    before = backend.state(g, fresh=True)  # never act on a snapshot: processes may have started since
    plan = plan_gpu(info, desired, before, persistence)
    if plan.refusal:
        log.error("gpu_refused", msg=f"{plan.refusal}; nothing changed", gpu=g, pids=list(plan.busy_pids))
        return GpuResult(g, REFUSED, plan.refusal)
    if plan.noop:
        log.info("gpu_unchanged", msg=f"GPU {g}: already matches {desired.entry.where}", gpu=g)
        return GpuResult(g, UNCHANGED, f"GPU {g}: already matches")

    result = GpuResult(g, APPLIED)
    slot_gi: Dict[int, int] = {a.slot: a.kept_gi for a in plan.assignments if a.kept_gi is not None}
    try:
        for action in plan.actions:
            if action.kind == "set_mig_mode":
                pending = _set_mode(backend, g, bool(action.enabled))
                if pending is not None:
                    result.done.append(action)
                    holders = describe_holders(g) if describe_holders else []
                    held = f": held by {', '.join(holders)}" if holders else ""
                    msg = (f"GPU {g}: MIG mode change to {'on' if action.enabled else 'off'} is pending "
                           f"({E.code_name(pending)}){held}; stop the GPU's clients and run migd apply again, "
                           f"or reboot")
                    log.warning("mode_pending", msg=msg, gpu=g, status=E.code_name(pending), holders=holders)
                    return GpuResult(g, PENDING, msg, result.done, holders)
            else:
                _run(backend, action, slot_gi)
            result.done.append(action)
            log.info(action.kind, msg=str(action), gpu=g, **_fields(action))
    except DriverError as e:
        return _fail(backend, info, before, result, e)

    after = backend.state(g)
    check = plan_gpu(info, desired, after, persistence)
    if not check.noop:
        e = DriverError(E.UNKNOWN, "verify", g, "live layout differs from the plan after apply")
        return _fail(backend, info, before, result, e)
    result.message = f"GPU {g}: applied {len(result.done)} change{'s' if len(result.done) != 1 else ''}"
    log.info("gpu_applied", msg=result.message, gpu=g, changes=len(result.done))
    return result


def _set_mode(backend, g: int, enabled: bool) -> Optional[int]:
    """Set MIG mode; None when it took effect, else the activation status that left it pending."""
    status = backend.set_mig_mode(g, enabled)
    state = backend.state(g)
    if state.mig_current == enabled:
        return None
    return status if status != E.SUCCESS else E.RESET_REQUIRED


def _run(backend, a: Action, slot_gi: Dict[int, int]) -> None:
    if a.kind == "set_persistence":
        backend.set_persistence(a.gpu, bool(a.enabled))
    elif a.kind == "destroy_ci":
        backend.destroy_compute_instance(a.gpu, a.gi_id, a.ci_id)
    elif a.kind == "destroy_gi":
        backend.destroy_gpu_instance(a.gpu, a.gi_id)
    elif a.kind == "create_gi":
        slot_gi[a.slot] = backend.create_gpu_instance(a.gpu, a.profile_id, a.placement)
    elif a.kind == "create_ci":
        backend.create_compute_instance(a.gpu, slot_gi[a.slot], a.profile_id, a.placement)
    else:
        raise ValueError(f"unknown action {a.kind}")


def _fields(a: Action) -> dict:
    out: dict = {}
    for key in ("gi_id", "ci_id", "profile_id", "enabled"):
        value = getattr(a, key)
        if value is not None:
            out[key] = value
    if a.profile_name:
        out["profile"] = a.profile_name
    if a.placement is not None:
        out["placement"] = str(a.placement)
    return out


def _fail(backend, info: GpuInfo, before: GpuState, result: GpuResult, error: DriverError) -> GpuResult:
    g = info.index
    if error.code == E.GPU_IS_LOST:
        msg = f"GPU {g}: lost (fell off the bus) during apply: {error}; check `dmesg` for Xid errors"
        log.critical("gpu_lost", msg=msg, gpu=g, call=error.call)
        return GpuResult(g, LOST, msg, result.done)
    log.error("apply_failed", msg=f"GPU {g}: {error}; rolling back to the previous layout", gpu=g,
              call=error.call, code=E.code_name(error.code), done=len(result.done))
    try:
        _restore(backend, info, before)
    except (DriverError, RuntimeError) as e2:
        msg = f"GPU {g}: {error}; rollback failed too: {e2}"
        log.critical("rollback_failed", msg=msg, gpu=g)
        return GpuResult(g, FAILED, msg, result.done)
    msg = f"GPU {g}: {error}; rolled back to the previous layout"
    log.warning("rolled_back", msg=msg, gpu=g)
    return GpuResult(g, ROLLED_BACK, msg, result.done)


def previous_layout(info: GpuInfo, before: GpuState) -> DesiredGpu:
    """The layout a GPU had, as a desired layout with exact placements (for rollback)."""
    entry = GpuEntry(number=0, selector=GpuSelector("index", (info.index,)), mig=before.mig_current,
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


def _restore(backend, info: GpuInfo, before: GpuState) -> None:
    g = info.index
    target = previous_layout(info, before)
    now = backend.state(g)
    plan = plan_gpu(info, target, now)
    if plan.refusal:
        raise RuntimeError(plan.refusal)
    slot_gi: Dict[int, int] = {a.slot: a.kept_gi for a in plan.assignments if a.kept_gi is not None}
    for action in plan.actions:
        if action.kind == "set_mig_mode":
            backend.set_mig_mode(g, bool(action.enabled))
        else:
            _run(backend, action, slot_gi)
        log.info("rollback_" + action.kind, msg="rollback: " + str(action), gpu=g, **_fields(action))
    if not plan_gpu(info, target, backend.state(g)).noop:
        raise RuntimeError("layout after rollback differs from the previous one")
