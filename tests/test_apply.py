"""The apply engine on simulated GPUs: rollback to the exact previous layout on a failure at any step, lost GPUs,
pending mode changes, MIG off, and that other GPUs are applied regardless."""

from __future__ import annotations

import os
from typing import Sequence, Tuple

import pytest

from migd import engine as A
from migd.engine import Outcome
from migd import errors as E
from migd.layout import DesiredGpu, DesiredInstance
from migd.model import GpuEntry, GpuInfo, GpuSelector, GpuState
from migd.plan import plan_gpu

ENTRY = GpuEntry(number=1, selector=GpuSelector("all"), mig=True, where="test.toml:1")

CALL_OF = {  # plan action -> the C function the nvml backend calls for it
    "set_mig_mode": "nvmlDeviceSetMigMode",
    "set_persistence": "nvmlDeviceSetPersistenceMode",
    "destroy_ci": "nvmlComputeInstanceDestroy",
    "destroy_gi": "nvmlGpuInstanceDestroy",
    "create_gi": "nvmlDeviceCreateGpuInstanceWithPlacement",
    "create_ci": "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
}
FAULT_CODE = {  # what the real driver would plausibly answer for each
    "set_mig_mode": "NO_PERMISSION",
    "set_persistence": "NO_PERMISSION",
    "destroy_ci": "IN_USE",
    "destroy_gi": "IN_USE",
    "create_gi": "INSUFFICIENT_RESOURCES",
    "create_ci": "INSUFFICIENT_RESOURCES",
}


def desired(info: GpuInfo, ids: Sequence[int], mig: bool = True) -> DesiredGpu:
    items = tuple(DesiredInstance(info.profile_by_id(i), (info.profile_by_id(i).full_compute_profile,)) for i in ids)
    return DesiredGpu(ENTRY, mig, items)


def layout(state: GpuState) -> Tuple:
    """Everything that must survive a rollback: mode, and each GI's profile, placement and compute instances."""
    return (state.mig_current, state.mig_pending, tuple(
        (gi.profile_id, gi.placement, tuple((ci.profile_id, ci.placement) for ci in gi.compute))
        for gi in state.instances))


def build(host, gpu: int, ids_at: Sequence[Tuple[int, Tuple[int, int]]], split: bool = False) -> None:
    """Put a layout on a simulated GPU directly (not through the library, so no fault counter moves)."""
    host.set_mig_mode(gpu, 1)
    for pid, placement in ids_at:
        gi = host.create_gi(gpu, pid, placement)
        cps = host.ci_profiles(gpu, host.find_gi(gpu, gi))
        if split and placement[1] > 1 and pid != 15:
            one = [c for c in cps.values() if c["sliceCount"] == 1][0]
            for s in range(2):
                host.create_ci(gpu, gi, one["id"], (s, 1))
        else:
            full = max(cps.values(), key=lambda c: c["sliceCount"])
            host.create_ci(gpu, gi, full["id"], tuple(full["placements"][0]))


BEFORE_LAYOUTS = {
    "seven-1g": [(19, (s, 1)) for s in range(7)],
    "mixed": [(9, (0, 4)), (14, (4, 2)), (19, (6, 1))],
    "mig-off": None,
}
AFTER = [9, 9]  # two 3g: on "seven-1g" every old instance goes; on "mixed" the 3g at 0:4 is kept


def _steps():
    """(before layout name, step index) for every action of the plan applying AFTER to that layout."""
    from migd.sim import make_backend
    import migd.sim

    out = []
    for name in ("seven-1g", "mixed", "mig-off"):
        backend = make_backend(simulate="h100-80gb")
        try:
            backend.open()
            import pynvml

            host = pynvml.nvmlLib.host
            if BEFORE_LAYOUTS[name] is not None:
                build(host, 0, BEFORE_LAYOUTS[name], split=(name == "mixed"))
            info = backend.gpus()[0]
            plan = plan_gpu(info, desired(info, AFTER), backend.state(0))
            out += [(name, i) for i in range(len(plan.actions))]
        finally:
            backend.close()
            migd.sim.uninstall()
    return out


