"""Pictures of GPUs: each GPU's memory-slot grid with the instances on it (status, apply, plan, check, profiles).

Rendering only: what is kept, created, destroyed, missing, extra or moved comes from the plan and drift records.
A grid is as many slots as the GPU's placements span (8 on datacenter GPUs, 4 on RTX PRO and A30), each slot a
cell wide enough that 8 slots fit 80 columns; a label that does not fit its box goes to a legend under the grid.
Box characters when the output encoding is UTF-8, plain ASCII otherwise; colour only when `Style` says so (a
terminal, no NO_COLOR, not the journal: `style_for`).
"""

from __future__ import annotations

import textwrap

from enum import Enum
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ._record import dataclass
from .drift import Comparison, InstanceRecord
from .model import Gpu, GpuInfo, GpuProfile, GpuState, Placement
from .plan import Action, ActionKind, GpuPlan
from .report import index_ranges

WIDTH = 80


class Mark(Enum):
    """What a box on a grid is, beyond an instance that is simply there."""

    NONE = ""
    FREE = "free"
    KEEP = "keep"
    NEW = "new"
    DESTROY = "destroy"
    MISSING = "missing"
    EXTRA = "extra"
    MOVED = "moved"
    CHANGED = "changed"  # the same GPU instance, other compute instances


_COLOR = {Mark.FREE: "2", Mark.NEW: "32", Mark.DESTROY: "31", Mark.MISSING: "31", Mark.EXTRA: "33",
          Mark.MOVED: "35", Mark.CHANGED: "35"}


@dataclass(frozen=True)
class Style:
    unicode: bool = True
    color: bool = False
    width: int = WIDTH


def style_for(encoding: Optional[str], isatty: bool, environ: Mapping[str, str]) -> Style:
    """Box characters where the stream's encoding is UTF-8; colour on a terminal only, never with NO_COLOR set
    (any value, no-color.org) and never into the journal (JOURNAL_STREAM: systemd connected the output to it)."""
    utf8 = (encoding or "").lower().replace("-", "").replace("_", "") == "utf8"
    color = isatty and "NO_COLOR" not in environ and "JOURNAL_STREAM" not in environ
    return Style(unicode=utf8, color=color)


@dataclass(frozen=True)
class Box:
    """One span of the grid: its label lines (first line the mark's word, when marked)."""

    placement: Placement
    lines: Tuple[str, ...]
    mark: Mark = Mark.NONE


def escape(text: str) -> str:
    """Names and profile names come from the config and the driver: printable ASCII as is, anything else escaped,
    so every character is one column and nothing reaches the terminal as a control sequence."""
    return "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)


def slot_count(info: GpuInfo) -> int:
    """The GPU's memory slots, from its placement data: the end of the furthest placement any profile has."""
    ends = [pl.start + pl.size for p in info.profiles for pl in p.placements]
    return max(ends) if ends else info.total_memory_slots


