"""The simulator's one entry point for migd's wiring (`migd.site`): simulated GPUs and the simulated host around them.

`environment(spec, state_path)` returns a backend factory (the real NVML code over a fake libnvidia-ml) and a
HostEnv whose every side effect lands in the simulated host, never on the machine the simulator runs on:
- run, state and textfile directories next to the host's state file (`<state>.run`, `<state>.lib`,
  `<state>.textfile`); $MIGD_RUN_DIR, $MIGD_STATE_DIR and $MIGD_TEXTFILE_DIR (test hooks) move them, and are
  honoured by simulated runs only;
- `systemctl` records the call in the host's state (`systemctl` list, shown by `migd status`); nothing is started;
- `reboot` reboots the simulated host (instances lost, Hopper loses MIG mode, /run emptied) and returns at once;
- `system_booting` is the host's `system` ("starting" after a reboot, "running" otherwise: `python3 -m
  migd.sim.tool --state PATH system starting|running`), the boot id its boot counter.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, List, Mapping, Optional, Sequence, Tuple

from .. import hostnames
from ..hostenv import HostEnv, SystemClock
from .host import SimHost

if TYPE_CHECKING:
    from ..backend import Backend, BackendFactory
    from ..driverfiles import DriverFiles

DEFAULT_SPEC = "dgx-a100"
# The simulated host has NVIDIA's Container Toolkit installed: its CDI refresh unit is there, so an apply's CDI
# refresh is recorded (and seen) like on a real GPU node. Any other unit is "not-found".
KNOWN_UNITS = ("nvidia-cdi-refresh.service",)
_LOG_KEEP = 50  # systemctl calls kept in the host's state


def make_backend(simulate: Optional[str] = None, sim_state: Optional[str] = None, read_only: bool = False,
                 cache_dir: Optional[str] = None, cache_write: bool = False,
                 state_dir: Optional[str] = None) -> "Backend":
    """The nvml backend over simulated GPUs: a host built from `simulate`, or the one shared through the state
    file `sim_state` (created from `simulate` when absent). `--sim-state` of a host built from one spec with
    `--simulate` of another is an error (ValueError), never a silent switch to the file's GPUs."""
    from ..backend import read_only_forced
    from ..backend.nvml import NvmlBackend
    from ..backend.profile_cache import ProfileCache
    from .fakelib import install
    from .catalog import parse_host_spec

    if simulate is not None and not simulate.strip():
        raise ValueError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
    host = SimHost.create(simulate or DEFAULT_SPEC, sim_state)
    if simulate and sim_state:
        wanted = [m.key for m in parse_host_spec(simulate)]
        have = [g.get("model") for g in host.gpus]
        if wanted != have:
            raise ValueError(f"--simulate {simulate} but {sim_state} holds a simulated {host.state.get('spec')} "
                             "host: drop --simulate to use that file, or give another --sim-state")
    install(host)
    cache = None
    if cache_dir and sim_state:  # an in-memory host is a fresh boot in every process: nothing to share
        # The simulated host's boot, and its driver's v3 support (tests switch it), stand in for the boot_id.
        boot = f"sim:{os.path.abspath(sim_state)}:{host.state.get('boot')}:{host.state.get('profile_info_v3', True)}"
        cache = ProfileCache(cache_dir, boot, write=cache_write)
    # The tables kept across (simulated) reboots: a host in a state file, in its state directory.
    lasting = ProfileCache(state_dir, None, write=cache_write) if state_dir and sim_state else None
    label = f"simulated {host.state['spec']}" + (f" ({sim_state})" if sim_state else "")
    # The simulated device nodes are plain files under the state's device_dir, named like /dev/nvidia<minor>.
    return NvmlBackend(read_only=read_only or read_only_forced(), description=label,
                       device_dir=host.state.get("device_dir"), simulated=True, profile_cache=cache,
                       lasting_cache=lasting)


