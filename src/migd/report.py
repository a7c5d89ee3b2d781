"""What migd prints: status (text and the stable JSON), profile tables, drift descriptions, TOML export."""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import drift
from .drift import Comparison, ComputeDrift, ComputeRecord, Drift, InstanceRecord, Layout, ModeDrift
from .model import Gpu, GpuInfo, GpuState
from .plan import Action, ActionKind

# --- status -------------------------------------------------------------------------------------------------------


# --- profiles -----------------------------------------------------------------------------------------------------


def profiles_text(infos: Sequence[GpuInfo], after: Optional[Callable[[GpuInfo], List[str]]] = None) -> str:
    """Like `nvidia-smi mig -lgip` and `-lgipp` together; GPUs with the same name and the same table are shown
    once ("GPU 0-7: NVIDIA A100-SXM4-40GB"), so a DGX prints one table, not eight identical ones. after: lines
    to add under each table (the placements drawn on the slot grid), from the group's first GPU."""
    groups: Dict[Tuple[str, Tuple[str, ...]], List[GpuInfo]] = {}  # insertion order: by first GPU index
    for info in infos:
        groups.setdefault((info.name, tuple(_profile_table(info))), []).append(info)
    out = []
    for (name, table), members in groups.items():
        out.append(f"GPU {index_ranges([i.index for i in members])}: {name}")
        out += table
        if after is not None and members[0].profiles:
            out += after(members[0])
    return "\n".join(out)


def index_ranges(indices: Sequence[int]) -> str:
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


def _gi_text(gi: InstanceRecord) -> str:
    """"3g.40gb@4:4", with its compute instances when not the one spanning it: "3g.40gb@4:4[1c.3g.40gb@0:1,...]"."""
    extra = "" if gi.default_compute else "[" + (",".join(_ci_text(c) for c in gi.compute) or "no compute") + "]"
    return f"{gi.profile}@{gi.placement}{extra}"


def _ci_text(ci: ComputeRecord) -> str:
    return f"{ci.profile}@{ci.placement}"


UNMANAGED = "MIG on, instances unmanaged"  # instances = "unmanaged": the layout migd expects


def layout_text(layout: Layout) -> str:
    """One line: "MIG on: 2g.20gb@0:2 3g.40gb@4:4" by placement, compute instances (with their placements) in
    brackets when not the default one spanning the GI; "MIG off (pending on)"."""
    if layout.unmanaged:
        return UNMANAGED
    if not layout.mig:
        return "MIG off" + (" (pending on)" if layout.pending else "")
    return "MIG on: " + (" ".join(_gi_text(g) for g in layout.instances) if layout.instances else "no instances")


def live_layout(info: GpuInfo, state: GpuState) -> str:
    return layout_text(drift.live_layout(info, state))


_MODE_TEXT = {
    ModeDrift.PENDING_ON: "MIG mode change to on pending", ModeDrift.PENDING_OFF: "MIG mode change to off pending",
    ModeDrift.ON_EXPECTED_OFF: "MIG on, expected off", ModeDrift.OFF_EXPECTED_ON: "MIG off, expected on"}


def drift_text(d: Optional[Drift]) -> str:
    """What differs, in the one wording `check` and migd-watch use: "missing 3g.40gb@4:4; extra 1g.10gb@0:1;
    2g.20gb moved 0:2 → 2:2; 3g.40gb@4:4 compute: 1c.3g.40gb moved 0:1 → 1:1" (moved: from where the config puts
    it to where it is). "" for no drift."""
    if d is None:
        return ""
    if d.mode is not None:
        return _MODE_TEXT[d.mode]
    parts: List[str] = []
    if d.missing:
        parts.append("missing " + ", ".join(_gi_text(g) for g in d.missing))
    if d.extra:
        parts.append("extra " + ", ".join(_gi_text(g) for g in d.extra))
    parts += [f"{m.profile} moved {m.expected} → {m.found}" for m in d.moved]
    parts += [f"{c.instance.profile}@{c.instance.placement} compute: {_compute_text(c)}" for c in d.compute]
    return "; ".join(parts) or "layout differs"


def _compute_text(c: ComputeDrift) -> str:
    parts = ([f"missing {', '.join(_ci_text(x) for x in c.missing)}"] if c.missing else []) + \
        ([f"extra {', '.join(_ci_text(x) for x in c.extra)}"] if c.extra else [])
    return ", ".join(parts + [f"{m.profile} moved {m.expected} → {m.found}" for m in c.moved])


def comparison_texts(c: Comparison) -> Tuple[str, str, str]:
    """(expected, found, differences) of a comparison, as `check --json` and the watchdog's fields carry them."""
    return layout_text(c.expected), layout_text(c.found), drift_text(c.drift)


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
