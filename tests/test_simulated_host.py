"""A simulated run never touches the real machine (issue 16, points 1 and 2; issue 17 point 13).

Every verb runs with `--simulate` as a real process under tests/hostguard/sitecustomize.py: an audit hook that
refuses and reports any write outside the test's temporary directories and any process started. The simulated
host keeps its own run, state and textfile directories, records systemctl calls and reboots itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from migd.sim.host import SimHost, load_state

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "tests" / "hostguard"
SPEC = "h100-80gb:2"
CONFIG = """\
[[gpu]]
select = "all"
mig = true
instances = ["3g", "2g", "1g"]

[daemon]
on_pending = "reboot-once"
stop_clients = ["nvidia-dcgm.service"]
watch_interval = 1
driver_wait_timeout = 2
"""
VIOLATION = "MIGD-GUARD-VIOLATION"


@pytest.fixture
def guarded(tmp_path):
    """A config, a private XDG state home, and a runner: `migd --simulate SPEC ...` under the guard."""
    conf = tmp_path / "etc" / "migd.toml"
    conf.parent.mkdir()
    conf.write_text(CONFIG)
    state_home = tmp_path / "xdg-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGD_", "XDG_", "NOTIFY_", "WATCHDOG_"))}
    env.update(PYTHONPATH=f"{GUARD}{os.pathsep}{ROOT / 'src'}", PYTHONDONTWRITEBYTECODE="1",
               XDG_STATE_HOME=str(state_home), MIGD_GUARD_ALLOW=str(tmp_path), HOME=str(tmp_path / "home"))

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", SPEC, "--config", str(conf), *args],
                              env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))

    def watch_one_round() -> subprocess.CompletedProcess:
        p = subprocess.Popen([sys.executable, "-m", "migd.cli", "--simulate", SPEC, "--config", str(conf), "watch"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        time.sleep(3)  # rounds of watch_interval = 1
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    state = state_home / "migd" / "sim" / SPEC.replace(":", "_") / "state.json"
    return {"run": run, "watch": watch_one_round, "state": state, "env": env, "tmp": tmp_path}


def _clean(r: subprocess.CompletedProcess) -> None:
    assert VIOLATION not in r.stderr, r.stderr


def test_every_verb_simulated_touches_nothing_outside_its_temp_dirs(guarded):
    run = guarded["run"]
    results: Dict[str, subprocess.CompletedProcess] = {}
    r = results["status"] = run("status")
    _clean(r)
    assert r.returncode == 0, r.stderr
    # the first command that creates the simulated host says where, once
    assert f"simulated {SPEC} host created in {guarded['state']}" in r.stderr, r.stderr
    for verb in (["profiles"], ["validate"], ["plan"], ["apply"], ["check"], ["export"],
                 ["export", "--format", "slurm", "--declared"], ["status", "--json"]):
        r = results[" ".join(verb)] = run(*verb)
        _clean(r)
        assert r.returncode == 0, (verb, r.stdout, r.stderr)
        assert "created in" not in r.stderr, (verb, r.stderr)
    assert "GPU 0: applied" in results["apply"].stdout
    # the apply's CDI refresh went to the simulated host's systemctl: recorded there, shown by status
    host = load_state(str(guarded["state"]))
    assert "systemctl --no-block restart nvidia-cdi-refresh.service" in host["systemctl"], host["systemctl"]
    r = run("status")
    assert "simulated host: systemctl --no-block restart nvidia-cdi-refresh.service" in r.stdout, r.stdout
    # state.json and devices.env went to the simulated host's run directory
    assert (Path(str(guarded["state"]) + ".run") / "devices.env").is_file()

    # apply --stop-clients with GPU 0's MIG mode change held by a client (this process)
    sim = SimHost(load_state(str(guarded["state"])), str(guarded["state"]))
    sim.reboot()  # Hopper loses MIG mode
    sim.gpus[0]["clients"] = [os.getpid()]
    sim.save()
    r = run("apply", "--stop-clients")
    _clean(r)
    assert r.returncode == 4 and "GPU 0: MIG mode change to on is pending" in r.stdout, (r.stdout, r.stderr)

    # boot while the simulated system is starting, with the change pending: reboot-once reboots the simulated host
    sim = SimHost(load_state(str(guarded["state"])), str(guarded["state"]))
    boots = sim.state["boot"]
    sim.state["system"] = "starting"
    sim.save()
    r = run("boot")
    _clean(r)
    assert r.returncode == 0, r.stderr
    assert "rebooting once to let MIG mode take effect" in r.stderr, r.stderr
    after = load_state(str(guarded["state"]))
    assert after["boot"] == boots + 1 and after["gpus"][0]["clients"] == [], "the simulated host rebooted"
    marker = Path(str(guarded["state"]) + ".lib") / "reboot-once.json"
    assert marker.is_file()
    r = run("boot")  # the boot after the reboot: applied, the marker removed
    _clean(r)
    assert r.returncode == 0 and "rebooted once for pending MIG mode on GPU 0; applied" in r.stderr, r.stderr
    assert not marker.exists()

    r = guarded["watch"]()
    _clean(r)
    assert r.returncode == 0 and "migd-watch stopping" in r.stderr, r.stderr
    assert "checks=0" not in r.stderr, r.stderr


def test_the_guard_catches_a_write_and_a_process(guarded, tmp_path):
    """The guard itself: a write outside the allowed directories and a process started are both reported."""
    code = ("import subprocess, sys\n"
            "try:\n    open('/var/tmp/migd-guard-probe', 'w')\nexcept PermissionError: pass\n"
            "try:\n    subprocess.run(['true'])\nexcept PermissionError: pass\n")
    r = subprocess.run([sys.executable, "-c", code], env=guarded["env"], capture_output=True, text=True)
    assert r.stderr.count(VIOLATION) == 2, r.stderr
    assert not os.path.exists("/var/tmp/migd-guard-probe")


def test_the_simulated_host_persists_and_deleting_its_directory_starts_over(guarded):
    """The README's demo: apply, then status shows the applied layout and check says ok; `rm -r` of the host's
    directory (the path the first command named) starts over."""
    run = guarded["run"]
    r = run("apply")
    assert r.returncode == 0 and "created in" in r.stderr, r.stderr
    r = run("status")
    assert r.returncode == 0 and "MIG on" in r.stdout and "created in" not in r.stderr, (r.stdout, r.stderr)
    r = run("check")
    assert r.returncode == 0, r.stdout
    # drift by hand, as the README says
    tool = subprocess.run([sys.executable, "-m", "migd.sim.tool", "--state", str(guarded["state"]), "destroy-gi",
                           "0", str(load_state(str(guarded["state"]))["gpus"][0]["gis"][0]["id"])],
                          env=guarded["env"], capture_output=True, text=True)
    assert tool.returncode == 0, tool.stderr
    r = run("check")
    assert r.returncode == 3 and "GPU 0: drift" in r.stdout, r.stdout
    shutil.rmtree(guarded["state"].parent)
    r = run("check")
    assert r.returncode == 3 and "created in" in r.stderr, (r.stdout, r.stderr)  # a fresh host: MIG off


def test_simulated_run_selected_by_the_environment_says_so(guarded):
    """MIGD_SIMULATE in root's environment: the run is simulated (nothing real touched) and its first line says
    so; MIGD_RUN_DIR and friends are ignored, and said to be, on a real run."""
    env = dict(guarded["env"], MIGD_SIMULATE=SPEC)
    conf = guarded["tmp"] / "etc" / "migd.toml"
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--config", str(conf), "check"], env=env,
                       capture_output=True, text=True)
    _clean(r)
    lines: List[str] = r.stderr.splitlines()
    assert lines and lines[0].startswith("migd: simulated GPUs (MIGD_SIMULATE=h100-80gb:2 in the environment)"), lines
    env = dict(guarded["env"], MIGD_RUN_DIR=str(guarded["tmp"] / "elsewhere"), MIGD_GUARD_ALLOW="")
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--config", str(conf), "validate"], env=env,
                       capture_output=True, text=True)
    assert "ignoring MIGD_RUN_DIR from the environment: honoured by simulated runs only" in r.stderr, r.stderr
    assert not (guarded["tmp"] / "elsewhere").exists()


def test_a_simulated_boot_under_systemd_says_simulated_in_the_journal(guarded):
    """Under systemd (a service verb), the notice is a journal warning, not silent."""
    env = dict(guarded["env"], MIGD_SIMULATE=SPEC)
    conf = guarded["tmp"] / "etc" / "migd.toml"
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--config", str(conf), "boot"], env=env,
                       capture_output=True, text=True)
    _clean(r)
    first = r.stderr.splitlines()[0]
    assert first.startswith("migd[warning]: simulated GPUs (MIGD_SIMULATE=h100-80gb:2 in the environment)"), first


def test_export_without_a_readable_config_says_names_are_left_out(guarded):
    env = guarded["env"]
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", SPEC, "--config",
                        str(guarded["tmp"] / "absent.toml"), "export"], env=env, capture_output=True, text=True)
    _clean(r)
    assert r.returncode == 0 and "[[gpu]]" in r.stdout, r.stderr
    assert "migd: instance names left out (no usable config): " in r.stderr, r.stderr
    assert "absent.toml" in r.stderr, r.stderr


def test_only_the_wiring_knows_the_simulator():
    """Issue 20.4: outside migd/sim/, only migd.site imports the simulator (its one entry point); backend, engine,
    cli, boot and watch never do."""
    import ast

    src = ROOT / "src" / "migd"
    importers = set()
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if rel.parts[0] == "sim":
            continue
        depth = len(rel.parts) - 1  # a module in backend/ reaches the package with two dots
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                names = [a.name for a in node.names]
                if (node.level == depth + 1 and (target.split(".")[0] == "sim" or (not target and "sim" in names))) \
                        or target.startswith("migd.sim"):
                    importers.add(str(rel))
            elif isinstance(node, ast.Import) and any(a.name.startswith("migd.sim") for a in node.names):
                importers.add(str(rel))
    assert importers == {"site.py"}, importers


def test_the_simulated_hosts_systemctl_records_and_status_shows_it(guarded, tmp_path):
    """What `apply --stop-clients` asks of systemctl lands in the simulated host: stopped units are recorded and
    shown by status until started again; nothing runs on this machine."""
    from migd import site

    state = str(tmp_path / "sim" / "state.json")
    (tmp_path / "sim").mkdir()
    env = site.build(SPEC, state, {}).env
    assert env.systemctl("stop", ["nvidia-dcgm.service"]) is None
    assert env.notes()[-1] == "simulated host: units stopped: nvidia-dcgm.service"
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--sim-state", state, "status"], env=guarded["env"],
                       capture_output=True, text=True)
    _clean(r)
    assert "simulated host: systemctl stop nvidia-dcgm.service" in r.stdout, r.stdout
    assert "simulated host: units stopped: nvidia-dcgm.service" in r.stdout, r.stdout
    env.systemctl("start", ["nvidia-dcgm.service"])
    assert not [n for n in env.notes() if "units stopped" in n]
    assert env.unit_load_state("nvidia-cdi-refresh.service") == "loaded"
    assert env.unit_load_state("docker.service") == "not-found"