def cell_width(slots: int, style: Style, indent: int) -> int:
    return max(4, min(16, (style.width - indent - 1) // max(slots, 1) - 1))


class Legend:
    """Labels too wide for their box, each once: "(a) 1g.10gb+me"."""

    def __init__(self) -> None:
        self.keys: Dict[str, str] = {}

    def key(self, text: str) -> str:
        if text not in self.keys:
            n = len(self.keys)
            self.keys[text] = "(" + (chr(ord("a") + n) if n < 26 else f"{n}") + ")"
        return self.keys[text]

    def lines(self, indent: int, width: int) -> List[str]:
        out: List[str] = []
        line = ""
        for text, key in self.keys.items():
            item = f"{key} {text}"
            if line and len(" " * indent + line + "  " + item) > width:
                out.append(" " * indent + line)
                line = ""
            line = f"{line}  {item}" if line else item
        if line:
            out.append(" " * indent + line)
        return out


def grid(slots: int, boxes: Sequence[Box], style: Style, indent: int = 2,
         legend: Optional[Legend] = None) -> List[str]:
    """The slot grid: a ruler of slot numbers, then the boxes (free runs filled in as "free"). With `legend` given,
    too-wide labels are keyed into it (the caller prints it); else the legend follows the grid."""
    own_legend = legend is None
    legend = legend if legend is not None else Legend()
    cw = cell_width(slots, style, indent)
    placed: List[Box] = []
    taken = 0
    for box in sorted(boxes, key=lambda b: b.placement.start):
        pl = box.placement
        if pl.start < 0 or pl.size < 1 or pl.start + pl.size > slots or taken & pl.mask:
            legend.key(f"not drawn, overlaps or outside the grid: {' '.join(box.lines)} at {pl}")
            continue
        taken |= pl.mask
        placed.append(box)
    start = 0
    for i in range(slots + 1):  # free runs
        if i == slots or taken & (1 << i):
            if i > start:
                placed.append(Box(Placement(start, i - start), (Mark.FREE.value,), Mark.FREE))
            start = i + 1
    placed.sort(key=lambda b: b.placement.start)
    h, v, corners = ("─", "│", "┌┬┐└┴┘") if style.unicode else ("-", "|", "++++++")
    widths = [b.placement.size * cw + b.placement.size - 1 for b in placed]
    cells = []
    for box, w in zip(placed, widths):
        words = ([box.mark.value] if box.mark not in (Mark.NONE, Mark.FREE) else []) + list(box.lines)
        cells.append([_fit(escape(t), w, legend) for t in words])
    height = max((len(c) for c in cells), default=1)
    pad = " " * indent
    out = [pad + "".join(" " + str(i).ljust(cw) for i in range(slots)).rstrip()]
    out.append(pad + corners[0] + corners[1].join(h * w for w in widths) + corners[2])
    for row in range(height):
        parts = []
        for box, cell, w in zip(placed, cells, widths):
            text = (cell[row] if row < len(cell) else "").ljust(w)
            code = _COLOR.get(box.mark)
            parts.append(f"\x1b[{code}m{text}\x1b[0m" if style.color and code and text.strip() else text)
        out.append(pad + v + v.join(parts) + v)
    out.append(pad + corners[3] + corners[4].join(h * w for w in widths) + corners[5])
    if own_legend:
        out += legend.lines(indent, style.width)
    return out


def _fit(text: str, width: int, legend: Legend) -> str:
    return text if len(text) <= width else legend.key(text)


def _grouped(items: Sequence[Tuple[int, Tuple[str, ...]]]) -> List[Tuple[List[int], Tuple[str, ...]]]:
    """GPUs whose pictures are identical, drawn once: (indices, picture) in the order of each group's first GPU."""
    groups: Dict[Tuple[str, ...], List[int]] = {}
    for index, lines in items:
        groups.setdefault(lines, []).append(index)
    return [(indices, lines) for lines, indices in groups.items()]


# --- status and apply -----------------------------------------------------------------------------------------------


def _profile(info: GpuInfo, profile_id: int) -> Tuple[str, Optional[GpuProfile]]:
    p = info.profile_by_id(profile_id)
    return (p.name if p else f"profile {profile_id}"), p


def live_boxes(info: GpuInfo, state: GpuState, names: Mapping[int, str],
               marks: Optional[Mapping[int, Mark]] = None, compute: bool = True) -> List[Box]:
    """The live GPU instances: profile, GI id, configured name, and (compute) their compute instances."""
    out = []
    for gi in state.instances:
        pname, p = _profile(info, gi.profile_id)
        full = p.full_compute_profile if p else None
        cps = {c.id: c.name for c in p.compute_profiles} if p else {}
        lines = [pname, f"GI {gi.id}"] + ([names[gi.id]] if gi.id in names else [])
        if compute:
            for ci in sorted(gi.compute, key=lambda c: (c.placement.start, c.id)):
                what = "" if full is not None and ci.profile_id == full.id else \
                    f" {cps.get(ci.profile_id, ci.profile_id)}"
                lines.append(f"CI {ci.id}{what}")
            if not gi.compute:
                lines.append("no CI")
        out.append(Box(gi.placement, tuple(lines), (marks or {}).get(gi.id, Mark.NONE)))
    return out


def _mode_line(info: GpuInfo, state: GpuState, managed: Optional[str]) -> str:
    if info.lost:
        return "LOST: fell off the bus (see `dmesg` for Xid errors); not configured"
    if info.unreadable:
        return f"UNREADABLE: {escape(info.unreadable)}; not configured"
    if not info.mig_capable:
        return "MIG not supported"
    mode = "on" if state.mig_current else "off"
    if state.mode_change_pending:
        mode += f" (pending: {'on' if state.mig_pending else 'off'})"
    pm = {None: "unknown", True: "on", False: "off"}[state.persistence]
    return f"MIG {mode}, persistence {pm}, config: {managed or 'not managed'}"


def gpu_picture(gpu: Gpu, names: Mapping[int, str], managed: Optional[str], style: Style,
                compute: bool = True) -> Tuple[str, ...]:
    """One GPU's mode line and slot grid (none when MIG is off), without its index: what groups compare."""
    info, state = gpu.info, gpu.state
    lines = [info.name, "  " + _mode_line(info, state, managed)]
    if managed is not None and managed.endswith("(drift)"):
        lines.append("  drift: does not match its config, see `migd check`")
    if info.mig_capable and not info.unknown and state.mig_current:
        lines += grid(slot_count(info), live_boxes(info, state, names, compute=compute), style)
    return tuple(lines)


def status(gpus: Sequence[Gpu], names: Mapping[int, Mapping[int, str]], managed: Mapping[int, str],
           style: Style, details: bool = True) -> str:
    """Identical GPUs with identical layouts drawn once ("GPU 0-7: ..."); with details, each GPU's bus id and UUID
    and every compute instance's MIG UUID and processes under the picture."""
    items = [(g.info.index, gpu_picture(g, names.get(g.info.index, {}), managed.get(g.info.index), style, details))
             for g in gpus]
    by_index = {g.info.index: g for g in gpus}
    out: List[str] = []
    for indices, lines in _grouped(items):
        out.append(f"GPU {index_ranges(indices)}: {lines[0]}")
        out += lines[1:]
        if details:
            for i in indices:
                out += _details(by_index[i])
    return "\n".join(out)


def _details(gpu: Gpu) -> List[str]:
    info, state = gpu.info, gpu.state
    out = [f"  GPU {info.index}  {info.pci_bus_id}  {escape(info.uuid)}"]
    if not info.unknown:
        out += [f"  processes {','.join(map(str, state.pids))}"] if state.pids else []
        for gi in state.instances:
            for ci in gi.compute:
                pids = f"  pids {','.join(map(str, ci.pids))}" if ci.pids else ""
                out.append(f"    GI {gi.id} CI {ci.id}  {escape(ci.uuid)}{pids}")
    return out


# --- plan -----------------------------------------------------------------------------------------------------------


def _planned_boxes(plan: GpuPlan) -> List[Box]:
    out = []
    for a in plan.assignments:
        full = a.instance.profile.full_compute_profile
        default = [c.id for c in a.instance.compute] == [full.id if full else None]
        lines = [a.instance.profile.name] + ([f"GI {a.live_gi}"] if a.live_gi is not None else []) + \
            ([a.instance.name] if a.instance.name else [])
        if not default:
            lines += [f"CI {c.name}" for c in a.instance.compute] or ["no CI"]
        # kept as is, kept with other compute instances (its id and MIG UUID survive), or created
        mark = Mark.KEEP if a.kept_gi is not None else Mark.CHANGED if a.reused_gi is not None else Mark.NEW
        out.append(Box(a.placement, tuple(lines), mark))
    return out


def plan_summary(plan: GpuPlan) -> str:
    """"MIG mode on, 4 GPU instances to create, 1 to destroy; 10 driver calls": compute instances are counted
    only where they change inside a GPU instance that stays (a new one comes with its own)."""
    destroyed = {a.gi_id for a in plan.actions if a.kind == ActionKind.DESTROY_GI}
    parts = [f"MIG mode {'on' if a.enabled else 'off'}" for a in plan.actions if a.kind == ActionKind.SET_MIG_MODE]
    parts += [f"persistence {'on' if a.enabled else 'off'}" for a in plan.actions
              if a.kind == ActionKind.SET_PERSISTENCE]
    def counts(a: Action) -> bool:
        if a.kind == ActionKind.CREATE_CI:
            return a.gi_id is not None
        return a.kind != ActionKind.DESTROY_CI or a.gi_id not in destroyed

    for kind, what in ((ActionKind.CREATE_GI, "GPU instance{} to create"),
                       (ActionKind.DESTROY_GI, "GPU instance{} to destroy"),
                       (ActionKind.CREATE_CI, "compute instance{} to create in kept GPU instances"),
                       (ActionKind.DESTROY_CI, "compute instance{} to destroy in kept GPU instances")):
        n = sum(1 for a in plan.actions if a.kind == kind and counts(a))
        if n:
            parts.append(f"{n} {what.format('' if n == 1 else 's')}")
    n = len(plan.actions)
    return f"{', '.join(parts)}; {n} driver call{'' if n == 1 else 's'}"


def plan_picture(info: GpuInfo, state: GpuState, plan: GpuPlan, mig: bool, where: str, style: Style) -> Tuple[str, ...]:
    """Now and after: the live grid (what is destroyed marked), the planned one (kept, changed and new marked)."""
    kept = {a.kept_gi for a in plan.assignments if a.kept_gi is not None}
    changed = {a.reused_gi for a in plan.assignments if a.reused_gi is not None}
    destroyed = {a.gi_id for a in plan.actions if a.kind == ActionKind.DESTROY_GI}
    marks = {gi.id: (Mark.DESTROY if gi.id in destroyed else Mark.KEEP if gi.id in kept else
                     Mark.CHANGED if gi.id in changed else Mark.NONE) for gi in state.instances}
    slots = slot_count(info)
    lines = [f"{info.name}  {where}"]
    if state.mig_current:
        lines += ["  now:"] + grid(slots, live_boxes(info, state, {}, marks, compute=False), style, indent=4)
    else:
        lines.append("  now: MIG off" + (" (pending on)" if state.mig_pending else ""))
    if mig:
        lines += ["  after:"] + grid(slots, _planned_boxes(plan), style, indent=4)
    else:
        lines.append("  after: MIG off")
    lines += textwrap.wrap(plan_summary(plan), 80, initial_indent="  ", subsequent_indent="    ")  # 80 columns
    return tuple(lines)


def plans(pictures: Sequence[Tuple[int, Tuple[str, ...]]]) -> List[str]:
    """Plan pictures of several GPUs, identical ones drawn once."""
    out: List[str] = []
    for indices, lines in _grouped(pictures):
        out.append(f"GPU {index_ranges(indices)}: {lines[0]}")
        out += lines[1:]
    return out


# --- check ----------------------------------------------------------------------------------------------------------


def _record_box(r: InstanceRecord, mark: Mark, extra: Sequence[str] = ()) -> Box:
    lines = [r.profile] + ([f"GI {r.gi_id}"] if r.gi_id is not None else []) + list(extra)
    if not r.default_compute:
        lines += [f"CI {c.profile}@{c.placement}" for c in r.compute] or ["no CI"]
    return Box(r.placement, tuple(lines), mark)


def drift_picture(info: GpuInfo, c: Comparison, style: Style, indent: int = 2) -> List[str]:
    """The config's layout (what is missing marked) over the live one (extra, moved, changed marked); nothing when
    the MIG mode itself differs (the wording says all there is)."""
    d = c.drift
    if d is None or d.mode is not None or not (c.expected.mig and c.found.mig):
        return []
    missing = {(r.profile, r.placement) for r in d.missing}
    moved_from = {(m.profile, m.expected): m for m in d.moved}
    moved_to = {m.gi_id: m for m in d.moved}
    extra = {r.gi_id for r in d.extra}
    changed = {x.gi_id for x in d.compute}
    changed_at = {(x.instance.profile, x.instance.placement) for x in d.compute}
    expected = []
    for r in c.expected.instances:
        m = moved_from.get((r.profile, r.placement))
        if (r.profile, r.placement) in missing:
            expected.append(_record_box(r, Mark.MISSING))
        elif (r.profile, r.placement) in changed_at:
            expected.append(_record_box(r, Mark.CHANGED))
        elif m is not None:
            expected.append(_record_box(r, Mark.MOVED, [f"to {m.found}"]))
        else:
            expected.append(_record_box(r, Mark.NONE))
    found = []
    for r in c.found.instances:
        if r.gi_id in extra:
            found.append(_record_box(r, Mark.EXTRA))
        elif r.gi_id in moved_to:
            found.append(_record_box(r, Mark.MOVED, [f"from {moved_to[r.gi_id].expected}"]))
        elif r.gi_id in changed:
            found.append(_record_box(r, Mark.CHANGED))
        else:
            found.append(_record_box(r, Mark.NONE))
    slots = slot_count(info)
    pad = " " * indent
    return ([pad + "expected:"] + grid(slots, expected, style, indent + 2)
            + [pad + "found:"] + grid(slots, found, style, indent + 2))


# --- profiles -------------------------------------------------------------------------------------------------------


def placements(info: GpuInfo, style: Style, indent: int = 2) -> List[str]:
    """Each profile's possible placements as bars on the slot grid, one row per profile (more where placements of
    one profile overlap): "1g.10gb  [0 ][1 ][2 ]..." with each placement's start slot."""
    slots = slot_count(info)
    name_w = max([len(escape(p.name)) for p in info.profiles] + [8]) + 2
    cw = max(4, min(8, (style.width - indent - name_w) // max(slots, 1)))
    left, right, fill = ("├", "┤", "─") if style.unicode else ("[", "]", " ")
    pad = " " * indent
    out = [f"{pad}{'placements':<{name_w}}" + "".join(str(i).ljust(cw) for i in range(slots)).rstrip()]
    for p in sorted(info.profiles, key=lambda p: (p.slices, p.memory_mb, p.index)):
        rows: List[List[Placement]] = []
        for pl in sorted(p.placements, key=lambda x: x.start):
            row = next((r for r in rows if not any(q.mask & pl.mask for q in r)), None)
            if row is None:
                rows.append([pl])
            else:
                row.append(pl)
        for n, row in enumerate(rows or [[]]):
            cells = ["·".ljust(cw) if style.unicode else ".".ljust(cw)] * slots
            line = ""
            at = 0
            for pl in sorted(row, key=lambda x: x.start):
                if pl.start + pl.size > slots:
                    continue
                line += "".join(cells[at:pl.start])
                span = cw * pl.size
                line += left + str(pl.start).ljust(span - 2, fill) + right
                at = pl.start + pl.size
            line += "".join(cells[at:])
            label = escape(p.name) if n == 0 else ""
            out.append(f"{pad}{label:<{name_w}}{line}".rstrip())
    return out
