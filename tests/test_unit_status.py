"""migd.service's STATUS= line (issue 16.9): `systemctl status` names exit 4 NOPERMISSION and 5 NOTINSTALLED;
migd's codes stay (scripts use them), and the unit's status line says what the exit means and why. Through the CLI
(`migd boot`, as migd.service runs it), with a real sd_notify socket."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
import time

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


class FakeSystemd:
    """systemd's end of NOTIFY_SOCKET: reads each datagram (closing fds passed with BARRIER=1, as systemd does once
    it has processed the messages before it) in a thread, as migd sends them."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.received: list = []
        self.barriers = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
            except socket.timeout:
                continue
            text = data.decode()
            if text == "BARRIER=1":
                self.barriers += 1
            self.received.append(text)  # before the fd is closed: that is what lets migd go on
            for level, kind, fds in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for i in range(0, len(fds) - len(fds) % 4, 4):
                        os.close(int.from_bytes(fds[i:i + 4], sys.byteorder))

    def take(self) -> list:
        out, self.received = self.received, []
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def unit(tmp_path, monkeypatch):
    """A NOTIFY_SOCKET like systemd's, a simulated A100 and a config: what migd.service's `migd boot` sees."""
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    systemd = FakeSystemd(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    state = tmp_path / "state.json"
    host = SimHost.create("a100-40gb", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(CONFIG)

    def boot(config: str = CONFIG):
        conf.write_text(config)
        t0 = time.monotonic()
        code = cli.main(["--sim-state", str(state), "--config", str(conf), "boot"])
        assert time.monotonic() - t0 < 4, "waited for a barrier systemd had answered"
        sent = systemd.take()
        assert sent[-1] == "BARRIER=1", sent  # the last STATUS= is read by systemd before migd exits
        return code, [m[len("STATUS="):] for m in sent if m.startswith("STATUS=")]

    yield {"boot": boot, "host": host, "state": str(state)}
    systemd.close()
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
