"""The backend protocol: everything migd asks of a GPU driver, in migd's own types.

There is one implementation, `NvmlBackend`, over pynvml; mypy checks it against `Backend` (make_backend's
return). Simulated GPUs plug in *below* pynvml as a fake libnvidia-ml (migd.sim), so the same NVML code runs against
the simulator in every test and against the driver in production. NVML details (handles, indices vs IDs, ctypes)
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


def make_backend(simulate: Optional[str] = None, sim_state: Optional[str] = None, read_only: bool = False,
                 cache_dir: Optional[str] = None, cache_write: bool = False, state_dir: Optional[str] = None,
                 state_write: Optional[bool] = None) -> Backend:
    """The nvml backend over the real driver, or over simulated GPUs when `simulate` or `sim_state` is given.

    MIGD_READ_ONLY=1 forces the read-only guard on whatever the caller asked. `--sim-state` of a host built from
    one spec with `--simulate` of another is an error (ValueError), never a silent switch to the file's GPUs.

    cache_dir: where the per-boot profile cache is (the run directory: see profile_cache.py), None for none;
    cache_write: this run may write it (apply, boot, watch; read verbs only read it).
    state_dir: where the profile cache that survives reboots is (the state directory), None for none;
    state_write: this run may write that one (default: cache_write).
    """
    from .nvml import NvmlBackend
    from .profile_cache import ProfileCache, boot_id

    read_only = read_only or read_only_forced()
    if simulate is not None and not simulate.strip():
        raise ValueError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
    if simulate or sim_state:
        from .. import sim
        from ..sim.catalog import parse_host_spec

        host = sim.SimHost.create(simulate or "dgx-a100", sim_state)
        if simulate and sim_state:
            wanted = [m.key for m in parse_host_spec(simulate)]
            have = [g.get("model") for g in host.gpus]
            if wanted != have:
                raise ValueError(f"--simulate {simulate} but {sim_state} holds a simulated {host.state.get('spec')} "
                                 "host: drop --simulate to use that file, or give another --sim-state")
        sim.install(host)
        cache = lasting = None
        if cache_dir and sim_state:  # an in-memory host is a fresh boot in every process: nothing to share
            # The simulated host's boot, and its driver's v3 support (tests switch it), stand in for the boot_id.
            boot = f"sim:{os.path.abspath(sim_state)}:{host.state.get('boot')}:{host.state.get('profile_info_v3', True)}"
            cache = ProfileCache(cache_dir, boot, write=cache_write)
        if state_dir and sim_state:
            lasting = ProfileCache(state_dir, None, write=cache_write if state_write is None else state_write)
        label = f"simulated {host.state['spec']}" + (f" ({sim_state})" if sim_state else "")
        # The simulated device nodes are plain files under the state's device_dir, named like /dev/nvidia<minor>.
        return NvmlBackend(read_only=read_only, description=label, device_dir=host.state.get("device_dir"),
                           simulated=True, profile_cache=cache, lasting_cache=lasting)
    this_boot = boot_id() if cache_dir else None
    return NvmlBackend(read_only=read_only, description="nvml", profile_cache=ProfileCache(
        cache_dir, this_boot, write=cache_write) if cache_dir and this_boot else None,
        lasting_cache=ProfileCache(state_dir, None, write=cache_write if state_write is None else state_write)
        if state_dir else None)
