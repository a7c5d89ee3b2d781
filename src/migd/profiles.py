"""Profile names: how an admin may spell a profile, and the compute-instance profiles inside a GPU instance.

Pure: works on model.GpuProfile tables, whichever backend produced them.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from .model import ComputeProfile, GpuInfo, GpuProfile, Placement
from .suggest import did_you_mean

# The model-independent spellings "1g" ... "7g" mean the plain profile of that size: the one at NVML's
# NVML_GPU_INSTANCE_PROFILE_<N>_SLICE index (ID 19/14/9/5/0 on A100/H100, 14/5/-/0 on A30).
PLAIN_INDEX_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}
CI_INDEX_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}  # NVML_COMPUTE_INSTANCE_PROFILE_<N>_SLICE; ID == index

_SIZE_ONLY = re.compile(r"^([1-8])g(\+me|\+gfx|-me|\+me\.all)?\Z")  # "3g", "1g+gfx", "2g-me", "1g+me.all"
_NAMED = re.compile(r"^([1-8])g\.(\d+)gb(.*)\Z")  # "1g.23gb+me" -> size, GB figure, attributes
_CI_SIZE_ONLY = re.compile(r"^([1-8])c\Z")


def strip_mig(name: str) -> str:
    name = name.strip()
    return name[4:].strip() if name[:4].upper() == "MIG " else name


def resolve_gpu_profile(spelling: str, gpu: GpuInfo) -> Tuple[Optional[GpuProfile], str]:
    """Return (profile, "") or (None, reason) for an admin's spelling on this GPU."""
    text = strip_mig(str(spelling))
    if text.isdigit():
        p = gpu.profile_by_id(int(text))
        return (p, "") if p else (None, f"no profile ID {text} on {gpu.model}; {_known(gpu)}")
    m = _SIZE_ONLY.match(text.lower())
    if m:
        slices, suffix = int(m.group(1)), m.group(2) or ""
        if suffix:  # "1g+gfx": the size with these attributes, whatever its memory figure on this model
            hits = [p for p in gpu.profiles if p.slices == slices and _attributes(p.name) == suffix]
            if len(hits) == 1:
                return hits[0], ""
            return None, f"{gpu.model} has no {text} profile; {_known(gpu)}"
        idx = PLAIN_INDEX_BY_SLICES.get(slices)
        for p in gpu.profiles:
            if p.index == idx and p.slices == slices:
                return p, ""
        return None, f"{gpu.model} has no plain {text} profile; {_known(gpu)}"
    for p in gpu.profiles:
        if p.name.lower() == text.lower():
            return p, ""
    drifted = _same_kind(text.lower(), gpu)
    if drifted is not None:
        generic = _generic(drifted)
        advice = (f"write {generic!r}, which never drifts" if generic
                  else f"write {drifted.name!r} (or its profile ID {drifted.id})")
        return None, (f"{gpu.model} has no profile {text!r}, but this driver offers {drifted.name} (ID {drifted.id}): "
                      f"the same size and attributes under the name this driver version gives it; {advice}")
    size = re.match(r"([1-8])g", text.lower())  # a typo rarely changes the size: suggest that size first
    same_size = [p for p in gpu.profiles if size and p.slices == int(size.group(1))]
    hint = did_you_mean(text, [strip_mig(p.name) for p in same_size or gpu.profiles])
    return None, f"{gpu.model} has no profile {text!r}; " + (f"{hint} ({_known(gpu)})" if hint else _known(gpu))


def _attributes(name: str) -> str:
    """"1g.24gb+me.all" -> "+me.all"; "3g.40gb" -> ""."""
    m = _NAMED.match(name.lower())
    return m.group(3) if m else ""


