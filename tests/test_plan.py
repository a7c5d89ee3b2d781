"""The planner: exact (brute force agrees), order-independent, deterministic, minimal, never destroys busy instances.

The brute force below is deliberately naive and uses the profile tables from the reference (the H100 one straight
from the measurement file), not the simulator's catalog or the planner's own code.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import textwrap
from collections import Counter
from functools import cache
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import migd.sim
from migd import engine as A
from migd.engine import Outcome
from migd.sim import make_backend
from migd.config import parse
from migd.layout import DesiredGpu, DesiredInstance, resolve, select
from migd.model import GpuEntry, GpuInfo, GpuSelector, GpuState, LiveComputeInstance, LiveGpuInstance, Placement
from migd.plan import plan_gpu

from conftest import DATA, PYTHON, load_h100_reference, load_reference, python_env

# --- reference tables: profile ID -> (compute slices, instanceCount, carries the OFA, placements) ---------------

Table = Dict[int, Tuple[int, int, bool, Tuple[Tuple[int, int], ...]]]

_SEVEN_1 = tuple((s, 1) for s in range(7))
A100_TABLE: Table = {  # reference §2.2, A100-40GB (guide -lgip/-lgipp)
    19: (1, 7, False, _SEVEN_1),
    20: (1, 1, True, _SEVEN_1),
    15: (1, 4, False, ((0, 2), (2, 2), (4, 2), (6, 2))),
    14: (2, 3, False, ((0, 2), (2, 2), (4, 2))),
    9: (3, 2, False, ((0, 4), (4, 4))),
    5: (4, 1, False, ((0, 4),)),
    0: (7, 1, True, ((0, 8),)),
}
A30_TABLE: Table = {  # reference §2.2, A30-24GB
    14: (1, 4, False, ((0, 1), (1, 1), (2, 1), (3, 1))),
    21: (1, 1, True, ((0, 1), (1, 1), (2, 1), (3, 1))),
    5: (2, 2, False, ((0, 2), (2, 2))),
    6: (2, 1, True, ((0, 2), (2, 2))),
    0: (4, 1, True, ((0, 4),)),
}


def h100_table() -> Table:
    rows = [r for r in load_h100_reference()["devices"][0]["gpu_instance_profiles"] if "error" not in r]
    return {r["id"]: (r["sliceCount"], r["instanceCount"], r["ofaCount"] > 0,
                      tuple(tuple(p) for p in r["placements"])) for r in rows}


def h200_table() -> Table:
    rows = [r for r in load_reference(DATA / "h200-141gb.json")["devices"][0]["gpu_instance_profiles"]
            if "error" not in r]
    return {r["id"]: (r["sliceCount"], r["instanceCount"], r["ofaCount"] > 0,
                      tuple(tuple(p) for p in r["placements"])) for r in rows}


_ONE_4 = ((0, 1), (1, 1), (2, 1), (3, 1))
_TWO_4 = ((0, 2), (2, 2))
RTX_PRO_TABLE: Table = {  # mig-models-2026.md (guide table, GCP #564): 4 slices; 4-slot grid as A30 (assumed)
    14: (1, 4, False, _ONE_4), 21: (1, 1, True, _ONE_4), 47: (1, 4, False, _ONE_4), 65: (1, 1, True, _ONE_4),
    67: (1, 4, False, _ONE_4), 5: (2, 2, False, _TWO_4), 35: (2, 2, False, _TWO_4), 64: (2, 1, True, _TWO_4),
    66: (2, 2, False, _TWO_4), 0: (4, 1, True, ((0, 4),)), 32: (4, 1, True, ((0, 4),)),
}
# nvml.h on NVML_GPU_INSTANCE_PROFILE_*_ALL_ME: "prevents allocation of all but _NO_ME profiles"
RTX_ALL_ME, RTX_NO_ME = {65, 64}, {67, 66}

MODELS = {  # sim model -> (reference table factory, compute slices, max instances to enumerate)
    "a100-40gb": (lambda: A100_TABLE, 7, 7),
    "h100-80gb": (h100_table, 7, 7),
    "a30": (lambda: A30_TABLE, 4, 4),
    # the 2026 models: the A100/Hopper profile-ID set and 8-slot grid (mig-models-2026.md), or measured (H200)
    "h200": (h200_table, 7, 7),
    **{key: (lambda: A100_TABLE, 7, 7) for key in (
        "h200-nvl", "h800", "h20", "gh200-96gb", "gh200-144gb", "b200", "gb200", "b300", "gb300", "a800-80gb",
        "a800-40gb")},
    "rtx-pro-6000": (lambda: RTX_PRO_TABLE, 4, 4),
}


def _mask(p) -> int:
    start, size = p
    return ((1 << size) - 1) << start


def rules_ok(table: Table, ids: Sequence[int], slices: int) -> bool:
    if sum(table[i][0] for i in ids) > slices:
        return False
    if table is RTX_PRO_TABLE and set(ids) & RTX_ALL_ME and len(ids) > 1:
        others = list(ids)
        others.remove(next(i for i in ids if i in RTX_ALL_ME))
        if not set(others) <= RTX_NO_ME:
            return False
    if any(n > table[i][1] for i, n in Counter(ids).items()):
        return False
    return sum(1 for i in ids if table[i][2]) <= 1


def placeable(table: Table, ids: Sequence[int], occupied: int = 0) -> bool:
    """Plain backtracking: can every instance get one of its listed placements, none overlapping?"""
    if not ids:
        return True
    return any(not _mask(p) & occupied and placeable(table, ids[1:], occupied | _mask(p)) for p in table[ids[0]][3])


def brute_feasible(table: Table, ids: Sequence[int], slices: int) -> bool:
    return rules_ok(table, ids, slices) and placeable(table, list(ids))


def valid_layout(table: Table, placed: Sequence[Tuple[int, Tuple[int, int]]], slices: int) -> bool:
    occupied = 0
    for pid, p in placed:
        if p not in table[pid][3] or _mask(p) & occupied:
            return False
        occupied |= _mask(p)
    return rules_ok(table, [pid for pid, _ in placed], slices)


# --- GPU info from the simulator, once per model ---------------------------------------------------------------

@cache
def info_for(model: str) -> GpuInfo:
    backend = make_backend(simulate=model)
    try:
        backend.open()
        return backend.gpus()[0]
    finally:
        backend.close()
        migd.sim.uninstall()


ENTRY = GpuEntry(number=1, selector=GpuSelector("all"), mig=True, where="test.toml:1")
FRESH = GpuState(mig_current=False, mig_pending=False, persistence=None)
EMPTY_ON = GpuState(mig_current=True, mig_pending=True, persistence=None)


def desired(info: GpuInfo, ids: Sequence[int], mig: bool = True) -> DesiredGpu:
    items = []
    for i in ids:
        p = info.profile_by_id(i)
        items.append(DesiredInstance(p, (p.full_compute_profile,)))
    return DesiredGpu(ENTRY, mig, tuple(items))


def placed_of(plan) -> List[Tuple[int, Tuple[int, int]]]:
    return [(a.instance.profile.id, (a.placement.start, a.placement.size)) for a in plan.assignments]


def live_of(state: GpuState) -> List[Tuple[int, Tuple[int, int]]]:
    return sorted((gi.profile_id, (gi.placement.start, gi.placement.size)) for gi in state.instances)


def multisets(ids: Sequence[int], up_to: int):
    for k in range(up_to + 1):
        yield from itertools.combinations_with_replacement(sorted(ids), k)


def reset_gpu(host, gpu: int = 0) -> None:
    """A fresh GPU: MIG off (as a Hopper after boot), no instances, no processes."""
    g = host.gpus[gpu]
    g["mig"], g["gis"], g["processes"], g["clients"] = [0, 0], [], [], []


# --- exactness by brute force ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(MODELS))
def test_planner_is_exact_and_plans_apply_cleanly(model, sim_backend, calls_log, summary_line):
    """Every layout up to the GPU's size, on every simulated model: the planner agrees with the brute force, and
    every feasible layout is applied on a simulated GPU (all 16 models: ~12 s, so no sampling)."""
    make_table, slices, up_to = MODELS[model]
    table = make_table()
    info = info_for(model)
    assert {p.id for p in info.profiles} == set(table)  # the GPU offers exactly the reference's profiles
    backend = sim_backend(model)
    host = backend._sim_host
    record = calls_log()
    rng = random.Random(1234)
    checked = feasible = applied = 0
    for ids in multisets(table, up_to):
        checked += 1
        want = brute_feasible(table, ids, slices)
        order = list(ids)
        rng.shuffle(order)
        for state in (FRESH, EMPTY_ON):
            for variant in (order, list(reversed(order))):
                plan = plan_gpu(info, desired(info, variant), state)
                assert plan.ok == want, (model, variant, plan.refusal)
                if not want:
                    assert plan.refusal.startswith("GPU 0: ") and not plan.actions
        if not want:
            continue
        feasible += 1
        plan = plan_gpu(info, desired(info, order), FRESH)
        applied += 1
        placed = placed_of(plan)
        assert [pid for pid, _ in placed] == order
        assert valid_layout(table, placed, slices), (order, placed)
        assert [(a.profile_id, (a.placement.start, a.placement.size)) for a in plan.actions
                if a.kind == "create_gi"] == placed
        assert plan.actions[0].kind == "set_mig_mode" and plan.actions[0].enabled is True
        # apply it on a fresh simulated GPU: no call may fail, and the result is what was planned
        reset_gpu(host)
        del record[:]
        result = A.apply_gpu(backend, info, desired(info, order))
        assert result.outcome == Outcome.APPLIED, (order, result.message)
        failed = [(name, rc) for name, rc in record if rc != 0 and
                  any(v in name for v in ("Create", "Destroy", "Set"))]
        assert failed == [], (order, failed)
        after = backend.state(0)
        assert live_of(after) == sorted(placed)
        assert all(len(gi.compute) == 1 for gi in after.instances)
        again = plan_gpu(info, desired(info, order), after)
        assert again.noop, (order, again.actions)
    summary_line(f"brute force {model}: {checked} layouts checked, {feasible} feasible, all agree with the planner; "
                 f"{applied} applied on the simulator")
    assert checked == {7: 3432, 5: 126, 11: 1365}[len(table)]
    assert 0 < feasible < checked


@pytest.mark.parametrize("model", ["a100-80gb", "h100-94gb", "h200"])
def test_other_8_slot_models_agree_with_the_a100_rules(model):
    """Same IDs and grid as A100/H100 (reference §2.2): the planner's verdicts must match the brute force."""
    info = info_for(model)
    for ids in multisets(A100_TABLE, 7):
        plan = plan_gpu(info, desired(info, ids), FRESH)
        assert plan.ok == brute_feasible(A100_TABLE, ids, 7), ids


