"""`migd validate` as a fleet preview: per GPU, the entry that applies (file:line), the entries it overrides, and
the layout it resolves to on that GPU (profiles as that GPU's driver names them, placements as planned on an empty
GPU); the entries that select nothing here; the effective [daemon] settings with the file each comes from. Pure.
"""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

from . import layout
from .model import Config, DaemonSettings, GpuEntry, GpuInfo, GpuState
from .plan import plan_gpu
from .drift import planned_layout
from .report import UNMANAGED, layout_text


def gpu_lines(cfg: Config, infos: Sequence[GpuInfo], host: Optional[str] = None) -> List[str]:
    chosen, _ = layout.select(cfg, infos, host)
    out = []
    for info in infos:
        entry = chosen.get(info.index)
        if entry is None:
            out.append(f"GPU {info.index} {info.name}: not managed (no entry matches)")
            continue
        hosts = f", hosts = {', '.join(entry.hosts)}" if entry.hosts else ""
        out.append(f"GPU {info.index} {info.name}: {entry.label} ({entry.where}, select = {entry.selector}{hosts})")
        for lost in layout.overridden(cfg, info, host):
            out.append(f"  overrides {lost.label} ({lost.where}, select = {lost.selector}): the last matching entry "
                       "wins")
        shown = _layout(entry, info)
        if shown:
            out.append(f"  layout: {shown}")
    return out


def _layout(entry: GpuEntry, info: GpuInfo) -> str:
    """The layout on an empty GPU of this model; "" when it does not resolve or fit (validate then says why)."""
    try:
        desired = layout.resolve(entry, info)
    except layout.LayoutError:
        return ""
    if desired.unmanaged:
        return f"{UNMANAGED} (another tool creates and destroys them; migd sets the mode only)"
    plan = plan_gpu(info, desired, GpuState(mig_current=True, mig_pending=True, persistence=None))
    return layout_text(planned_layout(plan, desired.mig)) if plan.ok else ""


def daemon_lines(cfg: Config) -> List[str]:
    """Every [daemon] setting in effect and where it comes from ("default" when no file sets it)."""
    sources = dict(cfg.daemon_sources)
    out = ["[daemon] in effect:"]
    for key in DaemonSettings().__dict__:
        value = getattr(cfg.daemon, key)
        if value is None:
            shown = "(unset: node_exporter's textfile directory, when it exists)"
        elif isinstance(value, float) and value.is_integer():
            shown = str(int(value))
        elif isinstance(value, tuple):
            shown = json.dumps(list(value))
        else:
            shown = json.dumps(value)
        out.append(f"  {key} = {shown}  # {sources.get(key, 'default')}")
    return out
