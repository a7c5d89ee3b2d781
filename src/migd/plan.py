"""The planner: desired layout × GPU capabilities × live state -> ordered actions with explicit placements. Pure.

Exact: placements are chosen by a search over the memory-slot grid (dynamic programming over (instance, occupied
slots)), so if any valid placement exists it is found, whatever the order the admin listed instances in.
Minimal: among valid layouts it keeps the most live instances that already match (profile, placement and compute
instances), destroys only what stands in the way, and a GPU that already matches gets zero actions.
Safe: a GPU instance with processes is never destroyed; if the layout needs that, the GPU is refused.
Deterministic: ties go to the lowest slots in config order, so the same input gives the same placements.
"""

from __future__ import annotations

from ._record import dataclass
from enum import Enum
from functools import cache
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .layout import DesiredGpu, DesiredInstance
from .model import ComputeProfile, GpuInfo, GpuState, LiveComputeInstance, LiveGpuInstance, Placement
from .profiles import describe_counts


class ActionKind(str, Enum):
    """What an action does; the value is also its log event name."""

    SET_PERSISTENCE = "set_persistence"
    SET_MIG_MODE = "set_mig_mode"
    DESTROY_CI = "destroy_ci"
    DESTROY_GI = "destroy_gi"
    CREATE_GI = "create_gi"
    CREATE_CI = "create_ci"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    gpu: int
    enabled: Optional[bool] = None  # set_*
    gi_id: Optional[int] = None  # destroy_*: the live GI; create_ci: the live GI when known
    ci_id: Optional[int] = None  # destroy_ci
    slot: Optional[int] = None  # create_*: which desired instance (index in the config's list)
    profile_id: Optional[int] = None
    profile_name: str = ""
    placement: Optional[Placement] = None
    gi_profile_name: str = ""  # create_ci: its GPU instance's profile, to name a GI not created yet

    def __str__(self) -> str:
        if self.kind == ActionKind.SET_PERSISTENCE:
            return f"GPU {self.gpu}: persistence mode {'on' if self.enabled else 'off'}"
        if self.kind == ActionKind.SET_MIG_MODE:
            return f"GPU {self.gpu}: MIG mode {'on' if self.enabled else 'off'}"
        if self.kind == ActionKind.DESTROY_CI:
            return f"GPU {self.gpu}: destroy compute instance {self.gi_id}/{self.ci_id} ({self.profile_name})"
        if self.kind == ActionKind.DESTROY_GI:
            return f"GPU {self.gpu}: destroy GPU instance {self.gi_id} ({self.profile_name} at {self.placement})"
        # GPU instances by the driver's GI id where one exists (as `status` shows them); one not created yet by
        # the config's list item it is for ("instances #1", 1-based like every config position)
        if self.kind == ActionKind.CREATE_GI:
            made = f": GI {self.gi_id}" if self.gi_id is not None else ""
            return (f"GPU {self.gpu}: create GPU instance {self.profile_name} (profile ID {self.profile_id}) "
                    f"at {self.placement}{made}")
        if self.kind == ActionKind.CREATE_CI:
            where = f"in GI {self.gi_id}" if self.gi_id is not None else \
                f"in the GPU instance for instances #{(self.slot or 0) + 1} ({self.gi_profile_name})"
            return (f"GPU {self.gpu}: create compute instance {self.profile_name} (profile ID {self.profile_id}) "
                    f"at {self.placement} {where}")
        return f"GPU {self.gpu}: {self.kind}"


@dataclass(frozen=True)
class Assignment:
    """Where one desired instance ends up."""

    slot: int
    instance: DesiredInstance
    placement: Placement
    kept_gi: Optional[int]  # live GI id when kept as is
    compute_placements: Tuple[Placement, ...]
    # live GI id when kept with other compute instances (only those change: the GI's id and UUID survive)
    reused_gi: Optional[int] = None

    @property
    def live_gi(self) -> Optional[int]:
        """The live GI this instance is (kept or reused), None: created."""
        return self.kept_gi if self.kept_gi is not None else self.reused_gi


class RefusalKind(str, Enum):
    """What stands in the way of a layout on a GPU."""

    BUSY = "busy"  # instances with processes (or whose processes cannot be read) would have to go
    NO_MIG = "no_mig"  # the GPU has no MIG
    NO_FIT = "no_fit"  # the layout does not fit this GPU model: slices, instance counts, engines, placements

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Refusal:
    """Why the planner leaves a GPU as it is: what is in the way, the GPU, the reason in words (without the
    "GPU n: " of str()), and a BUSY refusal's processes."""

    what: RefusalKind
    gpu: int
    reason: str
    pids: Tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"GPU {self.gpu}: {self.reason}"


