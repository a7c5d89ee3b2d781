"""Simulated GPUs: a fake libnvidia-ml under the real pynvml, backed by a SimHost (optionally a shared state file).

The fake library and the host load on first use (`migd.sim.SimHost`, `install`): `migd --help` and every real-GPU
verb read only `migd.catalog` (the model and host names for the help text), which is no part of the simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from ..backend import Backend, BackendFactory
    from ..hostenv import HostEnv
    from .fakelib import Fault, FakeNvmlLib, parse_faults
    from .host import SimError, SimHost

__all__ = ["FakeNvmlLib", "SimError", "SimHost", "environment", "install", "make_backend", "uninstall", "parse_faults"]


def __getattr__(name: str) -> Any:
    if name in ("FakeNvmlLib", "parse_faults"):
        from . import fakelib

        return getattr(fakelib, name)
    if name in ("SimError", "SimHost"):
        from . import host

        return getattr(host, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def environment(spec: Optional[str], state_path: Optional[str],
                environ: Optional[Mapping[str, str]] = None) -> Tuple[BackendFactory, HostEnv, List[str]]:
    """The entry point for migd's wiring (migd.site): simulated GPUs' backend factory, the simulated host's
    HostEnv, and what the run must say first (see simenv.py)."""
    from . import simenv as env

    return env.environment(spec, state_path, environ)


def make_backend(simulate: Optional[str] = None, sim_state: Optional[str] = None, read_only: bool = False,
                 cache_dir: Optional[str] = None, cache_write: bool = False) -> Backend:
    """An nvml backend over simulated GPUs (tests; migd itself goes through `environment`)."""
    from . import simenv as env

    return env.make_backend(simulate, sim_state, read_only, cache_dir, cache_write)


def install(host: SimHost, faults: Optional[List[Fault]] = None) -> FakeNvmlLib:
    """Point pynvml at a fake library for `host`. One simulated host per process, like one driver per host."""
    from . import fakelib

    return fakelib.install(host, faults)


def uninstall() -> None:
    from . import fakelib

    fakelib.uninstall()
