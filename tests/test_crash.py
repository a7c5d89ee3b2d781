"""Crash convergence and concurrency.

Crash: `migd apply` is SIGKILLed after every step of its plan (a fault makes the next mutating call hang in the
"driver", the test kills the process there), also in the middle of a rollback, and the machine is also rebooted
(simulated: instances lost, Hopper's MIG mode lost, Ampere's kept) after the kill. The next `migd apply` (or
`migd boot` after the reboot) must converge to the desired layout with no manual cleanup: no step leaves anything
migd cannot plan from (a GPU instance without its compute instances is just another live instance to replace, the
lock dies with the process, /run/migd files are replaced atomically).

Concurrency: two `migd apply` at once, and an apply while the watchdog checks, are serialized by /run/migd/lock:
the simulator's mutation trace shows no interleaving; the second apply waits (and then finds nothing to do) or,
after lock_timeout, exits 5 naming the holder.

Default: a sample of kill points; all of them: MIGD_FULL_MATRIX=1 .venv/bin/python -m pytest -m slow tests/test_crash.py
"""

from __future__ import annotations

import threading
import time

import pytest

import reliability as R
from migd import site
from migd.sim.host import SimHost, load_state

HOST = "h100-80gb,a100-40gb"  # one Hopper, one Ampere: they behave differently at a reboot


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    return [R.prepare(s, base / s.name.replace(" ", "-")) for s in R.scenarios(HOST)]


def _hang_and_kill(p: R.Prepared, faults: str) -> str:
    """Run apply with faults until it hangs, SIGKILL it; "" or what went wrong."""
    proc = R.migd_process(p.args("apply"), R.child_env(str(p.dir / "run"), MIGD_SIM_FAULTS=faults))
    try:
        hung, err = R.wait_for_hang(proc)
    finally:
        R.kill(proc)
    if not hung:
        return f"never hung:\n{err[-1500:]}"
    if "Traceback" in err:
        return f"traceback:\n{err[-1500:]}"
    return ""


def _converges(p: R.Prepared, verb: str = "apply") -> str:
    r = R.run_cli(p.args(verb), {"MIGD_RUN_DIR": str(p.dir / "run")})
    if r.traceback or r.code != 0:
        return f"next {verb}: exit {r.code}\n{r.out}{r.err[-1500:]}"
    now = p.current()
    if now != p.desired:
        return f"next {verb}: " + "; ".join(R.describe_layout(x) for x in now)
    return ""


def _report(summary_line, title, results):
    failures = [f"{where}: {why}" for where, why in results if why]
    line = f"crash convergence, {title}: {len(results)} kill points, {len(results) - len(failures)} converged"
    summary_line(line)
    print("\n" + line)
    assert not failures, "\n\n".join(failures[:10])


@pytest.mark.slow
def test_sigkill_after_every_step_then_apply_converges(prepared, summary_line):
    points = [(p, k) for p in prepared for k in range(len(p.steps))]
    results = []
    for p, k in R.sample(points, 20, "crash-steps"):
        call, gpu, n = p.steps[k]
        p.reset()
        why = _hang_and_kill(p, f"{call}=hang@{n}/gpu{gpu}")
        if not why:
            why = "the kill came too late: already applied" if p.current() == p.desired else _converges(p)
        results.append((f"{p.scenario.name}, killed after {k} of {len(p.steps)} steps", why))
    _report(summary_line, f"{HOST}, killed after step k of {sum(len(p.steps) for p in prepared)}", results)


