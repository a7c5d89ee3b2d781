"""Where a run is wired, once, at the edge: from the command line (and the environment), the GPUs' backend factory
and the host environment (`HostEnv`) every layer below takes what it touches from.

Real GPUs get `hostenv.real()`. Simulated GPUs (`--simulate`, `--sim-state`) get the simulator's own pair from its
one entry point, `migd.sim.environment`: this is the only place production code mentions the simulator, so nothing
below can mix a simulated GPU with the real host.

Test hooks never steer a real run unnoticed (see `build`): MIGD_SIMULATE and MIGD_SIM_STATE select a simulated run
that says so (a notice the caller prints first, or logs under systemd); MIGD_RUN_DIR, MIGD_STATE_DIR and
MIGD_TEXTFILE_DIR move a simulated host's directories only and are reported as ignored on a real run;
MIGD_SIM_HOST=real (the boot tests' containers) runs simulated GPUs against this machine's own host environment,
and says so.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Mapping, Optional, Tuple

from . import hostenv
from ._record import dataclass, replace
from .hostenv import HostEnv

if TYPE_CHECKING:
    from .backend import Backend, BackendFactory
    from .engine import Engine
    from .model import Config

SIMULATION_VARIABLES = ("MIGD_SIMULATE", "MIGD_SIM_STATE")
SIM_DIRECTORY_VARIABLES = ("MIGD_RUN_DIR", "MIGD_STATE_DIR", "MIGD_TEXTFILE_DIR", "MIGD_MIG_MINORS")
SIM_HOST_VARIABLE = "MIGD_SIM_HOST"


@dataclass(frozen=True)
class Site:
    """One run's wiring: the backend factory, the host environment, and what the run must say about how it was
    wired before anything else (a simulation chosen by the environment, test hooks ignored)."""

    open_backend: BackendFactory
    env: HostEnv
    notices: Tuple[str, ...] = ()

    @property
    def simulated(self) -> bool:
        return self.env.simulated

    def engine(self, backend: Backend, cfg: Optional[Config], host: Optional[str] = None) -> Engine:
        """The engine over `backend` (one of open_backend's) and `cfg`, on this run's host environment: how every
        edge (cli, boot, watch) gets one."""
        from .engine import Engine  # not for the verbs that never read a GPU (validate, completion)

        return Engine(backend, cfg, self.env, host=host)


def simulate_help() -> str:
    from .catalog import HOSTS, MODELS  # plain tables: no NVML is loaded

    return (f"use simulated GPUs: a host ({', '.join(HOSTS)}) or MODEL[:COUNT],... with models "
            f"{', '.join(MODELS)} (env MIGD_SIMULATE; nothing on this machine is touched)")


def build(simulate: Optional[str] = None, sim_state: Optional[str] = None,
          environ: Optional[Mapping[str, str]] = None) -> Site:
    """The wiring for a run with these command-line options. The environment's MIGD_SIMULATE / MIGD_SIM_STATE
    stand in for absent options; a run they make simulated says so in its notices. Raises UsageError (bad spec)."""
    environ = os.environ if environ is None else environ
    notices: List[str] = []
    if simulate is None and sim_state is None:
        simulate = environ.get("MIGD_SIMULATE") or None
        sim_state = environ.get("MIGD_SIM_STATE") or None
        chosen = [f"{v}={environ[v]}" for v in SIMULATION_VARIABLES if environ.get(v)]
        if chosen:
            notices.append(f"simulated GPUs ({' '.join(chosen)} in the environment), not this machine's")
    if not (simulate or sim_state) and simulate is None:
        ignored = [v for v in (*SIM_DIRECTORY_VARIABLES, SIM_HOST_VARIABLE) if environ.get(v)]
        if ignored:
            notices.append(f"ignoring {', '.join(ignored)} from the environment: honoured by simulated runs only")
        return _real(environ, tuple(notices))
    from . import sim

    factory, env, created = sim.environment(simulate, sim_state, environ)
    notices.extend(created)
    if environ.get(SIM_HOST_VARIABLE) == "real":
        # simulated GPUs, this machine's run/state directories, systemctl, reboot and clock (the boot tests)
        real = hostenv.real(run_dir=environ.get("MIGD_RUN_DIR") or hostenv.RUN_DIR,
                            state_dir=environ.get("MIGD_STATE_DIR") or _state_directory(environ),
                            textfile_dir=environ.get("MIGD_TEXTFILE_DIR") or hostenv.TEXTFILE_DIR)
        env = replace(real, simulated=True, driver_files=env.driver_files)
        notices.append(f"simulated GPUs on this machine's own host ({SIM_HOST_VARIABLE}=real): its run directory, "
                       "systemctl and reboot are real")
    return Site(factory, env, tuple(notices))


def _state_directory(environ: Mapping[str, str]) -> str:
    """systemd's StateDirectory= ($STATE_DIRECTORY, first entry), else /var/lib/migd."""
    return environ.get("STATE_DIRECTORY", "").split(":")[0] or hostenv.STATE_DIR


def _real(environ: Mapping[str, str], notices: Tuple[str, ...]) -> Site:
    from .backend import make_backend

    env = hostenv.real(state_dir=_state_directory(environ))

    def factory(read_only: bool = False, cache_write: bool = False) -> Backend:
        # the per-boot profile cache is /run/migd's, whoever asks: migd.service wrote it, a user's status reads it
        try:
            boot: Optional[str] = env.boot_id()
        except OSError:
            boot = None
        return make_backend(read_only=read_only, cache_dir=env.run_dir if boot else None, cache_write=cache_write,
                            boot_id=boot, state_dir=env.state_dir)

    return Site(factory, env, notices)
