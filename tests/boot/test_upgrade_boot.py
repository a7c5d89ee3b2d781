"""Upgrading from the previous release on a running system (issue 16.10), under a real systemd.

The previous release's .deb is built from its commit (tests/boot/packages.py PREVIOUS_RELEASE) with that commit's own
packaging/build.sh; the current one from this tree. The old one is installed and the system booted: migd.service
applies the admin's layout to simulated GPUs. Then, on the running system, `dpkg -i` of the current .deb: the
admin's /etc/migd.toml, /run/migd/state.json and /var/lib/migd are kept, migd.service is not run again (same
InvocationID and ExecMainStartTimestamp, one boot_apply in the journal), migd-watch runs the new code.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest

from .nspawn import boot
from .packages import PREVIOUS_RELEASE, build_packages, build_release, install_deb, missing_build_tools
from .rootfs import install_file

pytestmark = pytest.mark.boot

UNITS = ("migd.service", "migd-watch.service")
SIM_DROPIN = ("[Service]\nEnvironment=MIGD_SIMULATE=h100-80gb MIGD_SIM_STATE=/var/lib/migd-sim/state.json"
              " MIGD_RUN_DIR=/run/migd MIGD_SIM_HOST=real\nReadWritePaths=/var/lib/migd-sim\n")
CONFIG = '# the admin\'s layout\n[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g", "2g", "1g"]\n'
SHOW = ["systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p", "Result", "-p", "InvocationID", "-p",
        "ExecMainStartTimestamp", "-p", "MainPID", *UNITS]
KEPT = ("cat /etc/migd.toml; echo ---; sha256sum /run/migd/state.json /run/migd/devices.env; echo ---; "
        "ls -la --time-style=+ /var/lib/migd")


def _show(text: str):
    units = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        units[props.get("Id", "?")] = props
    return units


def test_upgrade_from_the_previous_release_on_a_running_system(boot_base, boot_rootfs, tmp_path):
    reason = missing_build_tools(["deb"])
    if reason:
        pytest.skip(reason)
    commit, old_version = PREVIOUS_RELEASE
    try:
        old = build_release(commit, old_version, log=lambda m: print(f"\n[boot] {m}"))
    except RuntimeError as e:
        pytest.skip(str(e).splitlines()[0])
    new = build_packages(kinds=["deb"])["deb"]
    root = boot_rootfs
    install_deb(root, old)
    for unit in UNITS:
        install_file(root, f"/etc/systemd/system/{unit}.d/simulate.conf", SIM_DROPIN)
    (root / "var/lib/migd-sim").mkdir(parents=True)
    install_file(root, "/etc/migd.toml", CONFIG)
    # Something of the admin's (or a reboot-once marker) in migd's state directory: the upgrade must keep it.
    install_file(root, "/var/lib/migd/kept-by-the-upgrade", "x\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    shutil.copy(new, debs / new.name)

    r = boot(root, bind=[(str(debs), "/mnt/debs", "ro")], timeout=90, results_dir=tmp_path / "boot", commands={
        "1_version": ["migd", "--version"],
        "2_before": SHOW,
        "3_kept": ["sh", "-c", KEPT],
        "4_upgrade": ["dpkg", "--force-confold", "-i", f"/mnt/debs/{new.name}"],
        "5_after": SHOW,
        "6_kept": ["sh", "-c", KEPT],
        "7_version": ["migd", "--version"],
        "8_enabled": ["sh", "-c", "systemctl is-enabled migd.service migd-watch.service; "
                                  "ls /etc/systemd/system/*.wants/ | grep -c migd || true"],
    }).check()
    assert r.command("1_version")["stdout"].strip() == f"migd {old_version}", r.command("1_version")
    before, after = _show(r.command("2_before")["stdout"]), _show(r.command("5_after")["stdout"])
    migd = before["migd.service"]
    assert (migd["ActiveState"], migd["Result"]) == ("active", "success"), (migd, r.describe())
    assert r.command("4_upgrade")["rc"] == 0, r.command("4_upgrade")
    assert "non-existent unit" not in r.command("4_upgrade")["stdout"], r.command("4_upgrade")

    # migd.service was not run again: same invocation, same start, still active; one apply in this boot's journal
    for prop in ("InvocationID", "ExecMainStartTimestamp", "ActiveState", "Result"):
        assert after["migd.service"][prop] == migd[prop], (prop, migd, after["migd.service"])
    applies = [e for e in r.journal(_SYSTEMD_UNIT="migd.service") if e.get("MIGD_EVENT") == "boot_apply"]
    assert len(applies) == 1, r.messages(unit="migd.service")
    # migd-watch runs the new code
    assert after["migd-watch.service"]["ActiveState"] == "active"
    assert after["migd-watch.service"]["MainPID"] != before["migd-watch.service"]["MainPID"]
    assert r.command("7_version")["stdout"].strip() == f"migd {new.name.split('_')[1]}", r.command("7_version")

    # config, /run/migd state and /var/lib/migd kept, byte for byte
    kept_before, kept_after = r.command("3_kept")["stdout"], r.command("6_kept")["stdout"]
    assert kept_before == kept_after, (kept_before, kept_after)
    assert kept_before.startswith(CONFIG + "---\n") and "kept-by-the-upgrade" in kept_before, kept_before
    assert "/run/migd/state.json" in kept_before and "/run/migd/devices.env" in kept_before, kept_before
    assert (root / "etc/migd.toml").read_text() == CONFIG
    assert not list((root / "etc").glob("migd.toml.dpkg-*"))
    state_sha = hashlib.sha256((root / "var/lib/migd/kept-by-the-upgrade").read_bytes()).hexdigest()
    assert state_sha == hashlib.sha256(b"x\n").hexdigest()

    # both units still enabled, through multi-user.target only (no stale nvidia-gpu-reset.target link)
    enabled = r.command("8_enabled")["stdout"].split()
    assert enabled[:2] == ["enabled", "enabled"], enabled
    assert not (root / "etc/systemd/system/nvidia-gpu-reset.target.wants/migd.service").is_symlink()
    print(f"\n[boot] upgrade {old_version} -> {new.name}: {r.seconds:.1f}s")
