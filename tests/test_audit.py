"""The audit trail of `migd apply` from a shell (issue 16.8): who ran it, every change and the outcome go to the
journal (a fake journald socket here, the native protocol as journald reads it), the terminal stays terse, and
bytes from /proc or the environment cannot break a journal line."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap

import pytest

import migd.log
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


@pytest.fixture
def journal(monkeypatch):
    d = tempfile.mkdtemp(prefix="migdaudit", dir="/tmp")  # AF_UNIX names are short
    j = FakeJournal(os.path.join(d, "socket"))
    monkeypatch.setenv("MIGD_JOURNAL_SOCKET", j.path)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield j
    j.close()
    shutil.rmtree(d)
    migd.log.setup(level="critical", target="stderr")


def drain(j: FakeJournal) -> list:
    out = []
    j.sock.settimeout(0.2)
    try:
        while True:
            out.append({k: v.decode() for k, v in parse_native(j.raw())})
    except OSError:
        pass
    finally:
        j.sock.settimeout(5)
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
