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
from typing import TYPE_CHECKING, List, Mapping, Optional, Sequence, Tuple

from .. import hostnames
from ..errors import UsageError
from ..hostenv import HostEnv, SystemClock
from .host import SimHost

if TYPE_CHECKING:
    from ..backend import Backend, BackendFactory
    from ..driverfiles import DriverFiles

DEFAULT_SPEC = "dgx-a100"
# The simulated host has NVIDIA's Container Toolkit installed: its CDI refresh unit is there, so an apply's CDI
# refresh is recorded (and seen) like on a real GPU node. Any other unit is "not-found".
KNOWN_UNITS = ("nvidia-cdi-refresh.service",)
EPHEMERAL = "-"  # --sim-state -: a throwaway host in memory
_LOG_KEEP = 50  # systemctl calls kept in the host's state
_NOTES_KEEP = 5  # ... and shown by `migd status`


def make_backend(simulate: Optional[str] = None, sim_state: Optional[str] = None, read_only: bool = False,
                 cache_dir: Optional[str] = None, cache_write: bool = False,
                 host: Optional[SimHost] = None, state_dir: Optional[str] = None) -> Backend:
    """The nvml backend over simulated GPUs: a host built from `simulate`, or the one shared through the state
    file `sim_state` (created from `simulate` when absent). `--sim-state` of a host built from one spec with
    `--simulate` of another is an error (UsageError), never a silent switch to the file's GPUs."""
    from ..backend import read_only_forced
    from ..backend.nvml import NvmlBackend
    from ..backend.profile_cache import ProfileCache
    from .fakelib import install, parse_faults
    from ..catalog import parse_host_spec

    try:
        if simulate is not None and not simulate.strip():
            raise ValueError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
        host = host or SimHost.create(simulate or DEFAULT_SPEC, sim_state)
        if simulate and sim_state:
            wanted = [m.key for m in parse_host_spec(simulate)]
            have = [g.get("model") for g in host.gpus]
            if wanted != have:
                raise ValueError(f"--simulate {simulate} but {sim_state} holds a simulated "
                                 f"{host.state.get('spec')} host: drop --simulate to use that file, or give another "
                                 "--sim-state")
        parse_faults(os.environ.get("MIGD_SIM_FAULTS", ""))  # a bad MIGD_SIM_FAULTS is said now, not mid-apply
        install(host)
    except ValueError as e:  # the simulator's words for a bad spec, state file or MIGD_SIM_* setting
        raise UsageError(str(e)) from None
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
    """The HostEnv callables of one simulated host: its state file, or (`--sim-state -`) one in this process's
    memory, thrown away at exit."""

    def __init__(self, spec: Optional[str], state_path: Optional[str], run_dir: str):
        self.spec, self.state_path, self.run_dir = spec or DEFAULT_SPEC, state_path, run_dir
        self._memory: Optional[SimHost] = None

    def host(self) -> SimHost:
        try:
            if self.state_path:
                return SimHost.create(self.spec, self.state_path)
            if self._memory is None:
                self._memory = SimHost.create(self.spec)
        except ValueError as e:  # a bad spec or state file: the run's usage error
            raise UsageError(str(e)) from None
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

    def unit_property(self, unit: str, name: str) -> Optional[str]:
        """The simulated host keeps no unit files: systemd "cannot say" (callers fall back to what migd knows)."""
        return None

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
        return bool(self.host().state.get("system", "running") == "starting")

    def boot_id(self) -> str:
        return f"sim-boot-{self.host().state.get('boot', 1)}"

    def driver_files(self) -> DriverFiles:
        return self.host().driver_files()

    def volatile(self, path: str) -> Optional[str]:
        """The simulated host's /run (its run directory) is emptied by its reboots; the rest of its disk is not."""
        run, inside = os.path.abspath(self.run_dir), os.path.abspath(path)
        return "tmpfs" if inside == run or inside.startswith(run + os.sep) else None

    def notes(self) -> List[str]:
        state = self.host().state
        out = [f"simulated host: {call}" for call in state.get("systemctl", [])[-_NOTES_KEEP:]]
        if state.get("stopped_units"):
            out.append(f"simulated host: units stopped: {', '.join(state['stopped_units'])}")
        return out


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


