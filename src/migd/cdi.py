"""Keep the NVIDIA Container Toolkit's CDI spec (/var/run/cdi/nvidia.yaml) in step with the MIG layout.

The toolkit's nvidia-cdi-refresh.service regenerates the spec, but only on module load and toolkit upgrades: after
migd changes a GPU (boot, `migd apply`, a watchdog re-apply) the spec names MIG devices that no longer exist, and
containers fail with "unresolvable CDI devices". So after any apply that changed a GPU, migd queues a re-run.

Verb: `restart`, because the toolkit's unit is Type=oneshot with RemainAfterExit=yes: once it ran, `start` is a
no-op, and while it runs `start` merges into the running job, which may have read the layout before our change.
`restart` always queues a run that starts after this call.

Never a blocking job (`--no-block`): at boot migd.service runs inside the boot transaction, ordered Before=
nvidia-cdi-refresh.service, and the toolkit's unit is After=multi-user.target, which waits for migd.service. A
synchronous `systemctl restart` from inside migd would wait for a job that waits for migd: a deadlock until the
start timeout (NVIDIA/mig-parted PRs #432/#449 hit exactly this with their hooks). With --no-block the job is only
queued; at boot it merges with the pending start job and runs once migd has exited with the new layout in place.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Protocol, Sequence

from .hostenv import HostEnv
from .log import get_logger
from .plan import Action

log = get_logger()

UNIT = "nvidia-cdi-refresh.service"
AUTO, OFF = "auto", "off"


class AppliedGpu(Protocol):
    """What an apply reports per GPU (engine.GpuResult), as far as the CDI refresh needs it (read-only)."""

    @property
    def gpu(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def done(self) -> Sequence[Action]: ...


def changed_gpus(results: Iterable[AppliedGpu]) -> List[int]:
    """The GPUs whose MIG devices an apply changed: any action done but persistence mode (which no CDI spec
    reflects) and a MIG mode change left pending (nothing visible changed yet). A rolled-back or lost GPU counts
    too: its instances were re-created (new UUIDs) or partly changed."""
    def visible(r: AppliedGpu, a: Action) -> bool:
        return a.kind != "set_persistence" and not (a.kind == "set_mig_mode" and r.outcome == "pending")

    return sorted(r.gpu for r in results if any(visible(r, a) for a in r.done))


def decide(setting: str, changed: Sequence[int], load_state: Optional[str]) -> bool:
    """Pure: refresh when the setting allows it, a GPU changed, and systemd has the unit (LoadState "loaded";
    "not-found" when the toolkit is not installed, "masked" when the admin said no)."""
    return setting == AUTO and bool(changed) and load_state == "loaded"


def refresh_after(setting: str, changed: Sequence[int], env: HostEnv, unit: str = UNIT) -> bool:
    """Queue a re-run of the CDI refresh when `decide` says so; returns whether it was queued. Never raises: the
    layout is applied either way, a stale spec is a warning."""
    if setting != AUTO or not changed:
        return False
    state = env.unit_load_state(unit)
    if not decide(setting, changed, state):
        log.debug("cdi_refresh_skipped", msg=f"{unit}: {state or 'unknown'}: no CDI refresh", load_state=state)
        return False
    why = env.systemctl("restart", [unit], no_block=True, quiet=True)
    if why:
        log.warning("cdi_refresh_failed", msg=f"cannot queue {unit} after the MIG change (CDI spec may be stale: "
                                              f"run `systemctl restart {unit}`): {why}", unit=unit,
                    gpus=list(changed))
        return False
    log.info("cdi_refresh", msg=f"queued {unit} to regenerate the CDI spec for GPU(s) "
                                f"{', '.join(map(str, changed))}", unit=unit, gpus=list(changed))
    return True
