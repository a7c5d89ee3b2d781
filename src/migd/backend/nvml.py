"""The nvml backend: pynvml calls translated to migd's types. Every NVML pitfall is handled here, once.

- Profile *index* (only the profile-info calls) vs profile *ID* (everything else): indices are enumerated until
  INVALID_ARGUMENT, skipping NOT_SUPPORTED, and the ID is read from the info struct; nothing is hard-coded.
- Placements go by `ctypes.byref`; placement arrays are sized from a NULL count query first.
- Handles are never compared: instances are identified by (GI id, CI id) from GetInfo.
- nvmlDeviceSetMigMode *returns* an activation status; the mode is re-read after it, with fresh handles.
- The read-only guard is an allowlist of NVML functions that only read: anything else is refused before it
  reaches the driver, so a read-only run cannot change a GPU whatever code path it takes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ..errors import DriverError, ReadOnlyViolation, code_name, printable
from ..model import ComputeProfile, GpuInfo, GpuProfile, GpuState, LiveComputeInstance, LiveGpuInstance, Placement
from ..profiles import derive_compute_profiles, strip_mig
from .profile_cache import ProfileCache

_READ_ONLY_CALLS = re.compile(
    r"^nvml(Init\w*|Shutdown|SystemGet\w+|DeviceGet\w+|DeviceIsMigDeviceHandle|GpuInstanceGet\w+"
    r"|ComputeInstanceGet\w+|ErrorString)$")

_ARCH_NAMES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada",
               9: "hopper", 10: "blackwell"}
_PROFILE_INDEX_LIMIT = 64  # the driver answers INVALID_ARGUMENT well before this (0x11 on R580)
_CI_INDEX_SKIP = 7  # NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1 aliases 1-slice CIs: listing it doubles them
# NVML_COMPUTE_INSTANCE_PROFILE_<N>_SLICE[_REV1] index -> N (nvml.h). Indices not listed here (newer drivers') are
# always asked.
_CI_INDEX_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 2}
_ID_ANY = 0xFFFFFFFF
_PLACEMENT_MAX = 64  # placement array size (see _placements)
_CAPS_GFX = 0x2  # NVML_GPU_INSTANCE_PROFILE_CAPS_GFX (nvml.h); nvidia-ml-py 13.615 has no constant for it


class _GpuInstanceProfileInfoV3(ctypes.Structure):
    """nvmlGpuInstanceProfileInfo_v3_t (nvml.h, R545+): v2 without isP2pSupported, plus `capabilities`."""

    _fields_ = [("version", ctypes.c_uint), ("id", ctypes.c_uint), ("sliceCount", ctypes.c_uint),
                ("instanceCount", ctypes.c_uint), ("multiprocessorCount", ctypes.c_uint),
                ("copyEngineCount", ctypes.c_uint), ("decoderCount", ctypes.c_uint), ("encoderCount", ctypes.c_uint),
                ("jpegCount", ctypes.c_uint), ("ofaCount", ctypes.c_uint), ("memorySizeMB", ctypes.c_ulonglong),
                ("name", ctypes.c_char * 96), ("capabilities", ctypes.c_uint)]

    def __init__(self) -> None:
        super().__init__()
        self.version = ctypes.sizeof(self) | 3 << 24  # NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 3) = 0x03000098


class NvmlBackend:
    def __init__(self, read_only: bool = False, description: str = "nvml", device_dir: Optional[str] = "/dev",
                 simulated: bool = False, profile_cache: Optional[ProfileCache] = None,
                 lasting_cache: Optional[ProfileCache] = None):
        import pynvml  # imported here so pure commands (validate) never load it

        self._n = pynvml
        self.read_only = read_only
        self.description = description
        self.simulated = simulated
        self._device_dir = device_dir  # where the nvidia<minor> nodes are; None: none (a simulated host in memory)
        self._handles: Dict[int, object] = {}
        self._ci_cache: Dict[Tuple[int, int], List[Any]] = {}  # (gpu, GI profile id) -> CI profile infos
        self._states: Dict[int, GpuState] = {}
        self._infos: Optional[List[Optional[GpuInfo]]] = None  # per GPU; None: (re)read on next use
        self._info_errors: Dict[int, DriverError] = {}  # why a GPU's info is lost/unreadable (raised by state())
        self._gi_handles: Dict[Tuple[int, int], Any] = {}  # (gpu, GI id) -> handle, from this backend's creates
        self._profile_v3 = True  # the driver answers the v3 profile-info struct (R545+); see _profile_info
        self._cache = profile_cache  # per-boot profile tables (profile_cache.py); None: always read live
        self._lasting = lasting_cache  # the tables kept across boots (state dir), keyed by the board too
        self._driver: Optional[str] = None
        self._open = False

    # --- plumbing -------------------------------------------------------------------------------------------

    def _call(self, name: str, *args: Any, gpu: Optional[int] = None) -> Any:
        if not _READ_ONLY_CALLS.fullmatch(name):
            if self.read_only:
                raise ReadOnlyViolation(name)
            if gpu is not None:
                self._states.pop(gpu, None)  # whatever happens, this GPU's cached state is stale now
        try:
            return getattr(self._n, name)(*args)
        except self._n.NVMLError as e:
            error = DriverError(e.value, name, gpu)
            if e.value == 15 and gpu is not None:  # GPU_IS_LOST: whatever call said so, every later read agrees
                self._mark_lost(gpu, error)
            raise error from None

    def _mark_lost(self, gpu: int, error: DriverError) -> None:
        """A GPU lost meanwhile: its cached state (the layout it had) is dropped and its info says lost, so the
        record of this run (state.json, devices.env) never shows MIG devices that are gone."""
        self._states.pop(gpu, None)
        self._info_errors[gpu] = error
        if self._infos is not None and gpu < len(self._infos):
            known = self._infos[gpu]
            if known is not None and not known.lost:
                from .._record import replace

                self._infos[gpu] = replace(known, lost=True)

    def _try(self, name: str, *args: Any, gpu: Optional[int] = None, ok_codes: Tuple[int, ...] = ()) -> Any:
        """A call whose listed failure codes mean "not there" (returns None) rather than an error."""
        try:
            return self._call(name, *args, gpu=gpu)
        except DriverError as e:
            if e.code in ok_codes:
                return None
            raise

    def open(self) -> None:
        if not self._open:
            self._call("nvmlInit")
            self._open = True

    def close(self) -> None:
        if self._open:
            self._flush()  # tables read one GPU at a time (after a mode change)
            self._open = False
            self._handles.clear()
            self._gi_handles.clear()
            self._ci_cache.clear()
            self._states.clear()
            self._infos = None
            self._info_errors.clear()
            self._driver = None
            with contextlib.suppress(DriverError):
                self._call("nvmlShutdown")

    def __enter__(self) -> NvmlBackend:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def driver_version(self) -> str:
        if self._driver is None:
            self._driver = str(self._call("nvmlSystemGetDriverVersion"))
        return self._driver

    def _handle(self, gpu: int) -> Any:
        h = self._handles.get(gpu)
        if h is None:
            h = self._handles[gpu] = self._call("nvmlDeviceGetHandleByIndex", gpu, gpu=gpu)
        return h

    # --- identity and capabilities ---------------------------------------------------------------------------

    def gpus(self) -> List[GpuInfo]:
        """Every GPU's identity and profile table, each GPU read on its own thread (pergpu)."""
        from .. import pergpu

        count = len(self._info_slots())
        if (self._cache or self._lasting) is not None and any(info is None for info in self._infos or ()):
            self.driver_version()  # the caches' key, read once here rather than by every GPU's thread
        infos = list(pergpu.each(self._info, range(count)).values())
        self._flush()
        return infos

    def _flush(self) -> None:
        for cache in (self._cache, self._lasting):
            if cache is not None:
                cache.flush()

    def _info_slots(self) -> List[Optional[GpuInfo]]:
        if self._infos is None:
            self._infos = [None] * self._call("nvmlDeviceGetCount")
        return self._infos

    def _info(self, gpu: int) -> GpuInfo:
        """One GPU's info, read once: a GPU that is lost or being reset must not break calls about the others."""
        slots = self._info_slots()
        info = slots[gpu]
        if info is None:
            info = slots[gpu] = self._read_info(gpu)
        return info

    def _read_info(self, i: int) -> GpuInfo:
        """One dead or unreadable GPU must not stop the others from being configured: a failed read makes a lost
        or an unreadable GpuInfo (never selected; the engine reports it), never an exception about the host."""
        try:
            return self._read_identity(i)
        except DriverError as e:
            self._info_errors[i] = e
            if e.code == self._n.NVML_ERROR_GPU_IS_LOST:
                return GpuInfo(index=i, uuid="", name=f"GPU {i} (lost: {e})", pci_bus_id="", architecture="unknown",
                               mig_capable=False, lost=True)
            why = e.reason
        except Exception as e:  # noqa: BLE001 - an answer migd cannot take (e.g. a name that is not UTF-8)
            self._info_errors[i] = DriverError(999, "identity", i, printable(f"{type(e).__name__}: {e}"))
            why = self._info_errors[i].reason
        return GpuInfo(index=i, uuid="", name=f"GPU {i} (unreadable)", pci_bus_id="", architecture="unknown",
                       mig_capable=False, unreadable=why)

    def _mig_mode_at_identity(self, i: int, h: Any) -> Any:
        """[current, pending], or None: this GPU has no MIG. NOT_SUPPORTED is the documented "no MIG" answer, but
        it is taken as such only when the GPU lists no MIG profile either (profile index 0, live): a GPU that has
        MIG profiles and answers NOT_SUPPORTED for its mode is a failed read (raised), never "not MIG-capable"
        (with `mig = false` that would be "already matches" while MIG is on). Drivers before R550 list no profiles
        with MIG off: there, both answers agree that MIG is off, which is the truth for `mig = false`."""
        try:
            return self._call("nvmlDeviceGetMigMode", h, gpu=i)
        except DriverError as e:
            if e.code != self._n.NVML_ERROR_NOT_SUPPORTED:
                raise
            try:
                self._call("nvmlDeviceGetGpuInstanceProfileInfo", h, 0, gpu=i)
            except DriverError as e2:
                if e2.code in (2, 3):  # no profile at all: no MIG
                    return None
                raise
            raise DriverError(3, "nvmlDeviceGetMigMode", i, "but the GPU lists MIG profiles: MIG mode unknown") \
                from None

    def _read_identity(self, i: int) -> GpuInfo:
        h = self._handle(i)
        name = str(self._call("nvmlDeviceGetName", h, gpu=i))
        uuid = str(self._call("nvmlDeviceGetUUID", h, gpu=i))
        pci = self._call("nvmlDeviceGetPciInfo", h, gpu=i)
        bus_id = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
        arch = self._try("nvmlDeviceGetArchitecture", h, gpu=i, ok_codes=(self._n.NVML_ERROR_NOT_SUPPORTED,))
        mode = self._mig_mode_at_identity(i, h)
        mig_capable = mode is not None
        profiles: Tuple[GpuProfile, ...] = ()
        if mode is not None:
            # R550+ answers profile queries with MIG off; older drivers say NOT_SUPPORTED until MIG is enabled: the
            # cache is keyed by the mode too, so it never answers for the other one.
            key = (uuid, int(pci.pciDeviceId), bool(mode[0]))
            profiles = self._cached_profiles(i, h, pci, key)
        slices = max((p.slices for p in profiles), default=0)
        slots = max((p.placements[0].start + p.placements[0].size for p in profiles if p.placements), default=0)
        return GpuInfo(index=i, uuid=uuid, name=name, pci_bus_id=bus_id,
                       architecture=_ARCH_NAMES.get(arch, f"arch{arch}") if arch is not None else "unknown",
                       mig_capable=mig_capable, profiles=profiles, total_slices=slices, total_memory_slots=slots,
                       pci_device_id=int(pci.pciDeviceId), pci_subsystem_id=int(pci.pciSubSystemId))

    def _cached_profiles(self, i: int, h: Any, pci: Any, key: Tuple[str, int, bool]) -> Tuple[GpuProfile, ...]:
        """The profile table from this boot's cache, else from the lasting one (keyed by the board as well), else
        read live; it is left in whichever cache missed (by writers: see profile_cache.py)."""
        driver = self.driver_version() if (self._cache or self._lasting) is not None else ""
        profiles = self._cache.get(driver, *key) if self._cache is not None else None
        if profiles is not None:
            return profiles
        board: Optional[Dict[str, Any]] = None
        lasting = self._lasting
        if lasting is not None and (lasting.write or lasting.candidate(driver, *key)):
            board = self._board(i, h, pci)  # one read, only where an entry could match or one is to be written
            if board is not None:
                profiles = lasting.get(driver, *key, board=board)
        if profiles is None:
            profiles = tuple(self._read_profiles(i, h))
            if lasting is not None and board is not None:
                lasting.put(driver, *key, profiles, board=board)
        if self._cache is not None:
            self._cache.put(driver, *key, profiles)
        return profiles

    def _board(self, i: int, h: Any, pci: Any) -> Optional[Dict[str, Any]]:
        """What besides the driver, the GPU and its mode decides a profile table: the board (PCI subsystem ID) and
        its firmware (VBIOS version). None (no lasting cache for this GPU) where the driver's text is not text."""
        try:
            vbios = str(self._call("nvmlDeviceGetVbiosVersion", h, gpu=i))
        except UnicodeDecodeError:
            return None
        return {"pci_subsystem_id": int(pci.pciSubSystemId), "vbios": vbios}

    def _read_profiles(self, i: int, h: Any) -> List[GpuProfile]:
        profiles = []
        for index in range(_PROFILE_INDEX_LIMIT):
            try:
                info, caps = self._profile_info(i, h, index)
            except DriverError as e:
                if e.code == self._n.NVML_ERROR_INVALID_ARGUMENT:  # past the driver's last index
                    break
                if e.code == self._n.NVML_ERROR_NOT_SUPPORTED:  # this GPU lacks the profile
                    continue
                raise
            placements = self._placements("nvmlDeviceGetGpuInstancePossiblePlacements", h, info.id, i,
                                          self._n.c_nvmlGpuInstancePlacement_t)
            name = strip_mig(_text(info.name))
            gp = GpuProfile(
                index=index, id=info.id, name=name, slices=info.sliceCount,
                instance_count=info.instanceCount, memory_mb=info.memorySizeMB,
                multiprocessors=info.multiprocessorCount, copy_engines=info.copyEngineCount,
                decoders=info.decoderCount, encoders=info.encoderCount, jpegs=info.jpegCount, ofas=info.ofaCount,
                placements=tuple(placements),
                # without the v3 struct (drivers before R545), the driver's own spelling is all there is
                graphics=bool(caps & _CAPS_GFX) if caps is not None else name.endswith("+gfx"))
            profiles.append(_with_compute(gp, derive_compute_profiles(gp)))
        return profiles

    def _profile_info(self, i: int, h: Any, index: int) -> Tuple[Any, Optional[int]]:
        """(profile info, capability bits or None). The fields and the name come from the v2 struct (pynvml's
        call); the v3 struct is read for its `capabilities` (P2P, GFX) alone, which nvidia-ml-py does not expose.
        Not v3 for everything: R580 on an H200 (measured, issue 10) fills v3's numbers but leaves its name empty
        (the driver writes a mis-formatted name 8 bytes further on, at v2's offset)."""
        info = self._call("nvmlDeviceGetGpuInstanceProfileInfo", h, index, gpu=i)
        return info, self._profile_capabilities(i, h, index)

    def _profile_capabilities(self, i: int, h: Any, index: int) -> Optional[int]:
        """v3's capability bits through our own struct and the same C function; None where the driver has no v3
        (FUNCTION_NOT_FOUND, VERSION_MISMATCH: drivers before R545), and v3 is not asked again."""
        if not self._profile_v3:
            return None
        name = "nvmlDeviceGetGpuInstanceProfileInfoV"
        if not _READ_ONLY_CALLS.fullmatch(name):  # a getter: the guard allows it; kept explicit for the reader
            raise ReadOnlyViolation(name)
        info = _GpuInstanceProfileInfoV3()
        try:
            fn = self._n._nvmlGetFunctionPointer(name)
            self._n._nvmlCheckReturn(fn(h, ctypes.c_uint(index), ctypes.byref(info)))
            return int(info.capabilities)
        except self._n.NVMLError as e:
            if e.value not in (self._n.NVML_ERROR_FUNCTION_NOT_FOUND, self._n.NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                raise DriverError(e.value, name, i) from None
            self._profile_v3 = False
            return None

    def _placements(self, call: str, handle: Any, profile_id: int, gpu: int, struct: Any) -> List[Placement]:
        # One call: nvml.h says the array "must be large enough to accommodate the placements supported by the
        # profile" (the count is output-only, so a short array would be overrun). Placements start at distinct
        # memory slots (8 at most on any MIG GPU) or compute slices; _PLACEMENT_MAX leaves a wide margin.
        count = ctypes.c_uint(0)
        array = (struct * _PLACEMENT_MAX)()
        self._call(call, handle, profile_id, array, ctypes.byref(count), gpu=gpu)
        if count.value > _PLACEMENT_MAX:  # cannot happen with the margin above; never read past the array
            raise DriverError(self._n.NVML_ERROR_INSUFFICIENT_SIZE, call, gpu)
        return [Placement(p.start, p.size) for p in array[:count.value]]

    def minor_number(self, gpu: int) -> int:
        """N of /dev/nvidiaN: not always the index, and what Slurm and the nvidia-caps table key GPUs by."""
        return int(self._call("nvmlDeviceGetMinorNumber", self._handle(gpu), gpu=gpu))

    def device_nodes(self, gpu: int) -> List[str]:
        if self._device_dir is None:
            return []
        minor = self._try("nvmlDeviceGetMinorNumber", self._handle(gpu), gpu=gpu,
                          ok_codes=(self._n.NVML_ERROR_NOT_SUPPORTED,))
        return [os.path.join(self._device_dir, f"nvidia{minor}")] if minor is not None else []

    # --- live state ----------------------------------------------------------------------------------------

    def state(self, gpu: int, fresh: bool = False) -> GpuState:
        """The GPU's live state. Cached until this backend changes that GPU, or `fresh` is asked for: an apply
        reads each GPU fresh once, then its verify, state.json and the printed status share one re-read."""
        cached = self._states.get(gpu)
        if cached is not None and not fresh:
            return cached
        state = self._states[gpu] = self._read_state(gpu)
        return state

    def _read_state(self, gpu: int) -> GpuState:
        info = self._info(gpu)
        if info.unknown and gpu in self._info_errors:  # its identity or mode could not be read: neither can this
            raise self._info_errors[gpu]
        h = self._handle(gpu)
        current = pending = False
        if info.mig_capable:
            # NOT_SUPPORTED means "no MIG" only when identity is read (_read_identity). For a GPU known to be
            # MIG-capable any failure is an error: taken as "MIG off", a re-apply would wipe its instances.
            mode = self._call("nvmlDeviceGetMigMode", h, gpu=gpu)
            current, pending = bool(mode[0]), bool(mode[1])
        pm = self._try("nvmlDeviceGetPersistenceMode", h, gpu=gpu, ok_codes=(self._n.NVML_ERROR_NOT_SUPPORTED,))
        persistence = None if pm is None else bool(pm)
        if not current:
            procs, unreadable = self._processes(h, gpu)
            return GpuState(current, pending, persistence, (), tuple(p.pid for p in procs), unreadable)
        # GPU instances, profile by profile. Instances never share a memory slot (the driver refuses overlap), so
        # once the slots found taken block every placement of a profile, it cannot have one: not asked (7 × 1g
        # reads one profile, not seven).
        taken = 0
        gis = []
        for profile in info.profiles:
            if profile.placements and all(p.mask & taken for p in profile.placements):
                continue
            for gi in self._gpu_instances(h, gpu, profile):
                gi_info = self._call("nvmlGpuInstanceGetInfo", gi, gpu=gpu)
                taken |= Placement(gi_info.placement.start, gi_info.placement.size).mask
                gis.append((gi_info, self._compute_instances(gpu, gi, gi_info.profileId)))
        uuids, pids_by_ci = self._mig_devices(h, gpu, sum(len(cis) for _, cis in gis))
        instances = [_live_gi(gi_info, cis, uuids, pids_by_ci) for gi_info, cis in gis]
        instances.sort(key=lambda x: x.placement.start)
        return GpuState(current, pending, persistence, tuple(instances))

    def mig_mode(self, gpu: int) -> Tuple[bool, bool]:
        """(current, pending), read now: what a mode change needs to know, without walking the instances."""
        mode = self._call("nvmlDeviceGetMigMode", self._handle(gpu), gpu=gpu)
        return bool(mode[0]), bool(mode[1])

    def _gpu_instances(self, h: Any, gpu: int, profile: GpuProfile) -> List[Any]:
        count = ctypes.c_uint(profile.instance_count)
        array = (self._n.c_nvmlGpuInstance_t * max(profile.instance_count, 1))()
        # With MIG on, a profile without instances answers SUCCESS with count 0 (measured, nvml-mig.md §3.1): any
        # error is a failed read, never "no instances" (which would let a re-apply or rollback destroy them).
        self._call("nvmlDeviceGetGpuInstances", h, profile.id, array, ctypes.byref(count), gpu=gpu)
        return list(array[:count.value])

    def _compute_instances(self, gpu: int, gi: Any, gi_profile_id: int) -> List[Any]:
        """The CI infos (id, profile, placement) of one GPU instance."""
        out = []
        for _, cp in self._ci_profiles(gpu, gi, gi_profile_id):
            count = ctypes.c_uint(cp.instanceCount)
            array = (self._n.c_nvmlComputeInstance_t * max(cp.instanceCount, 1))()
            self._call("nvmlGpuInstanceGetComputeInstances", gi, cp.id, array, ctypes.byref(count), gpu=gpu)
            out += [self._call("nvmlComputeInstanceGetInfo", ci, gpu=gpu) for ci in array[:count.value]]
        return out

    def _ci_profiles(self, gpu: int, gi: Any, gi_profile_id: int) -> List[Any]:
        """(CI index, CI profile info) of a GI profile: the same for every GI of that profile, so read once per GPU
        (walking every CI index of every GI at every state() read was most of an 8-GPU apply's NVML calls)."""
        key = (gpu, gi_profile_id)
        cached = self._ci_cache.get(key)
        if cached is not None:
            return cached
        gi_profile = self._info(gpu).profile_by_id(gi_profile_id)
        slices = gi_profile.slices if gi_profile is not None else None
        table = []
        for index in range(_PROFILE_INDEX_LIMIT):
            if index == _CI_INDEX_SKIP:
                continue
            if slices is not None and _CI_INDEX_SLICES.get(index, 0) > slices:
                continue  # a compute instance never has more slices than its GPU instance: NOT_SUPPORTED, unasked
            try:
                cp = self._call("nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, index,
                                self._n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, gpu=gpu)
            except DriverError as e:
                if e.code == self._n.NVML_ERROR_INVALID_ARGUMENT:  # past the last index
                    break
                if e.code == self._n.NVML_ERROR_NOT_SUPPORTED:  # not offered in this GI
                    continue
                raise
            table.append((index, cp))
        self._ci_cache[key] = table
        return table

    def _mig_devices(self, h: Any, gpu: int, expected: int) -> Tuple[Dict[Any, Any], Dict[Any, Any]]:
        """(GI id, CI id) -> MIG UUID, and -> (PIDs, why they are unknown or ""). NVML has no direct lookup: walk
        MIG device indices, until the `expected` compute instances just read are all found (every compute
        instance is one MIG device; a walk that finds fewer goes to the end)."""
        uuids: Dict[Tuple[int, int], str] = {}
        pids: Dict[Tuple[int, int], Tuple[List[int], str]] = {}
        if not expected:
            return uuids, pids
        for n in range(self._call("nvmlDeviceGetMaxMigDeviceCount", h, gpu=gpu)):
            mig = self._try("nvmlDeviceGetMigDeviceHandleByIndex", h, n, gpu=gpu,
                            ok_codes=(self._n.NVML_ERROR_INVALID_ARGUMENT, self._n.NVML_ERROR_NOT_FOUND))
            if mig is None:
                continue
            key = (self._call("nvmlDeviceGetGpuInstanceId", mig, gpu=gpu),
                   self._call("nvmlDeviceGetComputeInstanceId", mig, gpu=gpu))
            uuids[key] = str(self._call("nvmlDeviceGetUUID", mig, gpu=gpu))
            procs, unreadable = self._processes(mig, gpu, graphics=False)  # MIG has no graphics contexts
            pids[key] = ([p.pid for p in procs], unreadable)
            if len(uuids) >= expected:
                break
        return uuids, pids

    def _processes(self, h: Any, gpu: int, graphics: bool = True) -> Tuple[List[Any], str]:
        """The processes on a device, and "" - or, where a list cannot be read (not supported, no permission, a
        library older than the driver), why: then the list is *unknown*, never "none", and the caller must treat
        the device as busy."""
        procs: List[Any] = []
        unreadable = ""
        calls = ("nvmlDeviceGetComputeRunningProcesses",) + (("nvmlDeviceGetGraphicsRunningProcesses",) if graphics
                                                             else ())
        for call in calls:
            try:
                procs += self._call(call, h, gpu=gpu)
            except DriverError as e:
                if e.code not in (self._n.NVML_ERROR_NOT_SUPPORTED, self._n.NVML_ERROR_NO_PERMISSION,
                                  self._n.NVML_ERROR_FUNCTION_NOT_FOUND):
                    raise
                unreadable = unreadable or f"{call}: {code_name(e.code)}"
            except self._n.NVMLLibraryMismatchError:
                unreadable = unreadable or f"{call}: NVML library older than the driver"
        return procs, unreadable

    # --- mutations ----------------------------------------------------------------------------------------

    def set_mig_mode(self, gpu: int, enabled: bool) -> int:
        status = self._call("nvmlDeviceSetMigMode", self._handle(gpu), int(enabled), gpu=gpu)
        # "May unbind or reset the device ... minor number might change": re-acquire handles. The profile table
        # does not change with the mode; re-read this GPU's info only where it had none (drivers before R550 list
        # profiles only with MIG on) - on the boot path every Hopper GPU changes mode, and a re-read is ~40 calls.
        # This GPU's alone: the other GPUs' threads go on using theirs.
        self._handles.pop(gpu, None)
        for key in [k for k in list(self._gi_handles) if k[0] == gpu]:
            del self._gi_handles[key]
        for key in [k for k in list(self._ci_cache) if k[0] == gpu]:
            del self._ci_cache[key]
        known = self._infos[gpu] if self._infos is not None else None
        if self._infos is not None and known is not None and not known.profiles:
            self._infos[gpu] = None
            self._info_errors.pop(gpu, None)
        return int(status)

    def set_persistence(self, gpu: int, enabled: bool) -> None:
        self._call("nvmlDeviceSetPersistenceMode", self._handle(gpu), int(enabled), gpu=gpu)

    def create_gpu_instance(self, gpu: int, profile_id: int, placement: Placement) -> int:
        p = self._n.c_nvmlGpuInstancePlacement_t()
        p.start, p.size = placement.start, placement.size
        gi = self._call("nvmlDeviceCreateGpuInstanceWithPlacement", self._handle(gpu), profile_id,
                        ctypes.byref(p), gpu=gpu)
        gi_id = int(self._call("nvmlGpuInstanceGetInfo", gi, gpu=gpu).id)
        self._gi_handles[(gpu, gi_id)] = gi  # its compute instances come next: no lookup by ID for them
        return gi_id

    def _gi_handle(self, gpu: int, gi_id: int) -> Any:
        """A GI's handle: the one its create returned (valid until it is destroyed, which drops it here, or the
        mode changes), else looked up by ID."""
        gi = self._gi_handles.get((gpu, gi_id))
        if gi is None:
            gi = self._call("nvmlDeviceGetGpuInstanceById", self._handle(gpu), gi_id, gpu=gpu)
        return gi

    def compute_profiles_of(self, gpu: int, gi_id: int) -> Tuple[ComputeProfile, ...]:
        """The CI profiles an existing GI really offers (the planner's table is derived; this is the driver's)."""
        gi = self._call("nvmlDeviceGetGpuInstanceById", self._handle(gpu), gi_id, gpu=gpu)
        gi_profile = self._call("nvmlGpuInstanceGetInfo", gi, gpu=gpu).profileId
        out = []
        for index, cp in self._ci_profiles(gpu, gi, gi_profile):
            placements = self._placements("nvmlGpuInstanceGetComputeInstancePossiblePlacements", gi, cp.id, gpu,
                                          self._n.c_nvmlComputeInstancePlacement_t)
            out.append(ComputeProfile(index=index, id=cp.id, name=strip_mig(_text(getattr(cp, "name", ""))),
                                      slices=cp.sliceCount, instance_count=cp.instanceCount,
                                      multiprocessors=cp.multiprocessorCount, placements=tuple(placements)))
        return tuple(out)

    def create_compute_instance(self, gpu: int, gi_id: int, ci_profile_id: int, placement: Placement) -> int:
        gi = self._gi_handle(gpu, gi_id)
        p = self._n.c_nvmlComputeInstancePlacement_t()
        p.start, p.size = placement.start, placement.size
        ci = self._call("nvmlGpuInstanceCreateComputeInstanceWithPlacement", gi, ci_profile_id, ctypes.byref(p),
                        gpu=gpu)
        return int(self._call("nvmlComputeInstanceGetInfo", ci, gpu=gpu).id)

    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None:
        gi = self._call("nvmlDeviceGetGpuInstanceById", self._handle(gpu), gi_id, gpu=gpu)
        ci = self._call("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id, gpu=gpu)
        self._call("nvmlComputeInstanceDestroy", ci, gpu=gpu)

    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None:
        self._gi_handles.pop((gpu, gi_id), None)
        gi = self._call("nvmlDeviceGetGpuInstanceById", self._handle(gpu), gi_id, gpu=gpu)
        self._call("nvmlGpuInstanceDestroy", gi, gpu=gpu)


def _live_gi(info: Any, cis: List[Any], uuids: Dict[Any, str], pids_by_ci: Dict[Any, Any]) -> LiveGpuInstance:
    compute = []
    for ci in cis:
        key = (info.id, ci.id)
        pids, unreadable = pids_by_ci.get(key, ((), ""))
        compute.append(LiveComputeInstance(
            id=ci.id, profile_id=ci.profileId, placement=Placement(ci.placement.start, ci.placement.size),
            uuid=uuids.get(key, ""), pids=tuple(pids), pids_unreadable=unreadable))
    compute.sort(key=lambda c: c.placement.start)
    return LiveGpuInstance(id=info.id, profile_id=info.profileId,
                           placement=Placement(info.placement.start, info.placement.size), compute=tuple(compute))


def _with_compute(gp: GpuProfile, compute: Tuple[ComputeProfile, ...]) -> GpuProfile:
    from .._record import replace

    return replace(gp, compute_profiles=compute)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
