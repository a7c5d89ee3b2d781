"""[daemon] gpu_clients and migd-generator under a real systemd, installed from the .deb (issue 23.3).

A stub `myjob.service` opens the simulated GPU's device node when it starts, like a CUDA job would, with systemd's
default ordering (it starts beside migd.service). migd.service gets a one-second ExecStartPre (a slow driver), so
without ordering the job always holds the GPU first. The simulated H100 loses MIG mode at every container boot,
as Hopper does at a reboot, so every boot needs a mode change:

1. myjob not named: the boot hits the pending state; mode_pending names myjob.service and the gpu_clients line.
2. named (with a template and a prefix glob): the generator's drop-ins order them after migd.service, the layout
   applies at that boot, `systemd-analyze verify` is clean with the drop-ins, `migd validate` lists them.
3. a config the generator cannot use: no drop-ins, one journal line from migd-generator, the boot goes on.
4. `migd validate` warns about a named unit ordered before migd.service and one that does not exist.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from .packages import build_packages, install_deb, missing_build_tools
from .rootfs import enable_units, install_file

pytestmark = pytest.mark.boot

SIM_STATE = "/var/lib/migd-sim/state.json"
SIM_ENV = {"MIGD_SIMULATE": "h100-80gb", "MIGD_SIM_STATE": SIM_STATE, "MIGD_SIM_BOOT_MARKER": "/run/migd-sim/booted",
           "MIGD_RUN_DIR": "/run/migd", "MIGD_SIM_HOST": "real"}
LAYOUT = '[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g", "2g", "1g"]\n\n[daemon]\ndriver_wait_timeout = 4\n'
HOLD = "mkdir -p /var/lib/migd-sim/dev; exec 3<>/var/lib/migd-sim/dev/nvidia0; exec /usr/local/bin/myjob infinity"
UNITS = ["migd.service", "myjob.service", "vllm@0.service", "triton-server.service", "early.service"]


def _unit(description: str, exec_start: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [Unit]
        Description={description}
        {extra}
        [Service]
        ExecStart={exec_start}
        [Install]
        WantedBy=multi-user.target
        """)


def _setup(root, deb) -> None:
    install_deb(root, deb)
    env = " ".join(f"{k}={v}" for k, v in SIM_ENV.items())
    for unit in ("migd.service", "migd-watch.service"):
        install_file(root, f"/etc/systemd/system/{unit}.d/simulate.conf", f"[Service]\nEnvironment={env}\n"
                     "StateDirectory=migd-sim\nRuntimeDirectory=migd-sim\n")
    # a slow start (a driver still loading): without ordering, the job always opens the GPU first
    install_file(root, "/etc/systemd/system/migd.service.d/slow.conf", "[Service]\nExecStartPre=/bin/sleep 1\n")
    install_file(root, "/usr/local/bin/myjob", (root / "usr/bin/sleep").read_bytes(), mode=0o755)
    install_file(root, "/etc/systemd/system/myjob.service", _unit("an admin's CUDA job", f"/bin/sh -c '{HOLD}'"))
    install_file(root, "/etc/systemd/system/vllm@.service", _unit("a template's instance %i", "/bin/sleep infinity"))
    install_file(root, "/etc/systemd/system/triton-server.service", _unit("a prefix", "/bin/sleep infinity"))
    install_file(root, "/etc/systemd/system/early.service",
                 _unit("ordered before migd", "/bin/sleep infinity", "Before=migd.service"))
    enable_units(root, "myjob.service", "vllm@0.service", "triton-server.service")


def _events(result, event: str):
    return [e for e in result.journal(_SYSTEMD_UNIT="migd.service") if e.get("MIGD_EVENT") == event]


def _ts(props, name: str) -> int:
    value = int(props[name])
    assert value > 0, name
    return value


def _after(result, unit: str):
    return result.unit(unit)["After"].split()


