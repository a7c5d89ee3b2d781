"""After an apply or a watchdog check: tell the world around the GPUs (CDI spec refresh, Prometheus metrics).

The two hooks the apply paths and migd-watch call; both run under /run/migd/lock (which keeps metrics writers
apart) and never raise: the GPUs are applied or checked either way, a failure here is a logged warning.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import cdi, metrics
from .errors import DriverError, MigdError
from .hostenv import HostEnv
from .log import get_logger
from .model import Config

if TYPE_CHECKING:
    from .backend import Backend
    from .cdi import AppliedGpu
    from .layout import DesiredGpu

log = get_logger()


def after_apply(backend: Backend, cfg: Config, env: HostEnv, desired: Mapping[int, DesiredGpu],
                results: Mapping[int, AppliedGpu], ok: bool,
                started: float) -> None:
    """After any apply (boot, `migd apply`, a watchdog re-apply: Engine.apply); `ok`: the apply's exit code was 0;
    `started`: env.clock.monotonic() at its start. The CDI refresh goes through env.systemctl, the metrics file is
    env's (a simulated host's own)."""
    try:
        _after_apply(backend, cfg, env, desired, results, ok, started)
    except Exception as e:  # the GPUs are applied whatever happens here
        log.error("publish_failed", msg=f"after the apply: {type(e).__name__}: {e}", exc_info=True)


def after_check(cfg: Config, env: HostEnv, backend: Backend,
                desired: Optional[Mapping[int, DesiredGpu]], no_gpus: bool = False) -> None:
    """After each migd-watch check, with its (still open, maybe never opened) backend and the desired layouts the
    check compared against (None: the check failed before it had them): the GPUs are looked at again from the
    backend's cache, so no extra NVML reads. no_gpus: nothing is selected on this host and there is no driver to
    read (a GPU-less host): a successful check of no GPU."""
    try:
        _after_check(cfg, env, backend, desired, no_gpus)
    except Exception as e:  # never break the watchdog's loop
        log.error("publish_failed", msg=f"after the check: {type(e).__name__}: {e}", exc_info=True)


def _after_apply(backend: Backend, cfg: Config, env: HostEnv, desired: Mapping[int, DesiredGpu],
                 results: Mapping[int, AppliedGpu], ok: bool,
                 started: float) -> None:
    duration = env.clock.monotonic() - started
    cdi.refresh_after(cfg.daemon.cdi_refresh, cdi.changed_gpus(results.values()), env)
    path = env.metrics_path(cfg.daemon.metrics_file)
    if not path:
        _metrics_written("")
        return
    views = observe(backend, desired)
    # GPUs that cannot be listed: their series are dropped, never carried over stale
    _write(path, lambda prev: metrics.apply_samples(views or [], ok, env.clock.time(), duration), metrics.APPLY_FAMILIES)


def _after_check(cfg: Config, env: HostEnv, backend: Backend,
                 desired: Optional[Mapping[int, DesiredGpu]], no_gpus: bool = False) -> None:
    path = env.metrics_path(cfg.daemon.metrics_file)
    if not path:
        _metrics_written("")
        return
    views: Optional[List[metrics.GpuView]] = None
    try:
        views = [] if no_gpus else observe(backend, desired or {})
    except (DriverError, MigdError, ValueError, RuntimeError) as e:
        log.debug("metrics_check_partial", msg=f"check metrics without GPU series: {e}")
    success = no_gpus or (desired is not None and views is not None and not any(v.unreadable or v.lost for v in views))
    _write(path, lambda prev: metrics.check_samples(views or [], success, env.clock.time(), prev), metrics.CHECK_FAMILIES)


def observe(backend: Backend, desired: Mapping[int, DesiredGpu]) -> Optional[List[metrics.GpuView]]:
    """Every GPU as the metrics show it, from the backend (cached reads); None when the GPU list cannot be read."""
    from .plan import plan_gpu
    from .drift import layout_matches

    try:
        infos = backend.gpus()
    except DriverError:
        return None
    views = []
    for info in infos:
        view = metrics.GpuView(info.index, info.uuid, lost=bool(info.lost))
        views.append(view)
        if info.lost:
            continue
        d = desired.get(info.index)
        try:
            state = backend.state(info.index)
        except DriverError:
            view.unreadable = True
            continue
        view.mig_current, view.mig_pending = state.mig_current, state.mig_pending
        counts: Dict[str, int] = {}
        for gi in state.instances:
            profile = info.profile_by_id(gi.profile_id)
            name = profile.name if profile else str(gi.profile_id)
            counts[name] = counts.get(name, 0) + 1
        view.instances = counts
        if d is not None:
            want: Dict[str, int] = {}
            for inst in d.instances:
                want[inst.profile.name] = want.get(inst.profile.name, 0) + 1
            view.desired = want
            view.match = layout_matches(plan_gpu(info, d, state))
    return views


def _write(path: str, build: Callable[[List[metrics.Sample]], List[metrics.Sample]], owned: Sequence[str]) -> None:
    try:
        previous = metrics.read_samples(path)
        metrics.write(path, build(previous), owned, previous)
    except OSError as e:
        _metrics_failed(path, e)
        return
    _metrics_written(path)


# Why the metrics file cannot be written, as last said: (path, why). Said once (and again only when the reason
# changes), its recovery once, not at every check. Per process (migd-watch's checks and re-applies); one metrics file
# at a time, so a write to another path (the config changed) or none at all forgets it.
_trouble: Optional[Tuple[str, str]] = None


def metrics_trouble() -> Optional[str]:
    """Why the metrics file is not being written, while that lasts (for migd-watch's STATUS=); None when it is."""
    return _trouble[1] if _trouble else None


def carried() -> Optional[Tuple[str, str]]:
    """This process's metrics-file trouble, for migd-watch's reader process to hand back (see watch._in_child)."""
    return _trouble


def restore(trouble: Optional[Tuple[str, str]]) -> None:
    global _trouble
    _trouble = trouble


def _metrics_failed(path: str, e: OSError) -> None:
    global _trouble
    why = f"cannot write the metrics file {path}: {e.strerror or e}"
    if e.errno == errno.EROFS:  # ProtectSystem=strict: the units may write only the directories they list
        d = os.path.dirname(path)
        why += (f" (the units see it read-only: allow {d} with a drop-in, `systemctl edit migd-watch` and "
                f"`systemctl edit migd`, each with the two lines `[Service]` and `ReadWritePaths={d}`)")
    else:
        why += " ([daemon] metrics_file)"
    if _trouble == (path, why):
        log.debug("metrics_write_failed_again", msg=why, path=path)
        return
    _trouble = (path, why)
    log.warning("metrics_write_failed", msg=why, path=path)


def _metrics_written(path: str) -> None:
    global _trouble
    was, _trouble = _trouble, None
    if was is not None and was[0] == path:
        log.info("metrics_write_recovered", msg=f"the metrics file {path} is written again (after: {was[1]})",
                 path=path)
