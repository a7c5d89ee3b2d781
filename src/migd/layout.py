"""Which config entry each GPU gets, and what its layout means on that GPU's model. Pure.

Rule when several [[gpu]] entries match one GPU: **the last matching entry wins** (later lines override earlier
ones, and drop-ins the main file, so a fleet file reads "all GPUs like this, except ..."). An entry with `hosts`
counts only on the hosts it names. GPUs no entry matches are left alone.
"""

from __future__ import annotations

import re
from ._record import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, Problem
from .hostnames import host_matches
from .model import ComputeProfile, Config, GpuEntry, GpuInfo, GpuProfile, GpuSelector, Placement
from .profiles import resolve_compute_profile, resolve_gpu_profile


@dataclass(frozen=True)
class DesiredInstance:
    profile: GpuProfile
    compute: Tuple[ComputeProfile, ...]
    name: Optional[str] = None
    pin: Optional[Placement] = None  # only this placement (rollback restores exactly what was there)
    # The compute instances' placements inside the GI, one per `compute` (rollback); None: the planner's first fit
    compute_pins: Optional[Tuple[Placement, ...]] = None

    @property
    def label(self) -> str:
        return self.profile.name + (f" ({self.name})" if self.name else "")


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


def select(config: Config, gpus: Sequence[GpuInfo], host: Optional[str] = None,
           ) -> Tuple[Dict[int, GpuEntry], List[str]]:
    """GPU index -> winning entry, plus problems: explicit selectors (index, UUID, PCI id) matching no GPU.

    A glob or "all" matching nothing is fine: one fleet file serves hosts with different GPUs. A UUID or PCI id
    matching no readable GPU while some GPU is lost is no problem of the file either: it may name the lost GPU,
    which is reported lost (exit 1) while the others are applied (see unmatched_while_lost). An entry whose
    `hosts` do not match `host` (None: this machine, see hostnames) is skipped as if it were not there.
    """
    chosen, problems = _select(config, gpus, host)
    return chosen, [text for _, text in problems]


def for_host(config: Config, host: Optional[str] = None) -> List[GpuEntry]:
    """The entries that apply on `host` (None: this machine), in order."""
    return [e for e in config.entries if host_matches(e.hosts, host)]


def naming_a_gpu(entries: Sequence[GpuEntry]) -> List[GpuEntry]:
    """The entries that name one GPU (index, UUID, PCI id): an admin expects that GPU on the host. "all" and model
    globs fit GPU-less hosts too (a fleet file shared with CPU nodes): with no driver installed they select nothing."""
    return [e for e in entries if e.selector.kind in ("index", "uuid", "pci")]


def _select(config: Config, gpus: Sequence[GpuInfo], host: Optional[str],
            ) -> Tuple[Dict[int, GpuEntry], List[Tuple[int, str]]]:
    chosen: Dict[int, GpuEntry] = {}
    problems: List[Tuple[int, str]] = []  # (position of the entry in the config, text)
    for n, entry in enumerate(config.entries):
        if not host_matches(entry.hosts, host):
            continue
        hits = [g for g in gpus if not g.lost and matches(entry.selector, g)]  # a lost GPU's identity is unknown
        for g in hits:
            chosen[g.index] = entry
        label = f"{entry.where}: {entry.label} select"
        if entry.selector.kind == "index":
            missing = [i for i in entry.selector.values if not any(g.index == i for g in gpus)]
            if missing:
                problems.append((n, f"{label}: no GPU with index {', '.join(map(str, missing))} ({_gpu_count(len(gpus))})"))
        elif entry.selector.kind in ("uuid", "pci") and not hits and not any(g.lost for g in gpus):
            problems.append((n, f"{label}: no GPU {entry.selector} on this host"))
    return chosen, problems


def _gpu_count(n: int) -> str:
    if n == 0:
        return "this host has no GPU"
    return "this host has 1 GPU: 0" if n == 1 else f"this host has {n} GPUs: 0 to {n - 1}"


def unmatched_while_lost(config: Config, gpus: Sequence[GpuInfo], host: Optional[str] = None) -> List[str]:
    """UUID/PCI selectors that match no readable GPU while some GPU is lost (its identity unknown): each may mean
    a lost GPU, so the lost GPU's report names them."""
    if not any(g.lost for g in gpus):
        return []
    return [f"{entry.where}: {entry.label} select = {entry.selector} matches no readable GPU, it may be this one"
            for entry in for_host(config, host)
            if entry.selector.kind in ("uuid", "pci")
            and not any(not g.lost and matches(entry.selector, g) for g in gpus)]


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


def desired_for(cfg: Config, infos: Sequence[GpuInfo], fits: Optional[FitCheck] = None,
                host: Optional[str] = None) -> Dict[int, DesiredGpu]:
    """GPU index -> DesiredGpu; raises ConfigError (nothing touched) if any selected GPU cannot take its layout.

    fits(info, desired): why the layout cannot fit even an empty GPU, or None (the engine passes the planner's
    answer; a hook rather than an import keeps layout below plan). `host`: whose view of a fleet file (None: this
    machine's)."""
    chosen, problems = _select(cfg, infos, host)
    position = {id(e): n for n, e in enumerate(cfg.entries)}
    # the same problem on several GPUs of one model: one line naming them; keyed by entry for the file's order
    by_text: Dict[Tuple[int, str], List[int]] = {}
    desired = {}
    for info in infos:
        entry = chosen.get(info.index)
        if entry is None:
            continue
        try:
            d = resolve(entry, info)
        except LayoutError as e:
            by_text.setdefault((position[id(entry)], str(e)), []).append(info.index)
            continue
        # A layout that cannot fit even an empty GPU is a config error: refuse before touching anything.
        why = fits(info, d) if fits is not None else None
        if why:
            text = f"{entry.instances_where or entry.where}: {why}"
            by_text.setdefault((position[id(entry)], text), []).append(info.index)
            continue
        desired[info.index] = d
    ordered = [(n, text) for n, text in problems]
    for (n, text), gpus in by_text.items():
        ordered.append((n, f"{text} (GPU{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))})"))
    if ordered:  # as the files read: entry by entry (files in the order read), top to bottom within one
        ordered.sort(key=lambda p: (p[0], _line_of(p[1])))
        raise ConfigError([Problem(text) for _, text in ordered])
    return desired


def _line_of(text: str) -> int:
    m = re.match(r"[^\n]*?:(\d+): ", text)
    return int(m.group(1)) if m else 0