class SimulatedHost:
    """The HostEnv callables of one simulated host (a state file, or one in memory shared by this process)."""

    def __init__(self, spec: Optional[str], state_path: Optional[str], run_dir: str):
        self.spec, self.state_path, self.run_dir = spec or DEFAULT_SPEC, state_path, run_dir
        self._memory: Optional[SimHost] = None

    def host(self) -> SimHost:
        if self.state_path:
            return SimHost.create(self.spec, self.state_path)
        if self._memory is None:
            self._memory = SimHost.create(self.spec)
        return self._memory

    def systemctl(self, verb: str, units: Sequence[str], no_block: bool = False,
                  quiet: bool = False) -> Optional[str]:
        host = self.host()
        with host.locked():
            host.reload()
            calls: List[str] = list(host.state.get("systemctl", []))
            calls.append(" ".join(["systemctl", *(["--no-block"] if no_block else []), verb, *units]))
            host.state["systemctl"] = calls[-_LOG_KEEP:]
            stopped = set(host.state.get("stopped_units", []))
            if verb == "stop":
                stopped |= set(units)
            elif verb in ("start", "restart"):
                stopped -= set(units)
            host.state["stopped_units"] = sorted(stopped)
            host.save()
        return None

    def unit_load_state(self, unit: str) -> Optional[str]:
        return "loaded" if unit in KNOWN_UNITS else "not-found"

    def reboot(self) -> Optional[str]:
        """The simulated machine reboots at once: its GPUs power-cycle, its /run (the run directory) is emptied."""
        host = self.host()
        with host.locked():
            host.reload()
            host.reboot()
            host.state["system"] = "starting"
            host.save()
        _empty(self.run_dir)
        return None

    def system_booting(self) -> bool:
        return self.host().state.get("system", "running") == "starting"

    def boot_id(self) -> str:
        return f"sim-boot-{self.host().state.get('boot', 1)}"

    def driver_files(self) -> "DriverFiles":
        return self.host().driver_files()


def _empty(directory: str) -> None:
    """What a reboot does to /run: every file gone (the lock file too: nobody holds it across a reboot)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)


def directories(state_path: Optional[str], environ: Mapping[str, str]) -> Tuple[str, str, str]:
    """(run, state, textfile) directories of a simulated host: beside its state file, or (a host in memory) in a
    per-user temporary directory; the MIGD_*_DIR test hooks win."""
    base = os.path.abspath(state_path) if state_path else \
        os.path.join(tempfile.gettempdir(), f"migd-sim-{os.geteuid()}")
    run = environ.get("MIGD_RUN_DIR") or (base + ".run" if state_path else base)
    state = environ.get("MIGD_STATE_DIR") or (base + ".lib" if state_path else os.path.join(base, "lib"))
    textfile = environ.get("MIGD_TEXTFILE_DIR") or (base + ".textfile" if state_path else
                                                     os.path.join(base, "textfile"))
    return run, state, textfile


def environment(spec: Optional[str], state_path: Optional[str],
                environ: Optional[Mapping[str, str]] = None) -> "Tuple[BackendFactory, HostEnv]":
    """Simulated GPUs (`spec`, or the host in `state_path`) and the simulated host's HostEnv."""
    environ = os.environ if environ is None else environ
    if spec is not None and not spec.strip():
        raise ValueError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
    run, state, textfile = directories(state_path, environ)
    sim = SimulatedHost(spec, state_path, run)

    def factory(read_only: bool = False, cache_write: bool = False) -> "Backend":
        return make_backend(spec, state_path, read_only=read_only, cache_dir=run, cache_write=cache_write,
                            state_dir=state)

    env = HostEnv(simulated=True, run_dir=run, state_dir=state, textfile_dir=textfile, systemctl=sim.systemctl,
                  unit_load_state=sim.unit_load_state, reboot=sim.reboot, system_booting=sim.system_booting,
                  boot_id=sim.boot_id, hostname=hostnames.this_host, driver_files=sim.driver_files, clock=SystemClock())
    return factory, env
