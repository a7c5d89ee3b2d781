"""Prometheus metrics through node_exporter's textfile collector: every file migd writes passes `promtool check
metrics`, and its values follow the GPUs through apply, boot, drift, pending and lost states."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import reliability as R
from migd import site
from migd import cli, metrics, sim
from migd.sim.host import SimHost
from migd.watch import Watcher

CONFIG = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["4g", "2g", "1g"]

    [daemon]
    watch_interval = 1
    cdi_refresh = "off"
    metrics_file = "{path}"
""")
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)


@pytest.fixture
def env(tmp_path, monkeypatch):
    prom = tmp_path / "textfile" / "migd.prom"
    prom.parent.mkdir()
    yield dict(R.watch_site(tmp_path, monkeypatch, CONFIG.format(path=prom)), prom=prom)
    sim.uninstall()


def migd(env, *args) -> int:
    return cli.main(["--sim-state", env["state"], "--config", env["config"], *args])


def values(path) -> dict:
    """{(name, frozenset(labels)): value} of a metrics file, checked by promtool first (when installed)."""
    text = path.read_text()
    if PROMTOOL:
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr + text
    return {(s.name, frozenset(s.labels)): s.value for s in metrics.parse(text)}


def one(vals: dict, name: str, **labels) -> float:
    found = [v for (n, ls), v in vals.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, sorted(k for k in vals if k[0] == name))
    return found[0]


def sim_host(env) -> SimHost:
    return SimHost.create("", env["state"])


def test_values_fails_on_a_file_promtool_refuses(tmp_path):
    """The format check every test here relies on can fail: values() runs promtool, which refuses a metric
    described twice (a mistake migd's own parser lets through)."""
    if not PROMTOOL:
        pytest.skip("promtool missing (Debian package prometheus): the other tests check the format less strictly")
    bad = tmp_path / "bad.prom"
    bad.write_text('# HELP migd_x x\n# TYPE migd_x gauge\nmigd_x{gpu="0"} 1\n'
                   '# HELP migd_x x\n# TYPE migd_x gauge\nmigd_x{gpu="1"} 1\n')
    with pytest.raises(AssertionError, match="second HELP"):
        values(bad)


def test_apply_writes_gpu_and_apply_series_atomically_0644(env, capsys):
    assert migd(env, "apply") == 0
    st = os.stat(env["prom"])
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert [p.name for p in env["prom"].parent.iterdir()] == ["migd.prom"]  # no temp file left behind
    v = values(env["prom"])
    uuid0 = json.loads(Path(os.environ["MIGD_RUN_DIR"], "state.json").read_text())["gpus"][0]["uuid"]
    assert one(v, "migd_gpu_layout_match", gpu="0", uuid=uuid0) == 1
    assert one(v, "migd_gpu_mig_mode_current", gpu="1") == 1 and one(v, "migd_gpu_mig_mode_pending", gpu="1") == 1
    assert one(v, "migd_gpu_instances", gpu="0", profile="1g.10gb") == 1
    assert one(v, "migd_gpu_instances_desired", gpu="0", profile="4g.40gb") == 1
    assert one(v, "migd_gpu_lost", gpu="1") == 0 and one(v, "migd_gpu_unreadable", gpu="1") == 0
    assert one(v, "migd_last_apply_success") == 1
    assert 0 <= one(v, "migd_last_apply_duration_seconds") < 60
    assert abs(one(v, "migd_last_apply_timestamp_seconds") - __import__("time").time()) < 60
    assert not [k for k in v if k[0].startswith("migd_last_check")]  # no check yet


