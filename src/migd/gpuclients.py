"""[daemon] gpu_clients: the admin's own GPU client services, which migd-generator orders after migd.service.

A generator runs before any unit is loaded, so it cannot expand a general glob against the units that exist. What
it can do is write drop-in directories, and systemd reads three kinds for a service (systemd.unit(5)):

- ``ollama.service``: that unit's own ``ollama.service.d/``;
- ``vllm@*.service`` (or ``vllm@.service``): the template's ``vllm@.service.d/``, read for every instance;
- ``triton-*.service``: the prefix drop-in ``triton-.service.d/``, read for every service whose name starts with
  ``triton-`` (systemd >= 239 truncates a unit name after each ``-`` when looking for drop-ins).

Every other pattern is refused, and so is any name or pattern covering a unit migd.service itself starts after:
ordering it after migd.service too would be an ordering cycle, which systemd breaks at boot by dropping a job.
Pure: no file, no process, no systemd (the checks against loaded units are `check_units`, given a reader).
"""

from __future__ import annotations

import enum
import re
from typing import Callable, List, Optional, Sequence, Tuple

from ._record import dataclass

DROPIN_NAME = "50-migd.conf"
SERVICE = "migd.service"
# The services migd.service is ordered after (its After=; tests/test_gpuclients.py reads the shipped unit), and
# migd.service itself: none of them may be ordered after migd.service.
MIGD_RUNS_AFTER = ("systemd-modules-load.service", "systemd-udev-trigger.service", "nvidia-persistenced.service",
                   "nvidia-fabricmanager.service", SERVICE)

# The GPU clients the shipped migd.service names in Before= (tests/test_gpuclients.py reads the unit): ordered after
# migd without any gpu_clients item. What systemd says wins where it can be asked (`unordered`).
MIGD_RUNS_BEFORE = ("nvidia-dcgm.service", "dcgm.service", "nvsm.service", "dcgm-exporter.service", "gdm.service",
                    "gdm3.service", "display-manager.service", "lightdm.service", "sddm.service", "docker.service",
                    "containerd.service", "crio.service", "kubelet.service", "k3s.service", "k3s-agent.service",
                    "rke2-server.service", "rke2-agent.service", "slurmd.service", "nvidia-cdi-refresh.service",
                    "migd-watch.service")

_NAME = r"[A-Za-z0-9:_.\\-]"  # systemd's unit name characters, less "@" (placed by the forms below)
_UNIT_RE = re.compile(rf"^{_NAME}+(@{_NAME}*)?\.service\Z")
_TEMPLATE_GLOB_RE = re.compile(rf"^({_NAME}+)@\*?\.service\Z")
_PREFIX_GLOB_RE = re.compile(rf"^({_NAME}+-)\*\.service\Z")
EXAMPLE = '["ollama.service", "vllm@*.service"]'


class ClientKind(enum.Enum):
    UNIT = "unit"  # one service
    TEMPLATE = "template"  # every instance of a template
    PREFIX = "prefix"  # every service whose name starts with a prefix ending in "-"


@dataclass(frozen=True)
class ClientPattern:
    text: str  # as written in the config
    kind: ClientKind
    dropin_dir: str  # the drop-in directory systemd reads for the units it covers, e.g. "vllm@.service.d"

    def matches(self, unit: str) -> bool:
        """Does this pattern cover `unit` (a loaded unit's name, such as a holder's)?"""
        if self.kind == ClientKind.UNIT:
            return unit == self.text
        stem = self.dropin_dir[:-len(".service.d")]
        if not unit.endswith(".service"):
            return False
        if self.kind == ClientKind.TEMPLATE:
            return unit.startswith(stem)  # stem ends in "@"
        return unit.startswith(stem) and len(unit) > len(stem) + len(".service")

    def describe(self) -> str:
        if self.kind == ClientKind.UNIT:
            return self.text
        if self.kind == ClientKind.TEMPLATE:
            return f"{self.text} (every instance of {self.dropin_dir[:-2]})"
        return f"{self.text} (every service named {self.dropin_dir[:-len('.service.d')]}…)"


def parse(text: str) -> Tuple[Optional[ClientPattern], str]:
    """One gpu_clients item -> (pattern, "") or (None, why it is refused)."""
    pattern: Optional[ClientPattern] = None
    m = _TEMPLATE_GLOB_RE.match(text)
    if m:
        pattern = ClientPattern(text, ClientKind.TEMPLATE, f"{m.group(1)}@.service.d")
    elif _PREFIX_GLOB_RE.match(text):
        pattern = ClientPattern(text, ClientKind.PREFIX, f"{text[:-len('*.service')]}.service.d")
    elif _UNIT_RE.match(text) and len(text) <= 255:
        pattern = ClientPattern(text, ClientKind.UNIT, f"{text}.d")
    elif any(c in text for c in "*?["):
        return None, (f"{text!r}: a glob here is either NAME@*.service (every instance of a template) or "
                      "PREFIX-*.service (every service named PREFIX-…): systemd reads drop-ins for those before any "
                      "unit is loaded; name other units one by one")
    else:
        return None, f"{text!r}: not a service unit name (letters, digits, and :_.@-\\ only, ending in .service)"
    cycle = [u for u in MIGD_RUNS_AFTER if pattern.matches(u)]
    if cycle:
        return None, (f"{text!r} covers {cycle[0]}, which migd.service starts after (or is): ordering it after "
                      "migd.service as well would be an ordering cycle")
    return pattern, ""


