"""`migd init`: a commented starter migd.toml for the GPUs of this host (or a simulated one). Pure: GPUs in, text out.

One entry per GPU model (selected by its exact name), holding the live layout when MIG is on (what `migd export`
would write, so applying the starter changes no instance), else MIG off; a GPU whose live layout differs from the rest
of its model gets its own entry by index. Above each entry, as comments, the model's profiles and the common
layouts that fit it, spelled as this driver names them, so an admin edits rather than writes. mig-parted
regenerates its config from the hardware at every boot; this file is generated once and then the admin's.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Dict, List, Sequence, Tuple

from . import layout
from .model import Gpu, GpuEntry, GpuInfo, GpuSelector, GpuState, InstanceSpec, SelectorKind
from .plan import plan_gpu
from .report import _export_entry  # the live layout as [[gpu]] lines: the one spelling `export` uses too

# Common layouts in model-independent spellings; each is shown only where it fits the model (checked by the planner).
_COMMON: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("balanced", ("3g", "2g", "1g", "1g")),
    ("balanced", ("2g", "1g", "1g")),  # 4-slice GPUs (A30, RTX PRO 6000)
    ("two halves", ("4g", "3g")),
    ("two halves", ("2g", "2g")),
)


def starter_toml(gpus: Sequence[Gpu], host: str) -> str:
    out = [f"# migd.toml for {host}, written by `migd init` from the GPUs it found. Edit it, then check it with",
           "# `migd validate` and `migd plan`; `migd apply` (or a reboot) makes the GPUs match. Several entries",
           "# matching one GPU: the last one wins. Reference: man migd.toml.", ""]
    models: Dict[str, List[Gpu]] = {}
    for gpu in gpus:
        if not gpu.info.unknown:
            models.setdefault(gpu.info.name, []).append(gpu)
    for name, group in models.items():
        info = group[0].info
        indices = ", ".join(str(g.info.index) for g in group)
        if not info.mig_capable:
            out += [f"# GPU {indices}: {name} has no MIG: no entry (migd leaves it alone)", ""]
            continue
        entries = [_export_entry(g, {}) for g in group]
        common = Counter(key for key, _ in entries).most_common(1)[0][0]
        out.append(f"# {name} (GPU {indices}, PCI device ID 0x{info.pci_device_id:08X})")
        out += _profiles_comment(info)
        lines = next(lines for key, lines in entries if key == common)
        out += ["[[gpu]]", f"select = {json.dumps(_exact_glob(name))}"] + lines
        out += ["# common layouts that fit (mig = true, and this as the one instances line):"]
        out += _layouts_comment(info) + [""]
        for gpu, (key, lines) in zip(group, entries):
            if key != common:
                out += [f"# GPU {gpu.info.index}'s live layout differs from the other {name} GPUs'",
                        "[[gpu]]", f"select = {gpu.info.index}"] + lines + [""]
    out += ["[daemon]  # the defaults; uncomment to change (man migd.toml)",
            "# watch_interval = 60", '# drift_policy = "log"          # or "reapply"',
            '# on_pending = "fail"            # or "reboot-once"', "# persistence_mode = true",
            '# stop_clients = ["nvidia-dcgm.service"]', ""]
    return "\n".join(out)


def _exact_glob(name: str) -> str:
    """The GPU's name as a glob matching exactly it ("[" is the only glob character a GPU name could hold)."""
    return name.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")


def _profiles_comment(info: GpuInfo) -> List[str]:
    items = [f"{p.name} x{p.instance_count}" for p in sorted(info.profiles, key=lambda p: (p.slices, p.memory_mb,
                                                                                             p.name))]
    out, line = [], "# profiles:"
    for item in items:
        if len(line) + len(item) > 110:
            out.append(line + ",")
            line = "#  "
        line += (" " if line.endswith(":") or line == "#  " else ", ") + item
    return out + [line]


def _layouts_comment(info: GpuInfo) -> List[str]:
    """Common layouts that fit this model, as this driver names the profiles (planned on an empty GPU)."""
    out = []
    sizes = sorted({p.slices for p in info.profiles})
    candidates = [(_all_label(info, s), (f"{s}g",) * _count(info, f"{s}g")) for s in sizes] + list(_COMMON)
    seen = set()
    for label, spelled in candidates:
        names = _fits(info, spelled) if label not in seen else ()
        if not names:
            continue
        seen.add(label)
        counts = Counter(names)
        shown = "{ " + ", ".join(f"{json.dumps(n)} = {c}" for n, c in counts.items()) + " }" if len(counts) == 1 \
            else "[" + ", ".join(json.dumps(n) for n in names) + "]"
        out.append(f"# instances = {shown}  # {label}")
    return out


def _all_label(info: GpuInfo, slices: int) -> str:
    if slices == info.total_slices:
        return "the whole GPU as one instance"
    return f"{slices}g instances, as many as fit" if _count(info, f"{slices}g") > 1 else f"one {slices}g instance"


def _count(info: GpuInfo, spelled: str) -> int:
    entry = GpuEntry(number=0, selector=GpuSelector(SelectorKind.ALL), mig=True, instances=(InstanceSpec(spelled),))
    try:
        return layout.resolve(entry, info).instances[0].profile.instance_count
    except layout.LayoutError:
        return 0


def _fits(info: GpuInfo, spelled: Tuple[str, ...]) -> Tuple[str, ...]:
    """The profile names of `spelled` on this model when the layout fits an empty GPU; () otherwise."""
    if not spelled:
        return ()
    entry = GpuEntry(number=0, selector=GpuSelector(SelectorKind.ALL), mig=True,
                     instances=tuple(InstanceSpec(s) for s in spelled))
    try:
        desired = layout.resolve(entry, info)
    except layout.LayoutError:
        return ()
    plan = plan_gpu(info, desired, GpuState(mig_current=True, mig_pending=True, persistence=None))
    return tuple(i.profile.name for i in desired.instances) if plan.ok else ()
