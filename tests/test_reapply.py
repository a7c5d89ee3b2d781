"""reapply.ReapplyPolicy: migd-watch's re-apply rules as a pure object, on a stepped clock: no thread, no process,
no GPU. (tests/test_watch.py runs the same rules through a real watcher and the simulator.)"""

from __future__ import annotations

from migd.engine import CheckStatus, GpuResult, Outcome
from migd.model import DriftPolicy
from migd.plan import Action, ActionKind
from migd.reapply import BACKOFF_MAX_S, Level, ReapplyPolicy, ReapplyTrack, Verdict, cannot_start

DRIFT, OK = CheckStatus.DRIFT, CheckStatus.OK


def _policy(now, interval=1.0, drift_policy=DriftPolicy.REAPPLY, stale=False):
    return ReapplyPolicy(lambda: now[0], drift_policy, interval, "/etc/migd.toml", stale=stale)


def _events(says):
    return [(s.level, s.event) for s in says]


def _refused(gpu=0):
    return GpuResult(gpu, Outcome.REFUSED, f"GPU {gpu}: create refused")


def _rolled_back(gpu=0):
    return GpuResult(gpu, Outcome.ROLLED_BACK, f"GPU {gpu}: rolled back", done=[Action(ActionKind.DESTROY_GI, gpu)])


def test_a_failing_reapply_backs_off_doubling_up_to_the_cap_and_warns_once():
    now = [0.0]
    policy, track = _policy(now), ReapplyTrack()
    tried = []
    for t in range(16):  # one round a second
        now[0] = float(t)
        decision = policy.decide(track, 0, DRIFT, "found", busy=False)
        assert decision.says == ()
        if decision.verdict == Verdict.REAPPLY:
            tried.append(t)
            says = policy.finished(track, 0, _refused())
            assert len(says) == 1
        else:
            assert decision.verdict == Verdict.WAIT
    assert tried == [0, 2, 6, 14]  # backoff 2, 4, 8 s
    said = []
    track2 = ReapplyTrack()
    for _ in range(3):
        said += _events(policy.finished(track2, 0, _refused()))
    assert said == [(Level.WARNING, "reapply_failed"), (Level.DEBUG, "reapply_failed_again"),
                    (Level.DEBUG, "reapply_failed_again")]
    track2.failures = 40
    policy.finished(track2, 0, _refused())
    assert track2.retry_at - now[0] == BACKOFF_MAX_S


def test_success_or_a_cleared_drift_starts_backoff_afresh():
    now = [0.0]
    policy, track = _policy(now), ReapplyTrack()
    policy.finished(track, 0, _refused())
    assert policy.decide(track, 0, DRIFT, "x", busy=False).verdict == Verdict.WAIT
    says = policy.finished(track, 0, GpuResult(0, Outcome.APPLIED, ""))
    assert _events(says) == [(Level.INFO, "drift_reapplied")] and dict(says[0].fields) == {"gpu": 0,
                                                                                          "outcome": "applied"}
    assert (track.failures, track.retry_at) == (0, 0.0)
    policy.finished(track, 0, _refused())
    assert policy.decide(track, 0, OK, "x", busy=False).verdict == Verdict.CLEARED
    assert policy.decide(track, 0, DRIFT, "x", busy=False).verdict == Verdict.REAPPLY


def test_busy_instances_hold_the_reapply_and_say_so_once_per_change():
    now = [0.0]
    policy, track = _policy(now), ReapplyTrack()
    first = policy.decide(track, 3, DRIFT, "x", busy=True)
    again = policy.decide(track, 3, DRIFT, "x", busy=True)
    assert (first.verdict, again.verdict) == (Verdict.BUSY, Verdict.BUSY)
    assert _events(first.says) == [(Level.WARNING, "drift_not_reapplied")] and again.says == ()
    assert dict(first.says[0].fields) == {"gpu": 3}
    assert policy.decide(track, 3, DRIFT, "x", busy=False).verdict == Verdict.REAPPLY
    assert _events(policy.decide(track, 3, DRIFT, "x", busy=True).says) == [(Level.WARNING, "drift_not_reapplied")]


def test_a_rolled_back_reapply_is_given_up_on_that_layout_and_resumed_when_it_changes():
    now = [0.0]
    policy, track = _policy(now), ReapplyTrack()
    says = policy.finished(track, 0, _rolled_back())
    assert _events(says) == [(Level.ERROR, "reapply_given_up")] and "/etc/migd.toml" in says[0].msg
    for t in (0.0, 10_000.0, 100_000.0):  # long past any backoff
        now[0] = t
        assert policy.decide(track, 0, DRIFT, "left-behind", busy=False).verdict == Verdict.GIVEN_UP
    resumed = policy.decide(track, 0, DRIFT, "changed by hand", busy=False)
    assert resumed.verdict == Verdict.REAPPLY and _events(resumed.says) == [(Level.INFO, "reapply_resumed")]
    assert not track.given_up


def test_nothing_is_asked_without_drift_under_log_or_with_a_stale_config():
    now = [0.0]
    for status in (CheckStatus.PENDING, CheckStatus.LOST, CheckStatus.ERROR):
        assert _policy(now).decide(ReapplyTrack(), 0, status, "x", busy=False).verdict == Verdict.NOT_ASKED
    assert _policy(now, drift_policy=DriftPolicy.LOG).decide(
        ReapplyTrack(), 0, DRIFT, "x", busy=False).verdict == Verdict.NOT_ASKED
    assert _policy(now, stale=True).decide(ReapplyTrack(), 0, DRIFT, "x", busy=False).verdict == Verdict.NOT_ASKED


def test_a_reapply_that_cannot_start_warns_once_per_reason():
    assert (cannot_start("", "lock busy").level, cannot_start("", "lock busy").event) == (Level.WARNING,
                                                                                           "reapply_skipped")
    assert cannot_start("lock busy", "lock busy").level == Level.DEBUG
    assert cannot_start("lock busy", "driver gone").level == Level.WARNING