@pytest.mark.parametrize("before_name, step", _steps())
def test_failure_at_any_step_rolls_that_gpu_back_exactly(sim_backend, monkeypatch, before_name, step):
    backend = sim_backend("h100-80gb:3")
    host = backend._sim_host
    for g in range(3):
        if BEFORE_LAYOUTS[before_name] is not None:
            build(host, g, BEFORE_LAYOUTS[before_name], split=(before_name == "mixed"))
    infos = backend.gpus()
    before = [layout(backend.state(g)) for g in range(3)]
    plan = plan_gpu(infos[1], desired(infos[1], AFTER), backend.state(1))
    action = plan.actions[step]
    nth = sum(1 for a in plan.actions[:step + 1] if CALL_OF[a.kind] == CALL_OF[action.kind])
    monkeypatch.setenv("MIGD_SIM_FAULTS", f"{CALL_OF[action.kind]}={FAULT_CODE[action.kind]}@{nth}/gpu1")
    results = [A.apply_gpu(backend, infos[g], desired(infos[g], AFTER)) for g in range(3)]
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.ROLLED_BACK, Outcome.APPLIED], [r.message for r in results]
    r = results[1]
    assert r.done == list(plan.actions[:step])  # what ran before the failing call
    assert FAULT_CODE[action.kind] in r.message and "rolled back" in r.message
    assert r.exit_code == E.EXIT_FAILURE and A.exit_code(results) == E.EXIT_FAILURE
    assert layout(backend.state(1)) == before[1]  # exactly the previous layout
    for g in (0, 2):
        assert plan_gpu(infos[g], desired(infos[g], AFTER), backend.state(g)).noop
    # and a retry without the fault completes it
    monkeypatch.delenv("MIGD_SIM_FAULTS")
    assert A.apply_gpu(backend, backend.gpus()[1], desired(backend.gpus()[1], AFTER)).outcome == Outcome.APPLIED


def test_rollback_keeps_busy_instances_and_their_ids(sim_backend, monkeypatch):
    backend = sim_backend("a100-40gb")
    host = backend._sim_host
    build(host, 0, [(9, (4, 4)), (19, (0, 1)), (19, (1, 1))])
    gi3 = [g for g in host.gpus[0]["gis"] if g["profile_id"] == 9][0]["id"]
    host.add_process(0, 5150, gi=gi3, ci=0)
    info = backend.gpus()[0]
    before = backend.state(0)
    ids_before = {(g.id, g.placement) for g in before.instances}
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlGpuInstanceCreateComputeInstanceWithPlacement=UNKNOWN@2")
    result = A.apply_gpu(backend, info, desired(info, [9, 14, 14]))  # keeps the busy 3g, replaces the 1g pair
    assert result.outcome == Outcome.ROLLED_BACK, result.message
    after = backend.state(0)
    assert layout(after) == layout(before)
    assert {(g.id, g.placement) for g in after.instances} == ids_before
    assert host.gpus[0]["processes"] == [{"pid": 5150, "gi": gi3, "ci": 0}]


def test_rollback_that_fails_too_is_reported(sim_backend, monkeypatch):
    backend = sim_backend("h100-80gb")
    build(backend._sim_host, 0, BEFORE_LAYOUTS["mixed"])
    info = backend.gpus()[0]
    # every create fails: the destroyed 3g cannot be recreated either
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES")
    result = A.apply_gpu(backend, info, desired(info, [5, 14, 19]))
    assert result.outcome == Outcome.FAILED
    assert "rollback failed too" in result.message
    assert result.exit_code == E.EXIT_FAILURE


def test_lost_gpu_is_reported_and_others_are_applied(sim_backend, monkeypatch):
    backend = sim_backend("h100-80gb:3")
    infos = backend.gpus()
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=GPU_IS_LOST@2/gpu1")
    results = [A.apply_gpu(backend, infos[g], desired(infos[g], [9, 14, 19])) for g in range(3)]
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.LOST, Outcome.APPLIED]
    assert "lost" in results[1].message and "Xid" in results[1].message
    assert [a.kind for a in results[1].done] == ["set_mig_mode", "create_gi", "create_ci"]
    assert results[1].exit_code == E.EXIT_FAILURE and A.exit_code(results) == E.EXIT_FAILURE
    assert backend._sim_host.gpus[1]["lost"] is True
    with pytest.raises(E.DriverError) as exc:
        backend.state(1)
    assert exc.value.code == E.GPU_IS_LOST
    for g in (0, 2):
        assert plan_gpu(infos[g], desired(infos[g], [9, 14, 19]), backend.state(g)).noop


@pytest.mark.parametrize("spec", ["a100-40gb:2", "h100-80gb:2"])
def test_pending_mode_with_a_client(sim_backend, spec):
    backend = sim_backend(spec)
    host = backend._sim_host
    host.gpus[0]["clients"].append(os.getpid())
    infos = backend.gpus()
    holders = lambda g: ["nv-hostengine (pid 2180, nvidia-dcgm.service)"] if g == 0 else []  # noqa: E731
    results = [A.apply_gpu(backend, infos[g], desired(infos[g], [9, 9]), describe_holders=holders) for g in (0, 1)]
    assert [r.outcome for r in results] == [Outcome.PENDING, Outcome.APPLIED]
    r = results[0]
    assert r.exit_code == E.EXIT_PENDING == 4 and A.exit_code(results) == 4
    assert "pending" in r.message and "IN_USE" in r.message and "nv-hostengine (pid 2180" in r.message
    assert r.holders == ["nv-hostengine (pid 2180, nvidia-dcgm.service)"]
    assert [a.kind for a in r.done] == ["set_mig_mode"]
    state = backend.state(0)
    assert (state.mig_current, state.mig_pending, state.instances) == (False, True, ())
    # clients gone: apply again finishes the job
    host.gpus[0]["clients"].clear()
    assert A.apply_gpu(backend, backend.gpus()[0], desired(backend.gpus()[0], [9, 9])).outcome == Outcome.APPLIED


