"""CDI refresh after a MIG change: which systemctl calls migd makes, with a fake systemctl on PATH."""

from __future__ import annotations

import os
import textwrap

import pytest

from migd import cdi, cli, sim
from migd.sim.host import SimHost

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["4g", "2g", "1g"]
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A simulated host, a config, and a fake systemctl that logs its arguments and answers `show` with
    $FAKE_LOADSTATE (what systemd says about nvidia-cdi-refresh.service)."""
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_SIM_HOST", "real")  # simulated GPUs, this machine's systemctl (the fake one below)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bin_dir / "systemctl"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {log}
        case "$1" in show) echo "$FAKE_LOADSTATE"; exit 0;; esac
        if [ -n "$FAKE_RESTART_FAILS" ]; then echo "Failed to restart: Access denied" >&2; exit 1; fi
        exit 0
        """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOADSTATE", "loaded")
    monkeypatch.delenv("FAKE_RESTART_FAILS", raising=False)
    conf = tmp_path / "migd.toml"
    conf.write_text(CONFIG)
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    SimHost.create("h100-80gb:2", str(state))

    def calls():
        return log.read_text().splitlines() if log.exists() else []

    yield {"config": conf, "state": str(state), "calls": calls, "log": log}
    sim.uninstall()


def apply(env) -> int:
    return cli.main(["--sim-state", env["state"], "--config", str(env["config"]), "apply"])


def fresh_gpus(env) -> None:
    """New GPUs (as after a reboot without MIG): the next apply changes them."""
    sim.uninstall()
    os.remove(env["state"])
    SimHost.create("h100-80gb:2", env["state"])


RESTART = "--no-block restart -- nvidia-cdi-refresh.service"
SHOW = "show --property=LoadState --value -- nvidia-cdi-refresh.service"


def test_apply_that_changes_a_gpu_queues_the_cdi_refresh_without_blocking(env, capsys):
    assert apply(env) == 0
    assert env["calls"]() == [SHOW, RESTART]
    env["log"].unlink()
    assert apply(env) == 0  # nothing changed: the spec is still right, no refresh
    assert env["calls"]() == []


def test_no_refresh_when_the_unit_is_absent_or_masked(env, capsys, monkeypatch):
    for state in ("not-found", "masked", ""):
        monkeypatch.setenv("FAKE_LOADSTATE", state)
        fresh_gpus(env)
        assert apply(env) == 0
        assert env["calls"]() == [SHOW], state  # asked, never restarted
        env["log"].unlink()


def test_cdi_refresh_off_never_calls_systemctl(env, capsys):
    env["config"].write_text(CONFIG + '\n[daemon]\ncdi_refresh = "off"\n')
    assert apply(env) == 0
    assert env["calls"]() == []


def test_failed_restart_is_a_warning_and_the_apply_still_succeeds(env, capsys, monkeypatch):
    events = []
    monkeypatch.setattr(cdi, "log", type("L", (), {
        "__getattr__": lambda self, level: lambda event, **f: events.append((level, event, f))})())
    monkeypatch.setenv("FAKE_RESTART_FAILS", "1")
    assert apply(env) == 0
    warning = [(lvl, f) for lvl, e, f in events if e == "cdi_refresh_failed"]
    assert warning and warning[0][0] == "warning" and "Access denied" in warning[0][1]["msg"]
    monkeypatch.delenv("FAKE_RESTART_FAILS")
    events.clear()
    fresh_gpus(env)
    assert apply(env) == 0
    done = [(lvl, f) for lvl, e, f in events if e == "cdi_refresh"]
    assert done and done[0][0] == "info" and done[0][1]["gpus"] == [0, 1]


@pytest.mark.parametrize("setting,changed,state,expected", [
    ("auto", [0], "loaded", True),
    ("auto", [0], "not-found", False),
    ("auto", [0], "masked", False),
    ("auto", [0], None, False),
    ("auto", [], "loaded", False),
    ("off", [0], "loaded", False),
])
def test_decide(setting, changed, state, expected):
    assert cdi.decide(setting, changed, state) is expected


def test_persistence_and_pending_mode_are_no_change():
    from migd.engine import GpuResult, Outcome
    from migd.plan import Action, ActionKind

    persist = GpuResult(0, Outcome.APPLIED, done=[Action(kind=ActionKind.SET_PERSISTENCE, gpu=0, enabled=True)])
    pending = GpuResult(1, Outcome.PENDING, done=[Action(kind=ActionKind.SET_MIG_MODE, gpu=1, enabled=True)])
    mode = GpuResult(2, Outcome.APPLIED, done=[Action(kind=ActionKind.SET_MIG_MODE, gpu=2, enabled=True)])
    gone = GpuResult(3, Outcome.PENDING, done=[Action(kind=ActionKind.DESTROY_GI, gpu=3, gi_id=1),
                                               Action(kind=ActionKind.SET_MIG_MODE, gpu=3, enabled=False)])
    assert cdi.changed_gpus([persist, pending, mode, gone]) == [2, 3]


@pytest.mark.parametrize("value,ok", [('"auto"', True), ('"off"', True), ('"on"', False), ("true", False)])
def test_cdi_refresh_key_is_validated_with_file_and_line(tmp_path, value, ok):
    from migd import config
    from migd.errors import ConfigError

    p = tmp_path / "migd.toml"
    p.write_text(f'[daemon]\nwatch_interval = 5\ncdi_refresh = {value}\n')
    if ok:
        assert config.load(str(p)).daemon.cdi_refresh == value.strip('"')
    else:
        with pytest.raises(ConfigError) as e:
            config.load(str(p))
        assert f"{p}:3" in str(e.value) and "cdi_refresh" in str(e.value) and '"auto" or "off"' in str(e.value)
