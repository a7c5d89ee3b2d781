"""Prometheus metrics in node_exporter's textfile format: what migd saw and did, for alerting across a fleet.

One file ([daemon] metrics_file; Debian's node_exporter reads /var/lib/prometheus/node-exporter/*.prom), written
whole and atomically (temp file in the same directory + rename, mode 0644, through a descriptor of the directory
walked without following links another user could plant: safefile.py) by every apply (boot, `migd apply`, a
watchdog re-apply) and every watchdog check. Two writers share it without clobbering each other: each writes the
families it owns and carries the others' samples over from the file as it was, and both write under
/run/migd/lock (apply exclusive, check shared; there is one migd-watch), so no update is lost between the read
and the rename. Per-GPU families are written by both: the latest look at the GPUs wins.

migd_drift_events_total lives in the file itself: each check adds the GPUs that drifted since the previous look
(the file's own per-GPU series say which already had), so the counter survives migd-watch restarts and reboots;
deleting the file resets it to 0, which Prometheus' rate() and increase() handle like any counter reset.

Pure except `write` and `read_samples`.
"""

from __future__ import annotations

import math
import os
import re
from ._record import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import safefile

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian/Ubuntu's node_exporter --collector.textfile.directory
DEFAULT_FILE = os.path.join(TEXTFILE_DIR, "migd.prom")

Labels = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float


# name -> (type, help); this order is the file's order
FAMILIES: Dict[str, Tuple[str, str]] = {
    "migd_gpu_layout_match": ("gauge", "1 if the GPU's live MIG layout is the one /etc/migd.toml declares, else 0 "
                                       "(managed GPUs only)."),
    "migd_gpu_mig_mode_current": ("gauge", "1 if MIG mode is on now, else 0."),
    "migd_gpu_mig_mode_pending": ("gauge", "1 if MIG mode will be on after the next GPU reset, else 0; differs "
                                           "from migd_gpu_mig_mode_current while a mode change is pending."),
    "migd_gpu_instances": ("gauge", "GPU instances on the GPU, by profile (declared profiles included, at 0)."),
    "migd_gpu_instances_desired": ("gauge", "GPU instances /etc/migd.toml declares for the GPU, by profile."),
    "migd_gpu_lost": ("gauge", "1 if the GPU fell off the bus (NVML: GPU is lost), else 0."),
    "migd_gpu_unreadable": ("gauge", "1 if the GPU's MIG state could not be read, else 0."),
    "migd_last_check_timestamp_seconds": ("gauge", "Unix time of migd-watch's last layout check."),
    "migd_last_check_success": ("gauge", "1 if migd-watch's last check could read every GPU and the config, else 0."),
    "migd_drift_events_total": ("counter", "Times migd-watch found a GPU drifted from the declared layout."),
    "migd_last_apply_timestamp_seconds": ("gauge", "Unix time the last apply (boot, migd apply, re-apply) ended."),
    "migd_last_apply_duration_seconds": ("gauge", "How long the last apply took."),
    "migd_last_apply_success": ("gauge", "1 if the last apply left every GPU in its declared layout (exit 0), else 0."),
}
GPU_FAMILIES = tuple(n for n in FAMILIES if n.startswith("migd_gpu_"))
CHECK_FAMILIES = GPU_FAMILIES + ("migd_last_check_timestamp_seconds", "migd_last_check_success",
                                 "migd_drift_events_total")
APPLY_FAMILIES = GPU_FAMILIES + ("migd_last_apply_timestamp_seconds", "migd_last_apply_duration_seconds",
                                 "migd_last_apply_success")


@dataclass
class GpuView:
    """What one look at one GPU found, as the metrics show it."""

    index: int
    uuid: str
    lost: bool = False
    unreadable: bool = False
    match: Optional[bool] = None  # None: not managed (no [[gpu]] entry selects it), or unreadable
    mig_current: Optional[bool] = None
    mig_pending: Optional[bool] = None
    instances: Dict[str, int] = field(default_factory=dict)
    desired: Optional[Dict[str, int]] = None  # None: not managed

    @property
    def drifted(self) -> bool:
        """Not the declared layout, and not because a mode change waits for a reset (that is "pending")."""
        return self.match is False and self.mig_current == self.mig_pending


