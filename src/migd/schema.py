"""migd's one JSON schema: `status --json`, `check --json`, `profiles --json` and /run/migd/state.json.

Every document has `"simulated": true|false` at the top and a `gpus` list; a GPU is always keyed `index`, an
instance has the same keys wherever it appears. README "JSON output" documents it; tests/test_schema.py checks
every verb's output against that documentation.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from .model import GpuInfo, GpuState, LiveGpuInstance, Placement

Doc = Dict[str, Any]


def dumps(doc: Doc) -> str:
    return json.dumps(doc, indent=2)


def _placement(p: Placement) -> Doc:
    return {"start": p.start, "size": p.size}


def gpu(info: GpuInfo, state: Optional[GpuState], names: Optional[Dict[int, str]] = None) -> Doc:
    """One GPU as status shows it; state None: it could not be read (lost), so mode and instances are unknown."""
    names = names or {}
    return {
        "index": info.index, "uuid": info.uuid, "name": info.name, "pci_bus_id": info.pci_bus_id, "lost": info.lost,
        "architecture": info.architecture, "mig_capable": info.mig_capable,
        "mig": {"current": state.mig_current if state else None, "pending": state.mig_pending if state else None},
        "persistence": state.persistence if state else None,
        "processes": list(state.pids) if state else [],
        "instances": [instance(info, gi, names.get(gi.id)) for gi in state.instances] if state else [],
    }


def instance(info: GpuInfo, gi: LiveGpuInstance, name: Optional[str]) -> Doc:
    profile = info.profile_by_id(gi.profile_id)
    cps = {c.id: c.name for c in profile.compute_profiles} if profile else {}
    return {
        "gi_id": gi.id, "profile": profile.name if profile else None, "profile_id": gi.profile_id,
        "graphics": profile.graphics if profile else None,
        "placement": _placement(gi.placement),
        "uuid": gi.compute[0].uuid if len(gi.compute) == 1 else None,  # the MIG device, when there is one
        "name": name,
        "compute": [{"ci_id": ci.id, "profile": cps.get(ci.profile_id), "profile_id": ci.profile_id,
                     "placement": _placement(ci.placement), "uuid": ci.uuid, "pids": list(ci.pids)}
                    for ci in gi.compute],
    }


def status(gpus: Sequence[Doc], driver: str, backend: str, simulated: bool) -> Doc:
    return {"simulated": simulated, "driver_version": driver, "backend": backend, "gpus": list(gpus)}


def profiles(infos: Sequence[GpuInfo], simulated: bool) -> Doc:
    return {"simulated": simulated, "gpus": [{
        "index": i.index, "name": i.name, "profiles": [{
            "index": p.index, "id": p.id, "name": p.name, "slices": p.slices, "instance_count": p.instance_count,
            "memory_mb": p.memory_mb, "multiprocessors": p.multiprocessors, "copy_engines": p.copy_engines,
            "decoders": p.decoders, "encoders": p.encoders, "jpegs": p.jpegs, "ofas": p.ofas,
            "graphics": p.graphics,
            "placements": [_placement(pl) for pl in p.placements],
            "compute": [c.name for c in p.compute_profiles],
        } for p in i.profiles]} for i in infos]}


def check(overall: str, rows: Sequence[Doc], simulated: bool) -> Doc:
    """rows: {index, status, expected, found, diff} per GPU (diff: what differs, "" when ok)."""
    return {"simulated": simulated, "status": overall, "gpus": list(rows)}


def state_file(gpus: List[Doc], config_path: str, applied_at: str, boot_id: Optional[str], simulated: bool) -> Doc:
    """state.json: the status GPU objects of the applied GPUs, each with this apply's `outcome` and `message`."""
    return {"simulated": simulated, "applied_at": applied_at, "config": config_path, "boot_id": boot_id,
            "gpus": gpus}
