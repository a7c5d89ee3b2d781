"""A metrics file migd cannot write (issue 16.7): a metrics_file outside node_exporter's directory, on a file
system the units see read-only (ProtectSystem=strict without a ReadWritePaths= drop-in), is said once with the
drop-in to add, not at every check; migd-watch's STATUS= shows it while it lasts; its recovery is said once.
The read-only file system is a real one (a read-only tmpfs mounted for the test)."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

import reliability as R
from migd import publish, sim, site
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


@pytest.fixture
def readonly(tmp_path):
    d = tmp_path / "srv-metrics"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0755", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def env(tmp_path, monkeypatch, readonly):
    from migd.log import setup

    setup("info")  # migd-watch's level (not whatever an earlier test's CLI run left)
    publish._trouble = None
    site = R.watch_site(tmp_path, monkeypatch, CONFIG.format(path=readonly / "migd.prom"))
    yield dict(site, dir=readonly)
    publish._trouble = None
    sim.uninstall()


def test_read_only_metrics_dir_said_once_with_the_drop_in_shown_in_status_recovery_once(env):
    events = R.captured_events()
    with events as seen:
        w = Watcher(env["config"], site.build(None, env["state"]), notify=lambda _: None)
        for _ in range(4):
            w.check_once()
        assert "Read-only file system" in w.summary and f"ReadWritePaths={env['dir']}" in w.summary, w.summary
        subprocess.run(["mount", "-o", "remount,rw", str(env["dir"])], check=True)
        w.check_once()
        w.check_once()
        assert "metrics" not in w.summary, w.summary
    failed = [f for level, name, f in seen if name == "metrics_write_failed"]
    assert len(failed) == 1, [f["msg"] for f in failed]
    msg = failed[0]["msg"]
    assert msg.startswith(f"cannot write the metrics file {env['dir']}/migd.prom: Read-only file system"), msg
    assert "`systemctl edit migd-watch` and `systemctl edit migd`" in msg, msg
    assert f"`[Service]` and `ReadWritePaths={env['dir']}`" in msg, msg
    recovered = [f for level, name, f in seen if name == "metrics_write_recovered"]
    assert len(recovered) == 1 and (env["dir"] / "migd.prom").exists(), recovered
    assert [level for level, name, _ in seen if name == "metrics_write_failed"] == ["warning"]
