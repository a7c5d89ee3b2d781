"""The drift rules: does a GPU's live layout match the one its config places, and if not, what differs.

Pure and typed: `compare` returns a `Comparison` (a `Match`, the expected and found `Layout`s, and a `Drift` with
missing / extra / moved GPU instances and, per GPU instance, missing / extra / moved compute instances). `report`
words these records (the one wording `check` and migd-watch use), `picture` draws them; nothing here renders.
"""

from __future__ import annotations

from enum import Enum
from typing import Dict, List, Optional, Tuple

from ._record import dataclass
from .layout import DesiredGpu
from .model import GpuInfo, GpuState, Placement
from .plan import ActionKind, GpuPlan, plan_gpu


class Match(str, Enum):
    """How one GPU's live layout compares with its config."""

    OK = "ok"
    DRIFT = "drift"
    PENDING = "pending"  # a MIG mode change waits for a GPU reset: nothing to compare until then

    def __str__(self) -> str:
        return self.value


class ModeDrift(str, Enum):
    """The MIG mode itself differs (or is about to change): the instances are not compared."""

    PENDING_ON = "pending_on"
    PENDING_OFF = "pending_off"
    ON_EXPECTED_OFF = "on_expected_off"
    OFF_EXPECTED_ON = "off_expected_on"


@dataclass(frozen=True)
class ComputeRecord:
    """A compute instance by what it is: its profile and placement inside its GPU instance."""

    profile: str
    placement: Placement


@dataclass(frozen=True)
class InstanceRecord:
    """A GPU instance by what it is (profile, placement, compute instances), not by the driver's ids.
    gi_id: the live GI id (None for one the config places); default_compute: its compute instances are the one
    spanning it (what `nvidia-smi mig -C` creates), so wordings leave them out."""

    profile: str
    placement: Placement
    compute: Tuple[ComputeRecord, ...]
    default_compute: bool
    gi_id: Optional[int] = None

    @property
    def key(self) -> Tuple[str, Placement, Tuple[ComputeRecord, ...], bool]:
        """What two instances must share to be the same (the GI id is the driver's, not part of the layout)."""
        return self.profile, self.placement, self.compute, self.default_compute


@dataclass(frozen=True)
class Layout:
    """A GPU's layout: MIG mode and the GPU instances by placement. pending: a mode change waiting (live only)."""

    mig: bool
    instances: Tuple[InstanceRecord, ...] = ()
    pending: bool = False
    unmanaged: bool = False  # expected only: MIG on, the instances another tool's (instances = "unmanaged")


@dataclass(frozen=True)
class Moved:
    """The same profile, placed elsewhere: `expected` is where the config puts it, `found` where it is."""

    profile: str
    expected: Placement
    found: Placement
    gi_id: Optional[int] = None  # the live one


@dataclass(frozen=True)
class ComputeDrift:
    """A GPU instance at its place whose compute instances differ."""

    instance: InstanceRecord  # as the config places it
    missing: Tuple[ComputeRecord, ...] = ()
    extra: Tuple[ComputeRecord, ...] = ()
    moved: Tuple[Moved, ...] = ()
    gi_id: Optional[int] = None  # the live one


@dataclass(frozen=True)
class Drift:
    """What differs between the expected and the found layout. mode set: the MIG mode differs (nothing else is
    compared). All empty with mode None: the layouts differ in a way none of these name."""

    mode: Optional[ModeDrift] = None
    missing: Tuple[InstanceRecord, ...] = ()
    extra: Tuple[InstanceRecord, ...] = ()
    moved: Tuple[Moved, ...] = ()
    compute: Tuple[ComputeDrift, ...] = ()


@dataclass(frozen=True)
class Comparison:
    match: Match
    expected: Layout  # always a layout, never a refusal (see compare)
    found: Layout
    drift: Optional[Drift]  # None when nothing differs


def names_by_gi(plan: Optional[GpuPlan]) -> Dict[int, str]:
    """Live GI id -> configured instance name, when the GPU matches its config (names live only in the config)."""
    if plan is None or not plan.noop:
        return {}
    return {a.kept_gi: a.instance.name for a in plan.assignments if a.kept_gi is not None and a.instance.name}


def layout_matches(plan: GpuPlan) -> bool:
    """Nothing to change but, at most, persistence mode (which is not part of the layout)."""
    return plan.ok and all(a.kind == ActionKind.SET_PERSISTENCE for a in plan.actions)


