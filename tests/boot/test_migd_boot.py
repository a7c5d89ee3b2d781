"""migd under a real systemd: boot a Debian rootfs with systemd-nspawn and read systemd's own records.

The simulated GPUs live in a state file inside the rootfs (/var/lib/migd-sim), so they persist across container
boots like hardware does; a boot marker on /run makes each container boot a reboot of the simulated GPUs too
(instances lost; Hopper loses MIG mode, Ampere keeps it). Stub units nvidia-dcgm, nvsm and gdm hold the simulated
device nodes open like real GPU clients.

The boots run in order on one rootfs (one scenario per boot), as one test so the order is explicit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from .rootfs import enable_units, install_file

pytestmark = pytest.mark.boot

REPO = Path(__file__).resolve().parents[2]
SIM_STATE = "/var/lib/migd-sim/state.json"
SIM_ENV = {"MIGD_SIMULATE": "h100-80gb,a100-40gb", "MIGD_SIM_STATE": SIM_STATE,
           "MIGD_SIM_BOOT_MARKER": "/run/migd-sim/booted",
           # simulated GPUs on the container's own host environment (its /run/migd, systemctl, reboot): a
           # simulated run otherwise keeps to a simulated host of its own
           "MIGD_SIM_HOST": "real", "MIGD_RUN_DIR": "/run/migd"}
STUBS = {  # unit -> (process name, simulated device node it holds)
    "nvidia-dcgm.service": ("nv-hostengine", "nvidia0"),
    "nvsm.service": ("nvsm-core", "nvidia0"),
    "gdm.service": ("gdm-stub", "nvidia1"),
}
CONFIG = """
[[gpu]]
select = "all"
mig = true
instances = [
  { profile = "4g", name = "train" },
  { profile = "2g", name = "eval" },
  { profile = "1g", name = "notebook" },
]

[daemon]
watch_interval = 1
driver_wait_timeout = 4
"""
# Instances land at 4g 0:4, 2g 4:2, 1g 6:1; the sim numbers GIs like the driver does (1g at slot 6 -> GI 13).
NOTEBOOK_GI = 13


def _module_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec and spec.origin, name
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


@pytest.fixture(scope="module")
def migd_deb():
    """The .deb the boot test installs: $MIGD_DEB if set, else one built from this tree by packaging/build.sh
    (cached by content, shared with tests/test_packaging.py). None when this machine cannot build one: the test
    then installs from the source tree, laid out the way the package lays it out."""
    if os.environ.get("MIGD_DEB"):
        return Path(os.environ["MIGD_DEB"])
    from .packages import build_packages, missing_build_tools

    reason = missing_build_tools(["deb"])
    if reason:
        print(f"\n[boot] no .deb ({reason}): installing migd from the source tree")
        return None
    return build_packages(kinds=["deb"], log=lambda m: print(f"\n[boot] {m}"))["deb"]


def _install_migd(root: Path, deb: Optional[Path] = None) -> None:
    """Install the .deb with dpkg inside the rootfs (its postinst enables the units), or, without one, copy the
    source tree the way the package lays it out: /usr/lib/migd + /usr/bin/migd + units. Then the test's setup."""
    if deb is not None:
        from .packages import install_deb

        install_deb(root, deb)
        for unit in ("migd.service", "migd-watch.service"):  # enabled by the package's postinst
            assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), unit
    else:
        _install_source_tree(root)
    env = " ".join(f"{k}={v}" for k, v in SIM_ENV.items())
    for unit in ("migd.service", "migd-watch.service"):
        install_file(root, f"/etc/systemd/system/{unit}.d/simulate.conf", f"[Service]\nEnvironment={env}\n"
                     # The product units write only /run/migd (ProtectSystem=strict); the simulated GPUs' state
                     # and boot marker are this drop-in's to open up, not the product's.
                     "StateDirectory=migd-sim\nRuntimeDirectory=migd-sim\n")
    install_file(root, "/etc/systemd/system/migd-watch.service.d/fast.conf",
                 "[Service]\nWatchdogSec=4\nRestartSec=1\n")
    install_file(root, "/etc/migd.toml", CONFIG, mode=0o644)
    sleep = (root / "usr/bin/sleep").read_bytes()
    for unit, (comm, node) in STUBS.items():
        install_file(root, f"/usr/local/bin/{comm}", sleep, mode=0o755)  # a client whose comm is its name
        install_file(root, f"/etc/systemd/system/{unit}", textwrap.dedent(f"""\
            [Unit]
            Description=stub GPU client ({comm})
            [Service]
            ExecStart=/bin/sh -c 'mkdir -p /var/lib/migd-sim/dev; exec 3<>/var/lib/migd-sim/dev/{node}; exec /usr/local/bin/{comm} infinity'
            [Install]
            WantedBy=multi-user.target
            """))
    enable_units(root, *STUBS)


