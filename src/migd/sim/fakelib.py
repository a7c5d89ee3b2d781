"""A fake libnvidia-ml.so for pynvml, backed by a SimHost.

pynvml's own wrappers run unchanged on top of it: they allocate the ctypes structures, pass `byref` arguments and
raise the real `NVMLError_*` classes from our return codes. So everything migd's nvml backend does with pynvml,
including the ctypes details (placements by reference, output-only counts, handles that must not be compared
with ==), is exercised by every simulated test, not only on hardware.

Faults: each entry of the host's `faults` (or of MIGD_SIM_FAULTS, `CALL=CODE[@N][/gpuK]`, comma-separated) makes
the N-th call of C function CALL (every call if no N) return CODE, hang when CODE is `hang` (announced on stderr
as "sim: CALL hangs", so a test knows when to SIGKILL), or take 50 ms longer and then succeed when CODE is `slow`
(to make concurrent runs overlap). `@N` counts per GPU, because migd runs each GPU on its own thread: the N-th call
of CALL on GPU K with `/gpuK`, on each GPU without it (a GPU is the one a call's handle belongs to, or the index
nvmlDeviceGetHandleByIndex asks for). Calls about no GPU (nvmlInit, nvmlDeviceGetCount, ...) count per process. So
a fault hits the same call whatever order the GPUs' threads run in. On a one-GPU host this is the count it always was.

Threads: every call runs its reads and changes of the host under the host's one lock (SimHost.lock); latencies and
`slow`/`hang` waits happen outside it, so GPUs' calls overlap like a real driver's.

Latency (MIGD_SIM_LATENCY, e.g. `reads=0.5ms,first_handle=7ms,init=12ms,create=0,mode=0`): each simulated call
sleeps that long, so a benchmark sees NVML's share of a run. `init` (nvmlInit), `first_handle` (a process's first
nvmlDeviceGetHandleByIndex of a GPU), `reads` (every other getter, failed probes included), `create`, `destroy`,
`mode` (SetMigMode), `persistence` (SetPersistenceMode), `shutdown`. Read latencies were measured on an H200 (R580);
mutating ones are unknown here: parameters, 0 unless given. `latency_spent` / `mutating_spent` add up the sleeps,
`call_spent` all time inside simulated calls, `own_spent` the simulator's own work alone (so a benchmark can leave
it out: on a GPU the measured latency is the whole call).

Trace: while the host state holds a "trace" list, every mutation appends [pid, call, gpu, time] to it, under the
state file's lock: the order in which processes sharing a state file changed the GPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import errors as E
from ..catalog import CI_PROFILE_INDEX_END, PROFILE_INDEX_END
from .host import SimError, SimHost

# What pynvml passes a C function: byref() references, ctypes scalars, structures, arrays and pointers. pynvml is
# untyped and each NVML function takes its own ctypes types, so the fake library's C-side arguments are Any.
CArg = Any
Fault = Dict[str, Any]  # one parsed fault: call, at, gpu and one of code / hang / slow / raise
# A handle's identity: ("gpu", i), ("gi", i, gi_id), ("ci" or "mig", i, gi_id, ci_id)
HandleKey = Tuple[Any, ...]

DRIVER_VERSION = b"580.159.04"
# NVML_STRUCT_VERSION(GpuInstanceProfileInfo, n) = sizeof(struct) | n << 24 (nvml.h); both structs are 152 bytes
GI_PROFILE_INFO_V2 = 0x02000098
GI_PROFILE_INFO_V3 = 0x03000098
_ID_ANY = 0xFFFFFFFF
_CI_ENGINE_SHARED = 0
SLOW_S = 0.05  # how much longer a `slow` fault makes a call


LATENCY_KEYS = ("init", "shutdown", "first_handle", "reads", "create", "destroy", "mode", "persistence")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_latency(text: str) -> Dict[str, float]:
    """`reads=0.5ms,first_handle=7ms` -> {"reads": 0.0005, "first_handle": 0.007}. Raises ValueError."""
    out: Dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        unit = next((u for u in ("us", "µs", "ms", "s") if value.endswith(u)), "")
        number = value[:len(value) - len(unit)] if unit else value
        try:
            seconds = float(number) * _UNITS.get(unit, 1.0)
        except ValueError:
            seconds = -1.0
        if not sep or key not in LATENCY_KEYS or not (0 <= seconds < 60):
            raise ValueError(f"MIGD_SIM_LATENCY: bad item {item!r}: expected KEY=TIME with KEY one of "
                             f"{', '.join(LATENCY_KEYS)} and TIME like 0.5ms, 500us or 0 (seconds without a unit)")
        out[key] = seconds
    return out


def _latency_kind(name: str) -> str:
    if name.startswith("nvmlInit"):
        return "init"
    if name == "nvmlShutdown":
        return "shutdown"
    if "Create" in name:
        return "create"
    if "Destroy" in name:
        return "destroy"
    if name.startswith("nvmlDeviceSetMigMode"):
        return "mode"
    if name.startswith("nvmlDeviceSetPersistenceMode"):
        return "persistence"
    return "reads"


def parse_faults(text: str) -> List[Fault]:
    """`nvmlGpuInstanceDestroy=IN_USE@2/gpu1,nvmlDeviceGetMigMode=hang` -> fault dicts. Raises ValueError."""
    faults: List[Fault] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        call, sep, rest = item.partition("=")
        if not sep or not call.startswith("nvml"):
            raise ValueError(f"bad fault {item!r}: expected CALL=CODE[@N][/gpuK], e.g. nvmlGpuInstanceDestroy=IN_USE@1")
        rest, _, gpu = rest.partition("/gpu")
        code, _, at = rest.partition("@")
        if not at.isdigit() and at or not gpu.isdigit() and gpu:
            raise ValueError(f"bad fault {item!r}: N and K in CALL=CODE[@N][/gpuK] are numbers")
        fault: Fault = {"call": call, "at": int(at) if at else None, "gpu": int(gpu) if gpu else None}
        if code == "hang":
            fault["hang"] = True
        elif code == "slow":
            fault["slow"] = SLOW_S
        elif code == "raise":  # an answer migd does not expect: a Python exception out of the library call
            fault["raise"] = True
        elif code.isdigit():
            fault["code"] = int(code)
        elif code in E.CODE_BY_NAME:
            fault["code"] = E.CODE_BY_NAME[code]
        else:
            raise ValueError(f"bad fault code {code!r} in {item!r}: an NVML error name (IN_USE, ...), a number, "
                             "hang, slow or raise")
        faults.append(fault)
    return faults


class _Handles:
    """Real pointer values for opaque NVML handles, so callers get genuine ctypes pointers."""

    def __init__(self) -> None:
        self._buffers: Dict[HandleKey, ctypes.c_uint] = {}
        self._by_addr: Dict[int, HandleKey] = {}

    def address(self, key: HandleKey) -> int:
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = ctypes.c_uint(0)
            self._by_addr[ctypes.addressof(buf)] = key
        return ctypes.addressof(buf)

    def key(self, handle: CArg) -> Optional[HandleKey]:
        addr = ctypes.cast(handle, ctypes.c_void_p).value if handle is not None else None
        return self._by_addr.get(addr) if addr else None


def _out(ref: CArg) -> Any:
    """The object behind a byref() argument (or the object itself, when passed bare)."""
    return getattr(ref, "_obj", ref)


def _set_pointer(ref: CArg, addr: int) -> None:
    ctypes.c_void_p.from_address(ctypes.addressof(_out(ref))).value = addr


def _int(x: CArg) -> int:
    return x.value if hasattr(x, "value") else int(x)


def _placement(p: CArg) -> Tuple[int, int]:
    p = _out(p)
    return (p.start, p.size)


def _put_string(buf: CArg, size: CArg, text: bytes) -> int:
    if len(text) + 1 > _int(size):
        return 7  # INSUFFICIENT_SIZE
    ctypes.memmove(buf, text + b"\0", len(text) + 1)
    return 0


class FakeNvmlLib:
    """Attribute lookup returns C-like functions: positional ctypes arguments in, int return code out."""

    def __init__(self, host: SimHost, faults: Optional[List[Fault]] = None):
        self.host = host
        self.extra_faults = list(faults or [])
        self.calls: Dict[str, int] = {}
        self.gpu_calls: Dict[Tuple[str, int], int] = {}
        self.handles = _Handles()
        self.initialized = 0
        self._stat: Optional[Tuple[int, int]] = None
        self._current: Tuple[str, Optional[int]] = ("", None)  # the call in progress, for the mutation trace
        self.latency = parse_latency(os.environ.get("MIGD_SIM_LATENCY", ""))
        self.latency_spent = 0.0  # seconds slept in simulated calls (MIGD_SIM_LATENCY)
        self.mutating_spent = 0.0  # of which in mutating ones
        self.call_spent = 0.0  # all time inside simulated calls: the latencies plus the simulator's own work
        self.read_latency_by_gpu: Dict[int, float] = {}  # read latencies slept, per GPU (-1: calls about no GPU)
        self.own_spent = 0.0  # the simulator's own work (under its lock; with the GPUs' threads, call_spent adds
        # up overlapping calls and waits for the lock, this does not)
        self._handled: Set[int] = set()  # GPU indices whose handle this process asked for (first_handle)
        self._lock = host.lock  # the host's state (and our counters, handle table): one call's work at a time
        if self.latency:
            _precise_sleeps()

    def __getattr__(self, name: str) -> Callable[..., int]:
        impl = getattr(type(self), "_" + name, None)
        if impl is None or not name.startswith("nvml"):
            raise AttributeError(name)  # pynvml turns this into FUNCTION_NOT_FOUND, like a missing symbol

        def call(*args: CArg) -> int:
            # Thread-safe like NVML: the host's state is read and changed under one lock; waits (latency, `slow`
            # and `hang` faults) happen outside it, so calls on different GPUs overlap as on a real driver.
            start = time.perf_counter()
            gpu = None
            try:
                with self._lock:
                    held = time.perf_counter()
                    self._refresh()
                    gpu = self._gpu_of(name, args)
                    wait = self._inject(name, gpu)
                    self.own_spent += time.perf_counter() - held
                if wait is not None:
                    _wait(name, wait)
                slept = self._sleep(name, args, gpu) if self.latency else False
                with self._lock:
                    held = time.perf_counter()
                    try:
                        if slept or wait is not None:
                            self._refresh()  # another process may have changed a shared host meanwhile
                        if name not in ("nvmlInitWithFlags", "nvmlInit_v2") and not self.initialized:
                            return E.CODE_BY_NAME["UNINITIALIZED"]
                        self._current = (name, gpu)
                        result = impl(self, *args)
                    finally:
                        self.own_spent += time.perf_counter() - held
                return 0 if result is None else result
            except SimError as e:
                if e.code == E.GPU_IS_LOST and gpu is not None:
                    self._mark_lost(gpu)
                return e.code
            finally:
                spent = time.perf_counter() - start
                with self._lock:
                    self.call_spent += spent

        return call

    # --- plumbing -------------------------------------------------------------------------------------------

    def _sleep(self, name: str, args: Tuple[CArg, ...], gpu: Optional[int] = None) -> bool:
        """Wait out the call's simulated latency (outside the lock: a real driver's calls on different GPUs
        overlap, and a sleeping thread lets the others run). True when it waited."""
        kind = _latency_kind(name)
        with self._lock:
            if name.startswith("nvmlDeviceGetHandleByIndex") and args:
                index = _int(args[0])
                if index not in self._handled:
                    self._handled.add(index)
                    kind = "first_handle" if "first_handle" in self.latency else kind
        seconds = self.latency.get(kind, 0.0)
        if not seconds:
            return False
        start = time.perf_counter()
        # A sleep, never a busy wait: spinning would hold the GIL and serialize the GPUs' threads. The timer slack
        # is lowered at install (_precise_sleeps), so a 0.5 ms sleep overshoots by tens of µs, not 100+.
        time.sleep(seconds)
        spent = time.perf_counter() - start
        with self._lock:
            self.latency_spent += spent
            if kind not in ("init", "shutdown", "first_handle", "reads"):
                self.mutating_spent += spent
            else:  # per GPU (-1: calls about none): the GPUs' threads overlap, so the longest is what a run waits
                key = -1 if gpu is None else gpu
                self.read_latency_by_gpu[key] = self.read_latency_by_gpu.get(key, 0.0) + spent
        return True

    def _refresh(self) -> None:
        """See changes other processes made to a shared state file (the driver is live, not a snapshot)."""
        path = self.host.path
        if not path:
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stat:
            self.host.reload()
            self._stat = stamp

    def _commit(self) -> None:
        self.host.save()
        if self.host.path:
            st = os.stat(self.host.path)
            self._stat = (st.st_mtime_ns, st.st_size)

    def _mutate(self, fn: Callable[[], Any]) -> Any:
        """Mutations: reload, change, save under one lock, so processes sharing a state file never lose each
        other's work (two read-modify-write cycles interleaving would drop one)."""
        with self.host.locked():
            if self.host.path:
                self.host.reload()
            result = fn()
            trace = self.host.state.get("trace")
            if isinstance(trace, list):
                trace.append([os.getpid(), self._current[0], self._current[1], time.time()])
            self._commit()
        return result

    def _faults(self) -> List[Fault]:
        env = os.environ.get("MIGD_SIM_FAULTS", "")
        return list(self.host.state.get("faults", [])) + self.extra_faults + (parse_faults(env) if env else [])

    def _inject(self, name: str, gpu: Optional[int]) -> Optional[float]:
        """Count the call and apply the faults that name it (under the lock). Raises SimError for an error fault;
        returns how long to wait first (`slow`; inf for `hang`), or None.

        `@N` counts per GPU: the N-th call of CALL on that GPU (each GPU's calls are in a fixed order on its own
        thread, whatever the other GPUs' threads do meanwhile), on GPU K only with `/gpuK`, else on every GPU. A
        call about no GPU (nvmlInit, nvmlDeviceGetCount, ...) counts per process."""
        base = name.split("_v")[0] if "_v" in name else name
        count = self.calls[base] = self.calls.get(base, 0) + 1
        if gpu is not None:
            count = self.gpu_calls[(base, gpu)] = self.gpu_calls.get((base, gpu), 0) + 1
        wait: Optional[float] = None
        for fault in self._faults():
            if fault["call"] not in (name, base):
                continue
            if fault.get("gpu") is not None and gpu != fault["gpu"]:
                continue
            if fault.get("at") is not None and fault["at"] != count:
                continue
            if fault.get("hang"):
                return float("inf")
            if fault.get("slow"):
                wait = (wait or 0.0) + fault["slow"]
                continue
            if fault.get("raise"):
                raise RuntimeError(f"injected exception in {name}")
            raise SimError(fault["code"], f"injected fault in {name}")
        return wait

    def _gpu_of(self, name: str, args: Tuple[CArg, ...]) -> Optional[int]:
        """The GPU a call is about: the one its first argument's handle belongs to, or the index asked for."""
        if not args:
            return None
        if name.startswith("nvmlDeviceGetHandleByIndex"):
            try:
                return _int(args[0])
            except (TypeError, ValueError):
                return None
        try:
            key = self.handles.key(args[0])
        except (TypeError, ctypes.ArgumentError):
            key = None
        return key[1] if key else None

    def _mark_lost(self, gpu: int) -> None:
        with self._lock:
            self._mutate(lambda: self.host.gpus[gpu].__setitem__("lost", True))

    def _key(self, handle: CArg, kind: str) -> HandleKey:
        key = self.handles.key(handle)
        if not key or key[0] != kind:
            raise SimError(E.INVALID_ARGUMENT, f"not a {kind} handle")
        self.host.check_gpu(key[1])
        if kind in ("gi",) and not self._gi_exists(key):
            raise SimError(E.INVALID_ARGUMENT, "stale GPU instance handle")
        if kind in ("ci", "mig"):
            try:
                self.host.find_ci(key[1], key[2], key[3])
            except SimError:
                raise SimError(E.INVALID_ARGUMENT, "stale handle") from None
        return key

    def _gi_exists(self, key: HandleKey) -> bool:
        try:
            self.host.find_gi(key[1], key[2])
            return True
        except SimError:
            return False

    def _gpu(self, handle: CArg) -> int:
        return int(self._key(handle, "gpu")[1])

    def _gi(self, handle: CArg) -> Tuple[int, Dict[str, Any]]:
        key = self._key(handle, "gi")
        return key[1], self.host.find_gi(key[1], key[2])

    # --- library ------------------------------------------------------------------------------------------

    def _nvmlInitWithFlags(self, flags: CArg) -> None:
        self.host.check_driver()
        self.initialized += 1

    def _nvmlShutdown(self) -> None:
        self.initialized = max(0, self.initialized - 1)

    def _nvmlSystemGetDriverVersion(self, buf: CArg, size: CArg) -> int:
        return _put_string(buf, size, DRIVER_VERSION)

    # --- devices ------------------------------------------------------------------------------------------

    def _nvmlDeviceGetCount_v2(self, count_ref: CArg) -> None:
        _out(count_ref).value = len(self.host.gpus)

    def _nvmlDeviceGetHandleByIndex_v2(self, index: CArg, dev_ref: CArg) -> None:
        i = _int(index)
        if not 0 <= i < len(self.host.gpus):
            raise SimError(E.INVALID_ARGUMENT)
        _set_pointer(dev_ref, self.handles.address(("gpu", i)))

    def _nvmlDeviceGetHandleByUUID(self, uuid: CArg, dev_ref: CArg) -> None:
        text = _out(uuid).value.decode()
        for i, g in enumerate(self.host.gpus):
            if g["uuid"] == text:
                _set_pointer(dev_ref, self.handles.address(("gpu", i)))
                return
            for gi, ci in self.host.mig_devices(i) if g["mig"][0] else []:
                if self.host.mig_uuid(i, gi["id"], ci["id"]) == text:
                    _set_pointer(dev_ref, self.handles.address(("mig", i, gi["id"], ci["id"])))
                    return
        raise SimError(E.NOT_FOUND)

    def _device_key(self, handle: CArg) -> HandleKey:
        key = self.handles.key(handle)
        if not key or key[0] not in ("gpu", "mig"):
            raise SimError(E.INVALID_ARGUMENT)
        self.host.check_gpu(key[1])
        return key

    def _nvmlDeviceGetName(self, handle: CArg, buf: CArg, size: CArg) -> int:
        key = self._device_key(handle)
        name = self.host.model(key[1]).name
        if key[0] == "mig":
            gi = self.host.find_gi(key[1], key[2])
            ci = self.host.find_ci(key[1], key[2], key[3])
            name += " " + self.host.ci_profile(key[1], gi, ci["profile_id"])["name"]
        return _put_string(buf, size, name.encode())

    def _nvmlDeviceGetUUID(self, handle: CArg, buf: CArg, size: CArg) -> int:
        key = self._device_key(handle)
        uuid = self.host.gpus[key[1]]["uuid"] if key[0] == "gpu" else self.host.mig_uuid(*key[1:])
        return _put_string(buf, size, uuid.encode())

    def _nvmlDeviceGetPciInfo_v3(self, handle: CArg, info_ref: CArg) -> None:
        i = self._gpu(handle)
        info = _out(info_ref)
        bus_id = self.host.gpus[i]["pci_bus_id"]
        info.busId = bus_id.encode()
        info.busIdLegacy = bus_id[4:].encode()
        info.domain, info.bus, info.device = 0, int(bus_id[9:11], 16), 0
        info.pciDeviceId = self.host.model(i).pci_device_id
        info.pciSubSystemId = self.host.pci_subsystem_id(i)

    def _nvmlDeviceGetVbiosVersion(self, handle: CArg, buf: CArg, size: CArg) -> int:
        return _put_string(buf, size, self.host.vbios(self._gpu(handle)).encode())

    def _nvmlDeviceGetArchitecture(self, handle: CArg, arch_ref: CArg) -> None:
        _out(arch_ref).value = self.host.model(self._gpu(handle)).architecture

    def _nvmlDeviceGetMinorNumber(self, handle: CArg, ref: CArg) -> None:
        _out(ref).value = self._gpu(handle)

    def _nvmlDeviceGetPersistenceMode(self, handle: CArg, ref: CArg) -> None:
        _out(ref).value = self.host.gpus[self._gpu(handle)]["persistence"]

    def _nvmlDeviceSetPersistenceMode(self, handle: CArg, mode: CArg) -> None:
        i = self._gpu(handle)
        self._mutate(lambda: self.host.gpus[i].__setitem__("persistence", _int(mode)))

    # --- MIG mode -----------------------------------------------------------------------------------------

    def _nvmlDeviceGetMigMode(self, handle: CArg, cur_ref: CArg, pend_ref: CArg) -> None:
        g = self.host.gpus[self._gpu(handle)]
        _out(cur_ref).value, _out(pend_ref).value = g["mig"]

    def _nvmlDeviceSetMigMode(self, handle: CArg, mode: CArg, status_ref: CArg) -> None:
        i = self._gpu(handle)
        _out(status_ref).value = self._mutate(lambda: self.host.set_mig_mode(i, _int(mode)))

    # --- GPU-instance profiles ----------------------------------------------------------------------------

    def _profile_by_index(self, handle: CArg, index: CArg) -> Dict[str, Any]:
        i = self._gpu(handle)
        idx = _int(index)
        if idx >= PROFILE_INDEX_END:
            raise SimError(E.INVALID_ARGUMENT)
        info = self.host.model(i).gi_profiles.get(idx)
        if info is None:
            raise SimError(E.NOT_SUPPORTED)
        return info

    def _nvmlDeviceGetGpuInstanceProfileInfoV(self, handle: CArg, index: CArg, info_ref: CArg) -> None:
        """v2 or v3 by the struct's version word, as the driver tells them apart (v3: no isP2pSupported; adds
        capabilities). A host whose driver predates v3 (`profile_info_v3: false`) refuses v3 with
        ARGUMENT_VERSION_MISMATCH, as nvml.h documents for an unknown version."""
        out = _out(info_ref)
        version = out.version
        if version == GI_PROFILE_INFO_V3 and not self.host.state.get("profile_info_v3", True):
            raise SimError(E.ARGUMENT_VERSION_MISMATCH)
        if version not in (GI_PROFILE_INFO_V2, GI_PROFILE_INFO_V3):
            raise SimError(E.ARGUMENT_VERSION_MISMATCH)
        info = self._profile_by_index(handle, index)
        for field, value in info.items():
            if field == "name":
                if version == GI_PROFILE_INFO_V2:
                    out.name = value.encode()
                else:  # measured (R580, H200): v3's name stays empty; the driver writes one at v2's offset
                    _v3_misplaced_name(out, info)
            elif field == "capabilities":
                if version == GI_PROFILE_INFO_V3:
                    out.capabilities = value
            elif field == "isP2pSupported":
                if version == GI_PROFILE_INFO_V2:
                    out.isP2pSupported = value
            elif field != "placements":
                setattr(out, field, value)
        out.version = 0  # measured: the driver zeroes version after a successful V call

    def _nvmlDeviceGetGpuInstanceProfileInfo(self, handle: CArg, index: CArg, info_ref: CArg) -> None:
        info = self._profile_by_index(handle, index)
        out = _out(info_ref)
        for field, value in info.items():
            if field not in ("name", "placements", "capabilities"):
                setattr(out, field, value)

    def _nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, handle: CArg, profile_id: CArg, array: CArg,
                                                       count_ref: CArg) -> None:
        i = self._gpu(handle)
        _, info = self.host.gi_profile(i, _int(profile_id))
        self._fill_placements(info["placements"], array, count_ref)

    @staticmethod
    def _fill_placements(placements: List[Tuple[int, int]], array: CArg, count_ref: CArg) -> None:
        count = _out(count_ref)
        if array is not None:
            if len(array) < len(placements):  # the real call overruns a short buffer: fail loudly instead
                raise AssertionError(f"placement buffer of {len(array)} for {len(placements)} placements")
            for slot, (start, size) in zip(array, placements):
                slot.start, slot.size = start, size
        count.value = len(placements)

    def _nvmlDeviceGetGpuInstanceRemainingCapacity(self, handle: CArg, profile_id: CArg, count_ref: CArg) -> None:
        i = self._gpu(handle)
        pid = _int(profile_id)
        _, info = self.host.gi_profile(i, pid)
        if not self.host.gpus[i]["mig"][0]:
            _out(count_ref).value = info["instanceCount"]  # measured with MIG off
            return
        free = len(self.host.free_placements(i, pid))
        used = sum(1 for gi in self.host.gpus[i]["gis"] if gi["profile_id"] == pid)
        _out(count_ref).value = min(free, info["instanceCount"] - used)

    # --- GPU instances ------------------------------------------------------------------------------------

    def _nvmlDeviceCreateGpuInstance(self, handle: CArg, profile_id: CArg, gi_ref: CArg) -> None:
        i = self._gpu(handle)
        gi_id = self._mutate(lambda: self.host.create_gi(i, _int(profile_id)))
        _set_pointer(gi_ref, self.handles.address(("gi", i, gi_id)))

    def _nvmlDeviceCreateGpuInstanceWithPlacement(self, handle: CArg, profile_id: CArg, placement: CArg, gi_ref: CArg) -> None:
        i = self._gpu(handle)
        gi_id = self._mutate(lambda: self.host.create_gi(i, _int(profile_id), _placement(placement)))
        _set_pointer(gi_ref, self.handles.address(("gi", i, gi_id)))

    def _nvmlGpuInstanceDestroy(self, gi_handle: CArg) -> None:
        i, gi = self._gi(gi_handle)
        self._mutate(lambda: self.host.destroy_gi(i, gi["id"]))

    def _nvmlDeviceGetGpuInstances(self, handle: CArg, profile_id: CArg, array: CArg, count_ref: CArg) -> None:
        i = self._gpu(handle)
        pid = _int(profile_id)
        self.host.gi_profile(i, pid)
        found = [gi for gi in self.host.gpus[i]["gis"] if gi["profile_id"] == pid]
        count = _out(count_ref)
        if len(found) > count.value:
            raise SimError(7)  # INSUFFICIENT_SIZE
        element = type(array[0]) if len(array) else ctypes.c_void_p
        for n, gi in enumerate(found):
            array[n] = ctypes.cast(self.handles.address(("gi", i, gi["id"])), element)
        count.value = len(found)

    def _nvmlDeviceGetGpuInstanceById(self, handle: CArg, gi_id: CArg, gi_ref: CArg) -> None:
        i = self._gpu(handle)
        self.host.find_gi(i, _int(gi_id))
        _set_pointer(gi_ref, self.handles.address(("gi", i, _int(gi_id))))

    def _nvmlGpuInstanceGetInfo(self, gi_handle: CArg, info_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        out = _out(info_ref)
        out.device = ctypes.cast(self.handles.address(("gpu", i)), type(out.device))
        out.id, out.profileId = gi["id"], gi["profile_id"]
        out.placement.start, out.placement.size = gi["start"], gi["size"]

    # --- compute instances --------------------------------------------------------------------------------

    def _ci_profile_by_index(self, gi_handle: CArg, index: CArg, eng: CArg) -> Dict[str, Any]:
        i, gi = self._gi(gi_handle)
        idx = _int(index)
        if idx >= CI_PROFILE_INDEX_END or _int(eng) != _CI_ENGINE_SHARED:
            raise SimError(E.INVALID_ARGUMENT)
        info = self.host.ci_profiles(i, gi).get(idx)
        if info is None:
            raise SimError(E.NOT_SUPPORTED)
        return info

    def _nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, gi_handle: CArg, index: CArg, eng: CArg, info_ref: CArg) -> None:
        info = self._ci_profile_by_index(gi_handle, index, eng)
        out = _out(info_ref)
        for field, value in info.items():
            if field == "name":
                out.name = value.encode()
            elif field != "placements":
                setattr(out, field, value)
        out.version = 0

    def _nvmlGpuInstanceGetComputeInstanceProfileInfo(self, gi_handle: CArg, index: CArg, eng: CArg, info_ref: CArg) -> None:
        info = self._ci_profile_by_index(gi_handle, index, eng)
        out = _out(info_ref)
        for field, value in info.items():
            if field not in ("name", "placements"):
                setattr(out, field, value)

    def _nvmlGpuInstanceGetComputeInstancePossiblePlacements(self, gi_handle: CArg, ci_profile_id: CArg, array: CArg,
                                                             count_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        info = self.host.ci_profile(i, gi, _int(ci_profile_id))
        self._fill_placements(info["placements"], array, count_ref)

    def _nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self, gi_handle: CArg, ci_profile_id: CArg, count_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        pid = _int(ci_profile_id)
        info = self.host.ci_profile(i, gi, pid)
        used = sum(1 for ci in gi["cis"] if ci["profile_id"] == pid)
        _out(count_ref).value = max(0, info["instanceCount"] - used)

    def _create_ci(self, gi_handle: CArg, ci_profile_id: CArg, placement: Optional[Tuple[int, int]], ci_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        gi_id = gi["id"]
        ci_id = self._mutate(lambda: self.host.create_ci(i, gi_id, _int(ci_profile_id), placement))
        _set_pointer(ci_ref, self.handles.address(("ci", i, gi_id, ci_id)))

    def _nvmlGpuInstanceCreateComputeInstance(self, gi_handle: CArg, ci_profile_id: CArg, ci_ref: CArg) -> None:
        self._create_ci(gi_handle, ci_profile_id, None, ci_ref)

    def _nvmlGpuInstanceCreateComputeInstanceWithPlacement(self, gi_handle: CArg, ci_profile_id: CArg, placement: CArg,
                                                           ci_ref: CArg) -> None:
        self._create_ci(gi_handle, ci_profile_id, _placement(placement), ci_ref)

    def _nvmlComputeInstanceDestroy(self, ci_handle: CArg) -> None:
        key = self._key(ci_handle, "ci")
        self._mutate(lambda: self.host.destroy_ci(*key[1:]))

    def _nvmlGpuInstanceGetComputeInstances(self, gi_handle: CArg, ci_profile_id: CArg, array: CArg, count_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        pid = _int(ci_profile_id)
        self.host.ci_profile(i, gi, pid)
        found = [ci for ci in gi["cis"] if ci["profile_id"] == pid]
        count = _out(count_ref)
        if len(found) > count.value:
            raise SimError(7)
        for n, ci in enumerate(found):
            array[n] = ctypes.cast(self.handles.address(("ci", i, gi["id"], ci["id"])), type(array[0]))
        count.value = len(found)

    def _nvmlGpuInstanceGetComputeInstanceById(self, gi_handle: CArg, ci_id: CArg, ci_ref: CArg) -> None:
        i, gi = self._gi(gi_handle)
        self.host.find_ci(i, gi["id"], _int(ci_id))
        _set_pointer(ci_ref, self.handles.address(("ci", i, gi["id"], _int(ci_id))))

    def _nvmlComputeInstanceGetInfo_v2(self, ci_handle: CArg, info_ref: CArg) -> None:
        key = self._key(ci_handle, "ci")
        ci = self.host.find_ci(*key[1:])
        out = _out(info_ref)
        out.device = ctypes.cast(self.handles.address(("gpu", key[1])), type(out.device))
        out.gpuInstance = ctypes.cast(self.handles.address(("gi", key[1], key[2])), type(out.gpuInstance))
        out.id, out.profileId = ci["id"], ci["profile_id"]
        out.placement.start, out.placement.size = ci["start"], ci["size"]

    # --- MIG devices --------------------------------------------------------------------------------------

    def _nvmlDeviceGetMaxMigDeviceCount(self, handle: CArg, ref: CArg) -> None:
        i = self._gpu(handle)
        _out(ref).value = self.host.model(i).compute_slices if self.host.gpus[i]["mig"][0] else 0

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, handle: CArg, index: CArg, ref: CArg) -> None:
        i = self._gpu(handle)
        devices = self.host.mig_devices(i)
        n = _int(index)
        if n >= self.host.model(i).compute_slices:
            raise SimError(E.INVALID_ARGUMENT)
        if n >= len(devices):
            raise SimError(E.NOT_FOUND)
        gi, ci = devices[n]
        _set_pointer(ref, self.handles.address(("mig", i, gi["id"], ci["id"])))

    def _nvmlDeviceIsMigDeviceHandle(self, handle: CArg, ref: CArg) -> None:
        _out(ref).value = 1 if self._device_key(handle)[0] == "mig" else 0

    def _nvmlDeviceGetGpuInstanceId(self, handle: CArg, ref: CArg) -> None:
        key = self._device_key(handle)
        if key[0] != "mig":
            raise SimError(E.INVALID_ARGUMENT)
        _out(ref).value = key[2]

    def _nvmlDeviceGetComputeInstanceId(self, handle: CArg, ref: CArg) -> None:
        key = self._device_key(handle)
        if key[0] != "mig":
            raise SimError(E.INVALID_ARGUMENT)
        _out(ref).value = key[3]

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: CArg, ref: CArg) -> None:
        key = self._device_key(handle)
        if key[0] != "mig":
            raise SimError(E.INVALID_ARGUMENT)
        _set_pointer(ref, self.handles.address(("gpu", key[1])))

    def _nvmlDeviceGetComputeRunningProcesses_v3(self, handle: CArg, count_ref: CArg, array: CArg) -> int:
        key = self._device_key(handle)
        g = self.host.gpus[key[1]]
        if key[0] == "mig":
            procs = [p for p in g["processes"] if p["gi"] == key[2] and p["ci"] == key[3]]
        else:
            procs = list(g["processes"])
        count = _out(count_ref)
        if not procs:
            count.value = 0
            return 0
        if array is None or count.value < len(procs):
            count.value = len(procs)
            return 7  # INSUFFICIENT_SIZE: pynvml sizes its buffer and calls again
        for slot, p in zip(array, procs):
            slot.pid, slot.usedGpuMemory = p["pid"], 0
            slot.gpuInstanceId = _ID_ANY if p["gi"] is None else p["gi"]
            slot.computeInstanceId = _ID_ANY if p["ci"] is None else p["ci"]
        count.value = len(procs)
        return 0


def _wait(name: str, seconds: float) -> None:
    """A `slow` fault's extra time, or a `hang` (seconds = inf): a wedged driver call that only SIGKILL ends."""
    if seconds != float("inf"):
        time.sleep(seconds)
        return
    with contextlib.suppress(OSError):
        os.write(2, f"sim: {name} hangs (injected fault)\n".encode())
    while True:
        time.sleep(3600)


def _precise_sleeps() -> None:
    """Lower this thread's timer slack (Linux's default, 50 µs, makes a 0.5 ms sleep last ~0.6 ms) to 1 ns; the
    GPUs' threads inherit it. Best effort: elsewhere sleeps are just a little longer."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK


def _v3_misplaced_name(out: CArg, info: Dict[str, Any]) -> None:
    """What R580 did with a v3 profile-info struct on an H200 (tests/data/h200-141gb.json's driver; the bytes were
    dumped on the real GPU): every number at its v3 offset, `name` (offset 48) left empty, and a name formatted
    from the v2 layout's offsets (instanceCount read as slices, memory as 0) written at v2's name offset, 56."""
    name = f"MIG {info.get('instanceCount', 0)}g.0gb".encode()
    ctypes.memmove(ctypes.addressof(out) + 56, name, len(name))


def install(host: SimHost, faults: Optional[List[Fault]] = None) -> FakeNvmlLib:
    """Point pynvml at a fake library for `host`. One simulated host per process, like one driver per host."""
    import pynvml

    lib = FakeNvmlLib(host, faults)
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return lib


def uninstall() -> None:
    import pynvml

    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()