def patterns(names: Sequence[str]) -> List[ClientPattern]:
    """The patterns of a validated gpu_clients list (config.py refused the rest)."""
    out = []
    for name in names:
        p, _ = parse(name)
        if p is not None:
            out.append(p)
    return out


def dropin_text(source: str) -> str:
    return (f"# Written by migd-generator at boot and daemon-reload from [daemon] gpu_clients in {source}:\n"
            "# this GPU client starts after migd.service has put the GPUs into their MIG layout.\n"
            f"[Unit]\nAfter={SERVICE}\n")


def config_line(names: Sequence[str], add: Sequence[str]) -> str:
    """The gpu_clients line to write in [daemon], with `add` appended to what is there."""
    items = list(names) + [u for u in add if u not in names]
    return "gpu_clients = [" + ", ".join(f'"{u}"' for u in items) + "]"


def ordered_after_migd(after: Optional[str]) -> Optional[bool]:
    """From a unit's After= property (space-separated names): is it ordered after migd.service? None: unknown."""
    return None if after is None else SERVICE in after.split()


def check_units(names: Sequence[str], unit_property: Callable[[str, str], Optional[str]]) -> List[str]:
    """Warnings about named units (not globs: their instances need not exist yet) as systemd has them loaded: one
    that does not exist, and one ordered before migd.service (so After=migd.service would make a cycle)."""
    warnings = []
    migd_after = (unit_property(SERVICE, "After") or "").split()
    for p in patterns(names):
        if p.kind != ClientKind.UNIT:
            continue
        state = unit_property(p.text, "LoadState")
        if state is None:
            continue  # systemd cannot say (not booted with systemd): nothing to warn about on a guess
        if state != "loaded":
            warnings.append(f"gpu_clients: {p.text} is {state} here: no such unit is loaded (a typo, or not "
                            "installed on this host)")
        elif _ordered_before_migd(p.text, unit_property, migd_after):
            warnings.append(f"gpu_clients: {p.text} is ordered before migd.service: the drop-in's "
                            "After=migd.service makes an ordering cycle, which systemd breaks by dropping a job")
    return warnings


def _ordered_before_migd(unit: str, unit_property: Callable[[str, str], Optional[str]],
                         migd_after: Sequence[str]) -> bool:
    """Its Before= names migd.service (or sysinit.target/basic.target, which migd.service's default dependencies
    order it after), or migd.service's After= names it."""
    before = (unit_property(unit, "Before") or "").split()
    return unit in migd_after or bool({SERVICE, "sysinit.target", "basic.target"} & set(before))


def unordered(units: Sequence[str], names: Sequence[str],
              unit_property: Callable[[str, str], Optional[str]]) -> Tuple[List[str], List[str]]:
    """The services among `units` (a pending GPU's holders) that do not start after migd.service: (those that can
    be added to gpu_clients, those ordered before migd.service, which must lose that ordering first). By systemd's
    own After=/Before= where it answers, else by what migd orders (migd.service's Before= and gpu_clients). Scopes
    (a login session, a container's scope) are left out: no ordering applies to them."""
    pats = patterns(names)
    migd_after: Optional[List[str]] = None
    add: List[str] = []
    before: List[str] = []
    for unit in dict.fromkeys(units):
        if not unit.endswith(".service") or unit == SERVICE:
            continue
        after = ordered_after_migd(unit_property(unit, "After"))
        if after is None:
            if not (unit in MIGD_RUNS_BEFORE or any(p.matches(unit) for p in pats)):
                add.append(unit)
            continue
        if after:
            continue
        if migd_after is None:
            migd_after = (unit_property(SERVICE, "After") or "").split()
        (before if _ordered_before_migd(unit, unit_property, migd_after) else add).append(unit)
    return add, before


def pending_advice(add: Sequence[str], before: Sequence[str], names: Sequence[str], config_path: str) -> str:
    """What the pending message adds for holders that do not start after migd.service: the exact line to write,
    and which units are ordered before migd.service (that ordering goes first)."""
    out = ""
    if add:
        one = len(add) == 1
        out += (f"; {', '.join(add)} {'is' if one else 'are'} not ordered after migd.service: to start "
                f"{'it' if one else 'them'} after the layout at boot, set in [daemon] of {config_path}: "
                f"{config_line(names, add)}")
    if before:
        one = len(before) == 1
        out += (f"; {', '.join(before)} {'is' if one else 'are'} ordered before migd.service (its Before= or "
                f"migd.service's After=): remove that ordering so {'it' if one else 'they'} can start after the "
                "layout")
    return out
