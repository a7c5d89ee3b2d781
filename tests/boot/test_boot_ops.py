"""Operations under a real systemd, installed from the .deb (issue 16): a GPU-less host sharing a fleet file is
quiet (16.4), a metrics file the sandbox keeps read-only is said once with the drop-in to add (16.7), and
`migd apply` run from a shell leaves an audit trail in the journal (16.8)."""

from __future__ import annotations

import json

import pytest

from migd.sim.host import SimHost

from .rootfs import install_file
from .test_migd_boot import (NOTEBOOK_GI, SIM_ENV, SIM_STATE, UNITS, _events, _install_migd, _migd, _sim,  # noqa: F401
                             migd_deb)

pytestmark = pytest.mark.boot

FLEET = """
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
driver_wait_timeout = 120
metrics_file = "{metrics}"
"""


def _sim_host(root, driver: str = "loaded") -> SimHost:
    path = root / SIM_STATE.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    host = SimHost.create(SIM_ENV["MIGD_SIMULATE"], str(path))
    host.state["device_dir"] = "/var/lib/migd-sim/dev"
    host.state["boot_marker"] = SIM_ENV["MIGD_SIM_BOOT_MARKER"]
    host.state["driver"] = driver
    host.save()
    return host


def _samples(text: str) -> dict:
    from migd import metrics

    return {s.name: s.value for s in metrics.parse(text) if not s.labels}


def test_gpu_less_host_sharing_a_fleet_file_is_quiet(boot_base, boot_rootfs, boot_vm, migd_deb):  # noqa: F811
    root = boot_rootfs
    _install_migd(root, migd_deb)
    (root / "var/lib/prometheus/node-exporter").mkdir(parents=True, exist_ok=True)
    install_file(root, "/etc/migd.toml", FLEET.format(metrics="/var/lib/prometheus/node-exporter/migd.prom"))
    _sim_host(root, driver="no-library")  # a CPU node: no libnvidia-ml, no nvidia module

    r = boot_vm(units=UNITS, timeout=90, commands={
        "1_wait": ["sleep", "4"],  # four checks
        "2_metrics": ["cat", "/var/lib/prometheus/node-exporter/migd.prom"]}).check()
    migd = r.unit("migd.service")
    assert (migd["Result"], migd["ExecMainStatus"]) == ("success", "0"), r.describe()
    assert any(m.endswith("nothing to do") for m in r.messages("migd.service")), r.messages("migd.service")
    watch = r.unit("migd-watch.service")
    assert watch["ActiveState"] == "active", watch["ActiveState"]
    assert watch["StatusText"].startswith("no GPU managed by /etc/migd.toml on this host"), watch["StatusText"]
    # (the test's own simulated GPUs are announced at start: that warning is the harness's, not the finding's)
    bad = [e for e in r.journal(_SYSTEMD_UNIT="migd-watch.service") if int(e.get("PRIORITY", "6")) <= 4
           and e.get("MIGD_EVENT") not in ("simulated", "environment_ignored")]
    assert not bad, [(e.get("MIGD_EVENT"), e.get("MESSAGE")) for e in bad]
    said = _events(r, "migd-watch.service", "watch_nothing")
    assert len(said) == 1 and "no NVIDIA driver installed" in said[0]["MESSAGE"], said
    samples = _samples(r.command("2_metrics")["stdout"])
    assert samples["migd_last_check_success"] == 1, samples
    assert r.leftovers == [], r.describe()


