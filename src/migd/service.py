"""What `migd apply` and `migd boot` do around the per-GPU engine: wait for the driver, take the lock, stop and
restart client units on request, apply every selected GPU, and record the result in /run/migd."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Dict, List, Sequence

from . import apply as engine
from . import errors as E
from . import publish, report, runstate
from .errors import DriverError
from .holders import describe, pids_holding, unit_of
from .log import get_logger
from .model import Config, GpuInfo
from .plan import plan_gpu

log = get_logger()

_DRIVER_ABSENT = (E.DRIVER_NOT_LOADED, E.LIBRARY_NOT_FOUND)


def wait_for_driver(make: Callable[[], object], timeout: float):
    """Open a backend, retrying with backoff while the NVIDIA driver is not (yet) there."""
    deadline = time.monotonic() + timeout
    delay, attempt = 0.25, 0
    while True:
        attempt += 1
        backend = make()
        try:
            backend.open()
            if attempt > 1:
                log.info("driver_ready", msg=f"NVIDIA driver ready after {attempt} attempts", attempts=attempt)
            return backend
        except DriverError as e:
            if e.code not in _DRIVER_ABSENT:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError(e.code, "nvmlInit", None,
                                  f"no NVIDIA driver after {timeout:g} s (driver_wait_timeout): is the nvidia kernel "
                                  "module installed and loaded? (`lsmod | grep nvidia`, `nvidia-smi`)") from None
            log.info("driver_wait", msg=f"waiting for the NVIDIA driver ({E.code_name(e.code)}), retry in "
                                        f"{min(delay, left):.1f} s", attempt=attempt, code=E.code_name(e.code))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def apply_all(backend, cfg: Config, desired: Dict[int, object], stop_clients: bool = False) -> int:
    """Apply every selected GPU under the lock; returns the exit code. The caller opened the backend."""
    started = time.monotonic()
    infos = backend.gpus()
    persistence = cfg.daemon.persistence_mode or None

    def holders(i: int) -> List[str]:
        return [str(h) for h in describe(pids_holding(backend.device_nodes(i))) if h.pid != os.getpid()]

    def run(indices: Sequence[int]) -> Dict[int, engine.GpuResult]:
        out = {}
        for i in indices:
            try:
                out[i] = engine.apply_gpu(backend, infos[i], desired[i], persistence, holders)
            except DriverError as e:  # reading the GPU failed before anything changed
                if e.code == E.GPU_IS_LOST:  # fell off the bus since migd started: the same report as mid-apply
                    msg = f"GPU {i}: lost (fell off the bus) before it was applied: {e}; check `dmesg` for Xid errors"
                    log.critical("gpu_lost", msg=msg, gpu=i, call=e.call)
                    out[i] = engine.GpuResult(i, engine.LOST, msg)
                else:
                    log.error("gpu_unreadable", msg=str(e), gpu=i, code=E.code_name(e.code))
                    out[i] = engine.GpuResult(i, engine.FAILED, str(e))
        return out

    with runstate.locked(cfg.daemon.lock_timeout):
        results = {info.index: _lost_at_start(info) for info in infos if info.lost}
        results.update(run(sorted(desired)))
        blocked = [i for i, r in results.items() if r.outcome in (engine.PENDING, engine.REFUSED)]
        if stop_clients and blocked:
            stopped = _stop_holding_units(backend, blocked, cfg.daemon.stop_clients)
            if stopped:
                try:
                    results.update(run(blocked))
                finally:
                    _systemctl("start", stopped)
                    log.info("clients_restarted", msg=f"restarted {', '.join(stopped)}", units=stopped)
        record(backend, cfg, desired, results, infos)
        publish.after_apply(backend, cfg, desired, results, started)  # CDI refresh, metrics file (under the lock)
    for r in results.values():
        print(r.message)
    return engine.exit_code(list(results.values()))


def _lost_at_start(info: GpuInfo) -> engine.GpuResult:
    msg = (f"GPU {info.index}: lost (fell off the bus) before migd could read it: not configured; the other GPUs "
           "are; check `dmesg` for Xid errors")
    log.critical("gpu_lost", msg=msg, gpu=info.index)
    return engine.GpuResult(info.index, engine.LOST, msg)


def _stop_holding_units(backend, gpus: Sequence[int], allowed: Sequence[str]) -> List[str]:
    """Stop the configured client units that hold these GPUs (device node open, or processes on instances)."""
    pids = set()
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
        _systemctl("stop", to_stop)
    return to_stop


def _systemctl(verb: str, units: Sequence[str]) -> None:
    r = subprocess.run(["systemctl", verb, "--", *units], capture_output=True, text=True, check=False)
    if r.returncode:
        log.error("systemctl_failed", msg=f"systemctl {verb} {' '.join(units)}: {r.stderr.strip()}", verb=verb,
                  units=list(units))


def current_infos(backend, before: Sequence[GpuInfo]) -> List[GpuInfo]:
    """The GPUs' infos re-read (a MIG mode change may change what a GPU reports), or the ones read before the
    apply where that fails: a GPU lost during the apply must not stop the report about the others."""
    try:
        return backend.gpus()
    except DriverError:
        return list(before)


def record(backend, cfg: Config, desired: Dict[int, object], results: Dict[int, engine.GpuResult],
           infos: Sequence[GpuInfo] = ()) -> None:
    """Write /run/migd/state.json and devices.env from the live layout after apply (lost GPUs: outcome only)."""
    infos = current_infos(backend, infos) if infos else backend.gpus()
    gpus = []
    for i in sorted(results):
        info = infos[i]
        if i not in desired:  # lost before it could be read
            gpus.append({"index": i, "uuid": info.uuid, "name": info.name, "outcome": results[i].outcome,
                         "message": results[i].message, "mig": None, "instances": []})
            continue
        try:
            state = backend.state(i)
        except DriverError:
            gpus.append({"index": i, "uuid": info.uuid, "name": info.name, "outcome": results[i].outcome,
                         "message": results[i].message, "mig": None, "instances": []})
            continue
        plan = plan_gpu(info, desired[i], state)
        names = report.names_by_gi(plan)
        instances = []
        for gi in state.instances:
            profile = info.profile_by_id(gi.profile_id)
            instances.append({"name": names.get(gi.id), "profile": profile.name if profile else None,
                              "gi_id": gi.id, "placement": str(gi.placement),
                              "uuid": gi.compute[0].uuid if len(gi.compute) == 1 else None,
                              "compute": [ci.uuid for ci in gi.compute]})
        gpus.append({"index": i, "uuid": info.uuid, "name": info.name, "outcome": results[i].outcome,
                     "message": results[i].message, "mig": state.mig_current, "instances": instances})
    try:
        runstate.write_results(gpus, cfg.path)
    except OSError as e:
        log.error("state_write_failed", msg=f"cannot write {runstate.run_dir()}: {e.strerror}")