def test_pending_mode_in_a_pass_through_vm(sim_backend):
    backend = sim_backend("a100-40gb")
    backend._sim_host.gpus[0]["reset_supported"] = False
    info = backend.gpus()[0]
    r = A.apply_gpu(backend, info, desired(info, [19]))
    assert r.outcome == Outcome.PENDING and "RESET_REQUIRED" in r.message and r.exit_code == 4
    backend._sim_host.reboot()  # Ampere: the pending change commits at boot
    assert A.apply_gpu(backend, backend.gpus()[0], desired(backend.gpus()[0], [19])).outcome == Outcome.APPLIED


def test_mig_false_destroys_instances_and_turns_mig_off(sim_backend):
    backend = sim_backend("h100-80gb:2")
    host = backend._sim_host
    build(host, 0, BEFORE_LAYOUTS["seven-1g"])
    build(host, 1, BEFORE_LAYOUTS["mixed"], split=True)
    infos = backend.gpus()
    results = [A.apply_gpu(backend, infos[g], desired(infos[g], [], mig=False)) for g in (0, 1)]
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]
    assert [a.kind for a in results[0].done] == ["destroy_ci", "destroy_gi"] * 7 + ["set_mig_mode"]
    for g in (0, 1):
        state = backend.state(g)
        assert (state.mig_current, state.mig_pending, state.instances) == (False, False, ())
        assert host.gpus[g]["gis"] == []
    # again: nothing to do
    assert A.apply_gpu(backend, infos[0], desired(infos[0], [], mig=False)).outcome == Outcome.UNCHANGED


def test_mig_false_with_busy_instances_is_refused_and_nothing_changes(sim_backend, calls_log):
    backend = sim_backend("h100-80gb")
    host = backend._sim_host
    build(host, 0, BEFORE_LAYOUTS["mixed"])
    gi = host.gpus[0]["gis"][0]["id"]
    host.add_process(0, 31337, gi=gi, ci=0)
    info = backend.gpus()[0]
    before = layout(backend.state(0))
    record = calls_log()
    r = A.apply_gpu(backend, info, desired(info, [], mig=False))
    assert r.outcome == Outcome.REFUSED and "31337" in r.message and r.exit_code == E.EXIT_FAILURE
    assert layout(backend.state(0)) == before
    assert not [n for n, _ in record if any(v in n for v in ("Create", "Destroy", "Set"))]


def test_unchanged_gpu_makes_no_changing_calls(sim_backend, calls_log):
    backend = sim_backend("a100-40gb")
    info = backend.gpus()[0]
    assert A.apply_gpu(backend, info, desired(info, [9, 14, 19, 19])).outcome == Outcome.APPLIED
    record = calls_log()
    r = A.apply_gpu(backend, backend.gpus()[0], desired(info, [19, 9, 19, 14]))
    assert r.outcome == Outcome.UNCHANGED and r.exit_code == 0
    assert not [n for n, _ in record if any(v in n for v in ("Create", "Destroy", "Set"))]


def test_previous_layout_pins_exact_placements(sim_backend):
    backend = sim_backend("h100-80gb")
    build(backend._sim_host, 0, [(19, (5, 1)), (14, (2, 2))])
    info = backend.gpus()[0]
    prev = A.previous_layout(info, backend.state(0))
    assert prev.mig and [(i.profile.id, i.pin.start, i.pin.size) for i in prev.instances] == [(14, 2, 2), (19, 5, 1)]
    # rebuilding from scratch lands on exactly those slots, not the lowest free ones
    plan = plan_gpu(info, prev, GpuState(True, True, None))
    assert [(a.profile_id, str(a.placement)) for a in plan.actions if a.kind == "create_gi"] == [(14, "2:2"),
                                                                                                   (19, "5:1")]


def test_exit_code_priorities():
    r = lambda o: A.GpuResult(0, o)  # noqa: E731
    assert A.exit_code([]) == 0
    assert A.exit_code([r(Outcome.APPLIED), r(Outcome.UNCHANGED)]) == 0
    assert A.exit_code([r(Outcome.APPLIED), r(Outcome.PENDING)]) == 4
    for bad in (Outcome.REFUSED, Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.LOST):
        assert A.exit_code([r(Outcome.PENDING), r(bad), r(Outcome.APPLIED)]) == 1