def live_instances(info: GpuInfo, state: GpuState) -> List[InstanceRecord]:
    """The live GPU instances by placement, with their GI ids."""
    out = []
    for gi in state.instances:
        p = info.profile_by_id(gi.profile_id)
        names = {c.id: c.name for c in p.compute_profiles} if p else {}
        full = p.full_compute_profile if p else None
        cis = tuple(sorted((ComputeRecord(names.get(ci.profile_id, str(ci.profile_id)), ci.placement)
                            for ci in gi.compute), key=lambda c: c.placement.start))
        default = full is not None and [ci.profile_id for ci in gi.compute] == [full.id]
        out.append(InstanceRecord(p.name if p else str(gi.profile_id), gi.placement, cis, default, gi.id))
    return sorted(out, key=lambda g: g.placement.start)


def planned_instances(plan: GpuPlan) -> List[InstanceRecord]:
    """The GPU instances `plan` places, by placement (gi_id: the live one it keeps, if any)."""
    out = []
    for a in plan.assignments:
        full = a.instance.profile.full_compute_profile
        cis = tuple(sorted((ComputeRecord(c.name, pl) for c, pl in zip(a.instance.compute, a.compute_placements)),
                           key=lambda c: c.placement.start))
        default = [c.id for c in a.instance.compute] == [full.id if full else None]
        out.append(InstanceRecord(a.instance.profile.name, a.placement, cis, default, a.kept_gi))
    return sorted(out, key=lambda g: g.placement.start)


def live_layout(info: GpuInfo, state: GpuState) -> Layout:
    if not state.mig_current:
        return Layout(False, pending=state.mig_pending)
    return Layout(True, tuple(live_instances(info, state)), pending=state.mode_change_pending)


def planned_layout(plan: GpuPlan, mig: bool, unmanaged: bool = False) -> Layout:
    if unmanaged:
        return Layout(True, unmanaged=True)
    return Layout(True, tuple(planned_instances(plan))) if mig else Layout(False)


def compare(info: GpuInfo, desired: DesiredGpu, state: GpuState, plan: Optional[GpuPlan] = None) -> Comparison:
    """One GPU for `check` and the watchdog. Persistence mode is not part of the layout: a plan that only turns it
    on still matches. `expected` is always a layout, never a refusal: a plan refused (a busy instance in the way)
    shows the layout as placed on an empty GPU."""
    plan = plan if plan is not None else plan_gpu(info, desired, state)
    found = live_layout(info, state)
    if state.mode_change_pending:
        match = Match.PENDING
    elif layout_matches(plan):
        match = Match.OK
    else:
        match = Match.DRIFT
    if not plan.ok:
        plan = plan_gpu(info, desired, GpuState(mig_current=True, mig_pending=True, persistence=None))
    expected = planned_layout(plan, desired.mig, desired.unmanaged)
    return Comparison(match, expected, found, None if match == Match.OK else differences(info, desired.mig, plan,
                                                                                           state))


def differences(info: GpuInfo, mig: bool, plan: GpuPlan, state: GpuState) -> Optional[Drift]:
    """What differs between the layout `plan` places and the live one (None: nothing). Exact matches say nothing;
    the same profile at the same place with other compute instances is a compute drift; the same profile
    elsewhere is moved."""
    if state.mode_change_pending:
        return Drift(ModeDrift.PENDING_ON if state.mig_pending else ModeDrift.PENDING_OFF)
    if not mig:
        return Drift(ModeDrift.ON_EXPECTED_OFF) if state.mig_current else None
    if not state.mig_current:
        return Drift(ModeDrift.OFF_EXPECTED_ON)
    want, have = planned_instances(plan), live_instances(info, state)
    for gi in list(want):
        same = next((h for h in have if h.key == gi.key), None)
        if same is not None:
            want.remove(gi)
            have.remove(same)
    compute: List[ComputeDrift] = []
    for gi in list(want):  # same profile and placement: the compute instances differ
        same = next((h for h in have if (h.profile, h.placement) == (gi.profile, gi.placement)), None)
        if same is not None:
            want.remove(gi)
            have.remove(same)
            compute.append(_compute_drift(gi, same))
    moved: List[Moved] = []
    for gi in list(want):  # same profile elsewhere: moved
        same = next((h for h in have if h.profile == gi.profile), None)
        if same is not None:
            want.remove(gi)
            have.remove(same)
            moved.append(Moved(gi.profile, gi.placement, same.placement, same.gi_id))
    return Drift(None, tuple(want), tuple(have), tuple(moved), tuple(compute))


def _compute_drift(want: InstanceRecord, have: InstanceRecord) -> ComputeDrift:
    want_l, have_l = list(want.compute), list(have.compute)
    for ci in list(want_l):
        if ci in have_l:
            want_l.remove(ci)
            have_l.remove(ci)
    moved = []
    for ci in list(want_l):
        same = next((h for h in have_l if h.profile == ci.profile), None)
        if same is not None:
            want_l.remove(ci)
            have_l.remove(same)
            moved.append(Moved(ci.profile, ci.placement, same.placement))
    return ComputeDrift(want, tuple(want_l), tuple(have_l), tuple(moved), have.gi_id)