@dataclass(frozen=True)
class GpuPlan:
    gpu: int
    actions: Tuple[Action, ...] = ()
    assignments: Tuple[Assignment, ...] = ()
    refused: Optional[Refusal] = None  # set: this GPU cannot (or must not) be changed; actions empty

    @property
    def refusal(self) -> Optional[str]:
        """The refusal as messages word it ("GPU n: reason"), or None."""
        return None if self.refused is None else str(self.refused)

    @property
    def busy_pids(self) -> Tuple[int, ...]:
        return () if self.refused is None else self.refused.pids

    @property
    def ok(self) -> bool:
        return self.refused is None

    @property
    def noop(self) -> bool:
        return self.ok and not self.actions


class Refused(Exception):
    """Raised inside the planner (a layout that does not fit, unless `what` says otherwise); plan_gpu returns it as
    the plan's Refusal."""

    def __init__(self, reason: str, pids: Sequence[int] = (), what: RefusalKind = RefusalKind.NO_FIT):
        super().__init__(reason)
        self.reason, self.pids, self.what = reason, tuple(pids), what


def plan_gpu(info: GpuInfo, desired: DesiredGpu, state: GpuState, persistence: Optional[bool] = None) -> GpuPlan:
    try:
        actions, assignments = _plan(info, desired, state, persistence)
    except Refused as r:
        return GpuPlan(info.index, refused=Refusal(r.what, info.index, r.reason, r.pids))
    return GpuPlan(info.index, tuple(actions), tuple(assignments))


def _plan(info: GpuInfo, desired: DesiredGpu, state: GpuState,
          persistence: Optional[bool]) -> Tuple[List[Action], List[Assignment]]:
    g = info.index
    actions: List[Action] = []
    if persistence is not None and state.persistence is not None and state.persistence != persistence:
        actions.append(Action(ActionKind.SET_PERSISTENCE, g, enabled=persistence))

    if not desired.mig:
        return actions + _plan_mig_off(info, state), []

    if not info.mig_capable:
        raise Refused(f"{info.model} does not support MIG", what=RefusalKind.NO_MIG)
    if desired.unmanaged:  # the mode only: whatever instances exist are another tool's, never destroyed or made
        if not state.mig_current or not state.mig_pending:
            actions.append(Action(ActionKind.SET_MIG_MODE, g, enabled=True))
        return actions, []
    items = list(desired.instances)
    _precheck(info, items)
    live = list(state.instances) if state.mig_current else []
    compute = [_place_compute(item) for item in items]
    placements, kept, reused = _place(info, items, compute, live)
    assignments = []
    for slot, (item, placement) in enumerate(zip(items, placements)):
        assignments.append(Assignment(slot, item, placement, kept.get(slot), compute[slot], reused.get(slot)))

    if not state.mig_current or not state.mig_pending:
        actions.append(Action(ActionKind.SET_MIG_MODE, g, enabled=True))
    return actions + _instance_actions(info, live, assignments), assignments


def _plan_mig_off(info: GpuInfo, state: GpuState) -> List[Action]:
    """MIG off: every instance destroyed (refused if one is busy), then the mode."""
    actions: List[Action] = []
    if state.mig_current:
        busy = [gi for gi in state.instances if gi.busy]
        if busy:
            raise Refused(f"MIG off would destroy {_busy_reason(info, busy)}: not destroying busy instances",
                          _pid_list(busy), what=RefusalKind.BUSY)
        actions += _destroy(info, state.instances)
    if state.mig_current or state.mig_pending:
        actions.append(Action(ActionKind.SET_MIG_MODE, info.index, enabled=False))
    return actions


