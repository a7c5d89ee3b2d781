"""Boot waits for the driver only while a kernel module can still appear (issue 16.5): installed for the running
kernel, or a DKMS build queued for it. The library installed with no module for this kernel and no build queued
(or a build that failed for this kernel) fails at once. DKMS trees are faked in temp dirs; boot runs through the
CLI on a simulated host whose driver files say "no module" and whose DKMS tree is one of these."""

from __future__ import annotations

import textwrap
import time

import pytest

from migd import cli, driverfiles, sim
from migd.driverfiles import DriverFiles
from migd.sim.host import SimHost

RELEASE = "6.1.0-18-amd64"
CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g", "2g", "1g"]

    [daemon]
    driver_wait_timeout = {timeout}
""")


def dkms_tree(root, release=RELEASE, built=False, failed_for=None):
    """/var/lib/dkms/nvidia/550.54.15 as DKMS leaves it: source registered; maybe built; maybe a failed make.log."""
    version = root / "nvidia" / "550.54.15"
    (version / "source").mkdir(parents=True)
    if built:
        ko = version / release / "x86_64" / "module" / "nvidia.ko.xz"
        ko.parent.mkdir(parents=True)
        ko.write_bytes(b"")
    if failed_for:
        log = version / "build" / "make.log"
        log.parent.mkdir(parents=True)
        log.write_text(f"DKMS make.log for nvidia-550.54.15 for kernel {failed_for} (x86_64)\nerror: ...\n")
    return root


def test_dkms_queued_built_and_failed_from_files(tmp_path):
    assert driverfiles.find_dkms_build(str(tmp_path / "none"), RELEASE) is None
    queued = driverfiles.find_dkms_build(str(dkms_tree(tmp_path / "q")), RELEASE)
    assert queued is not None and queued.queued and queued.name == "nvidia/550.54.15"
    assert queued.describe() == f"DKMS build of nvidia/550.54.15 for {RELEASE} queued (source registered, not built yet)"
    assert driverfiles.find_dkms_build(str(dkms_tree(tmp_path / "b", built=True)), RELEASE) is None
    failed = driverfiles.find_dkms_build(str(dkms_tree(tmp_path / "f", failed_for=RELEASE)), RELEASE)
    assert failed is not None and not failed.queued and failed.failed_log.endswith("nvidia/550.54.15/build/make.log")
    old = driverfiles.find_dkms_build(str(dkms_tree(tmp_path / "o", failed_for="6.1.0-17-amd64")), RELEASE)
    assert old is not None and old.queued  # failed for the previous kernel: this kernel's build is still to come

    lib = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    assert not DriverFiles(lib).module_may_appear
    assert DriverFiles(lib, build=queued).module_may_appear and not DriverFiles(lib, build=failed).module_may_appear
    assert DriverFiles(lib, "/lib/modules/x/nvidia.ko").module_may_appear
    assert driverfiles.detect(library=lambda: lib, module=lambda: None, loaded=lambda: False,
                              build=lambda: queued).build == queued


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)

    def make(timeout, dkms=None):
        state = tmp_path / "state.json"
        h = SimHost.create("a100-40gb", str(state))
        h.state["driver"] = "no-module"
        h.state["dkms_dir"] = str(dkms) if dkms else None
        h.save()
        conf = tmp_path / "migd.toml"
        conf.write_text(CONFIG.format(timeout=timeout))
        return ["--sim-state", str(state), "--config", str(conf), "boot"]

    yield make
    sim.uninstall()


def boot(capsys, argv):
    t0 = time.monotonic()
    code = cli.main(argv)
    return code, capsys.readouterr().err, time.monotonic() - t0


def test_no_module_for_this_kernel_and_no_build_fails_at_once(host, capsys):
    code, err, took = boot(capsys, host(120))
    assert code == 1 and took < 10, (took, err)
    assert "libnvidia-ml.so.1 installed but no nvidia kernel module for this kernel and no module build queued: " \
           "not waiting for the driver" in err, err
    assert "no nvidia kernel module installed for this kernel" in err and "waiting up to" not in err, err


def test_failed_dkms_build_for_this_kernel_fails_at_once_naming_its_log(host, capsys, tmp_path, monkeypatch):
    import os

    tree = dkms_tree(tmp_path / "dkms", release=os.uname().release, failed_for=os.uname().release)
    code, err, took = boot(capsys, host(120, tree))
    assert code == 1 and took < 10, (took, err)
    assert f"DKMS build of nvidia/550.54.15 for {os.uname().release} failed (see {tree}/nvidia/550.54.15/build/" \
           "make.log)" in err, err
    assert "waiting up to" not in err, err


def test_queued_dkms_build_is_waited_for(host, capsys, tmp_path):
    import os

    tree = dkms_tree(tmp_path / "dkms", release=os.uname().release)
    code, err, took = boot(capsys, host(1, tree))
    assert code == 1 and took >= 1, (took, err)
    assert [line for line in err.splitlines() if "waiting up to 1 s for the NVIDIA driver" in line], err
    assert "DKMS build of nvidia/550.54.15" in err and "queued" in err, err
    assert "none loaded after 1 s (driver_wait_timeout)" in err, err


def test_a_build_that_fails_during_the_wait_ends_it(host, capsys, tmp_path):
    import os
    import threading

    tree = dkms_tree(tmp_path / "dkms", release=os.uname().release)
    log = tree / "nvidia/550.54.15/build/make.log"

    def fail_build():
        time.sleep(0.5)
        log.parent.mkdir(parents=True)
        log.write_text(f"DKMS make.log for nvidia-550.54.15 for kernel {os.uname().release} (x86_64)\n")

    t = threading.Thread(target=fail_build)
    t.start()
    code, err, took = boot(capsys, host(60, tree))
    t.join()
    assert code == 1 and took < 30, (took, err)
    assert "waiting up to 60 s" in err and "failed (see" in err, err
