"""`apply --stop-clients`: stop the configured client units that hold a GPU, so a mode change can take effect.

The only place migd starts a process: `systemctl stop|start -- UNIT…`, `systemctl --no-block reboot` for
on_pending = "reboot-once" (with `systemctl is-system-running`: only while the system boots), and for the CDI
refresh (cdi.py) `systemctl show --property=LoadState` and `systemctl --no-block restart` of
nvidia-cdi-refresh.service; an argv, never a shell. Callers reach these through HostEnv (hostenv.real()), so a
simulated host's never run.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, List, Optional, Sequence, Set

from .backend import Backend
from .holders import pids_holding, unit_of
from .log import get_logger

log = get_logger()


_TIMEOUT = 30.0  # a --no-block job or a property read only talks to PID 1; a blocking stop/start has no limit


def systemctl(verb: str, units: Sequence[str], no_block: bool = False, quiet: bool = False) -> Optional[str]:
    """Returns None, or systemctl's complaint (logged unless `quiet`: the caller words it). no_block: queue the job,
    do not wait for it."""
    try:
        r = subprocess.run(["systemctl", *(["--no-block"] if no_block else []), verb, "--", *units],
                           capture_output=True, text=True, check=False, timeout=_TIMEOUT if no_block else None)
        why = (r.stderr.strip() or f"exit {r.returncode}") if r.returncode else None
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why and not quiet:
        log.error("systemctl_failed", msg=f"systemctl {verb} {' '.join(units)}: {why}", verb=verb,
                  units=list(units))
    return why


def load_state(unit: str) -> Optional[str]:
    """systemd's LoadState of a unit ("loaded", "not-found", "masked"), or None when systemctl cannot say (not
    booted with systemd, no systemctl)."""
    try:
        r = subprocess.run(["systemctl", "show", "--property=LoadState", "--value", "--", unit],
                           capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("load_state_unknown", msg=f"cannot ask systemd about {unit}: {e}")
        return None
    if r.returncode:
        log.debug("load_state_unknown", msg=f"systemctl show {unit}: {r.stderr.strip()}")
        return None
    return r.stdout.strip()


def system_state() -> Optional[str]:
    """systemd's manager state (`systemctl is-system-running`: "initializing", "starting", "running", "degraded",
    ...), or None when systemctl cannot say."""
    try:
        r = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True, timeout=_TIMEOUT,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("system_state_unknown", msg=f"cannot ask systemd whether the system is up: {e}")
        return None
    return r.stdout.strip() or None


def stop_holding_units(backend: Backend, gpus: Sequence[int], allowed: Sequence[str],
                       run: Callable[[str, Sequence[str]], object]) -> List[str]:
    """Stop the configured client units that hold these GPUs (device node open, or processes on instances) through
    `run` (HostEnv.systemctl: a simulated host's records the stop); returns the units stopped (to be started
    again)."""
    pids: Set[int] = set()
    for i in gpus:
        pids.update(pids_holding(backend.device_nodes(i)))
        state = backend.state(i)
        pids.update(state.pids)
        for gi in state.instances:
            pids.update(gi.all_pids)
    units = sorted({u for u in (unit_of(p) for p in pids if p != os.getpid()) if u})
    to_stop = [u for u in units if u in allowed]
    others = [u for u in units if u not in allowed]
    if others:
        log.warning("clients_not_stopped", msg=f"not stopping {', '.join(others)}: not in [daemon] stop_clients",
                    units=others)
    if to_stop:
        log.warning("clients_stopping", msg=f"stopping {', '.join(to_stop)} to apply the MIG layout", units=to_stop)
        run("stop", to_stop)
    return to_stop
