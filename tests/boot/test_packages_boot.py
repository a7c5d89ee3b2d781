"""The .deb in clean Debian roots booted with systemd-nspawn, one per suite: install on a running system, boot,
upgrade, purge (root, systemd-container, mmdebstrap). Static and built checks of the packages: tests/test_packaging.py,
whose builds (cached by content in tests/boot/packages.py) this shares."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Dict

import pytest

from test_packaging import REPO, UNITS, UPGRADE_VERSION, VERSION  # one version and unit list for the package tests

from . import packages as pkgs

SIM_DROPIN = ("[Service]\nEnvironment=MIGD_SIMULATE=h100-80gb MIGD_SIM_STATE=/var/lib/migd-sim/state.json"
              " MIGD_RUN_DIR=/run/migd MIGD_SIM_HOST=real\n"
              "ReadWritePaths=/var/lib/migd-sim\n")
LAYOUT = '\n# added by the admin (test)\n[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g", "2g", "1g"]\n'
# What may differ after purge, piuparts-style: state of the system and of the test, never of the package.
ALLOWED_AFTER_PURGE = [
    r"/var/log(/.*)?",                        # journal of the boots, dpkg.log
    r"/var/lib/dpkg(/.*)?",                   # dpkg's own database (status, available, triggers)
    r"/var/cache(/.*)?",                      # debconf and ldconfig caches
    r"/var/lib/systemd/(?!deb-systemd-helper)[^/]+(/.*)?",  # random-seed, timers, catalog (not the enable state)
    r"/var/lib/migd-sim(/.*)?",               # the test's simulated GPUs
    r"/var/tmp(/.*)?",                        # systemd's private tmp dirs
    r"/usr/lib/python3[^/]*/(.*/)?__pycache__(/.*)?",  # the system python's own bytecode, written when it ran
    r"/etc/ld\.so\.cache",
    # What booting a fresh tree creates, package or not:
    r"/etc/mtab",                             # systemd-tmpfiles' /proc/self/mounts link
    r"/(etc|var)/\.updated",                  # systemd-update-done's stamps (trixie)
    r"/var/lib/dbus/machine-id",              # dbus' link to /etc/machine-id
    r"/var/lib/private(/.*)?",                # systemd's DynamicUser= state directory
    r"/mnt/debs",                             # the mount point systemd-nspawn made for the test's packages
]


def _tree(root: Path) -> Dict[str, str]:
    """Container path -> kind, for everything on the rootfs' own file system."""
    out = {}
    skip = {"proc", "sys", "dev", "run", "tmp"}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).lstrip(".")
        if rel == "/":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.normpath(rel + "/" + name)] = "l" if os.path.islink(p) else ("d" if os.path.isdir(p) else "f")
    return out


def _show(text: str) -> Dict[str, Dict[str, str]]:
    """`systemctl show -p Id -p ... A B` output -> {Id: {prop: value}}."""
    units = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        units[props.get("Id", "?")] = props
    return units


SUITES = ["bookworm", "trixie", "bullseye"]  # python 3.11, 3.13, 3.9 (the oldest python3 migd supports)


