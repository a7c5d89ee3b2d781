"""Plain data shared by config, planner, backends and reports.

Nothing here knows NVML: backends translate driver structures into these types, so pure code (config, plan,
reports) can be tested without a GPU.
"""

from __future__ import annotations

from ._record import dataclass, field
from enum import Enum
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Placement:
    """A span on the GPU's memory-slot grid (GPU instances) or a GI's compute slices (compute instances)."""

    start: int
    size: int

    @property
    def mask(self) -> int:
        return ((1 << self.size) - 1) << self.start

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


@dataclass(frozen=True)
class ComputeProfile:
    """A compute-instance profile available inside GPU instances of one GI profile."""

    index: int  # NVML_COMPUTE_INSTANCE_PROFILE_* index
    id: int  # profile ID the driver takes in create calls
    name: str  # without the "MIG " prefix, e.g. "1c.3g.40gb" or "3g.40gb"
    slices: int
    instance_count: int
    multiprocessors: int
    placements: Tuple[Placement, ...] = ()


@dataclass(frozen=True)
class GpuProfile:
    """A GPU-instance profile as the driver reports it (one row of `nvidia-smi mig -lgip`)."""

    index: int  # NVML_GPU_INSTANCE_PROFILE_* index: only profile-info calls take it
    id: int  # profile ID: every other call takes this
    name: str  # without the "MIG " prefix, e.g. "1g.10gb+me"
    slices: int  # compute slices
    instance_count: int
    memory_mb: int
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int
    placements: Tuple[Placement, ...]
    compute_profiles: Tuple[ComputeProfile, ...] = ()
    graphics: bool = False  # graphics-capable ("+gfx", Universal MIG): NVML_GPU_INSTANCE_PROFILE_CAPS_GFX

    @property
    def memory_slots(self) -> int:
        return self.placements[0].size if self.placements else 0

    @property
    def full_compute_profile(self) -> Optional[ComputeProfile]:
        """The compute instance spanning the whole GI (what `nvidia-smi mig -C` creates)."""
        for cp in self.compute_profiles:
            if cp.slices == self.slices:
                return cp
        return None


@dataclass(frozen=True)
class GpuInfo:
    """A physical GPU's identity and MIG capabilities: fixed while the driver is loaded."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    architecture: str  # "ampere", "hopper", "blackwell", ...
    mig_capable: bool
    profiles: Tuple[GpuProfile, ...] = ()
    total_slices: int = 0  # compute slices (7, or 4 on A30)
    total_memory_slots: int = 0  # memory slots (8, or 4 on A30)
    lost: bool = False  # fell off the bus before it could be read: identity unknown, never selected
    pci_device_id: int = 0  # NVML's pciDeviceId: device << 16 | vendor (0x233010DE), as mig-parted's filters
    pci_subsystem_id: int = 0  # NVML's pciSubSystemId: subsystem device << 16 | subsystem vendor
    # Why its identity or MIG capability could not be read ("" when it was): never selected, an error for this GPU
    # alone (a failed read is never "no MIG").
    unreadable: str = ""

    @property
    def unknown(self) -> bool:
        """Lost or unreadable: what the GPU is or can do is not known, so nothing may be decided for it."""
        return self.lost or bool(self.unreadable)

    def profile_by_id(self, profile_id: int) -> Optional[GpuProfile]:
        for p in self.profiles:
            if p.id == profile_id:
                return p
        return None

    @property
    def model(self) -> str:
        return self.name[len("NVIDIA "):] if self.name.startswith("NVIDIA ") else self.name


@dataclass(frozen=True)
class LiveComputeInstance:
    id: int
    profile_id: int
    placement: Placement
    uuid: str = ""
    pids: Tuple[int, ...] = ()
    # Why its process list could not be read (e.g. "NO_PERMISSION"); "" when `pids` is a fact. An unreadable list
    # is never "no processes": such an instance counts as busy, so nothing destroys it.
    pids_unreadable: str = ""


@dataclass(frozen=True)
class LiveGpuInstance:
    id: int
    profile_id: int
    placement: Placement
    compute: Tuple[LiveComputeInstance, ...] = ()
    pids: Tuple[int, ...] = ()  # processes anywhere in this GI

    @property
    def busy(self) -> bool:
        """Has processes, or we cannot tell."""
        return bool(self.pids) or any(ci.pids or ci.pids_unreadable for ci in self.compute)

    @property
    def pids_unreadable(self) -> str:
        """Why some compute instance's process list could not be read; "" when every list was read."""
        return next((ci.pids_unreadable for ci in self.compute if ci.pids_unreadable), "")

    @property
    def all_pids(self) -> Tuple[int, ...]:
        seen: Dict[int, None] = dict.fromkeys(self.pids)
        for ci in self.compute:
            seen.update(dict.fromkeys(ci.pids))
        return tuple(seen)


@dataclass(frozen=True)
class GpuState:
    """What is on a GPU right now."""

    mig_current: bool
    mig_pending: bool
    persistence: Optional[bool]
    instances: Tuple[LiveGpuInstance, ...] = ()
    pids: Tuple[int, ...] = ()  # processes on the whole GPU (MIG off)
    pids_unreadable: str = ""  # MIG off: why `pids` could not be read ("" when it is a fact)

    @property
    def mode_change_pending(self) -> bool:
        return self.mig_current != self.mig_pending


