"""A simulated GPU host: the hardware and driver rules NVML would enforce, as plain Python state.

State is a JSON-able dict so a state file can share one simulated host between processes (boot apply, the
watchdog, a test poking at it). Rules follow ../shared/reference/nvml-mig.md: explicit placements, overlap and
instance limits as INSUFFICIENT_RESOURCES, destroy of a busy GI/CI as IN_USE, pending MIG mode while a client holds
the GPU, Ampere keeping MIG mode across reboot and Hopper losing it, instances lost at every reboot.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib  # noqa: F401  (uuid5 imports it at its first call: each migd-watch reader process would, every round)
import json
import os
import re
import stat
import threading
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from .. import errors as E
from ..catalog import MODELS, SimModel, compute_profiles, parse_host_spec

if TYPE_CHECKING:
    from ..driverfiles import DriverFiles

Json = Dict[str, Any]  # a JSON object of the state file (a GPU, an instance, a process, a fault): checked on load

STATE_VERSION = 1
# What keys the lasting profile cache besides the driver and the GPU: the board's PCI subsystem ID (recorded for the
# H100 and H200: tests/data; for every other model ASSUMED equal to its device ID) and the VBIOS version (recorded
# for none: ASSUMED, a placeholder in nvidia-smi's format). A state file's GPU may set its own ("pci_subsystem_id",
# "vbios"), as a board or firmware update would.
SUBSYSTEM_IDS = {"h100-80gb": 0x16C110DE, "h200": 0x18BF10DE}
VBIOS = "96.00.00.00.01"
_MIG_NAMESPACE = uuidlib.UUID("5f3c1d2e-7b9a-4c8d-9e0f-6a1b2c3d4e5f")  # any fixed namespace: uuid5 like the driver


class SimError(Exception):
    """A driver-level failure, carrying the NVML return code the real driver gives."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        super().__init__(f"{E.code_name(code)}{': ' + detail if detail else ''}")


def pci_bus_id(i: int) -> str:
    """GPU i's PCI bus id: one GPU per bus, as on a DGX (behind its own switch port), all in domain 0 and within
    the 256 buses a domain has. The first 16 keep 07, 17, ... F7; each further 16 shift the low digit by 4 (0B, 1B,
    ..., then 0F, ..., then 13, ...), so all 64 (the most a simulated host has) are distinct and below 0x100."""
    if not 0 <= i < 64:
        raise ValueError(f"GPU {i}: a simulated host has GPUs 0 to 63")
    return f"00000000:{(0x07 + 4 * (i // 16) + 0x10 * (i % 16)) & 0xFF:02X}:00.0"


def new_state(spec: str, seed: str = "") -> Json:
    models = parse_host_spec(spec)
    gpus = []
    for i, model in enumerate(models):
        u = uuidlib.uuid5(_MIG_NAMESPACE, f"{seed}{spec}/{i}")
        gpus.append({
            "model": model.key,
            "uuid": f"GPU-{u}",
            "pci_bus_id": pci_bus_id(i),
            "mig": [0, 0],
            "persistence": 0,
            "gis": [],
            "processes": [],  # {"pid", "gi", "ci"}: CUDA processes (gi/ci None with MIG off)
            "clients": [],  # pids holding the device open (monitoring agents, ...): block mode changes
            "lost": False,
            "reset_supported": True,  # False: a pass-through VM where an Ampere mode change needs a reboot
            "display_mode": "compute",  # "graphics": an RTX PRO workstation card as shipped; MIG cannot be enabled
        })
    return {"version": STATE_VERSION, "spec": spec, "driver": "loaded", "boot": 1, "gpus": gpus, "faults": [],
            "device_dir": None}