def _instance_actions(info: GpuInfo, live: List[LiveGpuInstance], assignments: List[Assignment]) -> List[Action]:
    """The destroys and creates that turn the live GIs into the assigned ones: a reused GI's unwanted compute
    instances, the live GIs no slot keeps or reuses, then the new GIs and compute instances, slot by slot."""
    g = info.index
    actions: List[Action] = []
    by_id = {gi.id: gi for gi in live}
    changes = {a.slot: _compute_changes(by_id[a.reused_gi], a.instance, a.compute_placements)
               for a in assignments if a.reused_gi is not None}
    for a in assignments:  # a reused GI's compute instances go first: only they change, the GI stays
        if a.reused_gi is not None:
            actions += _destroy_compute(info, by_id[a.reused_gi], changes[a.slot][0])
    live_ids = {a.live_gi for a in assignments}
    actions += _destroy(info, [gi for gi in live if gi.id not in live_ids])
    for a in assignments:
        if a.kept_gi is not None:
            continue
        if a.reused_gi is None:
            actions.append(Action(ActionKind.CREATE_GI, g, slot=a.slot, profile_id=a.instance.profile.id,
                                  profile_name=a.instance.profile.name, placement=a.placement))
            new = list(zip(a.instance.compute, a.compute_placements))
        else:
            new = changes[a.slot][1]
        for cp, cpl in new:
            actions.append(Action(ActionKind.CREATE_CI, g, gi_id=a.reused_gi, slot=a.slot, profile_id=cp.id,
                                  profile_name=cp.name, placement=cpl, gi_profile_name=a.instance.profile.name))
    return actions


def _compute_changes(gi: LiveGpuInstance, item: DesiredInstance, placements: Tuple[Placement, ...],
                     ) -> Tuple[List[LiveComputeInstance], List[Tuple[ComputeProfile, Placement]]]:
    """For a reused GI: its compute instances that are not wanted (to destroy), and the wanted ones it lacks (to
    create). One that is wanted and there (same profile and placement) stays, with its MIG UUID."""
    missing = list(zip(item.compute, placements))
    unwanted = []
    for ci in gi.compute:
        match = next((n for n, (cp, pl) in enumerate(missing) if cp.id == ci.profile_id and pl == ci.placement), None)
        if match is None:
            unwanted.append(ci)
        else:
            del missing[match]
    return unwanted, missing


def _reusable(gi: LiveGpuInstance, item: DesiredInstance, placements: Tuple[Placement, ...]) -> bool:
    """A live GI of the right profile and placement can take other compute instances in place, unless that would
    destroy a compute instance with processes (or whose processes cannot be read)."""
    if gi.pids:
        return False
    unwanted, _ = _compute_changes(gi, item, placements)
    return not any(ci.pids or ci.pids_unreadable for ci in unwanted)


def _precheck(info: GpuInfo, items: List[DesiredInstance]) -> None:
    """Order-independent limits, refused with the reason an admin can act on."""
    slices = sum(i.profile.slices for i in items)
    if slices > info.total_slices:
        raise Refused(f"needs {slices} compute slices ({describe_counts([i.profile.name for i in items])}), "
                      f"{info.model} has {info.total_slices}")
    by_profile: Dict[int, List[DesiredInstance]] = {}
    for i in items:
        by_profile.setdefault(i.profile.id, []).append(i)
    for same in by_profile.values():
        p = same[0].profile
        if len(same) > p.instance_count:
            raise Refused(f"{p.name} allows {p.instance_count} instance{'s' if p.instance_count > 1 else ''}, "
                          f"{len(same)} requested")
    ofa = [i.profile.name for i in items if i.profile.ofas]
    if len(ofa) > 1:
        raise Refused(f"{' and '.join(ofa)} each need the GPU's single optical-flow accelerator")
    _precheck_media(info, items)


def _precheck_media(info: GpuInfo, items: List[DesiredInstance]) -> None:
    """Video decoders, encoders and JPEG engines are one pool per GPU (the full-size profile has them all): a
    "+me.all" instance takes every one, so only "-me" instances (none) fit beside it (Universal MIG)."""
    full = max(info.profiles, key=lambda p: (p.slices, p.decoders), default=None)
    if full is None:
        return
    for kind, total in (("decoders", full.decoders), ("encoders", full.encoders), ("jpegs", full.jpegs)):
        users = [i.profile for i in items if getattr(i.profile, kind)]
        if sum(getattr(p, kind) for p in users) <= total:
            continue
        hogs = [p for p in users if getattr(p, kind) >= total and p.slices < full.slices]
        others = describe_counts([p.name for p in users if p not in hogs])
        if hogs:
            raise Refused(f"{hogs[0].name} takes all of the GPU's media engines: beside it only -me profiles "
                          f"(no media engines) fit, not {others}")
        label = {"decoders": "video decoders", "encoders": "video encoders", "jpegs": "JPEG engines"}[kind]
        raise Refused(f"{describe_counts([p.name for p in users])} need {sum(getattr(p, kind) for p in users)} "
                      f"{label}, {info.model} has {total}")


