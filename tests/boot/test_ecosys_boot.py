"""migd and the components around the GPU, under a real systemd: the CDI spec refresh and node_exporter.

One boot of the Debian rootfs with migd (simulated GPUs, as in test_migd_boot), Debian's prometheus-node-exporter
(textfile collector on /var/lib/prometheus/node-exporter, its default) and a stub nvidia-cdi-refresh.service shaped
like the NVIDIA Container Toolkit's (Type=oneshot, RemainAfterExit=yes, After=multi-user.target), installed but not
enabled: like a toolkit whose refresh already ran before this layout existed, it runs only when someone asks. Each
run records CLOCK_MONOTONIC and the layout it would have put in the CDI spec.

A scenario inside the booted container then drifts the layout by hand, repairs it with `migd apply`, switches
migd-watch to drift_policy = "reapply" and drifts it again, scraping node_exporter's /metrics on 127.0.0.1:9100 and
collecting the stub's runs along the way.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from .rootfs import enable_units, install_file
from .test_migd_boot import (
    NOTEBOOK_GI,
    SIM_STATE,
    UNITS,
    _events,
    _install_migd,
    _migd,
    _sim,
    _ts,
    migd_deb,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.boot

RUNS = "/var/lib/cdi-stub/runs"
STUB = textwrap.dedent(f"""\
    #!/usr/bin/python3
    # Stands in for `nvidia-ctk cdi generate`: records when it ran and the MIG layout it would have written.
    import json, os, time
    state = json.load(open("{SIM_STATE}"))
    os.makedirs(os.path.dirname("{RUNS}"), exist_ok=True)
    with open("{RUNS}", "a") as f:
        f.write(json.dumps({{"t": time.monotonic(), "gis": [len(g["gis"]) for g in state["gpus"]]}}) + "\\n")
    """)
STUB_UNIT = textwrap.dedent("""\
    [Unit]
    Description=stub of the NVIDIA Container Toolkit's CDI refresh
    After=multi-user.target
    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/local/bin/cdi-refresh-stub
    [Install]
    WantedBy=multi-user.target
    """)

SCENARIO = textwrap.dedent("""\
    #!/usr/bin/python3
    # One phase per call (the harness gives each command 30 s); prints what it saw as JSON.
    import json, re, subprocess, sys, time, urllib.request
    PHASE, SIM, MIGD, RUNS, GI = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
    out = {"steps": []}

    def migd_lines():
        try:
            text = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5).read().decode()
        except OSError as e:
            return ["# scrape failed: %s" % e]
        return [l for l in text.splitlines() if l.startswith(("migd_", "node_textfile_scrape_error"))]

    def wait_metrics(pattern, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            lines = migd_lines()
            if any(re.search(pattern, l) for l in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.3)

    def runs():
        try:
            return [json.loads(l) for l in open(RUNS)]
        except FileNotFoundError:
            return []

    def wait_new_run(before, timeout=10):
        deadline = time.monotonic() + timeout
        while len(runs()) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        return runs()[before:]

    def run(*argv):
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
        out["steps"].append({"argv": argv, "rc": r.returncode, "out": r.stdout[-2000:], "err": r.stderr[-2000:]})
        return r.returncode

    if PHASE == "1-boot":
        out["boot_runs"] = wait_new_run(0)
        out["boot_scrape"] = wait_metrics(r"^migd_last_check_timestamp_seconds ")
    elif PHASE == "2-drift":  # an instance destroyed behind migd's back: migd-watch (drift_policy = "log") sees it
        run(*SIM, "destroy-gi", "0", GI)
        out["drift_scrape"] = wait_metrics(r'^migd_gpu_layout_match\\{gpu="0".* 0$')
    elif PHASE == "3-apply":  # the admin repairs it
        before = len(runs())
        out["t_apply"] = time.monotonic()
        out["apply_rc"] = run(*MIGD, "apply")
        out["apply_runs"] = wait_new_run(before)
        out["applied_scrape"] = wait_metrics(r'^migd_gpu_layout_match\\{gpu="0".* 1$')
    elif PHASE == "4-reapply":  # migd-watch re-applies by itself
        with open("/etc/migd.toml", "a") as f:
            f.write('drift_policy = "reapply"\\n')
        # SIGHUP, what `systemctl reload` sends through the unit's /bin/kill (procps: not in this minimal rootfs)
        run("systemctl", "kill", "--kill-whom=main", "--signal=HUP", "migd-watch.service")
        time.sleep(2)
        before = len(runs())
        out["t_reapply"] = time.monotonic()
        run(*SIM, "destroy-gi", "0", GI)
        out["reapply_runs"] = wait_new_run(before)
        out["final_scrape"] = migd_lines()
    print(json.dumps(out))
    """)


def _value(lines, name: str, **labels) -> float:
    found = []
    for line in lines:
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(m.group(3)))
    assert len(found) == 1, (name, labels, lines)
    return found[0]


def test_cdi_refresh_and_node_exporter_metrics_under_real_systemd(boot_base, boot_rootfs, boot_vm, migd_deb):  # noqa: F811
    root = boot_rootfs
    _install_migd(root, migd_deb)
    install_file(root, "/usr/local/bin/cdi-refresh-stub", STUB, mode=0o755)
    install_file(root, "/etc/systemd/system/nvidia-cdi-refresh.service", STUB_UNIT)  # installed, not enabled
    install_file(root, "/usr/local/bin/ecosys-scenario", SCENARIO, mode=0o755)
    enable_units(root, "prometheus-node-exporter.service")
    assert (root / "var/lib/prometheus/node-exporter").is_dir()  # Debian's textfile directory: migd's default

    args = [json.dumps(_sim()), json.dumps(_migd()), RUNS, str(NOTEBOOK_GI)]
    phases = ("1-boot", "2-drift", "3-apply", "4-reapply")
    r = boot_vm(units=[*UNITS, "nvidia-cdi-refresh.service", "prometheus-node-exporter.service"], timeout=150,
                commands={p: ["/usr/local/bin/ecosys-scenario", p, *args] for p in phases}).check()
    migd = r.unit("migd.service")
    assert migd["Result"] == "success", r.describe()
    out: dict = {"steps": []}
    for phase in phases:
        cmd = r.command(phase)
        assert cmd["rc"] == 0, (phase, cmd)
        part = json.loads(cmd["stdout"])
        out["steps"] += part.pop("steps")
        out.update(part)
    assert all(s["rc"] == 0 for s in out["steps"]), json.dumps(out["steps"], indent=1)

    # --- CDI: at boot, queued by migd (never waited for: migd.service finished) and run after migd's change ------
    refresh = _events(r, "migd.service", "cdi_refresh")
    assert len(refresh) == 1 and refresh[0]["PRIORITY"] == "6", refresh
    assert len(out["boot_runs"]) == 1, out["boot_runs"]
    boot_run = out["boot_runs"][0]
    assert boot_run["t"] * 1e6 >= _ts(migd, "ExecMainExitTimestampMonotonic"), (boot_run, migd)
    assert boot_run["gis"] == [3, 3]  # it saw the layout migd made
    assert _ts(migd, "ExecMainExitTimestampMonotonic") - _ts(migd, "ExecMainStartTimestampMonotonic") < 30e6

    # ... after `migd apply` repaired a hand-made drift ...
    assert out["apply_rc"] == 0
    new = out["apply_runs"]
    assert len(new) == 1 and new[0]["t"] > out["t_apply"] and new[0]["gis"] == [3, 3], new

    # ... and after migd-watch re-applied one by itself
    new = out["reapply_runs"]
    assert len(new) == 1 and new[0]["t"] > out["t_reapply"] and new[0]["gis"] == [3, 3], new
    assert _events(r, "migd-watch.service", "drift_reapplied", MIGD_GPU="0")
    assert len(_events(r, "migd-watch.service", "cdi_refresh")) == 1

    # --- node_exporter serves migd's series: before the drift, during it, after the repair --------------------
    boot, drift, applied = out["boot_scrape"], out["drift_scrape"], out["applied_scrape"]
    for scrape in (boot, drift, applied, out["final_scrape"]):
        assert _value(scrape, "node_textfile_scrape_error") == 0, scrape
    assert _value(boot, "migd_gpu_layout_match", gpu="0") == 1 and _value(boot, "migd_gpu_layout_match", gpu="1") == 1
    assert _value(boot, "migd_gpu_instances", gpu="0", profile="1g.10gb") == 1
    assert _value(boot, "migd_last_apply_success") == 1 and _value(boot, "migd_drift_events_total") == 0
    assert _value(boot, "migd_gpu_mig_mode_current", gpu="0") == 1

    assert _value(drift, "migd_gpu_layout_match", gpu="0") == 0
    assert _value(drift, "migd_gpu_layout_match", gpu="1") == 1
    assert _value(drift, "migd_gpu_instances", gpu="0", profile="1g.10gb") == 0
    assert _value(drift, "migd_gpu_instances_desired", gpu="0", profile="1g.10gb") == 1
    assert _value(drift, "migd_drift_events_total") == 1
    assert _value(drift, "migd_last_check_timestamp_seconds") > _value(boot, "migd_last_check_timestamp_seconds")

    assert _value(applied, "migd_gpu_layout_match", gpu="0") == 1
    assert _value(applied, "migd_drift_events_total") == 1
    assert _value(applied, "migd_last_apply_timestamp_seconds") > _value(boot, "migd_last_apply_timestamp_seconds")
    assert r.leftovers == [], r.describe()
    print(f"\n[boot] ecosystem boot: {r.seconds:.1f}s")
