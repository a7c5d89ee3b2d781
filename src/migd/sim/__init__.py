"""Simulated GPUs: a fake libnvidia-ml under the real pynvml, backed by a SimHost (optionally a shared state file).

The fake library and the host load on first use (`migd.sim.SimHost`, `install`): `migd --help` and every real-GPU
verb read only `migd.sim.catalog` (the model and host names for the help text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:
    from .fakelib import FakeNvmlLib, parse_faults
    from .host import SimError, SimHost

__all__ = ["FakeNvmlLib", "SimError", "SimHost", "install", "uninstall", "parse_faults"]


def __getattr__(name: str) -> Any:
    if name in ("FakeNvmlLib", "parse_faults"):
        from . import fakelib

        return getattr(fakelib, name)
    if name in ("SimError", "SimHost"):
        from . import host

        return getattr(host, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(host: "SimHost", faults: Optional[List[dict]] = None) -> "FakeNvmlLib":
    """Point pynvml at a fake library for `host`. One simulated host per process, like one driver per host."""
    import pynvml

    from .fakelib import FakeNvmlLib

    lib = FakeNvmlLib(host, faults)
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    return lib


def uninstall() -> None:
    import pynvml

    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()
