"""Simulated GPUs: a fake libnvidia-ml under the real pynvml, backed by a SimHost (optionally a shared state file)."""

from __future__ import annotations

from typing import List, Optional

from .fakelib import FakeNvmlLib, parse_faults
from .host import SimError, SimHost

__all__ = ["FakeNvmlLib", "SimError", "SimHost", "install", "uninstall", "parse_faults"]


def install(host: SimHost, faults: Optional[List[dict]] = None) -> FakeNvmlLib:
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