def gpu_samples(views: Sequence[GpuView]) -> List[Sample]:
    out: List[Sample] = []
    for v in sorted(views, key=lambda v: v.index):
        base: Labels = (("gpu", str(v.index)), ("uuid", v.uuid))
        out.append(Sample("migd_gpu_lost", base, float(v.lost)))
        out.append(Sample("migd_gpu_unreadable", base, float(v.unreadable)))
        if v.lost or v.unreadable:
            continue
        if v.match is not None:
            out.append(Sample("migd_gpu_layout_match", base, float(v.match)))
        if v.mig_current is not None:
            out.append(Sample("migd_gpu_mig_mode_current", base, float(v.mig_current)))
        if v.mig_pending is not None:
            out.append(Sample("migd_gpu_mig_mode_pending", base, float(v.mig_pending)))
        for profile in sorted(set(v.instances) | set(v.desired or {})):
            out.append(Sample("migd_gpu_instances", base + (("profile", profile),),
                              float(v.instances.get(profile, 0))))
        for profile, n in sorted((v.desired or {}).items()):
            out.append(Sample("migd_gpu_instances_desired", base + (("profile", profile),), float(n)))
    return out


def check_samples(views: Sequence[GpuView], success: bool, now: float, previous: Sequence[Sample]) -> List[Sample]:
    """A watchdog check's families; the drift counter continues from the previous file's value."""
    total = next((s.value for s in previous if s.name == "migd_drift_events_total"), 0.0)
    total += len(newly_drifted(views, previous))
    return gpu_samples(views) + [
        Sample("migd_last_check_timestamp_seconds", (), now),
        Sample("migd_last_check_success", (), float(success)),
        Sample("migd_drift_events_total", (), total)]


def newly_drifted(views: Sequence[GpuView], previous: Sequence[Sample]) -> List[int]:
    """GPUs drifted now that the previous look (the file's per-GPU series) did not show drifted."""
    before: Dict[str, Dict[str, float]] = {}
    for s in previous:
        if s.name in ("migd_gpu_layout_match", "migd_gpu_mig_mode_current", "migd_gpu_mig_mode_pending"):
            before.setdefault(dict(s.labels).get("uuid", ""), {})[s.name] = s.value
    out = []
    for v in views:
        old = before.get(v.uuid, {})
        was = (old.get("migd_gpu_layout_match") == 0
               and old.get("migd_gpu_mig_mode_current") == old.get("migd_gpu_mig_mode_pending"))
        if v.drifted and not was:
            out.append(v.index)
    return out


def apply_samples(views: Sequence[GpuView], success: bool, ended: float, duration: float) -> List[Sample]:
    return gpu_samples(views) + [
        Sample("migd_last_apply_timestamp_seconds", (), ended),
        Sample("migd_last_apply_duration_seconds", (), max(0.0, duration)),
        Sample("migd_last_apply_success", (), float(success))]


def merge(fresh: Sequence[Sample], owned: Iterable[str], previous: Sequence[Sample]) -> List[Sample]:
    """This writer's families from `fresh`; every other known family carried over from `previous`."""
    mine = set(owned)
    return list(fresh) + [s for s in previous if s.name not in mine and s.name in FAMILIES]


def render(samples: Sequence[Sample]) -> str:
    by_name: Dict[str, List[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    lines = []
    for name, (kind, text) in FAMILIES.items():
        if name not in by_name:
            continue
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for s in by_name[name]:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(f"{name}{{{labels}}} {_number(s.value)}" if labels else f"{name} {_number(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 2 ** 53 else repr(v)


_SAMPLE_RE = re.compile(r'^(migd_[a-z_]+)(?:\{(.*)\})? (\S+)$')
_LABEL_RE = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> List[Sample]:
    """migd's own file back into samples: known families only, anything else (or malformed) ignored, so a file
    someone else changed can cost at most our own old values."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if not m or m.group(1) not in FAMILIES:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple((k, _unescape(v)) for k, v in _LABEL_RE.findall(m.group(2) or ""))
        out.append(Sample(m.group(1), labels, value))
    return out


def _unescape(v: str) -> str:
    return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def read_samples(path: str) -> List[Sample]:
    """The file's samples; none when it does not exist yet (first write). Opened as safefile says (no link
    followed, never blocking, a regular file only): UnsafePath (an OSError) otherwise."""
    d, name = os.path.split(path)
    try:
        with safefile.open_dir(d) as dir_fd:
            text = safefile.read_text(dir_fd, name, path)
    except FileNotFoundError:
        return []
    return parse(text) if text is not None else []


def write(path: str, fresh: Sequence[Sample], owned: Iterable[str], previous: Sequence[Sample]) -> None:
    """Written through a descriptor of its directory (safefile): a temp file renamed over the name, mode 0644."""
    d, name = os.path.split(path)
    with safefile.open_dir(d) as dir_fd:
        safefile.write_text(dir_fd, name, render(merge(fresh, owned, previous)), mode=0o644)