@pytest.mark.slow
def test_sigkill_during_rollback_then_apply_converges(prepared, summary_line):
    """A call fails at step k; the rollback's first change hangs and migd is killed half-way back."""
    points = [(p, k) for p in prepared for k in range(len(p.steps))]
    results = []
    skipped = 0
    for p, k in R.sample(points, 14, "crash-rollback"):
        call, gpu, n = p.steps[k]
        fault = f"{call}=UNKNOWN@{n}/gpu{gpu}"
        # This GPU's mutations alone (each GPU runs on its own thread): the first `done` succeeded, then the call
        # failed (not traced), and the next one is the rollback's first change.
        trace = [c for c in R.traced_run(p, fault) if c[1] == gpu]
        done = sum(1 for s in p.steps[:k] if s[1] == gpu)
        if len(trace) <= done:
            skipped += 1  # the rollback had nothing to undo (the first change failed)
            continue
        rb_call, _ = trace[done]
        rb_n = R.nth(trace, done) + (1 if (rb_call, gpu) == (call, gpu) else 0)  # the failed call counts too
        why = _hang_and_kill(p, f"{fault},{rb_call}=hang@{rb_n}/gpu{gpu}") or _converges(p)
        results.append((f"{p.scenario.name}, {fault}, killed in the rollback at {rb_call}", why))
    assert results
    _report(summary_line, f"{HOST}, killed during the rollback ({skipped} sampled points had nothing to roll back)",
            results)


@pytest.mark.slow
def test_reboot_after_a_kill_then_boot_converges(prepared, summary_line):
    """Killed mid-apply, then the machine reboots: `migd boot` (what migd.service runs) converges."""
    points = [(p, k) for p in prepared for k in range(len(p.steps))]
    results = []
    for p, k in R.sample(points, 14, "crash-reboot"):
        call, gpu, n = p.steps[k]
        p.reset()
        why = _hang_and_kill(p, f"{call}=hang@{n}/gpu{gpu}")
        if not why:
            R.sim_tool(p.state, "reboot")
            state = load_state(p.state)
            assert all(not g["gis"] for g in state["gpus"])
            why = _converges(p, "boot")
        results.append((f"{p.scenario.name}, killed after {k} steps, rebooted", why))
    _report(summary_line, f"{HOST}, killed after step k and rebooted", results)


def test_reboot_mid_apply_keeps_ampere_mode_loses_hopper_mode(prepared):
    """The simulated reboot itself: after a kill right after both GPUs' MIG mode went on, a reboot keeps Ampere's
    (InfoROM) and drops Hopper's; boot then converges either way."""
    p = next(p for p in prepared if p.scenario.name == "fresh boot")
    modes = [i for i, s in enumerate(p.steps) if s[0] == "nvmlDeviceSetMigMode"]
    k = modes[1] + 1  # after GPU 1's (the A100's) mode change
    call, gpu, n = p.steps[k]
    p.reset()
    assert not _hang_and_kill(p, f"{call}=hang@{n}/gpu{gpu}")
    R.sim_tool(p.state, "reboot")
    state = load_state(p.state)
    assert [g["mig"] for g in state["gpus"]] == [[0, 0], [1, 1]]
    assert not _converges(p, "boot")


# --- concurrency -----------------------------------------------------------------------------------------------

# Each GI create 8 x 50 ms longer (the waits of matching faults add up): the 8 GPUs are applied side by side, 3 GIs
# each, so an apply takes over a second.
SLOW_CREATES = ",".join(["nvmlDeviceCreateGpuInstanceWithPlacement=slow"] * 8)


@pytest.fixture
def dgx(tmp_path):
    state = str(tmp_path / "sim" / "state.json")
    (tmp_path / "sim").mkdir()
    host = SimHost.create("dgx-a100", state)
    host.state["trace"] = []
    host.save()
    conf = R.write_config(tmp_path / "migd.toml", R.LAYOUT_A)
    return {"state": state, "config": conf, "run": str(tmp_path / "run"), "tmp": tmp_path}


def _runs(trace):
    """The pids of a mutation trace with consecutive repeats collapsed: [a, b] is serialized, [a, b, a] is not."""
    out = []
    for pid, *_ in trace:
        if not out or out[-1] != pid:
            out.append(pid)
    return out


