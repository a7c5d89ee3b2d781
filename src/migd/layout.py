"""Which config entry each GPU gets, and what its layout means on that GPU's model. Pure.

Rule when several [[gpu]] entries match one GPU: **the last matching entry wins** (later lines override earlier
ones, and drop-ins the main file, so a fleet file reads "all GPUs like this, except ..."). An entry with `hosts`
counts only on the hosts it names. GPUs no entry matches are left alone.
"""

from __future__ import annotations

import difflib
from ._record import dataclass, replace
from fnmatch import fnmatchcase
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, Problem
from .hostnames import host_matches
from .model import (ComputeProfile, Config, GpuEntry, GpuInfo, GpuProfile, GpuSelector, Location, Placement,
                    SelectorKind)
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
    unmanaged: bool = False  # MIG mode only: the instances are another tool's (GpuEntry.unmanaged)


class LayoutError(Exception):
    """The entry cannot mean anything on this GPU (unknown profile for the model, no MIG support): where, and why."""

    def __init__(self, at: Location, message: str):
        super().__init__(f"{at}: {message}")
        self.at, self.message = at, message


def _at(entry: GpuEntry, key: Optional[Location]) -> Location:
    """Where a problem with this entry's key is: as the parser located it; an entry no file holds (made in code,
    or by a test) has only its `where` text."""
    return key if key is not None else entry.at if entry.at is not None else Location(entry.where)


def _problem(at: Location, message: str) -> Problem:
    return Problem(message, at.path, at.line, at.key)


def matches(selector: GpuSelector, gpu: GpuInfo) -> bool:
    if selector.kind == SelectorKind.ALL:
        return True
    if selector.kind == SelectorKind.INDEX:
        return gpu.index in selector.values
    if selector.kind == SelectorKind.UUID:
        return gpu.uuid.lower() == str(selector.values[0]).lower()
    if selector.kind == SelectorKind.PCI:
        return _norm_pci(gpu.pci_bus_id) == selector.values[0]
    if selector.kind == SelectorKind.DEVICE:
        return any(_device_matches(str(v), gpu) for v in selector.values)
    if selector.kind == SelectorKind.GLOB:
        pattern = str(selector.values[0]).lower()
        return fnmatchcase(gpu.name.lower(), pattern) or fnmatchcase(gpu.model.lower(), pattern)
    return False


def _device_matches(device_id: str, gpu: GpuInfo) -> bool:
    """"0x233010DE" or "0x233010DE:0x16C110DE" (config's normal form) against the GPU's PCI IDs."""
    device, _, subsystem = device_id.partition(":")
    return int(device, 16) == gpu.pci_device_id and (not subsystem or int(subsystem, 16) == gpu.pci_subsystem_id)


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
    return chosen, [str(p) for _, p in problems]


def for_host(config: Config, host: Optional[str] = None) -> List[GpuEntry]:
    """The entries that apply on `host` (None: this machine), in order."""
    return [e for e in config.entries if host_matches(e.hosts, host)]


def naming_a_gpu(entries: Sequence[GpuEntry]) -> List[GpuEntry]:
    """The entries that name one GPU (index, UUID, PCI id): an admin expects that GPU on the host. "all" and model
    globs fit GPU-less hosts too (a fleet file shared with CPU nodes): with no driver installed they select nothing."""
    return [e for e in entries if e.selector.kind in (SelectorKind.INDEX, SelectorKind.UUID, SelectorKind.PCI)]


def _select(config: Config, gpus: Sequence[GpuInfo], host: Optional[str],
            ) -> Tuple[Dict[int, GpuEntry], List[Tuple[int, Problem]]]:
    chosen: Dict[int, GpuEntry] = {}
    problems: List[Tuple[int, Problem]] = []  # (position of the entry in the config, problem)
    for n, entry in enumerate(config.entries):
        if not host_matches(entry.hosts, host):
            continue
        hits = [g for g in gpus if not g.unknown and matches(entry.selector, g)]  # a lost GPU's identity is unknown
        for g in hits:
            chosen[g.index] = entry
        header = _at(entry, None)
        label = Location(header.path, header.line, f"{entry.label} select")  # at the [[gpu]] header
        if entry.selector.kind == SelectorKind.INDEX:
            missing = [i for i in entry.selector.values if not any(g.index == i for g in gpus)]
            if missing:
                problems.append((n, _problem(label, f"no GPU with index {', '.join(map(str, missing))} "
                                                    f"({_gpu_count(len(gpus))})")))
        elif entry.selector.kind in (SelectorKind.UUID, SelectorKind.PCI) and not hits and not any(g.unknown for g in gpus):
            problems.append((n, _problem(label, f"no GPU {entry.selector} on this host")))
        elif entry.selector.kind == SelectorKind.GLOB and not hits:
            why = unknown_glob(str(entry.selector.values[0]), gpus)
            if why:
                problems.append((n, _problem(entry.select_at or label, why)))
    return chosen, problems


def known_models() -> List[str]:
    """GPU names migd knows (every model it can simulate): a model glob must match one of them or a GPU here."""
    from .catalog import MODELS  # plain tables, no NVML

    return [m.name for m in MODELS.values()]


