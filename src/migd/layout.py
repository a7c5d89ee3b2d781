"""Which config entry each GPU gets, and what its layout means on that GPU's model. Pure.

Rule when several [[gpu]] entries match one GPU: **the last matching entry wins** (later lines override earlier
ones, so a fleet file reads "all GPUs like this, except ..."). GPUs no entry matches are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, Problem
from .model import ComputeProfile, Config, GpuEntry, GpuInfo, GpuProfile, GpuSelector, Placement
from .profiles import resolve_compute_profile, resolve_gpu_profile


@dataclass(frozen=True)
class DesiredInstance:
    profile: GpuProfile
    compute: Tuple[ComputeProfile, ...]
    name: Optional[str] = None
    pin: Optional[Placement] = None  # only this placement (rollback restores exactly what was there)

    @property
    def label(self) -> str:
        return self.profile.name + (f" ({self.name})" if self.name else "")

    @property
    def compute_key(self) -> Tuple[int, ...]:
        return tuple(sorted(cp.id for cp in self.compute))


@dataclass(frozen=True)
class DesiredGpu:
    entry: GpuEntry
    mig: bool
    instances: Tuple[DesiredInstance, ...] = ()


class LayoutError(Exception):
    """The entry cannot mean anything on this GPU (unknown profile for the model, no MIG support)."""


def matches(selector: GpuSelector, gpu: GpuInfo) -> bool:
    if selector.kind == "all":
        return True
    if selector.kind == "index":
        return gpu.index in selector.values
    if selector.kind == "uuid":
        return gpu.uuid.lower() == str(selector.values[0]).lower()
    if selector.kind == "pci":
        return _norm_pci(gpu.pci_bus_id) == selector.values[0]
    if selector.kind == "glob":
        pattern = str(selector.values[0]).lower()
        return fnmatchcase(gpu.name.lower(), pattern) or fnmatchcase(gpu.model.lower(), pattern)
    return False


def _norm_pci(bus_id: str) -> str:
    """NVML's "00000000:07:00.0" in the config's normal form (8-digit domain, upper-case hex)."""
    head, _, fn = bus_id.rpartition(".")
    parts = head.split(":")
    if len(parts) == 3:
        return f"{int(parts[0], 16):08X}:{parts[1].upper()}:{parts[2].upper()}.{fn}"
    return bus_id.upper()


def select(config: Config, gpus: Sequence[GpuInfo]) -> Tuple[Dict[int, GpuEntry], List[str]]:
    """GPU index -> winning entry, plus problems: explicit selectors (index, UUID, PCI id) matching no GPU.

    A glob or "all" matching nothing is fine: one fleet file serves hosts with different GPUs.
    """
    chosen: Dict[int, GpuEntry] = {}
    problems: List[str] = []
    for entry in config.entries:
        hits = [g for g in gpus if not g.lost and matches(entry.selector, g)]  # a lost GPU's identity is unknown
        for g in hits:
            chosen[g.index] = entry
        if entry.selector.kind == "index":
            missing = [i for i in entry.selector.values if not any(g.index == i for g in gpus)]
            if missing:
                problems.append(f"{entry.where}: gpu[{entry.number - 1}].select: no GPU with index "
                                f"{', '.join(map(str, missing))} (this host has {len(gpus)} GPUs: 0 to {len(gpus) - 1})")
        elif entry.selector.kind in ("uuid", "pci") and not hits:
            problems.append(f"{entry.where}: gpu[{entry.number - 1}].select: no GPU {entry.selector} on this host")
    return chosen, problems


def resolve(entry: GpuEntry, gpu: GpuInfo) -> DesiredGpu:
    """Turn an entry's spellings into this GPU's profiles. Raises LayoutError naming file:line."""
    if not entry.mig:
        return DesiredGpu(entry, False)
    if not gpu.mig_capable:
        raise LayoutError(f"{entry.mig_where or entry.where}: GPU {gpu.index} ({gpu.model}) does not support MIG")
    if not gpu.profiles:
        raise LayoutError(f"{entry.mig_where or entry.where}: GPU {gpu.index} ({gpu.model}) reports no MIG profiles "
                          "(drivers before R550 list them only once MIG mode is on)")
    out = []
    for spec in entry.instances:
        profile, why = resolve_gpu_profile(spec.profile, gpu)
        if profile is None:
            raise LayoutError(f"{spec.where}: {why}")
        if spec.compute is not None:
            compute = []
            for c in spec.compute:
                cp, why = resolve_compute_profile(c, profile)
                if cp is None:
                    raise LayoutError(f"{spec.where}: {why}")
                compute.append(cp)
        else:
            full = profile.full_compute_profile
            if full is None:
                raise LayoutError(f"{spec.where}: {profile.name} has no whole-instance compute profile")
            compute = [full]
        out.append(DesiredInstance(profile, tuple(compute), spec.name))
    return DesiredGpu(entry, True, tuple(out))


FitCheck = Callable[[GpuInfo, DesiredGpu], Optional[str]]


def desired_for(cfg: Config, infos: Sequence[GpuInfo], fits: Optional[FitCheck] = None) -> Dict[int, DesiredGpu]:
    """GPU index -> DesiredGpu; raises ConfigError (nothing touched) if any selected GPU cannot take its layout.

    fits(info, desired): why the layout cannot fit even an empty GPU, or None (the engine passes the planner's
    answer; a hook rather than an import keeps layout below plan)."""
    chosen, problems = select(cfg, infos)
    by_text: Dict[str, List[int]] = {}  # the same problem on several GPUs of one model: one line naming them
    desired = {}
    for info in infos:
        entry = chosen.get(info.index)
        if entry is None:
            continue
        try:
            d = resolve(entry, info)
        except LayoutError as e:
            by_text.setdefault(str(e), []).append(info.index)
            continue
        # A layout that cannot fit even an empty GPU is a config error: refuse before touching anything.
        why = fits(info, d) if fits is not None else None
        if why:
            by_text.setdefault(f"{entry.instances_where or entry.where}: {why}", []).append(info.index)
            continue
        desired[info.index] = d
    for text, gpus in by_text.items():
        problems.append(f"{text} (GPU{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))})")
    if problems:
        raise ConfigError([Problem(p) for p in problems])
    return desired
