"""What migd prints: status (text and the stable JSON), profile tables, drift descriptions, TOML export."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from .model import Gpu, GpuInfo, GpuState, Placement
from .layout import DesiredGpu
from .plan import Action, ActionKind, GpuPlan, plan_gpu

# --- status -------------------------------------------------------------------------------------------------------


def names_by_gi(plan: Optional[GpuPlan]) -> Dict[int, str]:
    """Live GI id -> configured instance name, when the GPU matches its config (names live only in the config)."""
    if plan is None or not plan.noop:
        return {}
    return {a.kept_gi: a.instance.name for a in plan.assignments if a.kept_gi is not None and a.instance.name}


def status_text(gpus: Sequence[Gpu], names: Dict[int, Dict[int, str]], managed: Dict[int, str]) -> str:
    out = []
    for gpu in gpus:
        info, state = gpu.info, gpu.state
        out.append(f"GPU {info.index}: {info.name}  {info.pci_bus_id}  {info.uuid}")
        if info.lost:
            out.append("  LOST: fell off the bus (see `dmesg` for Xid errors); not configured")
            continue
        if info.unreadable:
            out.append(f"  UNREADABLE: {info.unreadable}; not configured")
            continue
        if not info.mig_capable:
            out.append("  MIG not supported")
            continue
        mode = "on" if state.mig_current else "off"
        if state.mode_change_pending:
            mode += f" (pending: {'on' if state.mig_pending else 'off'})"
        pm = {None: "unknown", True: "on", False: "off"}[state.persistence]
        out.append(f"  MIG {mode}, persistence {pm}, config: {managed.get(info.index, 'not managed')}")
        gi_names = names.get(info.index, {})
        for gi in state.instances:
            profile = info.profile_by_id(gi.profile_id)
            pname = profile.name if profile else f"profile {gi.profile_id}"
            cps = {c.id: c.name for c in profile.compute_profiles} if profile else {}
            label = f"  [{gi_names[gi.id]}]" if gi.id in gi_names else ""
            out.append(f"  GI {gi.id:>2}  {pname:<14} at {str(gi.placement):<4}{label}")
            for ci in gi.compute:
                pids = f"  pids {','.join(map(str, ci.pids))}" if ci.pids else ""
                out.append(f"      CI {ci.id}  {cps.get(ci.profile_id, ci.profile_id)!s:<14} {ci.uuid}{pids}")
        if state.mig_current and not state.instances:
            out.append("  no MIG instances")
    return "\n".join(out)


def layout_table(gpus: Sequence[Gpu], names: Dict[int, Dict[int, str]], managed: Dict[int, str]) -> str:
    """`apply`'s short view: one row per group of GPUs with the same model and layout, each GPU instance as
    "GI <driver's id> <profile>@<start>:<size>" and its configured name. `status` (or apply -v) has the details:
    compute instances, MIG UUIDs, processes."""
    rows: Dict[Tuple[str, str], List[int]] = {}
    for gpu in gpus:
        info, state = gpu.info, gpu.state
        if info.unknown or not info.mig_capable or not state.mig_current:
            what = "lost" if info.lost else "unreadable" if info.unreadable else (
                "MIG not supported" if not info.mig_capable else "MIG off") + (
                " (pending on)" if state.mig_pending and not state.mig_current else "")
        else:
            gi_names = names.get(info.index, {})
            items = []
            for gi in sorted(state.instances, key=lambda g: g.placement.start):
                p = info.profile_by_id(gi.profile_id)
                label = f" [{gi_names[gi.id]}]" if gi.id in gi_names else ""
                items.append(f"GI {gi.id} {p.name if p else gi.profile_id}@{gi.placement}{label}")
            what = "MIG on: " + (", ".join(items) if items else "no instances")
        if managed.get(info.index, "").endswith("(drift)"):
            what += "  (drift: does not match its config, see migd check)"
        rows.setdefault((info.model, what), []).append(info.index)
    width = max((len(_index_ranges(v)) for v in rows.values()), default=1)
    return "\n".join(f"GPU {_index_ranges(indices):<{width}}  {model}  {what}" for (model, what), indices in rows.items())


# --- profiles -----------------------------------------------------------------------------------------------------


def profiles_text(infos: Sequence[GpuInfo]) -> str:
    """Like `nvidia-smi mig -lgip` and `-lgipp` together; GPUs with the same name and the same table are shown
    once ("GPU 0-7: NVIDIA A100-SXM4-40GB"), so a DGX prints one table, not eight identical ones."""
    groups: Dict[Tuple[str, Tuple[str, ...]], List[int]] = {}  # insertion order: by first GPU index
    for info in infos:
        groups.setdefault((info.name, tuple(_profile_table(info))), []).append(info.index)
    out = []
    for (name, table), indices in groups.items():
        out.append(f"GPU {_index_ranges(indices)}: {name}")
        out += table
    return "\n".join(out)


def _index_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> "0-3,5,7-8"."""
    parts: List[str] = []
    run: List[int] = []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _profile_table(info: GpuInfo) -> List[str]:
    """One GPU's profile table, without its "GPU n: name" header."""
    out: List[str] = []
    if not info.profiles:
        out.append("  no MIG profiles" + ("" if info.mig_capable else " (MIG not supported)"))
    else:
        out.append(f"  {'profile':<14}{'ID':>4}{'inst':>6}{'GiB':>8}{'SM':>5}{'CE':>4}{'DEC':>5}{'ENC':>5}"
                   f"{'JPG':>5}{'OFA':>5}{'GFX':>5}  placements (start:size)")
        for p in sorted(info.profiles, key=lambda p: (p.slices, p.memory_mb, p.index)):
            starts = ",".join(str(pl.start) for pl in p.placements)
            size = p.placements[0].size if p.placements else 0
            out.append(f"  {p.name:<14}{p.id:>4}{p.instance_count:>6}{p.memory_mb / 1024:>8.2f}{p.multiprocessors:>5}"
                       f"{p.copy_engines:>4}{p.decoders:>5}{p.encoders:>5}{p.jpegs:>5}{p.ofas:>5}"
                       f"{'yes' if p.graphics else 'no':>5}  {{{starts}}}:{size}")
            compute = ", ".join(c.name for c in p.compute_profiles)
            out.append(f"  {'':<14}compute: {compute}")
    return out