def test_two_applies_at_once_are_serialized(dgx, summary_line):
    args = ["--sim-state", dgx["state"], "--config", dgx["config"], "apply"]
    env = R.child_env(dgx["run"], MIGD_SIM_FAULTS=SLOW_CREATES)
    a = R.migd_process(args, env)
    b = R.migd_process(args, env)
    outs = [p.communicate(timeout=60) for p in (a, b)]
    for p, (_out, err) in zip((a, b), outs):
        assert p.returncode == 0 and b"Traceback" not in err, err.decode()
    trace = load_state(dgx["state"])["trace"]
    assert len(trace) == 8 * 9  # each GPU: persistence, MIG mode, 3 GIs, 4 CIs; once
    runs = _runs(trace)
    assert len(runs) == 1, f"interleaved mutations: {runs}"
    second = b if runs[0] == a.pid else a
    assert outs[(a, b).index(second)][0].decode().count("already matches") == 8
    summary_line(f"concurrency: two applies at once: {len(trace)} mutations, all by one process; the other waited "
                 "and found nothing to do")


def test_second_apply_gives_up_after_lock_timeout_with_exit_5(dgx):
    conf = R.write_config(dgx["tmp"] / "short.toml", R.LAYOUT_A + "\n[daemon]\nlock_timeout = 0.5\n")
    a = R.migd_process(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"],
                       R.child_env(dgx["run"], MIGD_SIM_FAULTS=SLOW_CREATES))
    try:
        deadline = time.monotonic() + 20
        while not load_state(dgx["state"])["trace"] and time.monotonic() < deadline:
            time.sleep(0.02)  # until the first apply is changing GPUs (so it holds the lock)
        r = R.run_cli(["--sim-state", dgx["state"], "--config", conf, "apply"], {"MIGD_RUN_DIR": dgx["run"]})
        assert not r.traceback and r.code == 5, (r.code, r.err)
        assert "another migd holds" in r.err and f"pid {a.pid}" in r.err and "gave up after 0.5 s" in r.err, r.err
        a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            R.kill(a)
    assert a.returncode == 0
    assert {pid for pid, *_ in load_state(dgx["state"])["trace"]} == {a.pid}


def test_apply_waits_for_the_watchdog_check_in_progress_and_checks_skip_applies(dgx, monkeypatch):
    """The checker holds the lock shared: an apply started during a (slow) check makes its first change only after
    the check ended; a check during an apply is skipped, so it never reports a half-applied layout as drift."""
    from migd import sim
    from migd.watch import Watcher

    monkeypatch.setenv("MIGD_RUN_DIR", dgx["run"])
    watcher = Watcher(dgx["config"], site.build(None, dgx["state"]))
    checks = []

    def slow_check():
        # 10 x 50 ms per mode read: the GPUs are read side by side, so it is each GPU's reads that must be slow
        monkeypatch.setenv("MIGD_SIM_FAULTS", ",".join(["nvmlDeviceGetMigMode=slow"] * 10))
        t0 = time.time()
        result = watcher.check_once()
        checks.append((t0, time.time(), result))

    t = threading.Thread(target=slow_check)
    t.start()
    time.sleep(0.3)  # the check is reading GPUs now
    apply_start = time.time()
    proc = R.migd_process(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"], R.child_env(dgx["run"]))
    out, err = proc.communicate(timeout=60)
    t.join(timeout=60)
    sim.uninstall()
    monkeypatch.delenv("MIGD_SIM_FAULTS")
    assert proc.returncode == 0, err.decode()
    (c0, c1, result), = checks
    assert set(result.values()) == {"drift"} and c1 - c0 > 0.5  # it saw the old layout, whole
    trace = load_state(dgx["state"])["trace"]
    assert apply_start < c1 < trace[0][3], "the apply changed GPUs while the check was reading them"

    # Now the other way round: a check while an apply runs is skipped.
    host = SimHost(load_state(dgx["state"]), dgx["state"])
    for g in range(8):
        gi = host.gpus[g]["gis"][0]
        gi["cis"] = []
        host.destroy_gi(g, gi["id"])
    host.state["trace"] = []
    host.save()
    proc = R.migd_process(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"],
                          R.child_env(dgx["run"], MIGD_SIM_FAULTS=SLOW_CREATES))
    try:
        deadline = time.monotonic() + 20
        while not load_state(dgx["state"])["trace"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.check_once() == {}  # skipped: apply in progress
    finally:
        proc.communicate(timeout=60)
        sim.uninstall()
    assert proc.returncode == 0
    assert set(watcher.check_once().values()) == {"ok"}
    sim.uninstall()
