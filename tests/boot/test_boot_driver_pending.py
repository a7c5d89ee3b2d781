"""migd.service at boot on a host without a driver, and with on_pending = "reboot-once", under a real systemd.

Installed from the .deb like test_migd_boot.py (whose setup it reuses). The simulated host's state file is
written before the first boot, so the first boot already sees the case under test.
"""

from __future__ import annotations

import json

import pytest

from migd.sim.host import SimHost

from .rootfs import install_file
from .test_migd_boot import CONFIG, SIM_ENV, SIM_STATE, STUBS, UNITS, _events, _install_migd, _migd, _ts, migd_deb  # noqa: F401,E501

pytestmark = pytest.mark.boot

REBOOTED = 133  # systemd-nspawn's exit status when the container asked for a reboot


def _sim_host(root, **gpu1):
    """The simulated host the units will use, made now (container paths for its device nodes and boot marker)."""
    path = root / SIM_STATE.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    host = SimHost.create(SIM_ENV["MIGD_SIMULATE"], str(path))
    host.state["device_dir"] = "/var/lib/migd-sim/dev"
    host.state["boot_marker"] = SIM_ENV["MIGD_SIM_BOOT_MARKER"]
    host.gpus[1].update(gpu1)
    return host


def test_no_driver_installed_boot_does_not_wait(boot_base, boot_rootfs, boot_vm, migd_deb):  # noqa: F811
    root = boot_rootfs
    _install_migd(root, migd_deb)
    # a fleet file for GPU and GPU-less hosts alike ("all" only), with a long driver wait
    install_file(root, "/etc/migd.toml", CONFIG.replace("driver_wait_timeout = 4", "driver_wait_timeout = 120"),
                 mode=0o644)
    host = _sim_host(root)
    host.state["driver"] = "no-library"  # nothing of a driver installed: no libnvidia-ml, no kernel module
    host.save()

    r = boot_vm(units=UNITS, timeout=90).check()
    migd = r.unit("migd.service")
    assert (migd["ActiveState"], migd["Result"], migd["ExecMainStatus"]) == ("active", "success", "0"), r.describe()
    took = (_ts(migd, "ExecMainExitTimestampMonotonic") - _ts(migd, "ExecMainStartTimestampMonotonic")) / 1e6
    assert took < 60, f"migd.service took {took:.1f} s: it waited for a driver that is not installed"
    assert not _events(r, "migd.service", "driver_wait")
    said = _events(r, "migd.service", "no_driver")
    assert len(said) == 1 and said[0]["PRIORITY"] == "6", [e["MESSAGE"] for e in said]
    assert said[0]["MESSAGE"].startswith("no NVIDIA driver installed on this host") and \
        said[0]["MESSAGE"].endswith("nothing to do"), said[0]["MESSAGE"]
    print(f"\n[boot] no driver: migd.service ran {took:.2f} s, boot {r.seconds:.1f} s")


def test_on_pending_reboot_once(boot_base, boot_rootfs, boot_vm, migd_deb):  # noqa: F811
    root = boot_rootfs
    _install_migd(root, migd_deb)
    install_file(root, "/etc/migd.toml", CONFIG + 'on_pending = "reboot-once"\n', mode=0o644)
    # GPU 1, an A100 in a pass-through VM: the driver cannot reset it, so enabling MIG stays pending (RESET_REQUIRED)
    # until the next boot, when Ampere's pending mode takes effect.
    _sim_host(root, reset_supported=False).save()
    marker = root / "var/lib/migd/reboot-once.json"

    r1 = boot_vm(units=UNITS, timeout=90)
    assert r1.returncode == REBOOTED and not r1.collected, r1.describe()
    assert json.loads(marker.read_text())["gpus"] == {"1": json.loads((root / SIM_STATE.lstrip("/")).read_text())
                                                      ["gpus"][1]["uuid"]}

    r2 = boot_vm(units=UNITS, timeout=90, commands={
        "status": _migd("status", "--json"),
        "before": ["journalctl", "-b", "-1", "-o", "json", "--no-pager", "_SYSTEMD_UNIT=migd.service"]}).check()
    before = [json.loads(line) for line in r2.command("before")["stdout"].splitlines() if line.strip()]
    asked = [e for e in before if e.get("MIGD_EVENT") == "reboot_once"]
    assert len(asked) == 1 and asked[0]["PRIORITY"] == "4", [e.get("MESSAGE") for e in before]
    assert "GPU 1: MIG mode change pending: rebooting once to let MIG mode take effect" in asked[0]["MESSAGE"]
    migd = r2.unit("migd.service")
    assert (migd["Result"], migd["ExecMainStatus"]) == ("success", "0"), r2.describe()
    done = _events(r2, "migd.service", "reboot_once_done")
    assert len(done) == 1 and done[0]["MESSAGE"] == "rebooted once for pending MIG mode on GPU 1; applied", done
    status = json.loads(r2.command("status")["stdout"])
    assert [len(g["instances"]) for g in status["gpus"]] == [3, 3], status
    assert not marker.exists()

    r3 = boot_vm(units=UNITS, timeout=90).check()  # a third boot: applied again, no reboot, nothing about one
    assert r3.returncode == 0 and r3.unit("migd.service")["Result"] == "success", r3.describe()
    assert not [e for e in r3.journal(_SYSTEMD_UNIT="migd.service") if "reboot" in str(e.get("MIGD_EVENT", ""))]
    for r in (r1, r2, r3):
        assert r.leftovers == [], r.describe()
    print(f"\n[boot] reboot-once: {r1.seconds:.1f}s (rebooted) {r2.seconds:.1f}s {r3.seconds:.1f}s")


