"""migd-watch's re-apply policy (drift_policy = "reapply"), as a pure object: per GPU and round it decides "re-apply
now", "wait" (backoff), "given up", "held (busy)" or "not asked" (no drift, another policy, a stale config), and
says what to log, once per change. It reads no GPU, starts no thread or process and logs nothing itself; the time
comes from an injected clock, so every rule is tested by stepping a number (tests/test_reapply.py).

The rules: a drifted GPU is re-applied only when none of its instances has processes; a re-apply that changed
nothing and failed is retried with exponential backoff (watch_interval × 2^failures, at most BACKOFF_MAX_S); one
that changed the GPU and then had to roll back (or could not) is not retried on the same live layout: the same plan
on the same layout would destroy and re-create the same instances every round (on hardware: new UUIDs, and a
rollback that fails once leaves an instance destroyed for good). It is tried again when the GPU's layout changes,
the config is reloaded (the watcher forgets its tracks), or the drift clears.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, List, Optional, Tuple

from ._record import dataclass
from .engine import CheckStatus, GpuResult, Outcome
from .model import DriftPolicy

BACKOFF_MAX_S = 3600.0  # a failing re-apply is retried at most this rarely


class Verdict(Enum):
    """What to do with one GPU this round."""

    REAPPLY = "reapply"  # drifted, idle, not given up, backoff over: re-apply now
    WAIT = "wait"  # a failed re-apply's backoff has not run out
    GIVEN_UP = "given_up"  # a re-apply rolled back on this live layout: not again until it changes
    BUSY = "busy"  # drifted, but an instance has processes: never re-applied under them
    NOT_ASKED = "not_asked"  # no drift to repair, drift_policy is "report", or the config held is stale
    CLEARED = "cleared"  # the layout matches: backoff and give-up start afresh


class Level(Enum):
    """A log line's priority (the logger method's name)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Say:
    """One event for the watcher to log: level, event name, message, structured fields (in order)."""

    level: Level
    event: str
    msg: str
    fields: Tuple[Tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    says: Tuple[Say, ...] = ()


class ReapplyTrack:
    """What the policy remembers about one GPU between rounds (carried back from migd-watch's reader process)."""

    def __init__(self) -> None:
        self.held = ""  # why a drifted GPU is not re-applied ("busy"), logged once
        self.failures = 0  # consecutive failed re-applies
        self.retry_at = 0.0  # clock time before which no re-apply is tried (backoff)
        self.failure_logged: Optional[Tuple[str, str]] = None  # (outcome, message) last logged as reapply_failed
        self.given_up = False  # a re-apply was rolled back: not retried on the same live layout
        self.given_up_on: Optional[str] = None  # the live layout (found) seen after giving up

    def reset(self) -> None:
        self.held, self.failures, self.retry_at, self.failure_logged = "", 0, 0.0, None
        self.given_up, self.given_up_on = False, None


class ReapplyPolicy:
    """The rules above for one config: `decide` before a re-apply, `finished` after one, `cannot_start` when its
    NVML session or lock could not be had. Each mutates only the track it is given and returns what to log."""

    def __init__(self, clock: Callable[[], float], drift_policy: DriftPolicy, interval_s: float,
                 config_path: str, stale: bool = False):
        self.clock = clock
        self.drift_policy = drift_policy
        self.interval_s = interval_s
        self.config_path = config_path
        self.stale = stale  # the config on disk changed and does not load: never "repair" back to the one held

    def decide(self, track: ReapplyTrack, gpu: int, status: CheckStatus, found: str, busy: bool) -> Decision:
        """This round's verdict for `gpu` (its check status, live layout `found`, whether an instance is busy)."""
        if status == CheckStatus.OK:
            track.reset()
            return Decision(Verdict.CLEARED)
        if status != CheckStatus.DRIFT or self.drift_policy != DriftPolicy.REAPPLY or self.stale:
            return Decision(Verdict.NOT_ASKED)
        if busy:
            if track.held == "busy":
                return Decision(Verdict.BUSY)
            track.held = "busy"
            return Decision(Verdict.BUSY, (Say(Level.WARNING, "drift_not_reapplied", f"GPU {gpu}: drifted, but its "
                                                "instances have processes: not re-applying", (("gpu", gpu),)),))
        track.held = ""
        says: Tuple[Say, ...] = ()
        if track.given_up:
            if track.given_up_on is None:
                track.given_up_on = found  # the layout the failed re-apply left behind
            if found == track.given_up_on:
                return Decision(Verdict.GIVEN_UP)
            says = (Say(Level.INFO, "reapply_resumed", f"GPU {gpu}: its layout changed since re-applying it was "
                        "given up: re-applying again", (("gpu", gpu), ("found", found))),)
            track.reset()
        return Decision(Verdict.REAPPLY if self.clock() >= track.retry_at else Verdict.WAIT, says)

    def finished(self, track: ReapplyTrack, gpu: int, result: GpuResult) -> List[Say]:
        """A re-apply of `gpu` ended with `result`: success resets the track; a failure that changed nothing backs
        off; one that changed the GPU and then undid it (or could not) gives up on this live layout."""
        if result.outcome in (Outcome.APPLIED, Outcome.UNCHANGED):
            track.reset()
            return [Say(Level.INFO, "drift_reapplied", f"GPU {gpu}: re-applied after drift: {result.outcome.value}",
                        (("gpu", gpu), ("outcome", result.outcome.value)))]
        track.failures += 1
        if result.done and result.outcome in (Outcome.ROLLED_BACK, Outcome.FAILED, Outcome.LOST):
            track.given_up, track.given_up_on = True, None
            return [Say(Level.ERROR, "reapply_given_up", f"{result.message}; not re-applying GPU {gpu} again until "
                        f"its layout or {self.config_path} changes (fix it, then `migd apply` or `systemctl reload "
                        "migd-watch`)", (("gpu", gpu), ("outcome", result.outcome.value),
                                         ("failures", track.failures)))]
        delay = min(self.interval_s * 2 ** track.failures, BACKOFF_MAX_S)
        track.retry_at = self.clock() + delay
        key = (result.outcome.value, result.message)
        if track.failure_logged == key:
            return [Say(Level.DEBUG, "reapply_failed_again", f"GPU {gpu}: re-apply failed again; next in {delay:g} s",
                        (("gpu", gpu), ("failures", track.failures)))]
        track.failure_logged = key
        return [Say(Level.WARNING, "reapply_failed", f"{result.message}; re-apply retried with backoff (next in "
                    f"{delay:g} s, doubling up to {BACKOFF_MAX_S:g} s)",
                    (("gpu", gpu), ("outcome", result.outcome.value), ("retry_in", delay)))]


def cannot_start(previous: str, why: str) -> Say:
    """A re-apply could not start (lock busy, driver gone, config unusable): nothing changed, the next round decides
    again. A warning once per reason (`previous`: the reason last said), then debug."""
    if why != previous:
        return Say(Level.WARNING, "reapply_skipped", f"not re-applying now: {why}")
    return Say(Level.DEBUG, "reapply_skipped_again", f"not re-applying now: {why}")