def test_every_permutation_of_a_feasible_list_is_feasible():
    """The runbook's order trap (`-cgi 19,19,19,14,14` style): the planner must not care about order."""
    info = info_for("h100-80gb")
    table = h100_table()
    for ids in [(19, 19, 19, 14, 14), (9, 19, 14, 19), (19, 19, 14, 9), (5, 9), (15, 15, 15, 19),
                (19, 19, 19, 19, 9), (20, 14, 14, 15), (15, 15, 5)]:
        assert brute_feasible(table, ids, 7)
        for perm in set(itertools.permutations(ids)):
            plan = plan_gpu(info, desired(info, perm), FRESH)
            assert plan.ok, (perm, plan.refusal)
            assert valid_layout(table, placed_of(plan), 7)


def test_ties_go_to_the_lowest_slots_in_config_order():
    info = info_for("h100-80gb")
    cases = {
        (19,): [(0, 1)],
        (9,): [(0, 4)],
        (9, 5): [(4, 4), (0, 4)],  # 4g only fits at 0:4
        (19, 19, 14, 9): [(0, 1), (1, 1), (2, 2), (4, 4)],
        (19, 19, 19, 19, 9): [(0, 1), (1, 1), (2, 1), (3, 1), (4, 4)],
        (15, 15, 5): [(4, 2), (6, 2), (0, 4)],
    }
    for ids, want in cases.items():
        plan = plan_gpu(info, desired(info, ids), FRESH)
        assert [p for _, p in placed_of(plan)] == want, ids