@pytest.mark.boot
@pytest.mark.parametrize("suite", SUITES)
def test_deb_install_boot_upgrade_purge(suite, tmp_path):
    from .nspawn import boot, install_collector
    from .rootfs import build_base, image_path, install_file, missing_prerequisites, new_rootfs, remove_rootfs

    reason = missing_prerequisites(need_mmdebstrap=not image_path(suite=suite).exists()) or pkgs.missing_build_tools(["deb"])
    if reason:
        pytest.skip(reason)
    try:
        build_base(suite=suite)
    except RuntimeError as e:  # the archive no longer serves the suite, or no network for the first build
        pytest.skip(f"no {suite} base image: {str(e).splitlines()[0]}")
    v1 = pkgs.build_packages(kinds=["deb"])["deb"]
    v2 = pkgs.build_packages(version=UPGRADE_VERSION, kinds=["deb"])["deb"]
    debs = tmp_path / "debs"
    debs.mkdir()
    for d in (v1, v2):
        shutil.copy(d, debs / d.name)
    root = new_rootfs(name=f"pkg-{suite}", suite=suite)
    try:
        for unit in UNITS:
            install_file(root, f"/etc/systemd/system/{unit}.d/simulate.conf", SIM_DROPIN)
        (root / "var/lib/migd-sim").mkdir(parents=True)
        install_collector(root)
        before = _tree(root)
        bind = [(str(debs), "/mnt/debs", "ro")]
        migd_units = " ".join(UNITS)

        # Boot 1: install on a running system: units enabled, nothing started, the shipped config manages nothing.
        r1 = boot(root, bind=bind, timeout=60, results_dir=tmp_path / "boot1", commands={
            "1_install": ["dpkg", "-i", f"/mnt/debs/{v1.name}"],
            "2_state": ["sh", "-c", f"systemctl is-enabled {migd_units}; systemctl is-active {migd_units}; true"],
            "3_version": ["migd", "--version"],
            "4_validate": ["migd", "validate"],
            "5_man": ["sh", "-c", "ls /usr/share/man/man8/migd.8.gz /usr/share/man/man5/migd.toml.5.gz"],
        }).check()
        assert r1.command("1_install")["rc"] == 0, r1.command("1_install")
        # Nothing to warn about on a host without DGX OS's nvidia-gpu-reset.target (issue 16.11).
        assert "non-existent unit" not in r1.command("1_install")["stdout"], r1.command("1_install")
        assert r1.command("2_state")["stdout"].split() == ["enabled", "enabled", "inactive", "inactive"], \
            r1.command("2_state")
        assert r1.command("3_version")["stdout"].strip() == f"migd {VERSION}", r1.command("3_version")
        assert r1.command("4_validate")["rc"] == 0 and "0 GPU entries" in r1.command("4_validate")["stdout"]
        assert r1.command("5_man")["rc"] == 0
        assert not r1.journal(_SYSTEMD_UNIT="migd.service") and not r1.journal(_SYSTEMD_UNIT="migd-watch.service")
        assert (root / "etc/migd.toml").read_bytes() == (REPO / "etc/migd.toml").read_bytes()

        # The admin declares a layout.
        with open(root / "etc/migd.toml", "a") as f:
            f.write(LAYOUT)
        edited = (root / "etc/migd.toml").read_text()

        # Boot 2: migd applies it at boot; an upgrade keeps the edit, restarts only migd-watch; purge cleans up.
        show = ["systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p", "Result", "-p", "InvocationID",
                "-p", "MainPID", *UNITS]
        r2 = boot(root, bind=bind, timeout=90, results_dir=tmp_path / "boot2", commands={
            "1_before": show,
            # No procps here (no /bin/kill): the reload must work with what every systemd host has.
            "1_reload": ["sh", "-c", "systemctl reload migd-watch.service && sleep 1"],
            "2_upgrade": ["dpkg", "-i", f"/mnt/debs/{v2.name}"],
            "3_after": show,
            "4_version": ["migd", "--version"],
            "5_conf": ["sh", "-c", "cat /etc/migd.toml; ls /etc/ | grep -c '^migd.toml.dpkg' || true"],
            "6_check": ["env", "MIGD_SIMULATE=h100-80gb", "MIGD_SIM_STATE=/var/lib/migd-sim/state.json",
                        "MIGD_RUN_DIR=/run/migd", "MIGD_SIM_HOST=real", "migd", "check"],
            "7_purge": ["dpkg", "--purge", "migd"],
            "8_gone": ["sh", "-c", f"systemctl is-active {migd_units}; true"],
        }).check()
        before_up, after_up = _show(r2.command("1_before")["stdout"]), _show(r2.command("3_after")["stdout"])
        migd, watch = before_up["migd.service"], before_up["migd-watch.service"]
        assert (migd["ActiveState"], migd["Result"]) == ("active", "success"), (migd, r2.describe())
        assert watch["ActiveState"] == "active", watch
        created = [e for e in r2.journal(_SYSTEMD_UNIT="migd.service") if e.get("MIGD_EVENT") == "create_gi"]
        assert len(created) == 3, r2.messages(unit="migd.service")
        assert r2.command("1_reload")["rc"] == 0, r2.command("1_reload")
        reloaded = [e for e in r2.journal(_SYSTEMD_UNIT="migd-watch.service") if e.get("MIGD_EVENT") == "config_reloaded"]
        assert len(reloaded) == 1, r2.messages(unit="migd-watch.service")
        assert r2.command("2_upgrade")["rc"] == 0, r2.command("2_upgrade")
        assert after_up["migd.service"]["InvocationID"] == migd["InvocationID"], "the upgrade restarted migd.service"
        assert after_up["migd-watch.service"]["ActiveState"] == "active"
        assert after_up["migd-watch.service"]["MainPID"] != watch["MainPID"], "a running migd-watch is restarted"
        assert r2.command("4_version")["stdout"].strip() == f"migd {UPGRADE_VERSION}"
        conf = r2.command("5_conf")["stdout"]
        assert conf.startswith(edited) and conf[len(edited):].strip() == "0", "the admin's edit is kept, no .dpkg-*"
        assert r2.command("6_check")["rc"] == 0, r2.command("6_check")
        assert r2.command("7_purge")["rc"] == 0, r2.command("7_purge")
        assert r2.command("8_gone")["stdout"].split() == ["inactive", "inactive"], r2.command("8_gone")
        applies = [e for e in r2.journal(_SYSTEMD_UNIT="migd.service") if e.get("MIGD_EVENT") == "boot_apply"]
        assert len(applies) == 1, "migd.service applied more than once in the boot"

        # Purged: nothing of the package is left (piuparts-style comparison with the tree before installation).
        after = _tree(root)
        allowed = re.compile("|".join(f"(?:{p})" for p in ALLOWED_AFTER_PURGE))
        new = sorted(p for p in set(after) - set(before) if not allowed.fullmatch(p))
        gone = sorted(p for p in set(before) - set(after) if not allowed.fullmatch(p))
        assert not new, f"left behind after purge: {new}"
        assert not gone, f"removed by install/purge but not the package's: {gone}"
        print(f"\n[pkg] {suite}: boots {r1.seconds:.1f}s {r2.seconds:.1f}s")
    finally:
        if os.environ.get("MIGD_BOOT_KEEP") != "1":
            remove_rootfs(root)