def _compute_layout(pairs: Iterable[Tuple[int, Placement]]) -> Tuple[Tuple[int, int, int], ...]:
    """A GI's compute instances as sorted (profile id, start, size): what "the same compute instances" means."""
    return tuple(sorted((pid, pl.start, pl.size) for pid, pl in pairs))


def _place(info: GpuInfo, items: List[DesiredInstance], compute: List[Tuple[Placement, ...]],
           live: List[LiveGpuInstance]) -> Tuple[List[Placement], Dict[int, int], Dict[int, int]]:
    """Placements for every item maximizing kept live GIs, then reused ones; busy live GIs must be kept (or reused
    without touching a busy compute instance). Raises Refused. Returns placements, kept and reused (slot -> GI).

    A live GI is kept only when its compute instances match in profile *and* placement (`compute`: each item's CI
    placements), so a compute instance moved by hand is drift, and a rollback restores CIs where they were. A live
    GI of the same profile and placement with other compute instances is reused: only its compute instances
    change, so its GI id and MIG UUIDs (of the CIs that stay) survive (issue 17)."""
    busy = [gi for gi in live if gi.busy]
    busy_mask = 0
    for gi in busy:
        busy_mask |= gi.placement.mask
    # (profile id, placement start, compute layout) -> live GI that would be kept as is
    keepable = {(gi.profile_id, gi.placement.start, _compute_layout((ci.profile_id, ci.placement) for ci in gi.compute)): gi
                for gi in live}
    wanted = [_compute_layout((cp.id, pl) for cp, pl in zip(i.compute, c)) for i, c in zip(items, compute)]
    candidates = [[i.pin] if i.pin else sorted(i.profile.placements, key=lambda p: p.start) for i in items]
    n = len(items)

    by_place = {(gi.profile_id, gi.placement): gi for gi in live}

    def keeps(k: int, p: Placement) -> Tuple[Optional[LiveGpuInstance], int]:
        """The live GI item k at p would be, and the gain: KEEP as is, REUSE (other CIs), or 0 (created)."""
        gi = keepable.get((items[k].profile.id, p.start, wanted[k]))
        if gi is not None and gi.placement == p:
            return gi, _KEEP
        gi = by_place.get((items[k].profile.id, p))
        if gi is not None and _reusable(gi, items[k], compute[k]):
            return gi, _REUSE
        return None, 0

    @cache
    def best(k: int, mask: int) -> int:
        """Best gain for items k.. given occupied slots; _NEG if no valid completion."""
        if k == n:
            return 0 if busy_mask & ~mask == 0 else _NEG  # every busy GI must have been kept
        top = _NEG
        for p in candidates[k]:
            if p.mask & mask:
                continue
            kept, gain = keeps(k, p)
            if p.mask & busy_mask and (kept is None or not kept.busy):
                continue  # would overlap (destroy) a busy GI
            rest = best(k + 1, mask | p.mask)
            if rest != _NEG:
                top = max(top, rest + gain)
        return top

    if best(0, 0) == _NEG:
        raise _explain_infeasible(info, items, busy)
    return _walk_best(candidates, busy_mask, keeps, best)


_NEG, _KEEP, _REUSE = -1, 1 << 16, 1  # _place's gains: keeping any GI as is beats reusing any number of them


def _walk_best(candidates: List[List[Placement]], busy_mask: int,
               keeps: Callable[[int, Placement], Tuple[Optional[LiveGpuInstance], int]],
               best: Callable[[int, int], int]) -> Tuple[List[Placement], Dict[int, int], Dict[int, int]]:
    """_place's answer: the placements of one best completion, item by item (the first candidate that still reaches
    the best gain), with the live GIs kept and reused on the way."""
    placements: List[Placement] = []
    kept_map: Dict[int, int] = {}
    reused_map: Dict[int, int] = {}
    mask, target = 0, best(0, 0)
    for k in range(len(candidates)):
        for p in candidates[k]:
            if p.mask & mask:
                continue
            kept, gain = keeps(k, p)
            if p.mask & busy_mask and (kept is None or not kept.busy):
                continue
            rest = best(k + 1, mask | p.mask)
            if rest != _NEG and rest + gain == target:
                placements.append(p)
                if kept is not None:
                    (kept_map if gain == _KEEP else reused_map)[k] = kept.id
                mask |= p.mask
                target -= gain
                break
    return placements, kept_map, reused_map