def test_no_module_for_this_kernel_fails_at_once_a_queued_build_is_waited_for(boot_base, boot_rootfs, boot_vm,
                                                                               migd_deb):  # noqa: F811
    """Issue 16.5: the library installed, no nvidia module for the running kernel because its DKMS build failed
    after a kernel update: migd.service fails at once (not after driver_wait_timeout = 120 s) with the sentence.
    The same host with the build still queued (source registered, no make.log of a failure): boot waits."""
    import os

    root = boot_rootfs
    _install_migd(root, migd_deb)
    install_file(root, "/etc/migd.toml", CONFIG.replace("driver_wait_timeout = 4", "driver_wait_timeout = 120"),
                 mode=0o644)
    release = os.uname().release  # the container runs the host's kernel
    version = root / "var/lib/dkms/nvidia/550.54.15"
    (version / "source").mkdir(parents=True)
    log = version / "build/make.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"DKMS make.log for nvidia-550.54.15 for kernel {release} (x86_64)\n\nerror: implicit declaration\n")
    host = _sim_host(root)
    host.state["driver"] = "no-module"  # libnvidia-ml installed, no nvidia.ko for this kernel
    host.state["dkms_dir"] = "/var/lib/dkms"  # the rootfs' DKMS tree decides whether a build is queued
    host.save()

    r1 = boot_vm(units=UNITS, timeout=90).check()
    migd = r1.unit("migd.service")
    assert (migd["Result"], migd["ExecMainStatus"]) == ("exit-code", "1"), r1.describe()
    took = (_ts(migd, "ExecMainExitTimestampMonotonic") - _ts(migd, "ExecMainStartTimestampMonotonic")) / 1e6
    assert took < 30, f"migd.service took {took:.1f} s: it waited for a module that cannot appear"
    assert not _events(r1, "migd.service", "driver_wait")
    failed = [e["MESSAGE"] for e in r1.journal(_SYSTEMD_UNIT="migd.service") if e.get("PRIORITY") == "3"]
    assert any("libnvidia-ml.so.1 installed but no nvidia kernel module for this kernel and no module build queued"
               in m and "/var/lib/dkms/nvidia/550.54.15/build/make.log" in m for m in failed), failed
    assert migd["StatusText"].startswith("exit 1 = failure: libnvidia-ml.so.1 installed but no nvidia kernel module"), \
        migd["StatusText"]
    for stub in STUBS:
        assert r1.unit(stub)["ActiveState"] == "active", stub

    log.unlink()  # the build is queued again (e.g. dkms autoinstall will run): boot waits, driver_wait_timeout
    install_file(root, "/etc/migd.toml", CONFIG, mode=0o644)  # driver_wait_timeout = 4
    r2 = boot_vm(units=UNITS, timeout=90).check()
    migd = r2.unit("migd.service")
    assert (migd["Result"], migd["ExecMainStatus"]) == ("exit-code", "1"), r2.describe()
    waits = _events(r2, "migd.service", "driver_wait")
    assert len(waits) == 1 and "DKMS build of nvidia/550.54.15" in waits[0]["MESSAGE"], waits
    took2 = (_ts(migd, "ExecMainExitTimestampMonotonic") - _ts(migd, "ExecMainStartTimestampMonotonic")) / 1e6
    assert took2 >= 4, took2
    for r in (r1, r2):
        assert r.leftovers == [], r.describe()
    print(f"\n[boot] no module: failed after {took:.2f} s; queued build: waited {took2:.2f} s")