def unknown_glob(pattern: str, gpus: Sequence[GpuInfo] = ()) -> Optional[str]:
    """Why a model glob is surely a mistake (it matches no GPU model migd knows and no GPU here), with the nearest
    spelling; None when it matches something (a fleet file may name models this host does not have)."""
    p = pattern.lower()
    names = known_models() + [g.name for g in gpus if not g.unknown]
    if any(fnmatchcase(n.lower(), p) or fnmatchcase(_model_of(n).lower(), p) for n in names):
        return None
    core = pattern.strip("*").strip()
    words = ["all"] + sorted({_model_of(n) for n in names})
    if core and any(core.lower() in n.lower() for n in names):  # "H100": a part of a name, without the stars
        close = [core]
    else:
        close = difflib.get_close_matches(pattern, words, n=1, cutoff=0.5) or \
            difflib.get_close_matches(core.upper(), [w.upper() for w in words], n=1, cutoff=0.4)
    hint = ""
    if close:
        hint = ' (did you mean "all"?)' if close[0].lower() == "all" else f' (did you mean "*{close[0]}*"?)'
    return (f"{pattern!r} matches no GPU model migd knows nor a GPU on this host{hint}; a model glob matches the "
            'GPU name, e.g. "*H100*", "*A100*80GB*"')


def _model_of(name: str) -> str:
    return name[len("NVIDIA "):] if name.startswith("NVIDIA ") else name


def unmatched_entries(config: Config, gpus: Sequence[GpuInfo], host: Optional[str] = None) -> List[str]:
    """The entries for this host that select no GPU here (legal in a fleet file; said, never silent)."""
    return [f"{e.label} ({e.where}, select = {e.selector}): selects no GPU on this host"
            for e in for_host(config, host) if not any(not g.unknown and matches(e.selector, g) for g in gpus)]


def overridden(config: Config, gpu: GpuInfo, host: Optional[str] = None) -> List[GpuEntry]:
    """The entries that match `gpu` but lose to a later one, in file order (the winner is not among them)."""
    hits = [e for e in for_host(config, host) if matches(e.selector, gpu)]
    return hits[:-1]


def _gpu_count(n: int) -> str:
    if n == 0:
        return "this host has no GPU"
    return "this host has 1 GPU: 0" if n == 1 else f"this host has {n} GPUs: 0 to {n - 1}"


def unmatched_while_lost(config: Config, gpus: Sequence[GpuInfo], host: Optional[str] = None) -> List[str]:
    """UUID/PCI selectors that match no readable GPU while some GPU is lost (its identity unknown): each may mean
    a lost GPU, so the lost GPU's report names them."""
    if not any(g.unknown for g in gpus):
        return []
    return [f"{entry.where}: {entry.label} select = {entry.selector} matches no readable GPU, it may be this one"
            for entry in for_host(config, host)
            if entry.selector.kind in (SelectorKind.UUID, SelectorKind.PCI)
            and not any(not g.unknown and matches(entry.selector, g) for g in gpus)]


def resolve(entry: GpuEntry, gpu: GpuInfo) -> DesiredGpu:
    """Turn an entry's spellings into this GPU's profiles. Raises LayoutError naming file:line."""
    if not entry.mig:
        return DesiredGpu(entry, False)
    if not gpu.mig_capable:
        raise LayoutError(_at(entry, entry.mig_at), f"GPU {gpu.index} ({gpu.model}) does not support MIG")
    if entry.unmanaged:
        return DesiredGpu(entry, True, unmanaged=True)
    if not gpu.profiles:
        raise LayoutError(_at(entry, entry.mig_at), f"GPU {gpu.index} ({gpu.model}) reports no MIG profiles "
                          "(drivers before R550 list them only once MIG mode is on)")
    out = []
    for spec in entry.instances:
        profile, why = resolve_gpu_profile(spec.profile, gpu)
        if profile is None:
            raise LayoutError(spec.at, why)
        if spec.compute is not None:
            compute = []
            for c in spec.compute:
                cp, why = resolve_compute_profile(c, profile)
                if cp is None:
                    raise LayoutError(spec.at, why)
                compute.append(cp)
        else:
            full = profile.full_compute_profile
            if full is None:
                raise LayoutError(spec.at, f"{profile.name} has no whole-instance compute profile")
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
    by_problem: Dict[Tuple[int, Problem], List[int]] = {}
    desired = {}
    for info in infos:
        entry = chosen.get(info.index)
        if entry is None:
            continue
        try:
            d = resolve(entry, info)
        except LayoutError as e:
            by_problem.setdefault((position[id(entry)], _problem(e.at, e.message)), []).append(info.index)
            continue
        # A layout that cannot fit even an empty GPU is a config error: refuse before touching anything.
        why = fits(info, d) if fits is not None else None
        if why:
            problem = _problem(_at(entry, entry.instances_at), why)
            by_problem.setdefault((position[id(entry)], problem), []).append(info.index)
            continue
        desired[info.index] = d
    ordered = list(problems)
    for (n, p), gpus in by_problem.items():
        ordered.append((n, replace(p, message=f"{p.message} (GPU{'s' if len(gpus) > 1 else ''} "
                                              f"{', '.join(map(str, gpus))})")))
    if ordered:  # as the files read: entry by entry (files in the order read), top to bottom within one
        ordered.sort(key=lambda p: (p[0], p[1].line or 0))
        raise ConfigError([p for _, p in ordered])
    return desired