def default_state_path(spec: str, environ: Mapping[str, str]) -> str:
    """Where `--simulate SPEC` keeps its host between commands: per user, per spec, under the user's state
    directory ($XDG_STATE_HOME, else ~/.local/state): migd/sim/<spec>/state.json. Deleting that directory starts
    over."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.strip()) or DEFAULT_SPEC
    return os.path.join(base, "migd", "sim", name, "state.json")


def directories(state_path: str, environ: Mapping[str, str]) -> Tuple[str, str, str]:
    """(run, state, textfile) directories of a simulated host, beside its state file; the MIGD_*_DIR test hooks
    win."""
    base = os.path.abspath(state_path)
    return (environ.get("MIGD_RUN_DIR") or base + ".run", environ.get("MIGD_STATE_DIR") or base + ".lib",
            environ.get("MIGD_TEXTFILE_DIR") or base + ".textfile")


def environment(spec: Optional[str], state_path: Optional[str],
                environ: Optional[Mapping[str, str]] = None) -> Tuple[BackendFactory, HostEnv, List[str]]:
    """Simulated GPUs (`spec`, or the host in `state_path`), the simulated host's HostEnv, and what to say first
    (where a host was just created). Without `state_path` the host persists in default_state_path(spec). A bad
    spec or state file is a UsageError (exit 2), said before anything is created."""
    try:
        return _environment(spec, state_path, environ)
    except ValueError as e:  # the simulator's words for a bad spec or state file
        raise UsageError(str(e)) from None


def _environment(spec: Optional[str], state_path: Optional[str],
                 environ: Optional[Mapping[str, str]]) -> Tuple[BackendFactory, HostEnv, List[str]]:
    from ..catalog import parse_host_spec

    environ = os.environ if environ is None else environ
    if spec is not None and not spec.strip():
        raise UsageError("--simulate: empty spec; give dgx-a100, dgx-h100 or MODEL[:COUNT],...")
    notices: List[str] = []
    if state_path == EPHEMERAL:
        return _ephemeral(spec, environ)
    if state_path is None:
        parse_host_spec(spec or DEFAULT_SPEC)  # a bad spec is refused before anything is created
        state_path = default_state_path(spec or DEFAULT_SPEC, environ)
        if not os.path.exists(state_path):
            os.makedirs(os.path.dirname(state_path), mode=0o700, exist_ok=True)
            notices.append(f"simulated {spec or DEFAULT_SPEC} host created in {state_path} (kept between "
                           f"commands; rm -r {os.path.dirname(state_path)} starts over)")
    run, state, textfile = directories(state_path, environ)
    sim = SimulatedHost(spec, state_path, run)
    if not os.path.exists(state_path):
        sim.host()  # created now (and saved), so every later call shares it
        if textfile == os.path.abspath(state_path) + ".textfile":  # never one a test hook names
            os.makedirs(textfile, mode=0o755, exist_ok=True)  # the simulated node_exporter's textfile directory
    path: str = state_path

    def factory(read_only: bool = False, cache_write: bool = False) -> Backend:
        return make_backend(spec, path, read_only=read_only, cache_dir=run, cache_write=cache_write,
                            state_dir=state)

    return factory, _env(sim, run, state, textfile, environ), notices


def _ephemeral(spec: Optional[str], environ: Mapping[str, str]) -> Tuple[BackendFactory, HostEnv, List[str]]:
    """`--sim-state -`: a host in memory, from MIG off at every command (benchmarks); its directories in a fresh
    temporary directory unless the MIGD_*_DIR hooks name them."""
    import tempfile

    SimHost.create(spec or DEFAULT_SPEC)  # a bad spec is refused before anything is created
    base = os.path.join(tempfile.mkdtemp(prefix="migd-sim-"), "host")
    run, state, textfile = (environ.get("MIGD_RUN_DIR") or base + ".run", environ.get("MIGD_STATE_DIR") or base + ".lib",
                            environ.get("MIGD_TEXTFILE_DIR") or base + ".textfile")
    sim = SimulatedHost(spec, None, run)

    def factory(read_only: bool = False, cache_write: bool = False) -> Backend:
        return make_backend(spec, None, read_only=read_only, host=sim.host())

    return factory, _env(sim, run, state, textfile, environ), []


def _env(sim: SimulatedHost, run: str, state: str, textfile: str, environ: Mapping[str, str]) -> HostEnv:
    """The simulated host's HostEnv; MIGD_MIG_MINORS (tests) names another mig-minors file for it."""
    minors = environ.get("MIGD_MIG_MINORS")
    return HostEnv(simulated=True, run_dir=run, state_dir=state, textfile_dir=textfile, systemctl=sim.systemctl,
                   unit_load_state=sim.unit_load_state, unit_property=sim.unit_property, reboot=sim.reboot,
                   system_booting=sim.system_booting,
                   boot_id=sim.boot_id, hostname=hostnames.static_host, driver_files=sim.driver_files,
                   clock=SystemClock(), volatile=sim.volatile, notes=sim.notes,
                   mig_minors=lambda: minors or sim.host().mig_minors_path())