def _explain_infeasible(info: GpuInfo, items: List[DesiredInstance], busy: List[LiveGpuInstance]) -> Refused:
    if not _fits(items, 0):
        for k in range(len(items)):
            if not _fits(items[:k + 1], 0):
                before = describe_counts([i.profile.name for i in items[:k]])
                return Refused(f"no placement fits {items[k].profile.name}" + (f" after {before}" if before else "")
                               + f" on {info.model}")
    return Refused(f"the layout needs the slots of {_busy_reason(info, busy)}: not destroying busy instances",
                   _pid_list(busy), what=RefusalKind.BUSY)


def _fits(items: Sequence[DesiredInstance], mask: int) -> bool:
    if not items:
        return True
    return any(not p.mask & mask and _fits(items[1:], mask | p.mask) for p in items[0].profile.placements)


def _place_compute(item: DesiredInstance) -> Tuple[Placement, ...]:
    """Compute-instance placements inside the GI: the pinned ones (rollback), else first fit in order, with
    backtracking."""
    if item.compute_pins is not None:
        return item.compute_pins
    cps = list(item.compute)
    total = item.profile.slices
    for cp in {c.id: c for c in cps}.values():
        count = sum(1 for c in cps if c.id == cp.id)
        if count > cp.instance_count:
            raise Refused(f"{cp.name} allows {cp.instance_count} per {item.profile.name} instance, {count} requested")
    if sum(c.slices for c in cps) > total:
        raise Refused(f"compute instances {describe_counts([c.name for c in cps])} need "
                      f"{sum(c.slices for c in cps)} slices, a {item.profile.name} instance has {total}")

    def go(k: int, mask: int) -> Optional[List[Placement]]:
        if k == len(cps):
            return []
        for p in cps[k].placements:
            if not p.mask & mask:
                rest = go(k + 1, mask | p.mask)
                if rest is not None:
                    return [p] + rest
        return None

    result = go(0, 0)
    if result is None:
        raise Refused(f"no placement fits compute instances {describe_counts([c.name for c in cps])} in a "
                      f"{item.profile.name} instance")
    return tuple(result)


def _destroy_compute(info: GpuInfo, gi: LiveGpuInstance, cis: Sequence[LiveComputeInstance]) -> List[Action]:
    profile = info.profile_by_id(gi.profile_id)
    actions = []
    for ci in cis:
        cname = next((c.name for c in (profile.compute_profiles if profile else ()) if c.id == ci.profile_id),
                     f"profile {ci.profile_id}")
        actions.append(Action(ActionKind.DESTROY_CI, info.index, gi_id=gi.id, ci_id=ci.id, profile_name=cname,
                              profile_id=ci.profile_id, placement=ci.placement))
    return actions


def _destroy(info: GpuInfo, gis: Sequence[LiveGpuInstance]) -> List[Action]:
    actions = []
    for gi in gis:
        profile = info.profile_by_id(gi.profile_id)
        name = profile.name if profile else f"profile {gi.profile_id}"
        actions += _destroy_compute(info, gi, gi.compute)
        actions.append(Action(ActionKind.DESTROY_GI, info.index, gi_id=gi.id, profile_name=name, profile_id=gi.profile_id,
                              placement=gi.placement))
    return actions


def _describe_live(info: GpuInfo, gis: Sequence[LiveGpuInstance]) -> str:
    parts = []
    for gi in gis:
        p = info.profile_by_id(gi.profile_id)
        parts.append(f"GPU instance {gi.id} ({p.name if p else gi.profile_id} at {gi.placement})")
    return ", ".join(parts)


def _busy_reason(info: GpuInfo, busy: Sequence[LiveGpuInstance]) -> str:
    """Why these instances count as busy: their processes, or that their processes cannot be read."""
    known = [gi for gi in busy if gi.all_pids]
    parts = [f"{_describe_live(info, known)}, which {'has' if len(known) == 1 else 'have'} processes {_pids(known)}"
             ] if known else []
    parts += [f"{_describe_live(info, [gi])}, whose processes cannot be read ({gi.pids_unreadable})"
              for gi in busy if not gi.all_pids]
    return "; ".join(parts)


def _pid_list(gis: Sequence[LiveGpuInstance]) -> List[int]:
    return sorted({pid for gi in gis for pid in gi.all_pids})


def _pids(gis: Sequence[LiveGpuInstance]) -> str:
    return ", ".join(map(str, _pid_list(gis)))