# --- drift --------------------------------------------------------------------------------------------------------


Ci = Tuple[str, Placement]  # (compute profile name, placement inside the GI)
Gi = Tuple[str, Placement, Tuple[Ci, ...], bool]  # (profile name, placement, CIs, CIs are the default one)


def _live_gis(info: GpuInfo, state: GpuState) -> List[Gi]:
    out = []
    for gi in state.instances:
        p = info.profile_by_id(gi.profile_id)
        names = {c.id: c.name for c in p.compute_profiles} if p else {}
        full = p.full_compute_profile if p else None
        cis = tuple(sorted(((names.get(ci.profile_id, str(ci.profile_id)), ci.placement) for ci in gi.compute),
                           key=lambda c: c[1].start))
        default = full is not None and [ci.profile_id for ci in gi.compute] == [full.id]
        out.append((p.name if p else str(gi.profile_id), gi.placement, cis, default))
    return sorted(out, key=lambda g: g[1].start)


def _desired_gis(plan: GpuPlan) -> List[Gi]:
    out = []
    for a in plan.assignments:
        full = a.instance.profile.full_compute_profile
        cis = tuple(sorted(((c.name, pl) for c, pl in zip(a.instance.compute, a.compute_placements)),
                           key=lambda c: c[1].start))
        default = [c.id for c in a.instance.compute] == [full.id if full else None]
        out.append((a.instance.profile.name, a.placement, cis, default))
    return sorted(out, key=lambda g: g[1].start)


def _gi_text(gi: Gi) -> str:
    """"3g.40gb@4:4", with its compute instances when not the one spanning it: "3g.40gb@4:4[1c.3g.40gb@0:1,...]"."""
    name, placement, cis, default = gi
    extra = "" if default else "[" + (",".join(f"{n}@{pl}" for n, pl in cis) or "no compute") + "]"
    return f"{name}@{placement}{extra}"


