"""The watchdog's checker, boot's driver wait and apply's --stop-clients, on a shared simulated host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import reliability as R
from migd import site
from migd import cli, clients, sim
from migd import errors as E
from migd.sim.host import SimHost, load_state
from migd.watch import Watcher

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["4g", "2g", "1g"]

    [daemon]
    watch_interval = 1
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield dict(R.watch_site(tmp_path, monkeypatch, CONFIG), tmp=tmp_path)
    sim.uninstall()
    while _open_captures:
        _open_captures.pop().__exit__(None, None, None)


class Events:
    """What migd logs while a test runs (event name + fields), through structlog.testing.capture_logs."""

    def __init__(self, monkeypatch):
        from structlog.testing import capture_logs

        self._capture = capture_logs()
        self._entries = self._capture.__enter__()
        _open_captures.append(self._capture)  # the capture ends with the test (see the env fixture)

    @property
    def items(self):
        return [(e["log_level"], e["event"], {k: v for k, v in e.items() if k not in ("log_level", "event")})
                for e in self._entries]

    def named(self, event):
        return [f for _, e, f in self.items if e == event]


_open_captures: list = []


def apply(env, *extra):
    from migd.log import setup

    try:
        return cli.main(["--sim-state", env["state"], "--config", env["config"], "apply", *extra])
    finally:
        setup(level="info")  # apply at a terminal logs warnings only; the watcher after it logs at info


def test_drift_logged_once_per_change_and_cleared_once(env, monkeypatch, capsys):
    assert apply(env) == 0
    events = Events(monkeypatch)
    w = Watcher(env["config"], site.build(None, env["state"]))
    assert w.check_once() == {0: "ok", 1: "ok"}
    host = SimHost.create("", env["state"])
    gi = host.gpus[0]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(0, gi["id"])
    host.save()
    for _ in range(3):
        assert w.check_once()[0] == "drift"
    drift = events.named("drift")
    assert len(drift) == 1, drift
    assert drift[0]["gpu"] == 0 and "1g.10gb@6:1" in drift[0]["expected"] and "1g.10gb@6:1" not in drift[0]["found"]
    assert apply(env) == 0
    for _ in range(2):
        assert w.check_once() == {0: "ok", 1: "ok"}
    assert len(events.named("drift_cleared")) == 1
    assert len(events.named("drift")) == 1
    assert "2 GPU(s) match" in w.summary


def test_watch_holds_no_nvml_between_checks_and_skips_while_locked(env, monkeypatch):
    from migd import runstate

    assert apply(env) == 0
    w = Watcher(env["config"], site.build(None, env["state"]))
    w.check_once()
    import pynvml

    assert pynvml.nvmlLib is None or pynvml.nvmlLib.initialized == 0  # init, read, shutdown
    with runstate.locked(1, directory=w.run_dir):
        assert w.check_once() == {}  # apply in progress: skipped


def test_reapply_policy_restores_idle_gpu_but_never_a_busy_one(env, monkeypatch):
    with open(env["config"], "a") as f:
        f.write('drift_policy = "reapply"\n')
    assert apply(env) == 0
    events = Events(monkeypatch)
    host = SimHost.create("", env["state"])
    for gpu in (0, 1):
        gi = host.gpus[gpu]["gis"][-1]
        gi["cis"] = []
        host.destroy_gi(gpu, gi["id"])
    busy_gi = host.gpus[1]["gis"][0]
    host.add_process(1, 4242, busy_gi["id"], busy_gi["cis"][0]["id"])
    host.save()
    w = Watcher(env["config"], site.build(None, env["state"]))
    w.check_once()
    after = load_state(env["state"])
    assert len(after["gpus"][0]["gis"]) == 3  # idle GPU re-applied
    assert len(after["gpus"][1]["gis"]) == 2  # busy GPU left alone
    assert events.named("drift_reapplied")[0]["gpu"] == 0
    assert events.named("drift_not_reapplied")[0]["gpu"] == 1


def test_sighup_reloads_config_and_bad_config_is_kept_out(env, monkeypatch):
    assert apply(env) == 0
    events = Events(monkeypatch)
    w = Watcher(env["config"], site.build(None, env["state"]))
    with open(env["config"], "w") as f:
        f.write("[[gpu]]\nselect = 'all'\nmig = [\n")
    w._reload()
    assert events.named("config_invalid") and w.cfg.entries  # previous config kept
    with open(env["config"], "w") as f:
        f.write('[[gpu]]\nselect = "all"\nmig = true\ninstances = ["7g"]\n')
    w._reload()
    assert events.named("config_reloaded")
    assert w.check_once() == {0: "drift", 1: "drift"}


def test_watch_process_notifies_systemd_and_stops_on_sigterm(env, tmp_path):
    """Run `migd watch` as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC): READY=1, STATUS=, WATCHDOG=1 arrive."""
    import socket

    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(10)
    proc_env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1500000",
                    MIGD_RUN_DIR=str(tmp_path / "run"))
    p = subprocess.Popen([sys.executable, "-m", "migd.cli", "--sim-state", env["state"], "--config", env["config"],
                          "watch"], env=proc_env,
                         stderr=subprocess.PIPE, text=True)
    got = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ({"READY=1", "WATCHDOG=1"} <= set(got)
                                                   and any(m.startswith("STATUS=") for m in got)):
            got.append(s.recv(4096).decode())
        assert "READY=1" in got and "WATCHDOG=1" in got, got
        assert any(m.startswith("STATUS=") for m in got)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        s.close()


def test_hung_check_withholds_watchdog_pings(env, monkeypatch):
    """The checker thread itself stuck (past the hang limit, when its reader process is killed, and the grace for
    that): no more pings. While a reader process is only waited for, the pings go on."""
    from migd.watch import KILL_GRACE_S

    w = Watcher(env["config"], site.build(None, env["state"]))
    w.watchdog_s = 0.2
    assert w._progressing()
    w.busy_since = time.monotonic() - 0.5
    assert w._progressing()
    w.busy_since = time.monotonic() - KILL_GRACE_S - 1.0
    assert not w._progressing()
    w.busy_since = None
    assert w._progressing()


def test_boot_waits_for_a_late_driver(env, monkeypatch):
    host = SimHost.create("", env["state"])
    host.state["driver_ready_at"] = time.time() + 1.0
    host.save()
    t = time.monotonic()
    code = cli.main(["--sim-state", env["state"], "--config", env["config"], "boot"])
    assert code == 0 and time.monotonic() - t >= 0.9
    assert len(load_state(env["state"])["gpus"][0]["gis"]) == 3


def test_boot_with_driver_not_loaded_fails_after_timeout(env, capsys):
    host = SimHost.create("", env["state"])
    host.state["driver"] = "not-loaded"  # installed: worth waiting for (no driver at all: tests/test_boot_cases.py)
    host.save()
    with open(env["config"], "a") as f:
        f.write("driver_wait_timeout = 0.5\n")
    code = cli.main(["--sim-state", env["state"], "--config", env["config"], "boot"])
    assert code == E.EXIT_FAILURE
    assert "nvidia kernel module installed but not loaded after 0.5 s" in capsys.readouterr().err


def test_stop_clients_stops_exactly_the_holding_units_and_restarts_them(env, monkeypatch, capsys):
    host = SimHost.create("", env["state"])
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); time.sleep(60)",
                               host.device_node(0)])
    R.wait_until_holding(holder, host.device_node(0))
    calls = []

    def fake_systemctl(verb, units, **_):
        calls.append((verb, list(units)))
        if verb == "stop":
            holder.kill()
            holder.wait()

    # simulated GPUs on this machine's host environment, whose systemctl (clients.systemctl) is faked here: a
    # simulated host's own systemctl only records (tests/test_simulated_host.py)
    monkeypatch.setenv("MIGD_SIM_HOST", "real")
    monkeypatch.setattr(clients, "systemctl", fake_systemctl)
    monkeypatch.setattr(clients, "unit_of", lambda pid: "nvidia-dcgm.service" if pid == holder.pid else None)
    with open(env["config"], "a") as f:
        f.write('stop_clients = ["nvidia-dcgm.service", "nvsm.service"]\n')
    # H100: the mode change is resetless but still refused while a client holds the GPU
    try:
        assert apply(env) == E.EXIT_PENDING  # without --stop-clients: pending, nothing stopped
        assert calls == []
        assert apply(env, "--stop-clients") == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert calls == [("stop", ["nvidia-dcgm.service"]), ("start", ["nvidia-dcgm.service"])]
    assert all(len(g["gis"]) == 3 for g in load_state(env["state"])["gpus"])


def test_lost_gpu_reported_once_others_still_checked(env, monkeypatch):
    assert apply(env) == 0
    events = Events(monkeypatch)
    host = SimHost.create("", env["state"])
    host.gpus[1]["lost"] = True
    host.save()
    w = Watcher(env["config"], site.build(None, env["state"]))
    for _ in range(3):
        assert w.check_once() == {0: "ok", 1: "lost"}
    errors = events.named("check_error")
    assert len(errors) == 1 and errors[0]["gpu"] == 1 and "lost" in errors[0]["error"]


# --- issue 13: the watchdog fails visibly, says what is wrong, and logs each problem once -------------------------


def _watcher(env, clock=None):
    w = Watcher(env["config"], site.build(None, env["state"]))
    if clock is not None:
        w.clock = lambda: clock[0]
    return w


def _set_driver(env, driver):
    host = SimHost.create("", env["state"])
    host.state["driver"] = driver
    host.save()


def test_invalid_config_exits_2_with_one_line_naming_file_and_line(env, monkeypatch):
    """migd-watch.service does not restart exit 2 (RestartPreventExitStatus=2): the unit fails visibly; the journal
    gets one error per problem, each naming file:line, and STATUS= says why."""
    with open(env["config"], "w") as f:
        f.write('[[gpu]]\nselect = "all"\nmig = "yes"\n')
    events = Events(monkeypatch)
    assert cli.main(["--sim-state", env["state"], "--config", env["config"], "watch"]) == E.EXIT_USAGE
    errors = [(e, f["msg"]) for level, e, f in events.items if level == "error"]
    assert len(errors) == 1, errors
    assert errors[0][0] == "config_invalid" and f"{env['config']}:3" in errors[0][1], errors
    assert errors[0][1].startswith("invalid configuration, no GPU touched: "), errors
    from migd import log as migd_log

    assert migd_log._output is not None and migd_log._output.identifier == "migd-watch"
    sent = []
    with pytest.raises(E.ConfigError):
        Watcher(env["config"], site.build(None, env["state"]), notify=sent.append)
    assert len(sent) == 1 and sent[0].startswith("STATUS=invalid configuration") and f"{env['config']}:3" in sent[0]


def test_status_says_what_is_wrong(env, monkeypatch):
    assert apply(env) == 0
    w = _watcher(env)
    w.check_once()
    assert w.summary.startswith("2 GPU(s) match the layout"), w.summary
    host = SimHost.create("", env["state"])
    gi = host.gpus[1]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(1, gi["id"])
    host.save()
    w.check_once()
    assert w.summary.startswith("1 of 2 GPU(s) drifted: 1 "), w.summary
    _set_driver(env, "not-loaded")
    assert w.check_once() == {}
    assert w.summary.startswith("cannot read GPUs: ") and "DRIVER_NOT_LOADED" in w.summary, w.summary
    assert "match" not in w.summary
    with open(env["config"], "w") as f:
        f.write('[[gpu]]\nselect = "all"\nhosts = ["elsewhere"]\nmig = true\ninstances = ["7g"]\n')
    w._reload()
    w.check_once()
    assert w.summary.startswith(f"no GPU managed by {env['config']} on this host"), w.summary


def test_drift_not_reapplied_logged_once_while_busy(env, monkeypatch):
    with open(env["config"], "a") as f:
        f.write('drift_policy = "reapply"\n')
    assert apply(env) == 0
    events = Events(monkeypatch)
    host = SimHost.create("", env["state"])
    gi = host.gpus[0]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(0, gi["id"])
    busy = host.gpus[0]["gis"][0]
    host.add_process(0, 4242, busy["id"], busy["cis"][0]["id"])
    host.save()
    w = _watcher(env)
    for _ in range(4):
        assert w.check_once()[0] == "drift"
    assert len(events.named("drift_not_reapplied")) == 1
    assert len(events.named("drift")) == 1
    assert not events.named("drift_reapplied")


def _missing_instance(env):
    host = SimHost.create("", env["state"])
    gi = host.gpus[0]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(0, gi["id"])
    host.save()


def test_failing_reapply_backs_off_exponentially_and_logs_once(env, monkeypatch):
    """A re-apply that fails without changing anything (the create is refused): retried after 2, 4, 8 ...
    watch_interval, never every round; one warning for the repeated failure; reset when it succeeds."""
    with open(env["config"], "a") as f:
        f.write('drift_policy = "reapply"\n')
    assert apply(env) == 0
    _missing_instance(env)
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES/gpu0")
    events = Events(monkeypatch)
    now = [0.0]
    w = _watcher(env, now)
    attempts = []
    for t in range(16):  # watch_interval = 1: one round a second
        now[0] = float(t)
        before = len(events.named("apply_failed"))
        assert w.check_once()[0] == "drift"
        if len(events.named("apply_failed")) > before:
            attempts.append(t)
    assert attempts == [0, 2, 6, 14], attempts  # backoff 2, 4, 8 s
    assert len(events.named("reapply_failed")) == 1, events.named("reapply_failed")
    assert len(events.named("drift")) == 1
    w.gpus[0].failures = 40
    w._reapply_done(0, w_result(0))
    assert w.gpus[0].retry_at - now[0] == 3600  # doubling stops at an hour
    monkeypatch.delenv("MIGD_SIM_FAULTS")
    now[0] += 3600
    assert w.check_once() == {0: "drift", 1: "ok"}  # re-applied in this round; the next check sees it
    assert events.named("drift_reapplied")[0]["gpu"] == 0
    assert w.check_once() == {0: "ok", 1: "ok"}
    assert len(events.named("drift_cleared")) == 1 and w.gpus[0].failures == 0


def test_reapply_that_cannot_start_is_logged_once_per_reason(env, monkeypatch):
    """The re-apply's own NVML session cannot open (the driver went away between the check and the re-apply, or
    the lock is busy): nothing changed, the next round decides again; one warning per reason, not one per round."""
    from migd.errors import DriverError, LockBusy

    with open(env["config"], "a") as f:
        f.write('drift_policy = "reapply"\n')
    assert apply(env) == 0
    _missing_instance(env)
    events = Events(monkeypatch)
    w = _watcher(env, [0.0])
    reasons = [DriverError(9, "nvmlInit")] * 3 + [LockBusy("another migd holds the lock")] * 2
    real_engine = w._engine

    def engine(read_only):
        e = real_engine(read_only)
        if not read_only:
            reason = reasons[w.checks - 1]  # this round's (each re-apply runs in its own reader process)

            def refuse():
                raise reason
            e.backend.open = refuse
        return e

    monkeypatch.setattr(w, "_engine", engine)
    for _ in range(5):
        assert w.check_once()[0] == "drift"
    skipped = [e["msg"] for e in events.named("reapply_skipped")]
    assert len(skipped) == 2 and "DRIVER_NOT_LOADED" in skipped[0] and "holds the lock" in skipped[1], skipped
    assert w.checks == len(reasons)


def w_result(gpu):
    from migd.engine import GpuResult, Outcome

    return GpuResult(gpu, Outcome.REFUSED, f"GPU {gpu}: refused")


def test_rolled_back_reapply_is_not_retried_on_the_same_layout(env, monkeypatch):
    """An idle hand-made 1g where the config wants a 2g: the re-apply destroys it, the create fails, the rollback
    re-creates it. Retrying would destroy and re-create it every round: given up (logged once) until the GPU's
    layout changes; then it is re-applied."""
    with open(env["config"], "a") as f:
        f.write('drift_policy = "reapply"\n')
    assert apply(env) == 0
    host = SimHost.create("", env["state"])
    two_g = next(gi for gi in host.gpus[0]["gis"] if gi["size"] == 2)
    two_g["cis"] = []
    host.destroy_gi(0, two_g["id"])
    one_g = next(gi for gi in host.gpus[0]["gis"] if gi["size"] == 1)
    hand_id = host.create_gi(0, one_g["profile_id"], (two_g["start"], 1))  # by hand, behind migd's back; idle
    host.create_ci(0, hand_id, one_g["cis"][0]["profile_id"])
    host.save()
    # the first create of every apply fails (each re-apply opens NVML afresh); the rollback's create succeeds
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES@1/gpu0")
    events = Events(monkeypatch)
    now = [0.0]
    w = _watcher(env, now)
    for t in range(0, 8000, 500):  # long past any backoff
        now[0] = float(t)
        assert w.check_once()[0] == "drift"
    assert len(events.named("destroy_gi")) == 1, events.named("destroy_gi")
    assert len(events.named("rolled_back")) == 1
    given_up = events.named("reapply_given_up")
    assert len(given_up) == 1 and given_up[0]["gpu"] == 0, given_up
    assert "re-apply given up on GPU 0" in w.summary, w.summary
    monkeypatch.delenv("MIGD_SIM_FAULTS")
    w.check_once()
    assert len(events.named("destroy_gi")) == 1  # still the same layout: still left alone
    host = SimHost.create("", env["state"])
    hand = next(gi for gi in host.gpus[0]["gis"] if (gi["start"], gi["size"]) == (two_g["start"], 1))
    hand["cis"] = []
    host.destroy_gi(0, hand["id"])  # the admin removes it: a new layout
    host.save()
    w.check_once()
    assert len(events.named("reapply_resumed")) == 1
    assert events.named("drift_reapplied")[0]["gpu"] == 0
    assert w.check_once()[0] == "ok"


def test_check_failure_logged_once_with_its_text_once_and_recovery(env, monkeypatch):
    assert apply(env) == 0
    events = Events(monkeypatch)
    w = _watcher(env)
    real = Watcher._check
    monkeypatch.setattr(Watcher, "_check", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    for _ in range(3):
        assert w.check_once() == {}
    failed = [(level, f) for level, e, f in events.items if e == "check_failed"]
    assert len(failed) == 1 and failed[0][0] == "error", failed
    assert failed[0][1]["msg"].count("boom") == 1 and "exc_info" not in failed[0][1], failed
    assert "layout check failed: RuntimeError: boom" in w.summary
    monkeypatch.setattr(Watcher, "_check", real)
    for _ in range(2):
        assert w.check_once() == {0: "ok", 1: "ok"}
    assert len(events.named("check_recovered")) == 1
    assert w.summary.startswith("2 GPU(s) match"), w.summary


def test_driver_outage_logged_once_and_its_recovery(env, monkeypatch):
    assert apply(env) == 0
    events = Events(monkeypatch)
    w = _watcher(env)
    w.check_once()
    _set_driver(env, "not-loaded")
    for _ in range(3):
        assert w.check_once() == {}
    failed = events.named("read_failed")
    assert len(failed) == 1 and "DRIVER_NOT_LOADED" in failed[0]["msg"], failed
    _set_driver(env, "loaded")
    for _ in range(2):
        assert w.check_once() == {0: "ok", 1: "ok"}
    assert len(events.named("read_recovered")) == 1
    assert len([1 for level, _, _ in events.items if level == "error"]) == 1


def test_config_selecting_no_gpu_logs_one_info_line_and_never_opens_nvml(env, tmp_path):
    """The shipped /etc/migd.toml selects no GPU: `migd watch` on a host without a driver logs one info line (as
    migd-watch), no error, and STATUS= says nothing is managed."""
    import socket

    with open(env["config"], "w") as f:
        f.write("[daemon]\nwatch_interval = 1\n")
    _set_driver(env, "no-library")
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(10)
    proc_env = dict(os.environ, NOTIFY_SOCKET=sock_path, MIGD_RUN_DIR=str(tmp_path / "run"))
    p = subprocess.Popen([sys.executable, "-m", "migd.cli", "--sim-state", env["state"], "--config", env["config"],
                          "watch"], env=proc_env,
                         stderr=subprocess.PIPE, text=True)
    statuses = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(statuses) < 2:
            m = s.recv(4096).decode()
            if m.startswith("STATUS=") and m != "STATUS=starting":
                statuses.append(m)
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=10)[1]
        s.close()
    assert p.returncode == 0, err
    assert statuses and all(m.startswith(f"STATUS=no GPU managed by {env['config']}") for m in statuses), statuses
    lines = err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["migd-watch[info]", "migd-watch[info]"], lines
    assert "selects no GPU on this host" in lines[0] and "migd-watch stopping" in lines[1], lines


def test_boot_prints_nothing_it_logs(env, capsys):
    """Under systemd stdout goes to the journal too: "GPU n: applied N changes" must be there once, as the event."""
    assert cli.main(["--sim-state", env["state"], "--config", env["config"], "boot"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert sum("GPU 0: applied" in line for line in err.splitlines()) == 1, err
