"""The units' sandbox and exposure as the real systemd sees them, in a booted container (systemd-nspawn). The
offline checks of the same units: tests/test_security.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

import reliability as R
from test_security import CAPS, TARGET, UNITS  # one capability list and exposure target for both files

from .rootfs import enable_units, install_file

# --- inside a booted container: the real systemd's word -----------------------------------------------------------

BOOT_SIM = {"MIGD_SIMULATE": "h100-80gb", "MIGD_SIM_STATE": "/var/lib/migd-sim/state.json",
            "MIGD_SIM_BOOT_MARKER": "/run/migd-sim/booted", "MIGD_RUN_DIR": "/run/migd", "MIGD_SIM_HOST": "real"}


def _install_from_source(root: Path) -> None:
    lib = root / "usr/lib/migd"
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copytree(R.SRC / "migd", lib / "migd", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for dep in ("pynvml", "structlog", "sdnotify"):
        origin = Path(importlib.util.find_spec(dep).origin)
        src = origin.parent if origin.name == "__init__.py" else origin
        if src.is_dir():
            shutil.copytree(src, lib / src.name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy2(src, lib / src.name)
    install_file(root, "/usr/bin/migd", (R.ROOT / "packaging/bin/migd").read_text(), mode=0o755)
    env = " ".join(f"{k}={v}" for k, v in BOOT_SIM.items())
    for unit in CAPS:
        install_file(root, f"/usr/lib/systemd/system/{unit}", (UNITS / unit).read_text())
        install_file(root, f"/etc/systemd/system/{unit}.d/simulate.conf",
                     f"[Service]\nEnvironment={env}\nStateDirectory=migd-sim\nRuntimeDirectory=migd-sim\n")
    install_file(root, "/etc/migd.toml", R.LAYOUT_A, mode=0o644)
    if not (root / "bin/kill").exists() and Path("/bin/kill").exists():  # ExecReload's; the package needs procps
        install_file(root, "/bin/kill", Path("/bin/kill").read_bytes(), mode=0o755)
    enable_units(root, *CAPS)


@pytest.mark.boot
def test_exposure_and_run_dir_in_a_booted_container(boot_base, boot_rootfs, boot_vm, summary_line):
    _install_from_source(boot_rootfs)
    sim = ["env", *(f"{k}={v}" for k, v in BOOT_SIM.items())]
    r = boot_vm(units=list(CAPS), timeout=60, commands={
        "security": ["systemd-analyze", "security", "--no-pager", *CAPS],
        "verify": ["systemd-analyze", "verify", "--man=no", *CAPS],
        "reload": ["sh", "-c", "systemctl reload migd-watch && sleep 0.5 && "
                               "journalctl -b -u migd-watch -o cat MIGD_EVENT=config_reloaded | wc -l"],
        "run_dir": ["sh", "-c", "stat -c '%a %U %F %n' /run/migd /run/migd/*"],
        "status": [*sim, "migd", "status", "--json"],
        "caps": ["sh", "-c", "grep -E '^Cap(Bnd|Eff)' /proc/$(systemctl show -p MainPID --value migd-watch)/status"],
        "sandbox": ["sh", "-c", "p=$(systemctl show -p MainPID --value migd-watch); "
                    "grep -E '^(NoNewPrivs|Seccomp):' /proc/$p/status; "
                    "for ns in net mnt uts; do [ $(readlink /proc/1/ns/$ns) != $(readlink /proc/$p/ns/$ns) ] "
                    "&& echo private-$ns; done; "
                    "nsenter -t $p -m touch /var/lib/x 2>&1 | grep -c 'Read-only'"],
    }).check()
    for unit in CAPS:
        assert r.unit(unit)["ActiveState"] == "active", (unit, r.describe())
    assert r.unit("migd.service")["Result"] == "success"
    verify = r.command("verify")
    assert verify["rc"] == 0 and not verify["stdout"].strip() and not verify["stderr"].strip(), verify
    pid1 = [m for m in r.messages() if "migd" in m and ("DeviceAllow" in m or "nvidia" in m or "ignoring" in m)]
    print("\n[security] systemd about the units: " + (" | ".join(pid1) or "nothing"))
    if (boot_rootfs / "bin/kill").exists():  # SIGHUP (ExecReload=/bin/kill) inside the sandbox
        assert r.command("reload")["stdout"].strip() == "1", r.command("reload")
    out = r.command("security")["stdout"]
    scores = dict(re.findall(r"Overall exposure level for (\S+): (\d+\.\d+)", out))
    assert set(scores) == set(CAPS), out[-3000:]
    summary_line("systemd-analyze security in the booted container (systemd 252): "
                 + ", ".join(f"{n} {s}" for n, s in sorted(scores.items())) + f" (target <= {TARGET})")
    print("\n" + out)
    for name, score in scores.items():
        assert float(score) <= TARGET, (name, score)
    modes = {line.split()[-1]: line.split()[:2] for line in r.command("run_dir")["stdout"].splitlines()}
    assert modes == {"/run/migd": ["755", "root"], "/run/migd/state.json": ["644", "root"],
                     "/run/migd/devices.env": ["644", "root"], "/run/migd/lock": ["600", "root"],
                     "/run/migd/profiles.json": ["644", "root"]}, modes
    status = json.loads(r.command("status")["stdout"])
    assert [i["placement"]["start"] for i in status["gpus"][0]["instances"]] == [0, 4, 6]
    sandbox = r.command("sandbox")["stdout"].split()
    assert sandbox == ["NoNewPrivs:", "1", "Seccomp:", "2", "private-net", "private-mnt", "private-uts", "1"], sandbox
    caps = dict(line.split(":") for line in r.command("caps")["stdout"].splitlines())
    assert int(caps["CapBnd"].strip(), 16) == (1 << 21) | (1 << 27)  # CAP_SYS_ADMIN, CAP_MKNOD
