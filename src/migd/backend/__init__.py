"""The backend protocol: everything migd asks of a GPU driver, in migd's own types.

There is one implementation, `NvmlBackend`, over pynvml. Simulated GPUs plug in *below* pynvml as a fake
libnvidia-ml (migd.sim), so the same NVML code runs against the simulator in every test and against the driver in
production. NVML details (handles, indices vs IDs, ctypes) never leave backend/nvml.py.
"""

from __future__ import annotations

import os
from typing import List, Optional


from ..model import GpuInfo, GpuState, Placement


class Backend:  # the protocol, as a plain class: typing.Protocol would add nothing at runtime
    """What apply, plan, status and the watchdog need. Mutations raise DriverError with NVML's code."""

    description: str
    read_only: bool

    def open(self) -> None: ...
    def close(self) -> None: ...
    def driver_version(self) -> str: ...
    def gpus(self) -> List[GpuInfo]: ...
    def state(self, gpu: int, fresh: bool = False) -> GpuState: ...
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


def make_backend(simulate: Optional[str] = None, sim_state: Optional[str] = None, read_only: bool = False):
    """The nvml backend over the real driver, or over simulated GPUs when `simulate` or `sim_state` is given.

    MIGD_READ_ONLY=1 forces the read-only guard on whatever the caller asked.
    """
    from .nvml import NvmlBackend

    read_only = read_only or read_only_forced()
    if simulate is not None and not simulate.strip():
        raise ValueError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
    if simulate or sim_state:
        from .. import sim

        host = sim.SimHost.create(simulate or "dgx-a100", sim_state)
        sim.install(host)
        label = f"simulated {host.state['spec']}" + (f" ({sim_state})" if sim_state else "")
        return NvmlBackend(read_only=read_only, description=label, sim_host=host)
    return NvmlBackend(read_only=read_only, description="nvml")
