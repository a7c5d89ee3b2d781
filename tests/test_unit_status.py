"""migd.service's STATUS= line (issue 16.9): `systemctl status` names exit 4 NOPERMISSION and 5 NOTINSTALLED;
migd's codes stay (scripts use them), and the unit's status line says what the exit means and why. Through the CLI
(`migd boot`, as migd.service runs it), with a real sd_notify socket."""

from __future__ import annotations

import socket
import textwrap

import pytest

from migd import cli, notify, sim
from migd.sim.host import SimHost

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g", "2g", "1g"]

    [daemon]
    driver_wait_timeout = 1
    cdi_refresh = "off"
""")


@pytest.fixture
def unit(tmp_path, monkeypatch):
    """A NOTIFY_SOCKET like systemd's, a simulated A100 and a config: what migd.service's `migd boot` sees."""
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    state = tmp_path / "state.json"
    host = SimHost.create("a100-40gb", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(CONFIG)

    def boot(config: str = CONFIG):
        conf.write_text(config)
        code = cli.main(["--sim-state", str(state), "--config", str(conf), "boot"])
        sent = []
        while True:
            try:
                sent.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        return code, [m[len("STATUS="):] for m in sent if m.startswith("STATUS=")]

    yield {"boot": boot, "host": host, "state": str(state)}
    sock.close()
    sim.uninstall()


def test_pending_exit_4_says_pending_not_nopermission(unit, capsys):
    host = unit["host"]
    host.gpus[0]["reset_supported"] = False  # a pass-through A100: enabling MIG stays pending until a reboot
    host.save()
    code, status = unit["boot"]()
    assert code == 4
    assert len(status) == 1, status
    assert status[0].startswith("exit 4 = MIG mode change pending (not NOPERMISSION, systemd's name for 4): GPU 0:"), \
        status[0]


def test_success_and_config_errors_say_so_too(unit, capsys):
    code, status = unit["boot"]()
    assert code == 0 and status[0].startswith("exit 0 = ok: GPU 0: applied"), status
    code, status = unit["boot"](CONFIG.replace("mig = true", 'mig = "yes"'))
    assert code == 2 and status[0].startswith("exit 2 = invalid configuration or usage: invalid configuration, "
                                              "no GPU touched: "), status


def test_driver_not_loaded_failure_says_why(unit, capsys):
    host = unit["host"]
    host.state["driver"] = "not-loaded"
    host.save()
    code, status = unit["boot"]()
    assert code == 1 and status[0].startswith("exit 1 = failure: nvidia kernel module installed but not loaded"), \
        status


def test_exit_status_is_one_bounded_line():
    assert notify.exit_status(5, "lock held\nby pid 7") == \
        "exit 5 = busy: lock held (not NOTINSTALLED, systemd's name for 5): lock held by pid 7"
    assert len(notify.exit_status(1, "x" * 5000)) == notify.STATUS_MAX