def test_gpu_clients_under_real_systemd(boot_base, boot_rootfs, boot_vm):
    reason = missing_build_tools(["deb"])
    if reason:
        pytest.skip(reason)
    root = boot_rootfs
    _setup(root, build_packages(kinds=["deb"])["deb"])
    conf = root / "etc/migd.toml"

    # --- 1. myjob.service not named: it holds the GPU first, the mode change is pending, the message says what to add
    conf.write_text(LAYOUT)
    r1 = boot_vm(units=UNITS, timeout=60).check()
    migd = r1.unit("migd.service")
    assert (migd["Result"], migd["ExecMainStatus"]) == ("exit-code", "4"), (migd["Result"], r1.describe())
    assert "migd.service" not in _after(r1, "myjob.service")
    [pending] = _events(r1, "mode_pending")
    message = pending["MESSAGE"]
    assert "(pid " in message and "myjob.service)" in message, message
    assert message.endswith("; myjob.service is not ordered after migd.service: to start it after the layout at "
                            'boot, set in [daemon] of /etc/migd.toml: gpu_clients = ["myjob.service"]'), message
    assert not _events(r1, "create_gi")

    # --- 2. named: ordered after migd by the generator's drop-ins; the layout applies at this boot -------------------
    conf.write_text(LAYOUT + 'gpu_clients = ["myjob.service", "vllm@*.service", "triton-*.service"]\n')
    r2 = boot_vm(units=UNITS, timeout=60, commands={
        "1_dropins": ["sh", "-c", "cd /run/systemd/generator && ls -d *.d && cat myjob.service.d/50-migd.conf"],
        "2_verify": ["systemd-analyze", "verify", "--man=no", "myjob.service", "vllm@0.service", "triton-server.service",
                     "migd.service"],
        "3_validate": ["migd", "validate"],
        "4_status": ["env", *(f"{k}={v}" for k, v in SIM_ENV.items()), "migd", "status", "--json"],
    }).check()
    migd = r2.unit("migd.service")
    assert migd["Result"] == "success", (migd["Result"], r2.describe())
    for unit in ("myjob.service", "vllm@0.service", "triton-server.service"):
        assert "migd.service" in _after(r2, unit), unit
        props = r2.unit(unit)
        assert props["ActiveState"] == "active", unit
        assert _ts(migd, "ExecMainExitTimestampMonotonic") <= _ts(props, "ExecMainStartTimestampMonotonic"), unit
    assert r2.command("1_dropins")["stdout"].split()[:3] == \
        ["myjob.service.d", "triton-.service.d", "vllm@.service.d"], r2.command("1_dropins")
    assert "After=migd.service" in r2.command("1_dropins")["stdout"]
    verify = r2.command("2_verify")
    assert (verify["rc"], verify["stdout"] + verify["stderr"]) == (0, ""), verify
    assert not _events(r2, "mode_pending")
    assert len(_events(r2, "create_gi")) == 3
    [gpu] = json.loads(r2.command("4_status")["stdout"])["gpus"]
    assert [i["profile"] for i in gpu["instances"]] == ["3g.40gb", "2g.20gb", "1g.10gb"], gpu["instances"]
    validate = r2.command("3_validate")
    assert validate["rc"] == 0 and "warning" not in validate["stdout"], validate
    assert "gpu_clients: myjob.service, vllm@*.service (every instance of vllm@.service), triton-*.service (every " \
           "service named triton-…) start after migd.service" in validate["stdout"], validate

    # --- 3. a config the generator cannot use: no drop-ins, one line, the boot goes on --------------------------------
    conf.write_text(LAYOUT + 'gpu_clients = ["myjob.service", "my*job.service"]\n')
    # A container has no /dev/kmsg, the generator's way to the journal at boot (journald is not running yet): here
    # the line comes from the daemon-reload, through journald's socket.
    r3 = boot_vm(units=UNITS, timeout=60, commands={
        "1_dropins": ["sh", "-c", "ls /run/systemd/generator | grep -c '[.]d$' || true"],
        "2_reload": ["sh", "-c", "systemctl daemon-reload && sleep 0.5"]}).check()
    assert r3.command("1_dropins")["stdout"].strip() == "0", r3.command("1_dropins")
    assert r3.command("2_reload")["rc"] == 0
    assert "migd.service" not in _after(r3, "myjob.service")
    said = r3.journal(SYSLOG_IDENTIFIER="migd-generator")
    assert len(said) == 1, [e.get("MESSAGE") for e in said]
    assert said[0]["PRIORITY"] == "3"
    assert said[0]["MESSAGE"] == ("no GPU client ordered after migd.service: /etc/migd.toml:8: daemon.gpu_clients #2: "
                                  "'my*job.service': a glob here is either NAME@*.service (every instance of a "
                                  "template) or PREFIX-*.service (every service named PREFIX-…): systemd reads "
                                  "drop-ins for those before any unit is loaded; name other units one by one")
    assert r3.unit("migd.service")["ExecMainStatus"] == "2"  # migd refuses the config too, with the same line
    assert r3.unit("myjob.service")["ActiveState"] == "active"

    # --- 4. validate warns about a named unit ordered before migd.service, and one that does not exist -------------
    conf.write_text(LAYOUT + 'gpu_clients = ["early.service", "missing.service"]\n')
    r4 = boot_vm(units=UNITS, timeout=60, commands={"validate": ["migd", "validate"]}).check()
    out = r4.command("validate")["stdout"]
    assert "warning: gpu_clients: early.service is ordered before migd.service: the drop-in's After=migd.service " \
           "makes an ordering cycle" in out, out
    assert "warning: gpu_clients: missing.service is not-found here" in out, out
    print(f"\n[boot] gpu_clients boots: {r1.seconds:.1f}s {r2.seconds:.1f}s {r3.seconds:.1f}s {r4.seconds:.1f}s")
