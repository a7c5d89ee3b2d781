"""The backend protocol: everything migd asks of a GPU driver, in migd's own types.

There is one implementation, `NvmlBackend`, over pynvml; mypy checks it against `Backend` (make_backend's
return). Simulated GPUs plug in *below* pynvml as a fake libnvidia-ml (migd.sim, which builds its own NvmlBackend:
this package never imports it), so the same NVML code runs against the simulator in every test and against the
driver in production. NVML details (handles, indices vs IDs, ctypes)
never leave backend/nvml.py.
"""

from __future__ import annotations

import os
from typing import List, Optional, Protocol, Tuple

from ..model import GpuInfo, GpuState, Placement


class Backend(Protocol):
    """What the engine, status and the watchdog need. Mutations raise DriverError with NVML's code; so does a read
    that fails."""

    description: str
    read_only: bool
    simulated: bool  # simulated GPUs (reports say so: "simulated": true)

    def open(self) -> None: ...
    def close(self) -> None: ...
    def driver_version(self) -> str: ...
    def gpus(self) -> List[GpuInfo]: ...
    def state(self, gpu: int, fresh: bool = False) -> GpuState: ...
    def mig_mode(self, gpu: int) -> Tuple[bool, bool]: ...
    def device_nodes(self, gpu: int) -> List[str]: ...
    def minor_number(self, gpu: int) -> int: ...
    def set_mig_mode(self, gpu: int, enabled: bool) -> int: ...
    def set_persistence(self, gpu: int, enabled: bool) -> None: ...
    def create_gpu_instance(self, gpu: int, profile_id: int, placement: Placement) -> int: ...
    def create_compute_instance(self, gpu: int, gi_id: int, ci_profile_id: int, placement: Placement) -> int: ...
    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None: ...
    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None: ...


def read_only_forced() -> bool:
    return os.environ.get("MIGD_READ_ONLY", "") not in ("", "0", "false", "no")


class BackendFactory(Protocol):
    """Builds an (unopened) backend: the real driver's, or simulated GPUs' (`migd.site`, `migd.sim.environment`).
    read_only: the read-only guard; cache_write: this run may write the profile caches (per boot, and the lasting
    one in the state directory)."""

    def __call__(self, read_only: bool = False, cache_write: bool = False) -> Backend: ...


def make_backend(read_only: bool = False, cache_dir: Optional[str] = None, cache_write: bool = False,
                 boot_id: Optional[str] = None, state_dir: Optional[str] = None) -> Backend:
    """The nvml backend over the real driver (simulated GPUs are built by `migd.sim`, never here).

    MIGD_READ_ONLY=1 forces the read-only guard on whatever the caller asked.
    cache_dir: where the per-boot profile cache is (the run directory: see profile_cache.py), None for none;
    cache_write: this run may write it (apply, boot, watch; read verbs only read it); boot_id: this boot's
    (HostEnv.boot_id; None: read the kernel's); state_dir: where the profile cache that survives reboots is
    (HostEnv.state_dir), None for none; written when cache_write is.
    """
    from .nvml import NvmlBackend
    from .profile_cache import ProfileCache
    from .profile_cache import boot_id as kernel_boot_id

    read_only = read_only or read_only_forced()
    this_boot = (boot_id or kernel_boot_id()) if cache_dir else None
    return NvmlBackend(read_only=read_only, description="nvml", profile_cache=ProfileCache(
        cache_dir, this_boot, write=cache_write) if cache_dir and this_boot else None,
        lasting_cache=ProfileCache(state_dir, None, write=cache_write) if state_dir else None)