class SimHost:
    """Simulated GPUs plus driver rules. Mutating methods raise SimError with NVML's code."""

    def __init__(self, state: Json, path: Optional[str] = None):
        self.state = state
        self.path = path
        # One lock around the state: the fake library holds it for every call's reads and changes (each GPU's
        # calls come from its own thread), and reload/save take it too. Re-entrant: a change saves under it.
        self.lock = threading.RLock()

    # --- persistence ----------------------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: str, path: Optional[str] = None) -> SimHost:
        """Load the host from `path` if it exists, else build it from `spec` (and save it there).
        Raises ValueError (a bad spec, or a state file that cannot be read, written or trusted)."""
        try:
            if path and os.path.exists(path):
                host = cls(load_state(path), path)
                host._power_cycle_if_rebooted()
                return host
            host = cls(new_state(spec), path)
            if path:
                host.state["device_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), "dev")
                host.state["boot_marker"] = os.environ.get("MIGD_SIM_BOOT_MARKER") or None
                host._make_device_nodes()
                host._power_cycle_if_rebooted()
                host.save()
            return host
        except OSError as e:
            raise ValueError(f"{e.filename or path}: cannot use as the simulated-host state: {e.strerror}") from None

    def _make_device_nodes(self) -> None:
        """Plain files standing in for /dev/nvidiaN: clients open them, migd's /proc scan finds the holders."""
        for i in range(len(self.gpus)):
            node = self.device_node(i)
            if node and not os.path.exists(node):
                os.makedirs(os.path.dirname(node), exist_ok=True)
                open(node, "a").close()

    def _power_cycle_if_rebooted(self) -> None:
        """With a boot marker on a tmpfs (e.g. /run/migd-sim/booted), a missing marker means the machine rebooted
        since the state was saved: the simulated GPUs reboot too (instances lost, Hopper MIG mode lost)."""
        marker = self.state.get("boot_marker")
        if not marker or os.path.exists(marker):
            return
        if self.state.get("booted_once"):
            self.reboot()
        self.state["booted_once"] = True
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "a").close()
        self.save()

    def save(self) -> None:
        if not self.path:
            return
        with self.lock, _locked(self.path):
            _atomic_write_json(self.path, self.state)

    def reload(self) -> None:
        with self.lock:
            if self.path and os.path.exists(self.path):
                self.state = load_state(self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state file's lock across a read-modify-write (reload, change, save)."""
        if not self.path:
            yield
            return
        with _locked(self.path):
            yield

    # --- identity ------------------------------------------------------------------------------------------

    @property
    def gpus(self) -> List[Json]:
        gpus: List[Json] = self.state["gpus"]
        return gpus

    def model(self, gpu: int) -> SimModel:
        return MODELS[self.gpus[gpu]["model"]]

    def device_node(self, gpu: int) -> Optional[str]:
        d = self.state.get("device_dir")
        return os.path.join(d, f"nvidia{gpu}") if d else None

    def mig_minors_path(self) -> str:
        """The simulated host's /proc/driver/nvidia-caps/mig-minors (written on first use, under the state file's
        directory, or a per-user temp dir for a host kept in memory): the driver's table, laid out as the driver
        writes it (mig_minors_text)."""
        import tempfile

        base = os.path.dirname(os.path.abspath(self.path)) if self.path else \
            os.path.join(tempfile.gettempdir(), f"migd-sim-{os.geteuid()}")
        path = os.path.join(base, "proc", "driver", "nvidia-caps", "mig-minors")
        text = mig_minors_text(len(self.gpus))
        try:
            with open(path, encoding="ascii") as f:
                if f.read() == text:
                    return path
        except OSError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def check_driver(self) -> None:
        driver = self.state.get("driver", "loaded")
        if driver == "no-library":
            raise SimError(E.LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 not found")
        ready_at = self.state.get("driver_ready_at")
        if driver in ("not-loaded", "no-module") or (ready_at is not None and time.time() < ready_at):
            raise SimError(E.DRIVER_NOT_LOADED, "NVIDIA kernel module not loaded")

    def driver_files(self) -> DriverFiles:
        """What of a driver this simulated host has installed: nothing with "no-library" (a host without a
        driver); the library but no module for the running kernel with "no-module" (a DKMS build, queued or failed,
        read from the state's dkms_dir: a real DKMS tree, e.g. the boot test's rootfs); library and module otherwise
        (loaded unless "not-loaded")."""
        from ..driverfiles import DriverFiles

        from ..driverfiles import find_dkms_build

        driver = self.state.get("driver", "loaded")
        if driver == "no-library":
            return DriverFiles()
        if driver == "no-module":  # no module for the running kernel; a DKMS build as the host's dkms_dir says
            dkms = self.state.get("dkms_dir")
            return DriverFiles("libnvidia-ml.so.1 (simulated)", None, False, find_dkms_build(dkms) if dkms else None)
        return DriverFiles("libnvidia-ml.so.1 (simulated)", "nvidia.ko (simulated)", module_loaded=driver == "loaded")

    def pci_subsystem_id(self, gpu: int) -> int:
        g = self.gpus[gpu]
        return int(g.get("pci_subsystem_id", SUBSYSTEM_IDS.get(g["model"], self.model(gpu).pci_device_id)))

    def vbios(self, gpu: int) -> str:
        return str(self.gpus[gpu].get("vbios", VBIOS))

    def check_gpu(self, gpu: int) -> Json:
        g = self.gpus[gpu]
        if g.get("lost"):
            raise SimError(E.GPU_IS_LOST, f"GPU {gpu} has fallen off the bus")
        return g

    # --- clients and processes -----------------------------------------------------------------------------

    def holders(self, gpu: int) -> List[int]:
        """PIDs holding the GPU: registered clients, processes, and anything with its device node open."""
        g = self.gpus[gpu]
        pids = [c for c in g["clients"] if _alive(c)] + [p["pid"] for p in g["processes"]]
        node = self.device_node(gpu)
        if node:
            from ..holders import pids_holding  # same /proc scan migd uses to name holders

            pids += [p for p in pids_holding([node]) if p != os.getpid()]
        return sorted(set(pids))

    # --- MIG mode ------------------------------------------------------------------------------------------

    def set_mig_mode(self, gpu: int, mode: int) -> int:
        """Returns the activation status like nvmlDeviceSetMigMode: 0 activated, else the change is pending."""
        g = self.check_gpu(gpu)
        if mode not in (0, 1):
            raise SimError(E.INVALID_ARGUMENT)
        if mode == 1 and g.get("display_mode", "compute") == "graphics":
            # RTX PRO Workstation / Max-Q editions must be put in compute display mode first (guide, Getting
            # Started). The driver's return code for this refusal is not documented: NOT_SUPPORTED (assumed).
            raise SimError(E.NOT_SUPPORTED, "GPU is in graphics display mode")
        g["mig"][1] = mode
        if g["mig"][0] == mode:
            return E.SUCCESS
        if g["gis"] or self.holders(gpu):
            return E.IN_USE
        if not self.model(gpu).resetless_mig and not g.get("reset_supported", True):
            return E.RESET_REQUIRED
        g["mig"][0] = mode  # Ampere: the driver resets the idle GPU itself; Hopper needs no reset
        return E.SUCCESS

    def reboot(self) -> None:
        self.state["boot"] = self.state.get("boot", 1) + 1
        for i, g in enumerate(self.gpus):
            g["gis"], g["processes"], g["clients"] = [], [], []
            g["persistence"] = 0
            if self.model(i).resetless_mig:
                g["mig"] = [0, 0]  # Hopper+: MIG mode lives only as long as the driver
            else:
                g["mig"] = [g["mig"][1]] * 2  # Ampere: InfoROM bit; a pending change commits at boot

    # --- GPU instances ------------------------------------------------------------------------------------

    def gi_profile(self, gpu: int, profile_id: int) -> Tuple[int, Json]:
        for idx, info in self.model(gpu).gi_profiles.items():
            if info["id"] == profile_id:
                return idx, info
        raise SimError(E.INVALID_ARGUMENT, f"unknown GPU instance profile ID {profile_id}")

    def free_placements(self, gpu: int, profile_id: int) -> List[Tuple[int, int]]:
        _, info = self.gi_profile(gpu, profile_id)
        g = self.gpus[gpu]
        return [p for p in info["placements"] if self._placement_error(g, gpu, info, p) is None]

    def _placement_error(self, g: Json, gpu: int, info: Json, placement: Tuple[int, int]) -> Optional[str]:
        start, size = placement
        if (start, size) not in [tuple(p) for p in info["placements"]]:
            return f"{start}:{size} is not a placement of {info['name']}"
        mask = _mask(start, size)
        for gi in g["gis"]:
            if _mask(gi["start"], gi["size"]) & mask:
                return f"{start}:{size} overlaps GPU instance {gi['id']} at {gi['start']}:{gi['size']}"
        same = [gi for gi in g["gis"] if gi["profile_id"] == info["id"]]
        if len(same) >= info["instanceCount"]:
            return f"{info['name']} allows {info['instanceCount']} instance(s)"
        model = self.model(gpu)
        used = sum(self.gi_profile(gpu, gi["profile_id"])[1]["sliceCount"] for gi in g["gis"])
        if used + info["sliceCount"] > model.compute_slices:
            return f"needs {used + info['sliceCount']} compute slices, {model.compute_slices} exist"
        ofa = sum(self.gi_profile(gpu, gi["profile_id"])[1]["ofaCount"] for gi in g["gis"])
        if info["ofaCount"] and ofa + info["ofaCount"] > 1:
            return "the GPU's single optical-flow accelerator is taken"
        # Media engines are a GPU-wide pool too: this is what makes a "+me.all" instance (all of them) leave room
        # only for "-me" ones (none), as nvml.h says of NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME. The refusal code
        # for this case is not documented: INSUFFICIENT_RESOURCES, like every other lack of room (assumed).
        for kind, total in zip(("decoderCount", "encoderCount", "jpegCount"), model.media_engines):
            used_engines = sum(self.gi_profile(gpu, gi["profile_id"])[1][kind] for gi in g["gis"])
            if info[kind] and used_engines + info[kind] > total:
                return f"{info['name']} needs {info[kind]} of the GPU's {total} {kind[:-5]}s, {used_engines} taken"
        return None

    def create_gi(self, gpu: int, profile_id: int, placement: Optional[Tuple[int, int]] = None) -> int:
        g = self.check_gpu(gpu)
        _, info = self.gi_profile(gpu, profile_id)
        if not g["mig"][0]:
            raise SimError(E.NOT_SUPPORTED, "MIG mode is disabled")
        if placement is None:
            # The driver picks. Rule (assumed): the free placement that blocks the fewest still-free placements
            # of all profiles, lowest start on ties. It reproduces every transcript in the guide (reference
            # §2.4): `-cgi 19,19,14,9` fails; `9,19,14,19` gives 4:4, 0:1, 2:2, 1:1; `19,14,5` gives 6:1, 4:2,
            # 0:4; on A30 1g, 1g, 2g give 0:1, 1:1, 2:2. ("Highest slot first" gets the last two wrong.)
            free = self.free_placements(gpu, profile_id)
            if not free:
                raise SimError(E.INSUFFICIENT_RESOURCES, f"no free placement for {info['name']}")
            placement = min(free, key=lambda p: (self._blocked_by(g, gpu, p), p[0]))
        problem = self._placement_error(g, gpu, info, placement)
        if problem:
            raise SimError(E.INSUFFICIENT_RESOURCES, problem)
        start, size = placement
        gi_id = self._gi_id(gpu, start, size)
        g["gis"].append({"id": gi_id, "profile_id": profile_id, "start": start, "size": size, "cis": []})
        g["gis"].sort(key=lambda x: x["start"])
        return gi_id

    def _blocked_by(self, g: Json, gpu: int, placement: Tuple[int, int]) -> int:
        """How many placements (of every profile) that are free now a GI at `placement` would take away."""
        taken = 0
        for gi in g["gis"]:
            taken |= _mask(gi["start"], gi["size"])
        mask = _mask(*placement)
        return sum(1 for info in self.model(gpu).gi_profiles.values() for p in info["placements"]
                   if not _mask(*p) & taken and _mask(*p) & mask)

    def _gi_id(self, gpu: int, start: int, size: int) -> int:
        # Binary-tree numbering (0 whole, 1-2 halves, 3-6 quarters, 7-14 eighths), as observed on 8-slot GPUs.
        slots = self.model(gpu).memory_slots
        level = (slots // size).bit_length() - 1
        return (1 << level) - 1 + start // size

    def find_gi(self, gpu: int, gi_id: int) -> Json:
        for gi in self.check_gpu(gpu)["gis"]:
            if gi["id"] == gi_id:
                found: Json = gi
                return found
        raise SimError(E.NOT_FOUND, f"no GPU instance {gi_id}")

    def destroy_gi(self, gpu: int, gi_id: int) -> None:
        g = self.check_gpu(gpu)
        if not g["mig"][0]:
            raise SimError(E.NOT_SUPPORTED, "MIG mode is disabled")
        gi = self.find_gi(gpu, gi_id)
        if gi["cis"] or any(p["gi"] == gi_id for p in g["processes"]):
            raise SimError(E.IN_USE, f"GPU instance {gi_id} has compute instances or processes")
        g["gis"].remove(gi)

    # --- compute instances --------------------------------------------------------------------------------

    def ci_profiles(self, gpu: int, gi: Json) -> Dict[int, Json]:
        _, info = self.gi_profile(gpu, gi["profile_id"])
        return compute_profiles(self.model(gpu), info)

    def ci_profile(self, gpu: int, gi: Json, ci_profile_id: int) -> Json:
        for info in self.ci_profiles(gpu, gi).values():
            if info["id"] == ci_profile_id:
                return info
        raise SimError(E.INVALID_ARGUMENT, f"unknown compute instance profile ID {ci_profile_id}")

    def create_ci(self, gpu: int, gi_id: int, ci_profile_id: int,
                  placement: Optional[Tuple[int, int]] = None) -> int:
        gi = self.find_gi(gpu, gi_id)
        info = self.ci_profile(gpu, gi, ci_profile_id)
        taken = 0
        for ci in gi["cis"]:
            taken |= _mask(ci["start"], ci["size"])
        if placement is None:
            free = [p for p in info["placements"] if not _mask(*p) & taken]
            if not free:
                raise SimError(E.INSUFFICIENT_RESOURCES, f"no room for {info['name']}")
            placement = tuple(free[0])
        if tuple(placement) not in [tuple(p) for p in info["placements"]] or _mask(*placement) & taken:
            raise SimError(E.INSUFFICIENT_RESOURCES, f"{placement[0]}:{placement[1]} is not free for {info['name']}")
        if sum(1 for ci in gi["cis"] if ci["profile_id"] == ci_profile_id) >= info["instanceCount"]:
            raise SimError(E.INSUFFICIENT_RESOURCES, f"{info['name']} allows {info['instanceCount']} instance(s)")
        ids = {ci["id"] for ci in gi["cis"]}
        ci_id = next(i for i in range(64) if i not in ids)
        gi["cis"].append({"id": ci_id, "profile_id": ci_profile_id, "start": placement[0], "size": placement[1]})
        gi["cis"].sort(key=lambda x: x["start"])
        return ci_id

    def find_ci(self, gpu: int, gi_id: int, ci_id: int) -> Json:
        for ci in self.find_gi(gpu, gi_id)["cis"]:
            if ci["id"] == ci_id:
                found: Json = ci
                return found
        raise SimError(E.NOT_FOUND, f"no compute instance {ci_id} in GPU instance {gi_id}")

    def destroy_ci(self, gpu: int, gi_id: int, ci_id: int) -> None:
        g = self.check_gpu(gpu)
        ci = self.find_ci(gpu, gi_id, ci_id)
        if any(p["gi"] == gi_id and p["ci"] == ci_id for p in g["processes"]):
            raise SimError(E.IN_USE, f"compute instance {gi_id}/{ci_id} has processes")
        self.find_gi(gpu, gi_id)["cis"].remove(ci)

    # --- MIG devices -------------------------------------------------------------------------------------

    def mig_devices(self, gpu: int) -> List[Tuple[Json, Json]]:
        """(GI, CI) pairs in MIG device index order: by placement."""
        g = self.check_gpu(gpu)
        if not g["mig"][0]:
            return []
        return [(gi, ci) for gi in g["gis"] for ci in gi["cis"]]

    def mig_uuid(self, gpu: int, gi_id: int, ci_id: int) -> str:
        # Derived from (parent GPU, GI, CI) like the driver's appear to be (reference §4.4): RFC 4122 v5.
        return "MIG-" + str(uuidlib.uuid5(_MIG_NAMESPACE, f"{self.gpus[gpu]['uuid']}/{gi_id}/{ci_id}"))

    def add_process(self, gpu: int, pid: int, gi: Optional[int] = None, ci: Optional[int] = None) -> None:
        g = self.check_gpu(gpu)
        if g["mig"][0]:
            self.find_ci(gpu, gi if gi is not None else -1, ci if ci is not None else 0)
        g["processes"].append({"pid": pid, "gi": gi, "ci": ci})


# The nvidia-caps driver numbers a capability minor for every possible GPU instance (15 per GPU) and compute
# instance (8 per GPU instance), whether it exists or not, after "config" and "monitor": the layout of the real file
# in tests/data/mig-minors (NVIDIA MIG user guide, "Device Nodes and Capabilities"), which lists GPUs 0-7.
_CAPS_GIS, _CAPS_CIS, _CAPS_MIN_GPUS = 15, 8, 8


def mig_minors_text(gpus: int) -> str:
    lines = ["config 1", "monitor 2"]
    minor = 3
    for g in range(max(gpus, _CAPS_MIN_GPUS)):
        for gi in range(_CAPS_GIS):
            lines.append(f"gpu{g}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(_CAPS_CIS):
                lines.append(f"gpu{g}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    return "\n".join(lines) + "\n"


def _mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


MAX_STATE_BYTES = 16 << 20  # a state file is a few KB; anything this big is not one


def load_state(path: str) -> Json:
    """Read and validate a state file. Raises ValueError naming the file and the bad field, never anything else.

    No lock: writers replace the file by rename, so a read sees a whole old or a whole new file; and a path that
    turns out not to be a state file gets no lock file created next to it."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError(f"{path}: not a simulated-host state file (not a regular file)")
            data = f.read(MAX_STATE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the simulated-host state file: {e.strerror}") from None
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{path}: not a simulated-host state file (larger than {MAX_STATE_BYTES >> 20} MiB)")
    try:
        state = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path}: not a simulated-host state file: {str(e)[:200]}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("gpus"), list):
        raise ValueError(f"{path}: not a simulated-host state file (version {STATE_VERSION})")
    for g in state["gpus"]:
        if not isinstance(g, dict) or not isinstance(g.get("model"), str) or g["model"] not in MODELS:
            model = g.get("model") if isinstance(g, dict) else g
            raise ValueError(f"{path}: unknown simulated GPU model {_short(model)}")
    problem = _state_problem(state)
    if problem:
        raise ValueError(f"{path}: not a valid simulated-host state file: {problem}")
    return state


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: object, lo: int = 0, hi: int = (1 << 31) - 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number_or_none(v: object) -> bool:
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool)


def _state_problem(state: Json) -> Optional[str]:
    """What is wrong with a parsed state file (types and ranges the simulator relies on), or None."""
    opt_str = (str, type(None))
    checks = [
        ("spec", isinstance(state.get("spec"), str)),
        ("driver", state.get("driver", "loaded") in ("loaded", "not-loaded", "no-module", "no-library")),
        ("dkms_dir", isinstance(state.get("dkms_dir"), opt_str)),
        ("boot", _is_int(state.get("boot", 1))),
        ("device_dir", isinstance(state.get("device_dir"), opt_str)),
        ("boot_marker", isinstance(state.get("boot_marker"), opt_str)),
        ("booted_once", isinstance(state.get("booted_once", False), bool)),
        ("driver_ready_at", _is_number_or_none(state.get("driver_ready_at"))),
        ("trace", isinstance(state.get("trace", []), list)),
        ("faults", isinstance(state.get("faults", []), list)),
        ("system", state.get("system", "running") in ("starting", "running")),
        ("systemctl", isinstance(state.get("systemctl", []), list)
         and all(isinstance(c, str) for c in state.get("systemctl", []))),
        ("stopped_units", isinstance(state.get("stopped_units", []), list)
         and all(isinstance(u, str) for u in state.get("stopped_units", []))),
        ("gpus", 1 <= len(state["gpus"]) <= 64),
    ]
    for key, ok in checks:
        if not ok:
            return f"{key}: bad value {_short(state.get(key))}"
    for n, f in enumerate(state.get("faults", [])):
        if not (isinstance(f, dict) and isinstance(f.get("call"), str) and (f.get("at") is None or _is_int(f["at"]))
                and (f.get("gpu") is None or _is_int(f["gpu"])) and
                (f.get("hang") is True or _is_int(f.get("code"), 1, 999) or isinstance(f.get("slow"), (int, float))
                 and not isinstance(f.get("slow"), bool) and 0 <= f["slow"] <= 60)):
            return f"faults[{n}]: bad fault {_short(f)}"
    for i, g in enumerate(state["gpus"]):
        problem = _gpu_problem(g)
        if problem:
            return f"gpus[{i}].{problem}"
    for key in ("uuid", "pci_bus_id"):  # two GPUs never share one: NVML looks GPUs up by either
        seen = [g[key].upper() for g in state["gpus"]]
        dup = next((i for i, v in enumerate(seen) if v in seen[:i]), None)
        if dup is not None:
            return f"gpus[{dup}].{key}: {_short(state['gpus'][dup][key])} is also GPU {seen.index(seen[dup])}'s"
    return None


_CI_PROFILES: Dict[Tuple[str, int], Dict[int, Json]] = {}


def _ci_profiles_by_id(model: SimModel, gi_info: Json) -> Dict[int, Json]:
    key = (model.key, gi_info["id"])
    if key not in _CI_PROFILES:
        _CI_PROFILES[key] = {c["id"]: c for c in compute_profiles(model, gi_info).values()}
    return _CI_PROFILES[key]


def _gpu_problem(g: Json) -> Optional[str]:
    model = MODELS[g["model"]]
    fields = [
        ("uuid", isinstance(g.get("uuid"), str) and 0 < len(g["uuid"]) < 80),
        ("pci_bus_id", isinstance(g.get("pci_bus_id"), str)
         and re.match(r"^[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$", g["pci_bus_id"]) is not None),
        ("mig", isinstance(g.get("mig"), list) and len(g["mig"]) == 2 and all(v in (0, 1) and not isinstance(v, bool)
                                                                              for v in g["mig"])),
        ("persistence", g.get("persistence") in (0, 1) and not isinstance(g.get("persistence"), bool)),
        ("gis", isinstance(g.get("gis"), list)),
        ("processes", isinstance(g.get("processes"), list)),
        ("clients", isinstance(g.get("clients"), list) and all(_is_int(c, 1) for c in g["clients"])),
        ("lost", isinstance(g.get("lost", False), bool)),
        ("reset_supported", isinstance(g.get("reset_supported", True), bool)),
        ("display_mode", g.get("display_mode", "compute") in ("compute", "graphics")),
        ("pci_subsystem_id", _is_int(g.get("pci_subsystem_id", 0), 0, (1 << 32) - 1)),
        ("vbios", isinstance(g.get("vbios", ""), str) and len(g.get("vbios", "")) < 64),
    ]
    for key, ok in fields:
        if not ok:
            return f"{key}: bad value {_short(g.get(key))}"
    profiles = {info["id"]: info for info in model.gi_profiles.values()}
    for n, gi in enumerate(g["gis"]):
        if not (isinstance(gi, dict) and _is_int(gi.get("id"), 0, 64) and _is_int(gi.get("profile_id"))
                and gi["profile_id"] in profiles and isinstance(gi.get("cis"), list)
                and (gi.get("start"), gi.get("size")) in [tuple(p) for p in profiles[gi["profile_id"]]["placements"]]):
            return f"gis[{n}]: bad GPU instance {_short(gi)}"
        cps = _ci_profiles_by_id(model, profiles[gi["profile_id"]])
        for k, ci in enumerate(gi["cis"]):
            if not (isinstance(ci, dict) and _is_int(ci.get("id"), 0, 64) and _is_int(ci.get("profile_id"))
                    and ci["profile_id"] in cps
                    and (ci.get("start"), ci.get("size")) in [tuple(p) for p in cps[ci["profile_id"]]["placements"]]):
                return f"gis[{n}].cis[{k}]: bad compute instance {_short(ci)}"
    for n, p in enumerate(g["processes"]):
        if not (isinstance(p, dict) and _is_int(p.get("pid"), 1) and "gi" in p and "ci" in p
                and (p["gi"] is None or _is_int(p["gi"], 0, 64))
                and (p.get("ci") is None or _is_int(p["ci"], 0, 64))):
            return f"processes[{n}]: bad process {_short(p)}"
    return None


_held = threading.local()  # state files this thread holds the lock of: nested _locked() calls must not deadlock


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Serialize readers and writers of one state file across processes. Re-entrant within a thread."""
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = {}
    key = os.path.abspath(path)
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held[key] = 1
        yield
    finally:
        held.pop(key, None)
        os.close(fd)


def _atomic_write_json(path: str, data: Json) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
