"""`apply --stop-clients`: stop the configured client units that hold a GPU, so a mode change can take effect.

The only place migd starts a process: `systemctl stop|start -- UNIT…` (and `systemctl --no-block reboot` for
on_pending = "reboot-once"), an argv, never a shell.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, List, Optional, Sequence, Set

from .backend import Backend
from .holders import pids_holding, unit_of
from .log import get_logger

log = get_logger()


def systemctl(verb: str, units: Sequence[str], no_block: bool = False) -> Optional[str]:
    """Returns None, or systemctl's complaint (logged). no_block: queue the job, do not wait for it."""
    r = subprocess.run(["systemctl", *(["--no-block"] if no_block else []), verb, "--", *units],
                       capture_output=True, text=True, check=False)
    if r.returncode:
        why = r.stderr.strip() or f"exit {r.returncode}"
        log.error("systemctl_failed", msg=f"systemctl {verb} {' '.join(units)}: {why}", verb=verb,
                  units=list(units))
        return why
    return None


def stop_holding_units(backend: Backend, gpus: Sequence[int], allowed: Sequence[str],
                       run: Callable[[str, Sequence[str]], object] = systemctl) -> List[str]:
    """Stop the configured client units that hold these GPUs (device node open, or processes on instances);
    returns the units stopped (to be started again)."""
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