def _install_source_tree(root: Path) -> None:
    lib = root / "usr/lib/migd"
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "src/migd", lib / "migd", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for dep in ("pynvml", "structlog", "sdnotify"):
        src = _module_dir(dep)
        if src.is_dir():
            shutil.copytree(src, lib / src.name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(src, lib / src.name)
    install_file(root, "/usr/bin/migd", (REPO / "packaging/bin/migd").read_text(), mode=0o755)
    for unit in ("migd.service", "migd-watch.service"):
        install_file(root, f"/usr/lib/systemd/system/{unit}", (REPO / "packaging/systemd" / unit).read_text())
    enable_units(root, "migd.service", "migd-watch.service")


def _sim(*args: str) -> list:
    return ["env", "PYTHONPATH=/usr/lib/migd", "python3", "-m", "migd.sim.tool", "--state", SIM_STATE, *args]


def _migd(*args: str) -> list:
    return ["env", *(f"{k}={v}" for k, v in SIM_ENV.items()), "migd", *args]


def _events(result, unit: str, event: str, **fields):
    out = []
    for e in result.journal(_SYSTEMD_UNIT=unit):
        if e.get("MIGD_EVENT") == event and all(e.get(k) == v for k, v in fields.items()):
            out.append(e)
    return out


def _ts(props: dict, name: str) -> int:
    value = int(props[name])
    assert value > 0, f"{name} unset"
    return value


UNITS = ["migd.service", "migd-watch.service", *STUBS]


def test_migd_under_real_systemd(boot_base, boot_rootfs, boot_vm, migd_deb):
    root = boot_rootfs
    _install_migd(root, migd_deb)

    # --- 1. first boot: migd.service finishes before every client starts; the layout is applied ----------------
    drift = ["sh", "-c", " && ".join([
        " ".join(_sim("destroy-gi", "0", str(NOTEBOOK_GI))),  # by hand, behind migd's back
        "sleep 3",
        " ".join(_migd("apply")),  # restores it
        "sleep 3"])]
    r1 = boot_vm(units=UNITS, timeout=90, commands={
        "status": _migd("status", "--json"), "devices": ["cat", "/run/migd/devices.env"], "drift": drift,
        "journal_migd": ["journalctl", "-b", "-u", "migd", "-o", "cat", "--no-pager"]}).check()
    migd = r1.unit("migd.service")
    assert migd["Result"] == "success" and migd["ActiveState"] == "active", r1.describe()
    for stub in STUBS:
        props = r1.unit(stub)
        assert props["ActiveState"] == "active", (stub, props["ActiveState"])
        assert _ts(migd, "ExecMainExitTimestampMonotonic") <= _ts(props, "ExecMainStartTimestampMonotonic"), stub
        assert _ts(migd, "ActiveEnterTimestampMonotonic") <= _ts(props, "InactiveExitTimestampMonotonic"), stub
    status = json.loads(r1.command("status")["stdout"])
    for gpu in status["gpus"]:
        assert gpu["mig"]["current"] is True
        layout = [(i["profile"], i["placement"]["start"], i["name"]) for i in gpu["instances"]]
        assert [(s, n) for _, s, n in layout] == [(0, "train"), (4, "eval"), (6, "notebook")], layout
    devices = r1.command("devices")["stdout"]
    assert "MIGD_GPU0_TRAIN=MIG-" in devices and "MIGD_GPU1_NOTEBOOK=MIG-" in devices
    created = _events(r1, "migd.service", "create_gi")
    assert len(created) == 6 and {e["MIGD_GPU"] for e in created} == {"0", "1"}
    assert all(e["PRIORITY"] == "6" and e["SYSLOG_IDENTIFIER"] == "migd" for e in created)
    assert _events(r1, "migd.service", "set_mig_mode", MIGD_GPU="0")

    # --- 4. drift: one warning with fields when an instance vanishes, one "cleared" when it is restored --------
    assert r1.command("drift")["rc"] == 0, r1.command("drift")
    drifts = _events(r1, "migd-watch.service", "drift", MIGD_GPU="0")
    assert len(drifts) == 1, [d["MESSAGE"] for d in drifts]
    assert drifts[0]["PRIORITY"] == "4" and "1g.10gb@6:1" in drifts[0]["MIGD_EXPECTED"]
    assert "1g.10gb@6:1" not in drifts[0]["MIGD_FOUND"]
    assert len(_events(r1, "migd-watch.service", "drift_cleared", MIGD_GPU="0")) == 1
    assert not _events(r1, "migd-watch.service", "drift", MIGD_GPU="1")
    assert r1.unit("migd-watch.service")["ActiveState"] == "active"

    # --- 3. second boot: instances were lost with the reboot (and Hopper's MIG mode); migd re-creates them --------
    r2 = boot_vm(units=UNITS, timeout=60, commands={"status": _migd("status", "--json")}).check()
    assert r2.unit("migd.service")["Result"] == "success", r2.describe()
    assert _events(r2, "migd.service", "set_mig_mode", MIGD_GPU="0"), "Hopper lost MIG mode at reboot"
    assert not _events(r2, "migd.service", "set_mig_mode", MIGD_GPU="1"), "Ampere keeps MIG mode across reboot"
    assert len(_events(r2, "migd.service", "create_gi")) == 6
    status = json.loads(r2.command("status")["stdout"])
    assert all(len(g["instances"]) == 3 for g in status["gpus"])

    # --- 5. a hung NVML call: its reader process is killed at the hang limit (WatchdogSec, 4 s here) and it is said
    # once; migd-watch itself was never inside NVML, so it keeps pinging and is not restarted (issue 21.3) -----------
    hang = root / "etc/systemd/system/migd-watch.service.d/hang.conf"
    hang.write_text("[Service]\nEnvironment=MIGD_SIM_FAULTS=nvmlDeviceGetCount=hang\n")
    r3 = boot_vm(units=UNITS, timeout=90, commands={"wait": ["sleep", "14"]}).check()
    hang.unlink()
    watch = r3.unit("migd-watch.service")
    texts = [str(e.get("MESSAGE")) for e in r3.journal(UNIT="migd-watch.service")]  # systemd's own records
    assert not any("Watchdog timeout" in t for t in texts), texts[-10:]
    assert watch["ActiveState"] == "active" and int(watch["NRestarts"]) == 0, (watch["ActiveState"], watch["NRestarts"])
    hung = _events(r3, "migd-watch.service", "check_hung")
    assert len(hung) == 1 and hung[0]["PRIORITY"] == "3" and "reader process was killed" in hung[0]["MESSAGE"], hung
    assert watch["StatusText"].startswith("a layout check has not returned for 4 s"), watch["StatusText"]

    # --- 2. negative control: migd ordered after the clients -> Hopper's MIG enable stays pending, holder named ---
    override = root / "etc/systemd/system/migd.service"
    override.write_text((REPO / "packaging/systemd/migd.service").read_text()
                        .replace("Before=", "#Before=")
                        .replace("[Service]", "[Unit]\nAfter=nvidia-dcgm.service nvsm.service gdm.service\n"
                                              "[Service]\nExecStartPre=/bin/sleep 1", 1))
    r4 = boot_vm(units=UNITS, timeout=60, commands={
        "status": ["systemctl", "status", "--no-pager", "-n", "0", "migd.service"]}).check()
    override.unlink()
    migd = r4.unit("migd.service")
    assert migd["Result"] == "exit-code" and migd["ExecMainStatus"] == "4", (migd["Result"], migd["ExecMainStatus"])
    # systemd calls 4 NOPERMISSION: the unit's status line says what migd's 4 means (issue 16.9)
    assert migd["StatusText"].startswith("exit 4 = MIG mode change pending (not NOPERMISSION, systemd's name for 4):"
                                         " GPU 0: "), migd["StatusText"]
    assert "nv-hostengine" in migd["StatusText"], migd["StatusText"]
    shown = r4.command("status")["stdout"]
    assert 'Status: "exit 4 = MIG mode change pending' in shown, shown
    assert _ts(r4.unit("nvidia-dcgm.service"), "ActiveEnterTimestampMonotonic") <= _ts(migd, "ExecMainStartTimestampMonotonic")
    pending = _events(r4, "migd.service", "mode_pending", MIGD_GPU="0")
    assert pending, r4.messages(unit="migd.service")
    assert "nv-hostengine" in pending[0]["MESSAGE"] and "nvidia-dcgm.service" in pending[0]["MESSAGE"], pending[0]
    assert pending[0]["PRIORITY"] == "4"

    # --- 6. driver installed, module not loaded: migd.service waits driver_wait_timeout (said once), then fails
    #        saying so; clients still start ----------------------------------------------------------------------
    (root / "var/lib/migd-sim").mkdir(parents=True, exist_ok=True)
    state = json.loads((root / SIM_STATE.lstrip("/")).read_text())
    state["driver"] = "not-loaded"
    (root / SIM_STATE.lstrip("/")).write_text(json.dumps(state))
    r5 = boot_vm(units=UNITS, timeout=60).check()
    migd = r5.unit("migd.service")
    assert migd["Result"] == "exit-code", migd["Result"]
    assert len(_events(r5, "migd.service", "driver_wait")) == 1
    failed = [e["MESSAGE"] for e in r5.journal(_SYSTEMD_UNIT="migd.service") if e.get("PRIORITY") == "3"]
    assert any("nvidia kernel module installed but not loaded after 4 s" in m for m in failed), failed
    for stub in STUBS:
        assert r5.unit(stub)["ActiveState"] == "active", stub

    for r in (r1, r2, r3, r4, r5):
        assert r.leftovers == [], r.describe()
    print(f"\n[boot] migd boots: {r1.seconds:.1f}s {r2.seconds:.1f}s {r3.seconds:.1f}s {r4.seconds:.1f}s "
          f"{r5.seconds:.1f}s")


def _set_sim_driver(root: Path, driver: str) -> None:
    path = root / SIM_STATE.lstrip("/")
    state = json.loads(path.read_text())
    state["driver"] = driver
    path.write_text(json.dumps(state))


def test_watch_unit_under_real_systemd(boot_base, boot_rootfs, boot_vm, migd_deb):
    """migd-watch installed from the .deb (issue 13): its journal identity, one journal line per event, a config
    that manages nothing, unreadable GPUs, and an invalid config that fails the unit visibly instead of looping."""
    root = boot_rootfs
    _install_migd(root, migd_deb)
    watch_unit = "migd-watch.service"

    # --- journal identity, and "GPU n: applied N changes" once per GPU (an event, not also a stdout line) --------
    r1 = boot_vm(units=UNITS, timeout=60, commands={
        "1_wait": ["sleep", "2"],
        "2_tagged": ["journalctl", "-b", "-t", "migd-watch", "-o", "json", "--no-pager"]}).check()
    assert r1.unit("migd.service")["Result"] == "success", r1.describe()
    for gpu in (0, 1):
        applied = [m for m in r1.messages("migd.service") if m.startswith(f"GPU {gpu}: applied")]
        assert len(applied) == 1, applied
    ours = [e for e in r1.journal(_SYSTEMD_UNIT=watch_unit) if "MIGD_EVENT" in e]
    assert ours and all(e.get("SYSLOG_IDENTIFIER") == "migd-watch" for e in ours), \
        {e.get("SYSLOG_IDENTIFIER") for e in ours}
    tagged = [json.loads(line) for line in r1.command("2_tagged")["stdout"].splitlines() if line.strip()]
    assert any(e.get("MIGD_EVENT") == "watch_started" for e in tagged), [e.get("MESSAGE") for e in tagged]
    assert r1.unit(watch_unit)["StatusText"].startswith("2 GPU(s) match the layout"), r1.unit(watch_unit)

    # --- a config that selects no GPU, on a host without the NVIDIA library: one info line, no NVML, no error ---
    (root / "etc/migd.toml").write_text((REPO / "etc/migd.toml").read_text())  # the file the package ships
    _set_sim_driver(root, "no-library")
    r2 = boot_vm(units=UNITS, timeout=60, commands={"wait": ["sleep", "2"]}).check()
    watch = r2.unit(watch_unit)
    assert watch["ActiveState"] == "active", watch["ActiveState"]
    assert watch["StatusText"].startswith("no GPU managed by /etc/migd.toml on this host"), watch["StatusText"]
    logged = [e for e in r2.journal(_SYSTEMD_UNIT=watch_unit) if "MIGD_EVENT" in e]
    # the simulated run says so first (a test hook never steers a run unnoticed), then the one info line
    assert [e["MIGD_EVENT"] for e in logged] == ["simulated", "watch_nothing"], [e.get("MESSAGE") for e in logged]
    assert logged[1]["PRIORITY"] == "6"

    # --- GPUs that cannot be read: STATUS says so (never "0 GPU(s) match"), one error ---------------------------
    install_file(root, "/etc/migd.toml", CONFIG, mode=0o644)
    _set_sim_driver(root, "not-loaded")
    r3 = boot_vm(units=UNITS, timeout=60, commands={"wait": ["sleep", "3"]}).check()
    status = r3.unit(watch_unit)["StatusText"]
    assert status.startswith("cannot read GPUs: ") and "DRIVER_NOT_LOADED" in status, status
    errors = [e for e in r3.journal(_SYSTEMD_UNIT=watch_unit) if e.get("PRIORITY") == "3"]
    assert [e.get("MIGD_EVENT") for e in errors] == ["read_failed"], [e.get("MESSAGE") for e in errors]

    # --- an invalid config: migd-watch fails at once (no restart loop), shows in `systemctl --failed`, says where;
    #     the admin fixes the file and restarts it -----------------------------------------------------------------
    _set_sim_driver(root, "loaded")
    install_file(root, "/etc/migd.toml.good", CONFIG, mode=0o644)
    install_file(root, "/etc/migd.toml", CONFIG.replace("mig = true", 'mig = "yes"'), mode=0o644)
    r4 = boot_vm(units=UNITS, timeout=60, commands={
        "1_wait": ["sleep", "4"],  # four RestartSec=1 periods: a loop would show here
        "2_failed": ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"],
        "2_show": ["systemctl", "show", "-p", "ActiveState,Result,ExecMainStatus,NRestarts,StatusText", watch_unit],
        "3_status": ["systemctl", "status", "--no-pager", "-n", "3", watch_unit],
        "4_fix": ["sh", "-c", "cp /etc/migd.toml.good /etc/migd.toml && systemctl restart migd-watch && sleep 1 "
                              "&& systemctl is-active migd-watch"]}).check()
    assert watch_unit in r4.command("2_failed")["stdout"], r4.command("2_failed")
    props = dict(line.split("=", 1) for line in r4.command("2_show")["stdout"].splitlines() if "=" in line)
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == ("failed", "exit-code", "2"), props
    assert props["NRestarts"] == "0", props
    assert props["StatusText"].startswith("invalid configuration, not watching: /etc/migd.toml:4: "), props
    errors = [e for e in r4.journal(_SYSTEMD_UNIT=watch_unit) if e.get("PRIORITY") == "3"]
    assert len(errors) == 1 and "/etc/migd.toml:" in errors[0]["MESSAGE"], [e.get("MESSAGE") for e in errors]
    assert "/etc/migd.toml:" in r4.command("3_status")["stdout"], r4.command("3_status")
    for stub in STUBS:  # a failed migd-watch holds nothing up
        assert r4.unit(stub)["ActiveState"] == "active", stub
    assert r4.command("4_fix")["stdout"].strip() == "active", r4.command("4_fix")
    print(f"\n[boot] migd-watch boots: {r1.seconds:.1f}s {r2.seconds:.1f}s {r3.seconds:.1f}s {r4.seconds:.1f}s")