def _layout_text(gis: Sequence[Gi]) -> str:
    return "MIG on: " + (" ".join(_gi_text(g) for g in gis) if gis else "no instances")


def live_layout(info: GpuInfo, state: GpuState) -> str:
    """One line: "MIG on: 2g.20gb@0:2 3g.40gb@4:4" by placement, compute instances (with their placements) in
    brackets when not the default one spanning the GI."""
    if not state.mig_current:
        return "MIG off" + (" (pending on)" if state.mig_pending else "")
    return _layout_text(_live_gis(info, state))


def layout_matches(plan: GpuPlan) -> bool:
    """Nothing to change but, at most, persistence mode (which is not part of the layout)."""
    return plan.ok and all(a.kind == "set_persistence" for a in plan.actions)


def compare(info: GpuInfo, desired: DesiredGpu, state: GpuState, plan: GpuPlan) -> Tuple[str, str, str, str]:
    """(status, expected, found, differences) of one GPU for `check` and the watchdog: status is "ok", "drift" or
    "pending". Persistence mode is not part of the layout: a plan that only turns it on still matches. `expected`
    is always a layout, never a refusal: a plan refused (a busy instance in the way) shows the layout as placed on
    an empty GPU."""
    found = live_layout(info, state)
    if state.mode_change_pending:
        status = "pending"
    elif layout_matches(plan):
        status = "ok"
    else:
        status = "drift"
    if not plan.ok:
        plan = plan_gpu(info, desired, GpuState(mig_current=True, mig_pending=True, persistence=None))
    expected = desired_layout(plan, desired.mig)
    diff = "" if status == "ok" else differences(info, desired.mig, plan, state)
    return status, expected, found, diff


def desired_layout(plan: GpuPlan, mig: bool) -> str:
    return _layout_text(_desired_gis(plan)) if mig else "MIG off"


def differences(info: GpuInfo, mig: bool, plan: GpuPlan, state: GpuState) -> str:
    """What differs between the layout `plan` places and the live one, in the one wording `check` and migd-watch
    use: "missing 3g.40gb@4:4; extra 1g.10gb@0:1; 2g.20gb moved 0:2 → 2:2; 3g.40gb@4:4 compute 1c.3g.40gb moved
    0:1 → 1:1" (moved: from where the config puts it to where it is)."""
    if state.mode_change_pending:
        return f"MIG mode change to {'on' if state.mig_pending else 'off'} pending"
    if not mig:
        return "MIG on, expected off" if state.mig_current else ""
    if not state.mig_current:
        return "MIG off, expected on"
    want, have = _desired_gis(plan), _live_gis(info, state)
    for gi in list(want):  # exact matches say nothing
        if gi in have:
            want.remove(gi)
            have.remove(gi)
    parts: List[str] = []
    compute: List[str] = []
    moved: List[str] = []
    for gi in list(want):  # same profile and placement: the compute instances differ
        same = next((h for h in have if h[:2] == gi[:2]), None)
        if same is not None:
            want.remove(gi)
            have.remove(same)
            compute.append(f"{gi[0]}@{gi[1]} compute: {_ci_differences(gi[2], same[2])}")
    for gi in list(want):  # same profile elsewhere: moved
        same = next((h for h in have if h[0] == gi[0]), None)
        if same is not None:
            want.remove(gi)
            have.remove(same)
            moved.append(f"{gi[0]} moved {gi[1]} → {same[1]}")
    if want:
        parts.append("missing " + ", ".join(_gi_text(g) for g in want))
    if have:
        parts.append("extra " + ", ".join(_gi_text(g) for g in have))
    return "; ".join(parts + moved + compute) or "layout differs"


def _ci_differences(want: Sequence[Ci], have: Sequence[Ci]) -> str:
    want_l, have_l = list(want), list(have)
    for ci in list(want_l):
        if ci in have_l:
            want_l.remove(ci)
            have_l.remove(ci)
    moved = []
    for ci in list(want_l):
        same = next((h for h in have_l if h[0] == ci[0]), None)
        if same is not None:
            want_l.remove(ci)
            have_l.remove(same)
            moved.append(f"{ci[0]} moved {ci[1]} → {same[1]}")
    parts = ([f"missing {', '.join(f'{n}@{pl}' for n, pl in want_l)}"] if want_l else []) + \
        ([f"extra {', '.join(f'{n}@{pl}' for n, pl in have_l)}"] if have_l else [])
    return ", ".join(parts + moved)


