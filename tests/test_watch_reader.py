"""migd-watch never holds the driver library (issue 21.3): each round's NVML reads (and a re-apply) run in a
short-lived forked reader process; the resident process never calls nvmlInit and never loads structlog (whose
bound logger imports asyncio, and asyncio ssl). A reader that hangs is killed at the hang limit and said once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import reliability as R
from migd import cli, forked, sim
from migd.site import build
from migd.log import setup
from migd.sim.host import SimHost
from migd.watch import Watcher

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["4g", "2g", "1g"]

    [daemon]
    watch_interval = 1
    drift_policy = "reapply"
""")


@pytest.fixture
def site(tmp_path, monkeypatch):
    yield R.watch_site(tmp_path, monkeypatch, CONFIG)
    sim.uninstall()


# The resident process as migd-watch runs it: a Watcher, rounds with drift (so events are logged and a re-apply
# runs), then what it has loaded.
RESIDENT = """
import json, sys
from migd.log import setup
setup("info", "stderr", "migd-watch")
from migd import site
from migd.watch import Watcher
w = Watcher(sys.argv[1], site.build(None, sys.argv[2]))
rounds = [w.check_once() for _ in range(3)]
import pynvml
print(json.dumps({"rounds": rounds, "loaded": sorted(m for m in ("structlog", "asyncio", "ssl") if m in sys.modules),
                  "nvml_library": pynvml.nvmlLib is not None, "summary": w.summary}))
"""


def test_the_resident_process_never_opens_nvml_nor_loads_structlog_asyncio_ssl(site):
    """Three rounds: drift found, re-applied (in a reader process), then ok. The resident process never set up the
    NVML library (pynvml.nvmlLib: what nvmlInit loads) and has no structlog, asyncio or ssl in sys.modules; the
    events (from its reader processes) are on its stderr, one line each."""
    r = subprocess.run([sys.executable, "-c", RESIDENT, site["config"], site["state"]], capture_output=True,
                       text=True, env=R.child_env(os.environ["MIGD_RUN_DIR"]), cwd=str(R.ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [] and out["nvml_library"] is False, out
    assert [sorted(set(x.values())) for x in out["rounds"]] == [["drift"], ["ok"], ["ok"]], out
    lines = r.stderr.splitlines()
    assert any(line.startswith("migd-watch[warning]: GPU 0: drift: ") for line in lines), lines
    assert any(line.startswith("migd-watch[info]: GPU 0: re-applied after drift: applied") for line in lines), lines
    assert all(line.startswith("migd-watch[") for line in lines), lines


@pytest.mark.parametrize("target", ["stderr", "journal"])
def test_without_structlog_an_event_is_logged_exactly_as_structlog_logs_it(tmp_path, target):
    """log.lean(): the same level filter, record and renderer; the same bytes on stderr and to journald."""
    import socket

    program = ("from migd import log\n"
               "log.setup('info', {target!r}, 'migd-watch')\n"
               "{lean}\n"
               "log.get_logger(gpu=1).warning('drift', msg='GPU 1: drift: missing 1g.10gb@6:1', found='x', n=3)\n"
               "log.get_logger().debug('hidden')\n"
               "log.get_logger().info('plain', a=[1, 2])\n"
               "import sys; print('structlog' in sys.modules)\n")
    outputs = []
    for lean in ("", "log.lean()"):
        sock_path = str(tmp_path / f"journal{len(outputs)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env = dict(R.child_env("/nonexistent"), MIGD_JOURNAL_SOCKET=sock_path)
        r = subprocess.run([sys.executable, "-c", program.format(target=target, lean=lean)], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        sock.setblocking(False)
        datagrams = []
        while True:
            try:
                datagrams.append(sock.recv(65536))
            except BlockingIOError:
                break
        sock.close()
        outputs.append((r.stderr, datagrams, r.stdout.strip()))
    (err_s, dg_s, loaded_s), (err_l, dg_l, loaded_l) = outputs
    assert (loaded_s, loaded_l) == ("True", "False")
    assert err_l == err_s and dg_l == dg_s
    assert (len(dg_s), len(err_s.splitlines())) == ((2, 0) if target == "journal" else (0, 2))


def test_a_hung_reader_is_killed_at_the_hang_limit_and_said_once(site, monkeypatch):
    """A mode read wedged in the driver: the reader process is killed at the hang limit (here 0.5 s), `check_hung`
    is said once however many rounds hang, the resident process goes on, and the recovery is said once."""
    from structlog.testing import capture_logs

    assert cli.main(["--sim-state", site["state"], "--config", site["config"], "-q", "apply"]) == 0
    setup("info")  # migd-watch's level (the apply above set warning)
    w = Watcher(site["config"], build(None, site["state"]), notify=lambda _: None)
    w.watchdog_s = 0.5
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceGetMigMode=hang")
    with capture_logs() as events:
        assert w.check_once() == {} and w.check_once() == {}
        assert w.problem is not None and w.problem[0] == "check_hung" and "was killed" in w.problem[1]
        assert forked.reap() == []  # the killed readers are gone (a simulated hang is killable)
        monkeypatch.delenv("MIGD_SIM_FAULTS")
        assert set(w.check_once().values()) == {"ok"}
    said = [(e["log_level"], e["event"]) for e in events if e["event"].startswith("check_")]
    assert said == [("error", "check_hung"), ("info", "check_recovered")], said


def test_what_a_reader_logged_and_changed_comes_back(site, monkeypatch):
    """Per-GPU memory lives in the resident process: drift is said once across rounds (each read in a new reader
    process), and an exception in the reader is reported like one in the resident process."""
    from structlog.testing import capture_logs

    assert cli.main(["--sim-state", site["state"], "--config", site["config"], "-q", "apply"]) == 0
    with open(site["config"], "w") as f:
        f.write(CONFIG.replace('drift_policy = "reapply"', 'drift_policy = "log"'))
    host = SimHost.create("", site["state"])
    gi = host.gpus[1]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(1, gi["id"])
    host.save()
    setup("info")
    w = Watcher(site["config"], build(None, site["state"]), notify=lambda _: None)
    with capture_logs() as events:
        for _ in range(3):
            assert w.check_once()[1] == "drift"
        monkeypatch.setattr(Watcher, "_check", lambda self: 1 / 0)
        assert w.check_once() == {}
    assert [e["gpu"] for e in events if e["event"] == "drift"] == [1]
    assert w.problem == ("check_failed", "layout check failed: ZeroDivisionError: division by zero")


def test_forked_call_returns_raises_and_times_out():
    assert forked.call(lambda: {"a": [1, 2]}, 10) == {"a": [1, 2]}
    with pytest.raises(KeyError):
        forked.call(lambda: {}["missing"], 10)

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} {b}")

    def raise_unpicklable():
        raise Unpicklable(1, 2)

    with pytest.raises(forked.ChildFailed, match="Unpicklable: 1 2"):
        forked.call(raise_unpicklable, 10)

    def hang():
        import time

        time.sleep(60)

    with pytest.raises(forked.Hung) as e:
        forked.call(hang, 0.3)
    assert e.value.pid > 0 and forked.reap() == []
    with pytest.raises(ProcessLookupError):
        os.kill(e.value.pid, 0)


def test_a_reader_finishes_its_round_through_sigterm():
    """systemd stops migd-watch with SIGTERM to the whole unit: a reader in the middle of a re-apply must not stop
    between two changes (a hung one is SIGKILLed)."""
    import signal

    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        return "finished"

    assert forked.call(work, 10) == "finished"