_DETERMINISM = textwrap.dedent("""
    import itertools, json
    from migd.sim import make_backend
    from migd.layout import DesiredGpu, DesiredInstance
    from migd.model import GpuEntry, GpuSelector, GpuState
    from migd.plan import plan_gpu
    b = make_backend(simulate="h100-80gb"); b.open()
    info = b.gpus()[0]
    entry = GpuEntry(number=1, selector=GpuSelector("all"), mig=True, where="t")
    out = {}
    for k in range(8):
        for ids in itertools.combinations_with_replacement(sorted(p.id for p in info.profiles), k):
            items = tuple(DesiredInstance(info.profile_by_id(i), (info.profile_by_id(i).full_compute_profile,))
                          for i in ids)
            plan = plan_gpu(info, DesiredGpu(entry, True, items), GpuState(False, False, None))
            out[",".join(map(str, ids))] = [str(a) for a in plan.actions] if plan.ok else plan.refusal
    print(json.dumps(out))
""")


def test_deterministic_across_processes_and_hash_seeds():
    outputs = []
    for seed in ("0", "1", "12345"):
        env = dict(python_env(), PYTHONHASHSEED=seed)
        run = subprocess.run([PYTHON, "-c", _DETERMINISM], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 3432
    # and the same as here
    info = info_for("h100-80gb")
    for key in ("9,19,19,14", "5,9", "15,15,15,19"):
        ids = [int(x) for x in key.split(",")]
        plan = plan_gpu(info, desired(info, sorted(ids)), FRESH)
        assert outputs[0][",".join(map(str, sorted(ids)))] == [str(a) for a in plan.actions]


# --- minimality ----------------------------------------------------------------------------------------------

def live_gi(info: GpuInfo, gi_id: int, pid: int, start: int, pids: Tuple[int, ...] = (),
            compute: Optional[Sequence[int]] = None) -> LiveGpuInstance:
    p = info.profile_by_id(pid)
    placement = [pl for pl in p.placements if pl.start == start][0]
    cis = []
    ci_ids = compute if compute is not None else [p.full_compute_profile.id]
    offset = 0
    for n, cid in enumerate(ci_ids):
        cp = [c for c in p.compute_profiles if c.id == cid][0]
        cis.append(LiveComputeInstance(n, cid, Placement(offset, cp.slices), pids=pids if n == 0 else ()))
        offset += cp.slices
    return LiveGpuInstance(gi_id, pid, placement, tuple(cis))


def test_matching_gpu_gets_zero_actions():
    info = info_for("h100-80gb")
    live = GpuState(True, True, True, (live_gi(info, 3, 14, 0), live_gi(info, 9, 19, 2), live_gi(info, 2, 9, 4)))
    # listed in any order, spelled as a different but equal multiset: still nothing to do
    for ids in ([9, 14, 19], [19, 14, 9], [14, 9, 19]):
        plan = plan_gpu(info, desired(info, ids), live)
        assert plan.noop, plan.actions
        assert {a.kept_gi for a in plan.assignments} == {3, 9, 2}
    # persistence is part of the state it compares
    assert plan_gpu(info, desired(info, [9, 14, 19]), live, persistence=True).noop
    plan = plan_gpu(info, desired(info, [9, 14, 19]), live, persistence=False)
    assert [a.kind for a in plan.actions] == ["set_persistence"]


def test_changing_one_instance_touches_only_that_one(sim_backend):
    backend = sim_backend("h100-80gb")
    info = backend.gpus()[0]
    before_ids = [9, 14, 19, 19]
    assert A.apply_gpu(backend, info, desired(info, before_ids)).outcome == Outcome.APPLIED
    before = backend.state(0)
    # replace one 1g.10gb by a 1g.10gb+me
    target = [9, 14, 19, 20]
    plan = plan_gpu(info, desired(info, target), before)
    kinds = Counter(a.kind for a in plan.actions)
    assert kinds == Counter({"destroy_ci": 1, "destroy_gi": 1, "create_gi": 1, "create_ci": 1}), plan.actions
    destroyed = [a.gi_id for a in plan.actions if a.kind == "destroy_gi"]
    assert [g.profile_id for g in before.instances if g.id in destroyed] == [19]
    created = [a for a in plan.actions if a.kind == "create_gi"]
    assert created[0].profile_id == 20
    # destroy before create, CI before its GI
    order = [a.kind for a in plan.actions]
    assert order == ["destroy_ci", "destroy_gi", "create_gi", "create_ci"]
    assert A.apply_gpu(backend, info, desired(info, target)).outcome == Outcome.APPLIED
    after = backend.state(0)
    kept_before = {(g.id, g.profile_id, g.placement) for g in before.instances if g.id not in destroyed}
    kept_after = {(g.id, g.profile_id, g.placement) for g in after.instances}
    assert kept_before <= kept_after and len(kept_before) == 3  # kept instances keep their GI ids and slots
    uuids_before = {ci.uuid for g in before.instances if g.id not in destroyed for ci in g.compute}
    uuids_after = {ci.uuid for g in after.instances for ci in g.compute}
    assert uuids_before <= uuids_after  # so their MIG UUIDs stay too


def test_adding_an_instance_keeps_everything(sim_backend):
    backend = sim_backend("a100-40gb")
    info = backend.gpus()[0]
    A.apply_gpu(backend, info, desired(info, [9]))
    before = backend.state(0)
    plan = plan_gpu(info, desired(info, [9, 14]), before)
    assert [a.kind for a in plan.actions] == ["create_gi", "create_ci"]
    assert plan.assignments[0].kept_gi == before.instances[0].id


def test_kept_instance_may_sit_anywhere_valid():
    """A live 3g at 4:4 satisfies "one 3g": no move to the lowest slots just because ties prefer them."""
    info = info_for("h100-80gb")
    live = GpuState(True, True, None, (live_gi(info, 2, 9, 4),))
    plan = plan_gpu(info, desired(info, [9, 19]), live)
    assert [a.kind for a in plan.actions] == ["create_gi", "create_ci"]
    assert placed_of(plan) == [(9, (4, 4)), (19, (0, 1))]


def test_compute_layout_change_changes_that_gis_compute_instances_only():
    """Issue 17.12: only the compute instances inside GI 3 change: its CI is destroyed and two are created in it;
    GI 3 itself (id, placement, MIG UUID) stays, and GI 2 is untouched."""
    info = info_for("h100-80gb")
    live = GpuState(True, True, None, (live_gi(info, 3, 14, 0), live_gi(info, 2, 9, 4)))
    p14 = info.profile_by_id(14)
    one_c = [c for c in p14.compute_profiles if c.slices == 1][0]
    p9 = info.profile_by_id(9)
    want = DesiredGpu(ENTRY, True, (DesiredInstance(p14, (one_c, one_c)),
                                    DesiredInstance(p9, (p9.full_compute_profile,))))
    plan = plan_gpu(info, want, live)
    assert [(a.kind, a.gi_id) for a in plan.actions] == [("destroy_ci", 3), ("create_ci", 3), ("create_ci", 3)]
    assert [a.placement for a in plan.actions[1:]] == [Placement(0, 1), Placement(1, 1)]
    assert [(a.slot, a.kept_gi, a.reused_gi) for a in plan.assignments] == [(0, None, 3), (1, 2, None)]


def test_mig_off_plans():
    info = info_for("h100-80gb")
    live = GpuState(True, True, None, (live_gi(info, 3, 14, 0), live_gi(info, 2, 9, 4)))
    plan = plan_gpu(info, desired(info, [], mig=False), live)
    assert [a.kind for a in plan.actions] == ["destroy_ci", "destroy_gi", "destroy_ci", "destroy_gi", "set_mig_mode"]
    assert plan.actions[-1].enabled is False
    assert plan_gpu(info, desired(info, [], mig=False), FRESH).noop
    # a pending enable is cancelled
    pending = GpuState(False, True, None)
    assert [(a.kind, a.enabled) for a in plan_gpu(info, desired(info, [], mig=False), pending).actions] == [
        ("set_mig_mode", False)]


def test_pending_mode_is_requested_again():
    info = info_for("a100-40gb")
    pending = GpuState(False, True, None)
    plan = plan_gpu(info, desired(info, [19]), pending)
    assert plan.actions[0].kind == "set_mig_mode" and plan.actions[0].enabled


# --- refusals ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, ids, text", [
    ("h100-80gb", [0, 19], "needs 8 compute slices (7g.80gb, 1g.10gb), H100 80GB HBM3 has 7"),
    ("h100-80gb", [9, 9, 19, 19], "needs 8 compute slices (2 × 3g.40gb, 2 × 1g.10gb), H100 80GB HBM3 has 7"),
    ("h100-80gb", [20, 20], "1g.10gb+me allows 1 instance, 2 requested"),
    ("h100-80gb", [15] * 5, "1g.20gb allows 4 instances, 5 requested"),
    ("a100-40gb", [9, 9, 9], "needs 9 compute slices (3 × 3g.20gb), A100-SXM4-40GB has 7"),
    ("h100-80gb", [15, 15, 15, 5], "no placement fits 4g.40gb after 3 × 1g.20gb on H100 80GB HBM3"),
    ("h100-80gb", [9, 9, 19], "no placement fits 1g.10gb after 2 × 3g.40gb on H100 80GB HBM3"),
    ("a100-40gb", [15, 15, 15, 5], "no placement fits 4g.20gb after 3 × 1g.10gb on A100-SXM4-40GB"),
    ("a100-40gb", [14, 15, 14, 19, 5], "needs 10 compute slices (2 × 2g.10gb, 1g.10gb, 1g.5gb, 4g.20gb), "
                                       "A100-SXM4-40GB has 7"),
    ("a100-40gb", [5, 15, 15, 15], "no placement fits 1g.10gb after 4g.20gb, 2 × 1g.10gb on A100-SXM4-40GB"),
    ("a30", [21, 6], "1g.6gb+me and 2g.12gb+me each need the GPU's single optical-flow accelerator"),
])
def test_refusal_messages(model, ids, text):
    info = info_for(model)
    plan = plan_gpu(info, desired(info, ids), FRESH)
    assert not plan.ok and not plan.actions
    assert plan.refusal == f"GPU 0: {text}"


