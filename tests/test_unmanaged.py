"""instances = "unmanaged" (issue 18.2): migd owns the MIG mode (and persistence), another tool (Kubernetes' DRA driver
with dynamic MIG) owns the instances. Here that other tool is played by editing the simulated host directly, as a
second process using the driver would: migd never creates or destroys an instance on such a GPU, and `check`,
migd-watch, the metrics and devices.env report the mode only (the instances listed as live, never as drift)."""

from __future__ import annotations

import json
import textwrap

import pytest

import reliability as R
from migd import cli, sim
from migd.sim.host import SimHost, load_state
from migd.watch import Watcher

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = "unmanaged"

    [daemon]
    watch_interval = 1
    drift_policy = "reapply"
    metrics_file = "{metrics}"
""")


@pytest.fixture
def site(tmp_path, monkeypatch):
    metrics = tmp_path / "migd.prom"
    yield dict(R.watch_site(tmp_path, monkeypatch, CONFIG.format(metrics=metrics)), metrics=metrics, tmp=tmp_path)
    sim.uninstall()


def migd(site, capsys, *args):
    from migd.log import setup

    try:
        code = cli.main(["--sim-state", site["state"], "--config", site["config"], *args])
    finally:
        setup(level="info")  # a verb at a terminal logs warnings only; the watcher after it logs at info
    out = capsys.readouterr()
    return code, out.out, out.err


def other_tool_creates(site, gpu, profile_id, ci_profile_id):
    """What the DRA driver does when a pod's claim is prepared: a GPU instance and its compute instance."""
    host = SimHost.create("", site["state"])
    gi = host.create_gi(gpu, profile_id)
    host.create_ci(gpu, gi, ci_profile_id)
    host.save()
    return gi


def test_mode_only_instances_live_not_drift(site, capsys):
    code, out, err = migd(site, capsys, "check")
    assert code == 3 and "GPU 0: drift: MIG off, expected on" in out  # the mode is migd's
    code, out, err = migd(site, capsys, "apply")
    assert code == 0 and "GPU 0: applied" in out and "MIG mode on" in out, err
    after = load_state(site["state"])
    assert [g["mig"][0] for g in after["gpus"]] == [1, 1] and all(not g["gis"] for g in after["gpus"])

    other_tool_creates(site, 0, 9, 2)  # 3g.40gb with its whole-GI compute instance
    other_tool_creates(site, 0, 19, 0)  # 1g.10gb
    before = load_state(site["state"])["gpus"]
    code, out, _ = migd(site, capsys, "check", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "ok"
    assert doc["gpus"][0]["expected"] == "MIG on, instances unmanaged"
    assert doc["gpus"][0]["found"] == "MIG on: 1g.10gb@0:1 3g.40gb@4:4" and doc["gpus"][0]["diff"] == ""
    code, out, _ = migd(site, capsys, "plan")
    assert code == 0 and out == "GPU 0: nothing to do\nGPU 1: nothing to do\n"
    code, out, _ = migd(site, capsys, "apply")
    assert code == 0 and load_state(site["state"])["gpus"] == before  # nothing created, nothing destroyed

    env = (site["tmp"] / "run" / "devices.env").read_text()
    assert "MIGD_GPU0_MIG" not in env
    assert '# GPU 0: MIG mode only (instances = "unmanaged"): its MIG devices are another tool\'s, not listed' in env
    prom = site["metrics"].read_text()
    assert 'migd_gpu_layout_match{gpu="0"' in prom and "migd_gpu_instances_desired" not in prom
    assert [ln.split()[-1] for ln in prom.splitlines() if ln.startswith('migd_gpu_layout_match{gpu="0"')] == ["1"]
    assert any(ln.startswith('migd_gpu_instances{gpu="0"') and 'profile="3g.40gb"' in ln and ln.endswith(" 1")
               for ln in prom.splitlines())

    code, out, _ = migd(site, capsys, "validate")
    assert "  layout: MIG on, instances unmanaged (another tool creates and destroys them; migd sets the mode only)" \
        in out


def test_watch_reports_no_drift_for_instances_and_reapplies_only_the_mode(site, capsys):
    from structlog.testing import capture_logs

    assert migd(site, capsys, "apply")[0] == 0
    from migd import site as wiring

    w = Watcher(site["config"], wiring.build(sim_state=site["state"]))
    with capture_logs() as logs:
        assert w.check_once() == {0: "ok", 1: "ok"}
        gi = other_tool_creates(site, 1, 14, 1)  # a 2g.20gb appears: the other tool's, not drift
        assert w.check_once() == {0: "ok", 1: "ok"}
        host = SimHost.create("", site["state"])
        host.find_gi(1, gi)["cis"] = []
        host.destroy_gi(1, gi)  # and goes again
        host.save()
        assert w.check_once() == {0: "ok", 1: "ok"}
        other_tool_creates(site, 1, 14, 1)
        host = SimHost.create("", site["state"])
        host.set_mig_mode(0, 0)  # someone switches GPU 0's MIG mode off: that is drift, and the mode is re-applied
        host.save()
        w.check_once()
    events = [e["event"] for e in logs]
    assert events.count("drift") == 1 and "drift_reapplied" in events, events
    drift = next(e for e in logs if e["event"] == "drift")
    assert drift["gpu"] == 0 and drift["expected"] == "MIG on, instances unmanaged"
    after = load_state(site["state"])["gpus"]
    assert after[0]["mig"][0] == 1 and [gi["profile_id"] for gi in after[1]["gis"]] == [14]  # GPU 1's kept


@pytest.mark.parametrize("entry, says", [
    ('mig = false\ninstances = "unmanaged"', 'instances = "unmanaged" needs mig = true'),
    ('mig = true\ninstances = "unmanage"', '"unmanaged" (MIG mode only; another tool creates the instances)'),
])
def test_unmanaged_spelling_errors(tmp_path, capsys, entry, says):
    cfg = tmp_path / "migd.toml"
    cfg.write_text(f'[[gpu]]\nselect = "all"\n{entry}\n')
    code = cli.main(["--simulate", "h100-80gb", "-c", str(cfg), "validate"])
    err = capsys.readouterr().err
    assert code == 2 and f"{cfg}:4: [[gpu]] #1 instances: " in err and says in err, err


def test_declared_slurm_export_refuses_unmanaged_gpus(site, capsys):
    code, out, err = migd(site, capsys, "export", "--format", "slurm", "--declared")
    assert code == 1 and out == "" and 'GPU 0: instances = "unmanaged"' in err and "export the live layout" in err


def test_boot_sets_the_mode_and_leaves_instances_alone(site, capsys):
    """At every boot (Hopper loses MIG mode at a reboot) migd.service's `migd boot` turns the mode on again; a
    second boot with the other tool's instances present changes nothing."""
    host = SimHost.create("", site["state"])
    host.reboot()
    host.save()
    assert load_state(site["state"])["gpus"][0]["mig"][0] == 0
    code, out, err = migd(site, capsys, "boot")
    assert code == 0, out + err
    assert [g["mig"][0] for g in load_state(site["state"])["gpus"]] == [1, 1]
    other_tool_creates(site, 0, 19, 0)
    before = load_state(site["state"])["gpus"]
    assert migd(site, capsys, "boot")[0] == 0
    assert load_state(site["state"])["gpus"] == before
