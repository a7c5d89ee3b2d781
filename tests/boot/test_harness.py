"""Proves the boot harness: ordering, journal, native journal protocol, reboot persistence, cleanup."""
import os
import time
from pathlib import Path

import pytest

from .nspawn import _cgroup_hierarchies
from .rootfs import enable_units, install_tree

pytestmark = pytest.mark.boot

A_SCRIPT = """#!/bin/sh
set -e
mkdir -p /var/lib/harness
prev=0
[ -f /var/lib/harness/a.boots ] && prev=$(wc -l < /var/lib/harness/a.boots)
echo "harness-a: ran, previous boots: $prev"
sleep 0.3
cat /proc/sys/kernel/random/boot_id >> /var/lib/harness/a.boots
echo "harness-a: done"
"""

B_SCRIPT = """#!/bin/sh
echo "harness-b: ran"
"""

# What the product will do: one datagram in the journald native protocol.
JOURNAL_SCRIPT = """#!/usr/bin/python3
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
event = sys.argv[1]
s.sendto(b"MESSAGE=hi\\nPRIORITY=4\\nMIGD_EVENT=" + event.encode() + b"\\n",
         "/run/systemd/journal/socket")
if sys.argv[2:] == ["linger"]:
    time.sleep(0.5)   # stay alive so journald can read our cgroup
"""

UNITS = {
    "a.service": """[Unit]
Description=harness test A
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/bin/harness-a
[Install]
WantedBy=multi-user.target
""",
    "b.service": """[Unit]
Description=harness test B
Wants=a.service
After=a.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/bin/harness-b
[Install]
WantedBy=multi-user.target
""",
    "journal-native.service": """[Unit]
Description=native journal protocol probe
[Service]
Type=oneshot
ExecStart=/usr/local/bin/harness-journal test linger
ExecStart=/usr/local/bin/harness-journal test-immediate
[Install]
WantedBy=multi-user.target
""",
}


def _overlay(tmp_path: Path) -> Path:
    ov = tmp_path / "overlay"
    for name, text, mode in [("harness-a", A_SCRIPT, 0o755), ("harness-b", B_SCRIPT, 0o755),
                             ("harness-journal", JOURNAL_SCRIPT, 0o755)]:
        p = ov / "usr/local/bin" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    for name, text in UNITS.items():
        p = ov / "etc/systemd/system" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return ov


def _ts(props, name):
    v = int(props[name])
    assert v > 0, f"{name} not set: {props.get(name)!r}"
    return v