def test_refusal_is_a_record_of_what_gpu_and_reason():
    """The planner's refusal is typed: what is in the way, the GPU, the reason without "GPU n: " (config errors
    quote it after file:line), the processes of a busy one; its text is the message apply and plan print."""
    from migd._record import replace
    from migd.plan import Refusal, RefusalKind

    h100 = info_for("h100-80gb")
    no_fit = plan_gpu(h100, desired(h100, [0, 19]), FRESH).refused
    assert no_fit == Refusal(RefusalKind.NO_FIT, 0, "needs 8 compute slices (7g.80gb, 1g.10gb), H100 80GB HBM3 has 7")
    busy = GpuState(True, True, None, (live_gi(h100, 1, 9, 0, pids=(999,)),))
    refused = plan_gpu(h100, desired(h100, [5, 9]), busy).refused
    assert refused is not None and (refused.what, refused.gpu, refused.pids) == (RefusalKind.BUSY, 0, (999,))
    assert str(refused) == f"GPU 0: {refused.reason}" and refused.reason.startswith("the layout needs the slots of")
    off = plan_gpu(h100, desired(h100, [], mig=False), busy).refused
    assert off is not None and off.what == RefusalKind.BUSY and off.reason.startswith("MIG off would destroy")
    plain = replace(h100, mig_capable=False, profiles=())
    assert plan_gpu(plain, desired(h100, [19]), FRESH).refused == Refusal(RefusalKind.NO_MIG, 0,
                                                                           "H100 80GB HBM3 does not support MIG")


