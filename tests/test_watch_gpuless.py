"""migd-watch on a GPU-less host sharing a fleet file (issue 16.4): entries by model glob or "all" (or for other
hosts) select nothing where no NVIDIA driver is installed, so there is nothing to read: no `read_failed`, STATUS=
says no GPU is managed here, migd_last_check_success is 1. An entry naming a GPU by index still is an error."""

from __future__ import annotations

import textwrap

import pytest

import reliability as R
from migd import cli, metrics, publish, sim, site
from migd.sim.host import SimHost
from migd.watch import Watcher

FLEET = textwrap.dedent("""
    [[gpu]]
    select = "*H100*"
    mig = true
    instances = ["4g", "3g"]

    [[gpu]]
    select = "all"
    hosts = ["gpu-[01-64]"]
    mig = true
    instances = ["3g", "2g", "1g"]

    [daemon]
    watch_interval = 1
    cdi_refresh = "off"
    metrics_file = "{prom}"
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    publish._trouble = None
    prom = tmp_path / "textfile" / "migd.prom"
    prom.parent.mkdir()
    site = R.watch_site(tmp_path, monkeypatch, FLEET.format(prom=prom))
    host = SimHost.create("", site["state"])
    host.state["driver"] = "no-library"  # a CPU node: no libnvidia-ml, no nvidia module
    host.save()
    yield dict(site, prom=prom)
    sim.uninstall()


def watcher(env) -> Watcher:
    return Watcher(env["config"], site.build(None, env["state"]), notify=lambda _: None)


def test_gpu_less_host_with_a_fleet_file_is_quiet_and_successful(env):
    with R.captured_events() as seen:
        w = watcher(env)
        for _ in range(3):
            assert w.check_once() == {}
    assert not [(level, name) for level, name, _ in seen if level in ("warning", "error")], seen
    nothing = [f["msg"] for level, name, f in seen if name == "watch_nothing"]
    assert len(nothing) == 1 and "selects no GPU on this host (no NVIDIA driver installed" in nothing[0], nothing
    assert w.summary.startswith(f"no GPU managed by {env['config']} on this host"), w.summary
    samples = {s.name: s.value for s in metrics.read_samples(str(env["prom"]))}
    assert samples["migd_last_check_success"] == 1, samples
    assert not [n for n in samples if n.startswith("migd_gpu_")], samples


def test_boot_agrees_nothing_to_do(env, capsys):
    assert cli.main(["--sim-state", env["state"], "--config", env["config"], "boot"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_an_entry_naming_a_gpu_still_reports_the_unreadable_driver(env):
    with open(env["config"], "a") as f:
        f.write('\n[[gpu]]\nselect = 0\nmig = false\n')
    with R.captured_events() as seen:
        w = watcher(env)
        w.check_once()
    errors = [name for level, name, _ in seen if level == "error"]
    assert errors == ["read_failed"], seen
    assert w.summary.startswith("cannot read GPUs: "), w.summary
    assert {s.name: s.value for s in metrics.read_samples(str(env["prom"]))}["migd_last_check_success"] == 0