def test_harness(boot_base, boot_rootfs, boot_vm, tmp_path):
    installed = install_tree(boot_rootfs, _overlay(tmp_path))
    assert "/etc/systemd/system/a.service" in installed
    enable_units(boot_rootfs, *UNITS)
    assert (boot_rootfs / "etc/systemd/system/multi-user.target.wants/b.service").is_symlink()

    commands = {
        "journal_a": ["journalctl", "-b", "-u", "a.service", "-o", "cat", "--no-pager"],
        "boots": ["cat", "/var/lib/harness/a.boots"],
    }
    units = ["a.service", "b.service", "journal-native.service"]

    # ---- first boot
    t0 = time.monotonic()
    r1 = boot_vm(units=units, commands=commands, timeout=60).check()
    boot1_s = time.monotonic() - t0
    st1 = r1.state
    assert st1["system_state"] == "running", st1
    assert st1["failed_units"] == []

    a, b = r1.unit("a.service"), r1.unit("b.service")
    assert a["ActiveState"] == "active" and a["Result"] == "success", a
    assert b["ActiveState"] == "active" and b["Result"] == "success", b
    assert "a.service" in b["After"].split()
    # a finished (ExecStart exited, unit active) before b was started
    assert _ts(a, "ExecMainExitTimestampMonotonic") <= _ts(b, "ExecMainStartTimestampMonotonic")
    assert _ts(a, "ActiveEnterTimestampMonotonic") <= _ts(b, "InactiveExitTimestampMonotonic")

    # journalctl -b -u a, both via a command in the container and the JSON dump
    assert "harness-a: ran, previous boots: 0" in r1.command("journal_a")["stdout"]
    assert "harness-a: ran, previous boots: 0" in r1.messages(unit="a.service")
    assert "harness-b: ran" in r1.messages(unit="b.service")

    # native journal protocol: MIGD_EVENT must come through as a field
    ev = r1.journal(MIGD_EVENT="test")
    assert ev, "MIGD_EVENT=test not in journal"
    assert ev[0]["MESSAGE"] == "hi" and ev[0]["PRIORITY"] == "4", ev[0]
    imm = r1.journal(MIGD_EVENT="test-immediate")
    assert imm, "MIGD_EVENT=test-immediate not in journal"
    print(f"\n[boot] native journal: linger -> _SYSTEMD_UNIT={ev[0].get('_SYSTEMD_UNIT')!r}, "
          f"exit-immediately -> _SYSTEMD_UNIT={imm[0].get('_SYSTEMD_UNIT')!r}")
    assert ev[0].get("_SYSTEMD_UNIT") == "journal-native.service", ev[0]

    # ---- second boot of the same rootfs: state persists
    t0 = time.monotonic()
    r2 = boot_vm(units=units, commands=commands, timeout=60).check()
    boot2_s = time.monotonic() - t0
    st2 = r2.state
    assert st2["machine_id"] == st1["machine_id"]
    assert st2["boot_id"] != st1["boot_id"]
    assert "harness-a: ran, previous boots: 1" in r2.messages(unit="a.service")
    # -b really is only this boot
    assert not any("previous boots: 0" in m for m in r2.messages(unit="a.service"))
    # the file a.service appends to survived the reboot
    assert r2.command("boots")["stdout"].split() == [st1["boot_id"], st2["boot_id"]]

    # ---- cleanup: nothing left in any cgroup hierarchy nspawn used
    for r in (r1, r2):
        assert r.leftovers == [] and r.cgroups_removed, r.describe()
        for h in _cgroup_hierarchies():
            assert not (h / ("migd-boot-" + r.machine)).exists()
        assert not os.path.exists("/run/systemd/nspawn/propagate/" + r.machine)

    print("[boot] timings: base image {} {:.1f}s | boot#1 {:.2f}s (nspawn {:.2f}s, settle {:.2f}s)"
          " | boot#2 {:.2f}s (nspawn {:.2f}s, settle {:.2f}s)".format(
              "built" if boot_base.built else "cached (recorded build)", boot_base.seconds,
              boot1_s, r1.seconds, st1["settle_seconds"], boot2_s, r2.seconds, st2["settle_seconds"]))
    assert boot1_s < 30 and boot2_s < 30


HANG_UNIT = """[Unit]
Description=blocks the boot forever
Before=multi-user.target
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""


def test_hung_boot_is_collected_and_killed(boot_base, boot_rootfs, boot_vm):
    from .rootfs import install_file

    install_file(boot_rootfs, "/etc/systemd/system/hang.service", HANG_UNIT)
    enable_units(boot_rootfs, "hang.service")

    # 1) boot never settles: the collector gives up after settle_timeout,
    #    still collects (pending jobs visible) and powers off.
    r = boot_vm(units=["hang.service"], settle_timeout=2, timeout=30)
    assert r.collected and not r.timed_out and r.returncode == 0, r.describe()
    st = r.state
    assert st["settled"] is False and st["system_state"] == "starting", st
    assert any("hang.service" in j for j in st["pending_jobs"]), st
    assert r.unit("hang.service")["ActiveState"] == "activating"

    # 2) container that ignores the stop request (kill signal it does not act
    #    on): hard timeout -> SIGTERM to nspawn -> SIGKILL to the whole cgroup
    #    subtree, cgroups removed, no processes left.
    t0 = time.monotonic()
    r = boot_vm(settle_timeout=600, timeout=3, kill_grace=1,
                nspawn_args=["--kill-signal=SIGCONT"])
    took = time.monotonic() - t0
    assert r.timed_out and not r.collected, r.describe()
    assert r.leftovers == [] and r.cgroups_removed, r.describe()
    for h in _cgroup_hierarchies():
        assert not (h / ("migd-boot-" + r.machine)).exists()
    assert took < 20, took
    print(f"\n[boot] hung boot: killed and cleaned up in {took:.1f}s ({len(r.cgroups_removed)} cgroups removed)")
