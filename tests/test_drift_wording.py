"""`migd check` and migd-watch say what differs (missing, extra, moved; compute instances too) in one wording."""

from __future__ import annotations

import json
import textwrap

import pytest

import reliability as R
from migd import site
from migd import cli, sim
from migd.sim.host import SimHost
from migd.watch import Watcher

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = 0
    mig = true
    instances = ["4g", "2g", "1g"]

    [[gpu]]
    select = 1
    mig = true
    instances = [{ profile = "3g", compute = ["1c.3g.40gb"] }]
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield R.watch_site(tmp_path, monkeypatch, CONFIG)
    sim.uninstall()


def migd(env, capsys, *args):
    code = cli.main(["--sim-state", env["state"], "--config", env["config"], *args])
    return code, capsys.readouterr().out


def by_hand(env, change):
    host = SimHost.create("", env["state"])
    change(host)
    host.save()


def _drift(host):
    """GPU 0: everything destroyed, a 2g created where the 4g must go (so it cannot be kept: moved);
    GPU 1: the 3g's compute instance re-created one slice further in."""
    for gi in list(host.gpus[0]["gis"]):
        gi["cis"] = []
        host.destroy_gi(0, gi["id"])
    gi = host.create_gi(0, 14, (0, 2))  # 2g.20gb (profile ID 14) at 0:2
    assert gi is not None
    g1 = host.gpus[1]["gis"][0]
    ci = g1["cis"][0]
    host.destroy_ci(1, g1["id"], ci["id"])
    host.create_ci(1, g1["id"], ci["profile_id"], (1, 1))


GPU0 = "missing 4g.40gb@0:4, 1g.10gb@6:1; 2g.20gb moved 4:2 → 0:2"
GPU1 = "3g.40gb@0:4 compute: 1c.3g.40gb moved 0:1 → 1:1"


def test_check_says_what_differs_and_json_keeps_both_layouts(env, capsys):
    assert migd(env, capsys, "apply")[0] == 0
    assert migd(env, capsys, "check") == (0, "GPU 0: ok: MIG on: 4g.40gb@0:4 2g.20gb@4:2 1g.10gb@6:1\n"
                                             "GPU 1: ok: MIG on: 3g.40gb@0:4[1c.3g.40gb@0:1]\n")
    by_hand(env, _drift)
    code, out = migd(env, capsys, "check")
    assert code == 3
    assert out.splitlines() == [f"GPU 0: drift: {GPU0}", f"GPU 1: drift: {GPU1}"], out
    doc = json.loads(migd(env, capsys, "check", "--json")[1])
    g0, g1 = doc["gpus"]
    assert g0["diff"] == GPU0 and g0["expected"] == "MIG on: 4g.40gb@0:4 2g.20gb@4:2 1g.10gb@6:1"
    assert g0["found"] == "MIG on: 2g.20gb@0:2[no compute]"
    # the compute instance's placement shows on both sides, so a moved one no longer reads the same
    assert (g1["expected"], g1["found"]) == ("MIG on: 3g.40gb@0:4[1c.3g.40gb@0:1]", "MIG on: 3g.40gb@0:4[1c.3g.40gb@1:1]")
    assert g1["diff"] == GPU1


def test_watch_logs_drift_in_the_same_wording_as_check(env, capsys):
    from structlog.testing import capture_logs

    assert migd(env, capsys, "apply")[0] == 0
    by_hand(env, _drift)
    with capture_logs() as logs:
        assert Watcher(env["config"], site.build(None, env["state"])).check_once() == {0: "drift", 1: "drift"}
    drift = {e["gpu"]: e for e in logs if e["event"] == "drift"}
    assert drift[0]["msg"] == f"GPU 0: drift: {GPU0}" and drift[0]["diff"] == GPU0
    assert drift[1]["msg"] == f"GPU 1: drift: {GPU1}"
    assert drift[0]["expected"].startswith("MIG on: 4g.40gb@0:4") and drift[0]["found"] == "MIG on: 2g.20gb@0:2[no compute]"


def test_missing_extra_and_mode_wording(env, capsys):
    assert migd(env, capsys, "apply")[0] == 0

    def swap(host):  # GPU 0: the 1g at 6:1 destroyed by hand
        gi = host.gpus[0]["gis"][-1]
        gi["cis"] = []
        host.destroy_gi(0, gi["id"])

    by_hand(env, swap)
    code, out = migd(env, capsys, "check")
    assert out.splitlines()[0] == "GPU 0: drift: missing 1g.10gb@6:1", out
    by_hand(env, lambda host: host.create_gi(0, 19, (6, 1)))  # back, but without its compute instance
    code, out = migd(env, capsys, "check")
    assert out.splitlines()[0] == "GPU 0: drift: 1g.10gb@6:1 compute: missing 1g.10gb@0:1", out
    by_hand(env, lambda host: host.gpus[0].update(mig=[0, 0], gis=[]))
    code, out = migd(env, capsys, "check")
    assert out.splitlines()[0] == "GPU 0: drift: MIG off, expected on", out