def test_mig_off_with_busy_instances_is_refused():
    info = info_for("h100-80gb")
    live = GpuState(True, True, None, (live_gi(info, 3, 14, 0), live_gi(info, 2, 9, 4, pids=(4242, 4243))))
    plan = plan_gpu(info, desired(info, [], mig=False), live)
    assert not plan.ok and not plan.actions
    assert plan.busy_pids == (4242, 4243)
    assert "GPU instance 2 (3g.40gb at 4:4)" in plan.refusal and "4242, 4243" in plan.refusal


def test_busy_instance_blocking_the_layout_is_refused_with_pids():
    info = info_for("h100-80gb")
    live = GpuState(True, True, None, (live_gi(info, 1, 9, 0, pids=(999,)),))
    plan = plan_gpu(info, desired(info, [5, 9]), live)  # needs the 4g at 0:4, where the busy 3g sits
    assert not plan.ok and plan.busy_pids == (999,)
    assert "GPU instance 1 (3g.40gb at 0:4)" in plan.refusal and "999" in plan.refusal
    assert "not destroying busy instances" in plan.refusal
    # the same layout with the busy 3g kept where it is: fine
    ok = plan_gpu(info, desired(info, [9, 19, 19]), live)
    assert ok.ok and ok.assignments[0].kept_gi == 1
    assert not any(a.kind.startswith("destroy") for a in ok.actions)