@dataclass(frozen=True)
class Gpu:
    info: GpuInfo
    state: GpuState


# --- desired layout (from config) -------------------------------------------------------------------------------

def name_variable(name: str) -> str:
    """An instance name as devices.env spells it after `MIGD_` (TRAIN for "train", A_B for "a-b")."""
    return "".join(c if c.isalnum() else "_" for c in name.upper())


@dataclass(frozen=True)
class Location:
    """Where the config parser read something: file, line (None: not located) and key path ("[[gpu]] #1 mig").
    A problem found later, against a GPU (layout, planner), is reported at it: str() is "file:line: key"."""

    path: str = ""
    line: Optional[int] = None
    key: str = ""

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line else "")
        return ": ".join(x for x in (where, self.key) if x)


@dataclass(frozen=True)
class InstanceSpec:
    """One desired GPU instance as written in the config; profile spellings resolve per GPU model later."""

    profile: str  # as written ("1g.10gb", "MIG 1g.10gb", "19", "3g", ...)
    name: Optional[str] = None
    compute: Optional[Tuple[str, ...]] = None  # None: one CI spanning the GI; (): no compute instance
    at: Location = Location()

    @property
    def where(self) -> str:
        """"file:line: key" for messages."""
        return str(self.at)


class SelectorKind(str, Enum):
    """How a [[gpu]] entry's `select` names its GPUs (the value is the word messages use)."""

    ALL = "all"
    INDEX = "index"  # values: GPU indices
    UUID = "uuid"  # values: ("GPU-…",), lower case
    PCI = "pci"  # values: ("00000000:07:00.0",), config's normal form
    DEVICE = "device"  # values: PCI device IDs, "0x233010DE[:0xSUBSYSID]"
    GLOB = "glob"  # values: (a model-name glob,)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GpuSelector:
    kind: SelectorKind
    values: Tuple[object, ...] = ()

    def __str__(self) -> str:
        if self.kind == SelectorKind.ALL:
            return "all"
        if self.kind in (SelectorKind.INDEX, SelectorKind.DEVICE):
            return ",".join(str(v) for v in self.values)
        return str(self.values[0])


def entry_label(number: int) -> str:
    """How every message names a [[gpu]] entry: 1-based, counted in its own file, as `validate` lists them."""
    return f"[[gpu]] #{number}"


@dataclass(frozen=True)
class GpuEntry:
    """One [[gpu]] table."""

    number: int  # 1-based position in the file
    selector: GpuSelector
    mig: bool
    instances: Tuple[InstanceSpec, ...] = ()
    hosts: Tuple[str, ...] = ()  # host-name patterns (lower case); empty: every host
    # instances = "unmanaged": migd owns the MIG mode (and persistence) only; another tool (Kubernetes' DRA driver
    # with dynamic MIG) creates and destroys the instances, which migd never touches nor counts as drift
    unmanaged: bool = False
    where: str = ""  # "file:line" of the [[gpu]] header, for messages
    # where the parser read the header and keys, for problems found against a GPU (None: an entry no file holds)
    at: Optional[Location] = None
    mig_at: Optional[Location] = None
    select_at: Optional[Location] = None
    instances_at: Optional[Location] = None

    @property
    def label(self) -> str:
        return entry_label(self.number)


class DriftPolicy(str, Enum):
    """[daemon] drift_policy: what the watchdog does about a drifted GPU."""

    LOG = "log"
    REAPPLY = "reapply"  # re-apply it, when none of its instances has processes

    def __str__(self) -> str:
        return self.value


class OnPending(str, Enum):
    """[daemon] on_pending: what boot does about a MIG mode change left pending."""

    FAIL = "fail"  # exit 4
    REBOOT_ONCE = "reboot-once"

    def __str__(self) -> str:
        return self.value


class CdiRefresh(str, Enum):
    """[daemon] cdi_refresh: re-run nvidia-cdi-refresh.service after a change, when it exists."""

    AUTO = "auto"
    OFF = "off"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DaemonSettings:
    watch_interval: float = 60.0
    drift_policy: DriftPolicy = DriftPolicy.LOG
    driver_wait_timeout: float = 120.0
    persistence_mode: bool = True
    stop_clients: Tuple[str, ...] = ()
    lock_timeout: float = 30.0
    on_pending: OnPending = OnPending.FAIL
    cdi_refresh: CdiRefresh = CdiRefresh.AUTO
    metrics_file: Optional[str] = None  # None: the node_exporter textfile dir's migd.prom when it exists; "": off
    gpu_clients: Tuple[str, ...] = ()  # services (or NAME@*/PREFIX-* globs) migd-generator orders after migd.service


@dataclass(frozen=True)
class Config:
    path: str
    entries: Tuple[GpuEntry, ...] = ()  # the main file's, then each drop-in's, in the order read
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    files: Tuple[str, ...] = ()  # the files read: the main one, then its drop-ins
    daemon_sources: Tuple[Tuple[str, str], ...] = ()  # ([daemon] key, "file:line") for each key a file sets