def test_check_rounds_count_drift_once_and_keep_the_apply_series(env, capsys):
    assert migd(env, "apply") == 0
    applied_at = one(values(env["prom"]), "migd_last_apply_timestamp_seconds")
    w = Watcher(env["config"], site.build(None, env["state"]))
    w.check_once()
    v = values(env["prom"])
    assert one(v, "migd_drift_events_total") == 0 and one(v, "migd_last_check_success") == 1
    assert one(v, "migd_last_apply_timestamp_seconds") == applied_at  # the apply's series survive a check

    host = sim_host(env)
    gi = host.gpus[0]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(0, gi["id"])
    host.save()
    for _ in range(3):  # one drift, seen three times: one event
        w.check_once()
    v = values(env["prom"])
    assert one(v, "migd_gpu_layout_match", gpu="0") == 0 and one(v, "migd_gpu_layout_match", gpu="1") == 1
    assert one(v, "migd_gpu_instances", gpu="0", profile="1g.10gb") == 0
    assert one(v, "migd_gpu_instances_desired", gpu="0", profile="1g.10gb") == 1
    assert one(v, "migd_drift_events_total") == 1

    w2 = Watcher(env["config"], site.build(None, env["state"]))  # migd-watch restarted: the counter is the file's
    w2.check_once()
    assert one(values(env["prom"]), "migd_drift_events_total") == 1
    assert migd(env, "apply") == 0  # fixed by an apply: the counter stays, the GPU matches
    v = values(env["prom"])
    assert one(v, "migd_drift_events_total") == 1 and one(v, "migd_gpu_layout_match", gpu="0") == 1
    host = sim_host(env)
    gi = host.gpus[1]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(1, gi["id"])
    host.save()
    w2.check_once()
    assert one(values(env["prom"]), "migd_drift_events_total") == 2


def test_pending_and_lost_gpus(env, capsys):
    assert migd(env, "apply") == 0
    host = sim_host(env)
    host.gpus[0]["mig"] = [1, 0]  # MIG off requested, waiting for a reset
    host.gpus[1]["lost"] = True
    host.save()
    Watcher(env["config"], site.build(None, env["state"])).check_once()
    v = values(env["prom"])
    assert one(v, "migd_gpu_mig_mode_current", gpu="0") == 1 and one(v, "migd_gpu_mig_mode_pending", gpu="0") == 0
    assert one(v, "migd_gpu_lost", gpu="1") == 1
    assert not [k for k in v if k[0] == "migd_gpu_layout_match" and ("gpu", "1") in k[1]]
    assert one(v, "migd_last_check_success") == 0
    assert one(v, "migd_drift_events_total") == 0  # pending is not drift


def test_failed_apply_is_recorded(env, capsys, monkeypatch):
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES")
    assert migd(env, "apply") == 1
    v = values(env["prom"])
    assert one(v, "migd_last_apply_success") == 0


def test_boot_writes_the_file(env, capsys):
    assert migd(env, "boot") == 0
    v = values(env["prom"])
    assert one(v, "migd_last_apply_success") == 1 and one(v, "migd_gpu_layout_match", gpu="1") == 1


def test_unwritable_directory_is_a_warning_not_a_failure(env, capsys, tmp_path):
    conf = Path(env["config"]).read_text().replace(str(env["prom"]), str(tmp_path / "missing" / "migd.prom"))
    Path(env["config"]).write_text(conf)
    assert migd(env, "apply") == 0
    assert "cannot write the metrics file" in capsys.readouterr().err


def test_render_escapes_and_parse_round_trips():
    samples = [metrics.Sample("migd_gpu_instances", (("gpu", "0"), ("uuid", 'a"b\\c\nd'), ("profile", "1g.10gb")), 2.0),
               metrics.Sample("migd_last_apply_duration_seconds", (), 0.25)]
    text = metrics.render(samples)
    assert 'uuid="a\\"b\\\\c\\nd"' in text and "migd_last_apply_duration_seconds 0.25" in text
    assert metrics.parse(text) == samples
    assert metrics.parse("junk\nnode_load1 3\nmigd_unknown 1\nmigd_drift_events_total x\n") == []


def test_default_path_only_where_node_exporter_reads(tmp_path):
    from migd import hostenv

    assert hostenv.real(textfile_dir=str(tmp_path / "absent")).metrics_path(None) == ""
    env = hostenv.real(textfile_dir=str(tmp_path))
    assert env.metrics_path(None) == str(tmp_path / "migd.prom")
    assert env.metrics_path("") == "" and env.metrics_path("/x/y.prom") == "/x/y.prom"


@pytest.mark.parametrize("value,ok", [('""', True), ('"/var/lib/node/migd.prom"', True), ('"migd.prom"', False),
                                      ('"/var/lib/migd.txt"', False), ("1", False)])
def test_metrics_file_key_is_validated_with_file_and_line(tmp_path, value, ok):
    from migd import config
    from migd.errors import ConfigError

    p = tmp_path / "migd.toml"
    p.write_text(f"[daemon]\nmetrics_file = {value}\n")
    if ok:
        assert config.load(str(p)).daemon.metrics_file == value.strip('"')
    else:
        with pytest.raises(ConfigError) as e:
            config.load(str(p))
        assert f"{p}:2" in str(e.value) and "metrics_file" in str(e.value) and ".prom" in str(e.value)
