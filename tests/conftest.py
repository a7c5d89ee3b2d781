"""Shared fixtures: simulated GPUs under the real pynvml, state-file hosts, and the measured H100 reference data.

sim_backend(spec, ...)  a fresh NvmlBackend over simulated GPUs (a fake libnvidia-ml installed under pynvml),
                        already open; closed and the fake library uninstalled after the test.
file_host(spec)         a SimHost backed by a state file in tmp_path (shareable between processes).
failed_calls            (C function, return code) for every call into the fake library that did not succeed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import migd.sim
from migd.sim import make_backend
from migd.sim.host import SimHost

ROOT = Path(__file__).resolve().parent.parent
# Copies of ../shared/reference/*.json (what real GPUs report: H100 80GB, H200; driver 580.159.04), kept in the
# repository so the field-for-field checks of their simulated twins can never be skipped for want of shared/.
DATA = ROOT / "tests" / "data"
H100_JSON = DATA / "h100-80gb-hbm3.json"
MEASURED_JSON = sorted(DATA.glob("*.json"))  # every recorded GPU: each must have a simulated twin
SRC = ROOT / "src"


def load_h100_reference() -> Dict[str, Any]:
    reference: Dict[str, Any] = json.loads(H100_JSON.read_text())
    return reference


def load_reference(path: Path) -> Dict[str, Any]:
    reference: Dict[str, Any] = json.loads(path.read_text())
    return reference


def sim_model_for(pci_device_id: str):
    """The simulated model of a recorded GPU, matched by PCI device ID (as "0x233010DE"), or None."""
    from migd.catalog import MODELS

    wanted = int(pci_device_id, 16)
    hits = [m for m in MODELS.values() if m.pci_device_id == wanted]
    return hits[0] if hits else None


@pytest.fixture(scope="session")
def h100_reference() -> Dict[str, Any]:
    return load_h100_reference()


@pytest.fixture(autouse=True)
def _isolated_env(request, monkeypatch, tmp_path):
    """Simulated tests inherit no read-only switch, injected faults or simulation settings from the caller.

    Every test gets its own user state directory ($XDG_STATE_HOME, where `--simulate` keeps its hosts between
    commands): no test writes the real home, none sees another's simulated host.
    Tests marked gpu or boot are left alone otherwise: the hardware tests depend on the caller's MIGD_READ_ONLY=1.
    """
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    if request.node.get_closest_marker("gpu") or request.node.get_closest_marker("boot"):
        yield
        return
    for var in ("MIGD_READ_ONLY", "MIGD_SIM_FAULTS", "MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    # never write this machine's node_exporter textfile directory (default metrics_file) from a test
    monkeypatch.setenv("MIGD_TEXTFILE_DIR", "/nonexistent/migd-test-textfile")
    yield


class _RecordingLib:
    """Wraps the fake libnvidia-ml: records every C call's return code, forwards everything else."""

    def __init__(self, inner, record: List[Tuple[str, int]]):
        self._inner = inner
        self._record = record

    def __getattr__(self, name: str):
        target = getattr(self._inner, name)
        if not name.startswith("nvml") or not callable(target):
            return target
        record = self._record

        def call(*args):
            rc = target(*args)
            record.append((name, rc))
            return rc

        return call


@pytest.fixture
def sim_backend():
    """Factory: sim_backend("h100-80gb", read_only=False, sim_state=None) -> an open NvmlBackend on simulated GPUs."""
    opened = []

    def make(spec: Optional[str] = "h100-80gb", read_only: bool = False, sim_state: Optional[str] = None):
        import pynvml

        backend = make_backend(simulate=spec, sim_state=sim_state, read_only=read_only)
        backend.open()
        # for tests only: the backend itself knows no simulator (so Backend has no such attribute)
        backend._sim_host = pynvml.nvmlLib.host  # type: ignore[attr-defined]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
    migd.sim.uninstall()


@pytest.fixture
def calls_log() -> Callable[[], List[Tuple[str, int]]]:
    """Call after sim_backend(...): wraps the installed fake library; returns the live list of (call, rc)."""
    import pynvml

    record: List[Tuple[str, int]] = []

    def start() -> List[Tuple[str, int]]:
        pynvml.nvmlLib = _RecordingLib(pynvml.nvmlLib, record)
        pynvml._nvmlGetFunctionPointer_cache.clear()
        return record

    return start


@pytest.fixture
def state_path(tmp_path) -> str:
    d = tmp_path / "sim"
    d.mkdir()
    return str(d / "state.json")


@pytest.fixture
def file_host(state_path) -> Callable[..., SimHost]:
    """Factory: file_host("a100-40gb:2") -> a SimHost saved to (or loaded from) a state file in tmp_path."""

    def make(spec: str = "h100-80gb") -> SimHost:
        return SimHost.create(spec, state_path)

    return make


def python_env() -> Dict[str, str]:
    """Environment for child Python processes: migd importable from the source tree, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_")}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["MIGD_TEXTFILE_DIR"] = "/nonexistent/migd-test-textfile"  # see _isolated_env
    return env


PYTHON = sys.executable


# --- numbers worth seeing in the summary (e.g. how many layouts the brute force checked) -----------------------

_SUMMARY: List[str] = []


@pytest.fixture(scope="session")
def summary_line() -> Callable[[str], None]:
    return _SUMMARY.append


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("migd checks")
        for line in _SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture
def cli_isolated(tmp_path, monkeypatch):
    """For tests that call cli.main in process: a private run dir, none of the MIGD_* variables of the shell that
    started pytest, and no simulated library left installed afterwards."""
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    yield
    migd.sim.uninstall()
