"""`[daemon] on_pending = "reboot-once"`: a MIG mode change still pending after the boot apply reboots the host once.

A pending change (an Ampere GPU that could not be reset, RESET_REQUIRED under pass-through, a client that started
early) takes effect at the next boot. Before asking systemd for the reboot, migd writes a marker under its state
directory (/var/lib/migd, the unit's StateDirectory=) naming the boot, the config and the GPUs. On a later boot:
- nothing pending: the reboot did it; logged, marker removed;
- still pending under the same config: never a second reboot (no loop, whatever happens); logged, the boot fails
  with exit 4 as with on_pending = "fail"; the marker stays until a boot finds nothing pending.
A marker that cannot be written means no reboot: without it a loop could not be ruled out.
"""

from __future__ import annotations

import hashlib
import json
import os
from ._record import dataclass
from typing import Dict, Optional, Sequence

from . import runstate
from .hostenv import HostEnv
from .log import get_logger
from .model import Config

log = get_logger()

MARKER = "reboot-once.json"
STAMP = "reboot-once.requested"  # in the run dir (/run/migd): gone after the reboot


def config_digest(cfg: Config) -> str:
    """The config as read (main file and drop-ins): a changed config may need its own reboot."""
    h = hashlib.sha256()
    for path in cfg.files or (cfg.path,):
        h.update(path.encode() + b"\0")
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError:
            pass
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Pending:
    gpu: int
    uuid: str


def _gpus(pending: Sequence[Pending]) -> str:
    return ", ".join(f"GPU {p.gpu}" for p in pending)


def read_marker(directory: str) -> Optional[Dict[str, object]]:
    path = os.path.join(directory, MARKER)
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (FileNotFoundError, NotADirectoryError):  # no marker (and no directory for one)
        return None
    except (OSError, ValueError) as e:  # unreadable: count it as there (no second reboot), say so
        log.warning("reboot_marker_unreadable", msg=f"{path}: unreadable ({e}): treating it as a reboot done")
        return {}


def after_boot_apply(cfg: Config, pending: Sequence[Pending], exit_code: int, env: HostEnv) -> bool:
    """Called once the boot apply is done. Returns True when a reboot was queued (the boot then exits 0).

    The marker goes into env.state_dir, the reboot is env.reboot (a simulated host reboots itself). A stamp in
    env.run_dir (on /run: cleared by every reboot) says "asked in this boot"; with the boot id it tells this boot
    from the next one even where a sandbox or container shows a stale boot id."""
    directory = env.state_dir
    this_boot = env.boot_id()
    stamp = os.path.join(env.run_dir, STAMP)
    marker = read_marker(directory)
    path = os.path.join(directory, MARKER)
    earlier = marker is not None and (marker.get("boot_id") != this_boot or not os.path.exists(stamp))
    if not pending:
        if earlier:
            named = marker.get("gpus") if marker else None
            gpus = ", ".join(f"GPU {g}" for g in named) if isinstance(named, dict) else ""
            how = "applied" if exit_code == 0 else f"MIG mode took effect, apply exit {exit_code}"
            log.info("reboot_once_done", msg=f"rebooted once for pending MIG mode{' on ' + gpus if gpus else ''}; "
                                             f"{how}", exit=exit_code)
            _remove(path)
        return False
    if cfg.daemon.on_pending != "reboot-once":
        return False
    if earlier and marker is not None and marker.get("config") in (config_digest(cfg), None):
        log.error("reboot_once_exhausted", msg=f"{_gpus(pending)}: MIG mode change still pending after the reboot; "
                                               f"not rebooting again ({path}); stop the GPU's clients and run migd "
                                               "apply, or reset the GPU", gpus=[p.gpu for p in pending])
        return False
    if marker is not None and not earlier:
        log.warning("reboot_once_requested", msg="a reboot for the pending MIG mode was already requested in "
                                                 "this boot; not asking again")
        return False
    doc = {"boot_id": this_boot, "config": config_digest(cfg), "gpus": {str(p.gpu): p.uuid for p in pending}}
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())  # the marker must survive the reboot it guards
        os.replace(tmp, path)
    except OSError as e:
        log.error("reboot_once_no_marker", msg=f"cannot write {path} ({e.strerror or e}): not rebooting, a reboot "
                                               "loop could not be ruled out")
        return False
    try:
        runstate.ensure_run_dir(os.path.dirname(stamp))
        with open(stamp, "w"):
            pass
    except (OSError, runstate.RunDirError) as e:
        log.error("reboot_once_no_marker", msg=f"cannot write {stamp} ({e}): not rebooting, a reboot loop could "
                                               "not be ruled out")
        _remove(path)
        return False
    log.warning("reboot_once", msg=f"{_gpus(pending)}: MIG mode change pending: rebooting once to let MIG mode "
                                   'take effect (on_pending = "reboot-once")', gpus=[p.gpu for p in pending])
    try:
        why = env.reboot()
    except OSError as e:
        why = str(e)
    if why is not None:
        log.error("reboot_once_failed", msg=f"systemctl reboot failed: {why}")
        return False
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("reboot_marker_stuck", msg=f"cannot remove {path}: {e.strerror or e}")

