"""What migd prints: status (text and the stable JSON), profile tables, drift descriptions, TOML export."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from .model import Gpu, GpuInfo, GpuState
from .layout import DesiredGpu
from .plan import GpuPlan, plan_gpu

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


def live_layout(info: GpuInfo, state: GpuState) -> str:
    """One line: "MIG on: 3g.40gb@4:4 2g.20gb@0:2" (compute instances in brackets when not the default)."""
    if not state.mig_current:
        return "MIG off" + (" (pending on)" if state.mig_pending else "")
    parts = []
    for gi in state.instances:
        p = info.profile_by_id(gi.profile_id)
        name = p.name if p else str(gi.profile_id)
        full = p.full_compute_profile.id if p and p.full_compute_profile else None
        cis = [ci.profile_id for ci in gi.compute]
        extra = "" if cis == [full] else "[" + ",".join(
            next((c.name for c in p.compute_profiles if c.id == x), str(x)) for x in cis) + "]" if p else ""
        parts.append(f"{name}@{gi.placement}{extra}")
    return "MIG on: " + (" ".join(parts) if parts else "no instances")


def layout_matches(plan: GpuPlan) -> bool:
    """Nothing to change but, at most, persistence mode (which is not part of the layout)."""
    return plan.ok and all(a.kind == "set_persistence" for a in plan.actions)


def compare(info: GpuInfo, desired: DesiredGpu, state: GpuState, plan: GpuPlan) -> Tuple[str, str, str]:
    """(status, expected, found) of one GPU for `check` and the watchdog: status is "ok", "drift" or "pending".
    Persistence mode is not part of the layout: a plan that only turns it on still matches. `expected` is always a
    layout, never a refusal: a plan refused (a busy instance in the way) shows the layout as placed on an empty GPU."""
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
    return status, expected, found


def desired_layout(plan: GpuPlan, mig: bool) -> str:
    if not mig:
        return "MIG off"
    parts = []
    for a in sorted(plan.assignments, key=lambda a: a.placement.start):
        full = a.instance.profile.full_compute_profile
        extra = "" if [c.id for c in a.instance.compute] == [full.id if full else None] else \
            "[" + ",".join(c.name for c in a.instance.compute) + "]"
        parts.append(f"{a.instance.profile.name}@{a.placement}{extra}")
    return "MIG on: " + (" ".join(parts) if parts else "no instances")


# --- export -------------------------------------------------------------------------------------------------------


def export_toml(gpus: Sequence[Gpu], names: Optional[Dict[int, Dict[int, str]]] = None) -> str:
    """The live layout as a migd.toml that `migd apply` reproduces (applied here: nothing to do, persistence mode
    included). names: GPU -> GI id -> the instance name the current config gives it (names live only there).
    GPUs without MIG, and lost ones, are left out (no entry selects them, so apply leaves them alone)."""
    names = names or {}
    groups: List[Tuple[List[int], Tuple[object, ...], List[str]]] = []
    exported = [g for g in gpus if g.info.mig_capable and not g.info.lost]
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