# --- busy instances: property against a brute force that keeps them ------------------------------------------

def _feasible_keeping(table: Table, ids: Sequence[int], live: Sequence[LiveGpuInstance], info: GpuInfo,
                      slices: int) -> bool:
    """Can the desired layout be reached without destroying (or changing) any busy GI?"""
    if not rules_ok(table, ids, slices):
        return False
    remaining = list(ids)
    occupied = 0
    for gi in live:
        if not gi.busy:
            continue
        full = info.profile_by_id(gi.profile_id).full_compute_profile.id
        if [c.profile_id for c in gi.compute] != [full] or gi.profile_id not in remaining:
            return False  # it must stay exactly as it is, and the layout must want exactly that
        remaining.remove(gi.profile_id)
        occupied |= _mask((gi.placement.start, gi.placement.size))
    return placeable(table, remaining, occupied)


@st.composite
def live_layouts(draw, table: Table, info: GpuInfo):
    placed: List[Tuple[int, Tuple[int, int]]] = []
    for _ in range(draw(st.integers(0, 10))):
        pid = draw(st.sampled_from(sorted(table)))
        p = draw(st.sampled_from(table[pid][3]))
        if valid_layout(table, placed + [(pid, p)], 7):
            placed.append((pid, p))
    gis = []
    next_pid = 1000
    for n, (pid, (start, _)) in enumerate(placed):
        profile = info.profile_by_id(pid)
        compute = None
        if profile.slices >= 2 and draw(st.booleans()):
            one = [c for c in profile.compute_profiles if c.slices == 1][0]
            compute = [one.id] * draw(st.integers(1, profile.slices))
        pids: Tuple[int, ...] = ()
        if draw(st.integers(0, 2)) == 0:
            pids = tuple(range(next_pid, next_pid + draw(st.integers(1, 3))))
            next_pid += 10
        gis.append(live_gi(info, 20 + n, pid, start, pids=pids, compute=compute))
    return gis


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_busy_instances_are_never_destroyed(data):
    info = info_for("h100-80gb")
    table = h100_table()
    live = data.draw(live_layouts(table, info))
    live_ids = [gi.profile_id for gi in live]
    ids = data.draw(st.one_of(
        st.lists(st.sampled_from(sorted(table)), max_size=7),
        st.lists(st.sampled_from(live_ids or [19]), max_size=4).map(
            lambda extra: live_ids[: len(live_ids) // 2] + extra),
        st.permutations(live_ids),
    ))
    state = GpuState(True, True, None, tuple(sorted(live, key=lambda g: g.placement.start)))
    plan = plan_gpu(info, desired(info, ids), state)
    busy = {gi.id: gi for gi in live if gi.busy}
    event("ok" if plan.ok else ("refused: busy" if brute_feasible(table, ids, 7) else "refused: infeasible"))
    event(f"busy GIs: {min(len(busy), 2)}{'+' if len(busy) > 2 else ''}")
    for a in plan.actions:
        if a.kind in ("destroy_gi", "destroy_ci"):
            assert a.gi_id not in busy, (a, plan.actions)
    assert plan.ok == _feasible_keeping(table, ids, live, info, 7), (ids, live, plan.refusal)
    if plan.ok:
        # every busy GI is kept, as is, and the final layout is valid
        kept = {a.kept_gi for a in plan.assignments}
        assert set(busy) <= kept
        assert valid_layout(table, placed_of(plan), 7)
    elif brute_feasible(table, ids, 7):
        # refused only because of busy instances: the refusal names their processes
        all_busy_pids = {p for gi in busy.values() for p in gi.all_pids}
        assert plan.busy_pids and set(plan.busy_pids) <= all_busy_pids
        for pid in plan.busy_pids:
            assert str(pid) in plan.refusal
    # mig = false: refused exactly when something is busy
    off = plan_gpu(info, desired(info, [], mig=False), state)
    assert off.ok == (not busy)
    if busy:
        assert set(off.busy_pids) == {p for gi in busy.values() for p in gi.all_pids}


# --- from a config file to a plan --------------------------------------------------------------------------

def test_config_spellings_resolve_to_the_same_plan():
    info = info_for("h100-80gb")
    text = textwrap.dedent("""
        [[gpu]]
        select = "all"
        mig = true
        instances = ["3g", "MIG 2g.20gb", 19, { profile = "1g.10gb+me", name = "media" }]
    """)
    config = parse(text, "/etc/migd.toml")
    chosen, problems = select(config, [info])
    assert problems == [] and chosen[0] is config.entries[0]
    want = resolve(chosen[0], info)
    assert [i.profile.id for i in want.instances] == [9, 14, 19, 20]
    assert want.instances[3].name == "media"
    plan = plan_gpu(info, want, FRESH)
    assert plan.ok and valid_layout(h100_table(), placed_of(plan), 7)