def _same_kind(text: str, gpu: GpuInfo) -> Optional[GpuProfile]:
    """Profile names drift with driver versions (3g.39gb/3g.40gb, B200 1g.23gb at 22.00 or 20.50 GiB): the profile
    of the same size and attributes whose memory figure is closest (within 10%), if the spelling is otherwise valid."""
    m = _NAMED.match(text)
    if not m:
        return None
    slices, gb, attrs = int(m.group(1)), int(m.group(2)), m.group(3)
    best: Optional[Tuple[int, GpuProfile]] = None
    for p in gpu.profiles:
        pm = _NAMED.match(p.name.lower())
        if not pm or p.slices != slices or pm.group(3) != attrs:
            continue
        off = abs(int(pm.group(2)) - gb)
        if off <= max(1, gb // 10) and (best is None or off < best[0]):
            best = (off, p)
    return best[1] if best else None


def _generic(p: GpuProfile) -> str:
    """The model-independent spelling that resolves to `p`, or "" (e.g. the double-memory 1g has none)."""
    attrs = _attributes(p.name)
    if attrs:
        return f"{p.slices}g{attrs}"
    return f"{p.slices}g" if PLAIN_INDEX_BY_SLICES.get(p.slices) == p.index else ""


def _known(gpu: GpuInfo) -> str:
    return "it has " + ", ".join(f"{p.name} (ID {p.id})" for p in gpu.profiles)


def resolve_compute_profile(spelling: str, gi: GpuProfile) -> Tuple[Optional[ComputeProfile], str]:
    text = strip_mig(str(spelling)).lower()
    m = _CI_SIZE_ONLY.match(text)
    for cp in gi.compute_profiles:
        if cp.name.lower() == text or (m and cp.slices == int(m.group(1))):
            return cp, ""
        if text.isdigit() and cp.id == int(text):
            return cp, ""
    names = ", ".join(cp.name for cp in gi.compute_profiles) or "none known"
    return None, f"no compute profile {spelling!r} in a {gi.name} instance; it has {names}"


def derive_compute_profiles(gi: GpuProfile, sm_per_slice: Optional[int] = None) -> Tuple[ComputeProfile, ...]:
    """The CI profiles a GI of this profile offers, by NVIDIA's documented pattern (reference §2.3).

    NVML only answers CI-profile queries on an existing GI, so plans for GIs not yet created use this table.
    The driver checks every create against its real table: a mismatch fails the create and the GPU is rolled back.
    """
    g = gi.slices
    per_slice = sm_per_slice or max(1, gi.multiprocessors // max(g, 1))
    out = []
    for c, idx in CI_INDEX_BY_SLICES.items():
        if c > g or (c < g and 2 * c > g + 1):  # no 3c in a 4g, no 5c/6c in a 7g
            continue
        full = c == g
        out.append(ComputeProfile(
            index=idx, id=idx, name=gi.name if full else f"{c}c.{gi.name}", slices=c, instance_count=g // c,
            multiprocessors=gi.multiprocessors if full else c * per_slice,
            placements=tuple(Placement(s, c) for s in range(0, g - c + 1, c)),
        ))
    return tuple(out)


def describe_counts(names: Sequence[str]) -> str:
    """["2g.20gb", "2g.20gb", "1g.10gb"] -> "2 × 2g.20gb, 1g.10gb"."""
    counts: Dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{c} × {n}" if c > 1 else n for n, c in counts.items())


def only_profiles(infos: Sequence[GpuInfo], spellings: Sequence[str]) -> List[GpuInfo]:
    """`migd profiles 3g 1g.10gb`: each GPU's table with only these profiles; one that no GPU has is an error."""
    if not spellings:
        return list(infos)
    from ._record import replace
    from .errors import UsageError

    out: List[GpuInfo] = []
    found = set()
    for info in infos:
        keep: List[GpuProfile] = []
        for spelling in spellings:
            profile, _ = resolve_gpu_profile(spelling, info)
            if profile is not None and profile not in keep:
                keep.append(profile)
                found.add(spelling)
        out.append(replace(info, profiles=tuple(p for p in info.profiles if p in keep)))
    for spelling in spellings:
        if spelling not in found:
            reasons = {resolve_gpu_profile(spelling, info)[1] for info in infos if info.mig_capable}
            raise UsageError("; ".join(sorted(reasons)) or f"no GPU here has a profile {spelling!r}")
    return out