# --- export -------------------------------------------------------------------------------------------------------


def export_toml(gpus: Sequence[Gpu], names: Optional[Dict[int, Dict[int, str]]] = None) -> str:
    """The live layout as a migd.toml that `migd apply` reproduces (applied here: nothing to do, persistence mode
    included). names: GPU -> GI id -> the instance name the current config gives it (names live only there).
    GPUs without MIG, and lost ones, are left out (no entry selects them, so apply leaves them alone)."""
    names = names or {}
    groups: List[Tuple[List[int], Tuple[object, ...], List[str]]] = []
    exported = [g for g in gpus if g.info.mig_capable and not g.info.unknown]
    for gpu in exported:
        key, lines = _export_entry(gpu, names.get(gpu.info.index, {}))
        for indices, k, _ in groups:
            if k == key:
                indices.append(gpu.info.index)
                break
        else:
            groups.append(([gpu.info.index], key, lines))
    out = ["# Exported by `migd export`: the live MIG layout. `migd apply` with this file changes nothing here.", ""]
    for indices, _, lines in groups:
        select = str(indices[0]) if len(indices) == 1 else "[" + ", ".join(map(str, indices)) + "]"
        out += ["[[gpu]]", f"select = {select}"] + lines + [""]
    # persistence_mode = true turns it on; false leaves it as it is: true only where every exported GPU has it on.
    persistence = bool(exported) and all(g.state.persistence for g in exported)
    out += ["[daemon]", f"persistence_mode = {'true' if persistence else 'false'}", ""]
    return "\n".join(out)


def _export_entry(gpu: Gpu, names: Dict[int, str]) -> Tuple[Tuple[object, ...], List[str]]:
    info, state = gpu.info, gpu.state
    if not state.mig_current:
        return (False,), ["mig = false"]
    items = []
    for gi in state.instances:
        p = info.profile_by_id(gi.profile_id)
        profile = json.dumps(p.name) if p else str(gi.profile_id)  # an unknown profile by its numeric ID
        cps = {c.id: c.name for c in p.compute_profiles} if p else {}
        full = p.full_compute_profile if p else None
        cis = [ci.profile_id for ci in gi.compute]
        name = names.get(gi.id)
        fields = [f"profile = {profile}"] + ([f"name = {json.dumps(name)}"] if name else [])
        if full is not None and cis == [full.id]:
            items.append(profile if not name else "{ " + ", ".join(fields) + " }")
        else:
            compute = ", ".join(json.dumps(cps.get(x, str(x))) for x in cis)
            items.append("{ " + ", ".join(fields + [f"compute = [{compute}]"]) + " }")
    return (True, info.name) + tuple(items), ["mig = true", f"instances = [{', '.join(items)}]"]


def changes_summary(done: Sequence[Action]) -> str:
    """" (MIG mode on, 4 GPU instances created)": what an apply's actions did, in words an admin reads first."""
    parts = [f"MIG mode {'on' if a.enabled else 'off'}" for a in done if a.kind == ActionKind.SET_MIG_MODE]
    for kind, verb in ((ActionKind.DESTROY_GI, "destroyed"), (ActionKind.CREATE_GI, "created")):
        n = sum(1 for a in done if a.kind == kind)
        if n:
            parts.append(f"{n} GPU instance{'s' if n != 1 else ''} {verb}")
    # compute instances changed inside a GPU instance that stays (neither destroyed nor created here)
    gone = {a.gi_id for a in done if a.kind == ActionKind.DESTROY_GI}
    kept = sorted({a.gi_id for a in done if a.kind in (ActionKind.DESTROY_CI, ActionKind.CREATE_CI)
                   and a.gi_id is not None and a.gi_id not in gone})
    if kept:
        parts.append(f"compute instances of GPU instance{'s' if len(kept) > 1 else ''} "
                     f"{', '.join(map(str, kept))} changed")
    return f" ({', '.join(parts)})" if parts else ""
