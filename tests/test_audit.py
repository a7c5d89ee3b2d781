"""The audit trail of `migd apply` from a shell (issue 16.8): who ran it, every change and the outcome go to the
journal (a fake journald socket here, the native protocol as journald reads it), the terminal stays terse, and
bytes from /proc or the environment cannot break a journal line."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import threading
import time

import pytest

import migd.log
import reliability as R
from migd import audit, cli, sim
from migd.sim.host import SimHost

from test_log import FakeJournal, parse_native

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g", "2g", "1g"]

    [daemon]
    cdi_refresh = "off"
    metrics_file = ""
""")


class Journald:
    """A fake journald: a thread reads every datagram (as journald does, so a blocking sender never waits on a
    full queue) and keeps each event's fields."""

    def __init__(self, path: str):
        self.fake = FakeJournal(path)
        self.fake.sock.settimeout(0.1)
        self.path = path
        self.events: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.fake.raw()
            except OSError:  # socket.timeout included
                continue
            self.events.append({k: v.decode() for k, v in parse_native(data)})
            for fd in self.fake.last_fds:
                os.close(fd)
            self.fake.last_fds = []

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.fake.close()


@pytest.fixture
def journal(monkeypatch):
    d = tempfile.mkdtemp(prefix="migdaudit", dir="/tmp")  # AF_UNIX names are short
    j = Journald(os.path.join(d, "socket"))
    monkeypatch.setenv("MIGD_JOURNAL_SOCKET", j.path)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield j
    j.close()
    shutil.rmtree(d)
    migd.log.setup(level="critical", target="stderr")


def drain(j: Journald) -> list:
    time.sleep(0.3)  # the reader thread catches up with the last datagrams
    out, j.events = j.events, []
    return out


def test_actor_fields_and_their_decoding(tmp_path):
    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "loginuid").write_bytes(b"1000")
    env = {"SUDO_USER": "al\x1b[2Jice\udcff", "SUDO_UID": "1000"}
    fields = audit.actor(str(proc), env)
    assert fields["uid"] == str(os.getuid()) and fields["loginuid"] == "1000" and fields["sudo_uid"] == "1000"
    assert fields["sudo_user"] == "al\\x1b[2Jice\\xff", fields
    assert audit.describe(fields).startswith(f"uid {os.getuid()} (sudo by al\\x1b[2Jice\\xff, uid 1000; login uid 1000)")
    for raw in (b"4294967295", b"\xff\xfe", b"12ab", b""):
        (proc / "loginuid").write_bytes(raw)
        assert "loginuid" not in audit.actor(str(proc), {}), raw
    assert "no login session" in audit.describe(audit.actor(str(proc), {}))
    assert "loginuid" not in audit.actor(str(tmp_path / "absent"), {})


def test_apply_sends_who_what_and_outcome_to_the_journal_terminal_stays_terse(journal, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_SIM_FAULTS", "MIGD_READ_ONLY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("SUDO_UID", "1000")
    state = tmp_path / "state.json"
    SimHost.create("a100-40gb", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(CONFIG)
    try:
        code = cli.main(["--sim-state", str(state), "--config", str(conf), "apply"])
    finally:
        sim.uninstall()
    err = capsys.readouterr().err
    assert code == 0 and "migd[info]" not in err and "apply_started" not in err, err
    sent = drain(journal)
    names = [e["MIGD_EVENT"] for e in sent]
    assert names[0] == "apply_started" and names[-1] == "apply_finished", names
    assert "create_gi" in names and "gpu_applied" in names, names
    for e in sent:
        assert e["MIGD_SUDO_USER"] == "alice" and e["MIGD_SUDO_UID"] == "1000" and e["MIGD_UID"] == str(os.getuid())
    assert sent[0]["MESSAGE"].startswith(f"migd apply by uid {os.getuid()} (sudo by alice, uid 1000; "), sent[0]
    assert sent[0]["MESSAGE"].endswith(f"{conf} (simulated GPUs)") and sent[0]["MIGD_SIMULATED"] == "true"
    assert sent[-1]["MIGD_EXIT"] == "0" and sent[-1]["MIGD_OUTCOMES"] == '{"0":"applied"}', sent[-1]
    assert sent[-1]["MESSAGE"].startswith(f"migd apply by uid {os.getuid()}") and ": exit 0: GPU 0: applied" in \
        sent[-1]["MESSAGE"], sent[-1]["MESSAGE"]


def test_no_journal_is_said_once_for_a_real_run_and_not_at_all_for_a_simulated_one(tmp_path, capsys):
    missing = str(tmp_path / "no-journal")
    log = migd.log.get_logger()
    migd.log.setup(level="warning", target="stderr", journal_socket=missing, audit={"uid": "0", "euid": "0"})
    log.info("create_gi", msg="GPU 0: created 1g.10gb")
    log.info("gpu_applied", msg="GPU 0: applied")
    log.warning("mode_pending", msg="GPU 1: pending")
    err = capsys.readouterr().err.splitlines()
    assert err == [f"migd: the audit trail could not be written to the journal ({missing}): this run's changes are "
                   "logged only here", "migd[warning]: GPU 1: pending"], err
    migd.log.setup(level="warning", target="stderr", journal_socket=missing, audit={"uid": "0"}, audit_required=False)
    log.info("create_gi", msg="GPU 0: created 1g.10gb")
    assert capsys.readouterr().err == ""
    migd.log.setup(level="critical", target="stderr")


def test_stop_clients_apply_names_the_units_it_stopped_in_the_trail(journal, tmp_path, monkeypatch, capsys):
    """`apply --stop-clients` stops and restarts units: the trail has both, with who ran it."""
    import subprocess
    import sys

    from migd import clients

    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_SIM_FAULTS", "MIGD_READ_ONLY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SUDO_USER", "bob")
    state = tmp_path / "state.json"
    host = SimHost.create("h100-80gb", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(CONFIG.replace('[daemon]', '[daemon]\nstop_clients = ["nvidia-dcgm.service"]'))
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); time.sleep(60)",
                               host.device_node(0)])
    R.wait_until_holding(holder, host.device_node(0))

    def fake_systemctl(verb, units, **_):
        if verb == "stop":
            holder.kill()
            holder.wait()

    # simulated GPUs on this machine's host environment, whose systemctl is faked here (as tests/test_watch.py)
    monkeypatch.setenv("MIGD_SIM_HOST", "real")
    monkeypatch.setattr(clients, "systemctl", fake_systemctl)
    monkeypatch.setattr(clients, "unit_of", lambda pid: "nvidia-dcgm.service" if pid == holder.pid else None)
    try:
        code = cli.main(["--sim-state", str(state), "--config", str(conf), "apply", "--stop-clients"])
    finally:
        if holder.poll() is None:
            holder.kill()
        sim.uninstall()
    assert code == 0, capsys.readouterr().err
    sent = drain(journal)
    names = [e["MIGD_EVENT"] for e in sent]
    assert names[0] == "apply_started" and names[-1] == "apply_finished", names
    assert "clients_stopping" in names and "clients_restarted" in names, names
    assert sent[0]["MESSAGE"].startswith("migd apply --stop-clients by uid ") and sent[0]["MIGD_STOP_CLIENTS"] == "true"
    assert all(e["MIGD_SUDO_USER"] == "bob" for e in sent)