def test_metrics_file_the_sandbox_keeps_read_only_said_once_with_the_drop_in(boot_base, boot_rootfs, boot_vm,
                                                                            migd_deb):  # noqa: F811
    root = boot_rootfs
    _install_migd(root, migd_deb)
    (root / "srv/metrics").mkdir(parents=True)  # RHEL-style: node_exporter --collector.textfile.directory
    config = FLEET.format(metrics="/srv/metrics/migd.prom").replace('select = "*H100*"', 'select = "all"')
    install_file(root, "/etc/migd.toml", config)
    _sim_host(root)

    r1 = boot_vm(units=UNITS, timeout=90, commands={"wait": ["sleep", "5"]}).check()
    assert r1.unit("migd.service")["Result"] == "success", r1.describe()
    for unit in ("migd.service", "migd-watch.service"):
        failed = _events(r1, unit, "metrics_write_failed")
        assert len(failed) == 1, (unit, [e["MESSAGE"] for e in failed])  # once, not at every check
        msg = failed[0]["MESSAGE"]
        assert msg.startswith("cannot write the metrics file /srv/metrics/migd.prom: Read-only file system"), msg
        assert "`systemctl edit migd-watch` and `systemctl edit migd`" in msg and \
            "`[Service]` and `ReadWritePaths=/srv/metrics`" in msg, msg
        assert failed[0]["PRIORITY"] == "4"
    status = r1.unit("migd-watch.service")["StatusText"]
    assert status.startswith("2 GPU(s) match the layout; cannot write the metrics file /srv/metrics/migd.prom"), status
    assert not (root / "srv/metrics/migd.prom").exists()

    for unit in ("migd.service", "migd-watch.service"):  # what the message says to do
        install_file(root, f"/etc/systemd/system/{unit}.d/override.conf", "[Service]\nReadWritePaths=/srv/metrics\n")
    r2 = boot_vm(units=UNITS, timeout=90, commands={"1_wait": ["sleep", "3"],
                                                    "2_metrics": ["cat", "/srv/metrics/migd.prom"]}).check()
    assert not [e for u in ("migd.service", "migd-watch.service") for e in _events(r2, u, "metrics_write_failed")]
    samples = _samples(r2.command("2_metrics")["stdout"])
    assert samples["migd_last_check_success"] == 1 and samples["migd_last_apply_success"] == 1, samples
    assert "metrics" not in r2.unit("migd-watch.service")["StatusText"]
    for r in (r1, r2):
        assert r.leftovers == [], r.describe()


def test_apply_from_a_shell_leaves_an_audit_trail_in_the_journal(boot_base, boot_rootfs, boot_vm,
                                                                 migd_deb):  # noqa: F811
    """Issue 16.8: `migd apply` run by an admin (through sudo) changes a GPU; the journal says who, what changed
    (the same events boot logs) and the outcome, while the terminal stays terse."""
    root = boot_rootfs
    _install_migd(root, migd_deb)
    _sim_host(root)
    sudo = ["env", "SUDO_USER=alice", "SUDO_UID=1000", "SUDO_COMMAND=/usr/bin/migd apply"]
    r = boot_vm(units=UNITS, timeout=90, commands={
        "1_drift": _sim("destroy-gi", "0", str(NOTEBOOK_GI)),  # by hand, behind migd's back
        "2_apply": [*sudo, *_migd("apply")],
        "3_nothing": [*sudo, *_migd("apply")],  # nothing to change: still a record of who ran it and the outcome
        "4_audit": ["journalctl", "-b", "-o", "json", "--no-pager", "MIGD_SUDO_USER=alice"]}).check()
    assert r.unit("migd.service")["Result"] == "success", r.describe()
    applied = r.command("2_apply")
    assert applied["rc"] == 0, applied
    assert "migd[info]" not in applied["stderr"] and "apply_started" not in applied["stderr"], applied["stderr"]
    trail = [json.loads(line) for line in r.command("4_audit")["stdout"].splitlines() if line.strip()]
    events = [e["MIGD_EVENT"] for e in trail]
    assert events.count("apply_started") == 2 and events.count("apply_finished") == 2, events
    first = events.index("apply_started")
    assert events[first + 1:events.index("apply_finished")].count("create_gi") == 1, events
    assert "gpu_applied" in events, events
    for e in trail:
        assert (e["MIGD_UID"], e["MIGD_EUID"], e["MIGD_SUDO_UID"], e["SYSLOG_IDENTIFIER"]) == \
            ("0", "0", "1000", "migd"), e
    started = [e for e in trail if e["MIGD_EVENT"] == "apply_started"][0]
    assert started["MESSAGE"].startswith("migd apply by uid 0 (sudo by alice, uid 1000; "), started["MESSAGE"]
    assert started["MESSAGE"].endswith("/etc/migd.toml (simulated GPUs)"), started["MESSAGE"]
    finished = [e for e in trail if e["MIGD_EVENT"] == "apply_finished"]
    assert finished[0]["MIGD_EXIT"] == "0" and "GPU 0: applied" in finished[0]["MESSAGE"], finished[0]["MESSAGE"]
    assert json.loads(finished[0]["MIGD_OUTCOMES"]) == {"0": "applied", "1": "unchanged"}, finished[0]
    assert json.loads(finished[1]["MIGD_OUTCOMES"]) == {"0": "unchanged", "1": "unchanged"}, finished[1]
    created = [e for e in trail if e["MIGD_EVENT"] == "create_gi"]
    assert created[0]["PRIORITY"] == "6" and created[0]["MIGD_GPU"] == "0", created
    assert r.leftovers == [], r.describe()
