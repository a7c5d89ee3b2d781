"""`migd export --format slurm`, checked by Slurm itself: Debian's real slurmctld and slurmd (package slurm-wlm) run
on localhost ports with the exported slurm.conf and gres.conf lines of a simulated node, and `scontrol show node`,
`sinfo` and `slurmd -G` show that Slurm registers exactly the MIG GRES the layout has; a gres.conf missing one MIG
device (the negative control) gets the node drained, so the check can fail.

The device files the gres.conf lines name are character devices created (mknod) under a temp dir, since slurmd
stats each one; nothing under /dev is touched. Needs root (slurmd runs as root, mknod) and the slurm-wlm binaries:
skipped otherwise, with the reason. Authentication is Slurm's auth/none (no munge daemon). Every wait is bounded
and both daemons are killed at the end.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BINARIES = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "scontrol": "/usr/bin/scontrol",
            "sinfo": "/usr/bin/sinfo"}
PLUGIN = "/usr/lib/x86_64-linux-gnu/slurm-wlm/auth_none.so"
LAYOUT = """\
[[gpu]]
select = 0
mig = true
instances = ["3g", "2g", "1g", "1g"]

[[gpu]]
select = 1
mig = true
instances = [{ profile = "3g", compute = ["1c", "2c"] }, "4g"]
"""
# what that layout is, as Slurm's AutoDetect=nvml types it (gpu_nvml.c): one GRES per compute instance
EXPECTED = {"nvidia_h100_80gb_hbm3_3g.40gb": 1, "nvidia_h100_80gb_hbm3_2g.20gb": 1, "nvidia_h100_80gb_hbm3_1g.10gb": 2,
            "nvidia_h100_80gb_hbm3_1c.3g.40gb": 1, "nvidia_h100_80gb_hbm3_2c.3g.40gb": 1,
            "nvidia_h100_80gb_hbm3_4g.40gb": 1}
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs as root and the test creates device nodes"),
              pytest.mark.skipif(not all(os.access(b, os.X_OK) for b in BINARIES.values()),
                                 reason="slurm-wlm (slurmctld, slurmd, scontrol, sinfo) is not installed"),
              pytest.mark.skipif(not os.path.exists(PLUGIN), reason="this Slurm has no auth/none plugin")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _migd(*args: str, env: dict) -> str:
    r = subprocess.run([sys.executable, "-m", "migd.cli", *args], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


class Cluster:
    """One slurmctld + one slurmd in `root`, on free localhost ports."""

    def __init__(self, root: Path, node: str, gres: str, gres_lines: list):
        self.root, self.node = root, node
        self.conf = root / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list = []
        for d in ("etc", "state", "spool"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            "ClusterName=migdtest", f"SlurmctldHost={node}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/none", "CredType=cred/none", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "MpiDefault=none", "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none", "ReturnToService=2", "SlurmdTimeout=30",
            "GresTypes=gpu",
            # the exported slurm.conf line, with what a localhost node needs besides
            f"{gres} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES State=UP", ""]))
        (root / "etc" / "gres.conf").write_text("\n".join(gres_lines) + "\n")

    def start(self) -> None:
        for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", self.node])):
            with open(self.root / f"{name}.out", "ab") as log:
                self.procs.append(subprocess.Popen([BINARIES[name], *args, "-f", str(self.conf)], env=self.env,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.procs = []

    def tool(self, *args: str) -> str:
        r = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=20)
        return r.stdout + r.stderr

    def wait_node(self, states: tuple, timeout: float = 60) -> str:
        """`scontrol show node` once the node's State= (e.g. IDLE, UNKNOWN+DRAIN+INVALID_REG) has one of `states`
        (bounded)."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.tool(BINARIES["scontrol"], "show", "node", self.node)
            m = re.search(r"\bState=(\S+)", text)
            if m and any(part in states for part in m.group(1).split("+")):
                return text
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        logs = "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.root.glob("*.log")) +
                         sorted(self.root.glob("*.out")) if f.exists())
        pytest.fail(f"node never reached {states} within {timeout} s:\n{text}\n{logs}")


def _device_files(root: Path, lines: list) -> list:
    """gres.conf lines with /dev/… moved under root/dev, each file a character device like the driver's (nvidiaN:
    major 195, minor N; nvidia-capN: a dynamic major, minor N)."""
    out = []
    for line in lines:
        for path in re.findall(r"/dev/[\w/.-]+", line):
            target = root / path.lstrip("/")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                minor = int(re.search(r"(\d+)$", path).group(1))
                os.mknod(target, 0o600 | 0o020000, os.makedev(195 if "caps" not in path else 240, minor))
        out.append(line.replace("/dev/", f"{root}/dev/"))
    return out


def test_slurm_registers_exactly_the_mig_gres_of_the_layout(tmp_path):
    root = Path(str(tmp_path))
    cfg = root / "migd.toml"
    cfg.write_text(LAYOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_")}
    env["MIGD_RUN_DIR"] = str(root / "run")
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src")
    state = str(root / "host.json")
    _migd("--simulate", "h100-80gb:2", "--sim-state", state, "-c", str(cfg), "apply", env=env)
    text = _migd("--sim-state", state, "export", "--format", "slurm", env=env)  # the simulated node's mig-minors
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    gres, gres_lines = lines[0], lines[1:]
    node = re.match(r"NodeName=(\S+) Gres=", gres).group(1)
    exported = collections.Counter({t: int(n) for t, n in re.findall(r"gpu:([^:,]+):(\d+)", gres)})
    assert exported == collections.Counter(EXPECTED)
    gres_lines = _device_files(root / "node", gres_lines)  # root/dev holds the simulator's own stand-ins

    cluster = Cluster(root / "slurm", node, gres, gres_lines)
    try:
        # slurmd's own reading of gres.conf: one device per MIG device, with the files migd named
        detected = cluster.tool(BINARIES["slurmd"], "-G", "-N", node, "-f", str(cluster.conf))
        types = collections.Counter(re.findall(r"Type=(\S+)", detected))
        assert types == collections.Counter(EXPECTED), detected
        cluster.start()
        shown = cluster.wait_node(("IDLE",))
        assert re.search(r"\bState=IDLE\s", shown), shown
        registered = re.search(r"\bGres=(\S+)", shown).group(1)
        assert collections.Counter({t: int(n) for t, n in re.findall(r"gpu:([^:,(]+):(\d+)", registered)}) == \
            collections.Counter(EXPECTED), shown
        assert "DRAIN" not in shown and "Reason=" not in shown, shown
        sinfo = cluster.tool(BINARIES["sinfo"], "-N", "-h", "-o", "%N %t %G")
        assert sinfo.split()[:2] == [node, "idle"], sinfo
        assert collections.Counter({t: int(n) for t, n in re.findall(r"gpu:([^:,(]+):(\d+)", sinfo)}) == \
            collections.Counter(EXPECTED)
        cluster.stop()

        # negative control: gres.conf without the last MIG device -> slurmd reports fewer GPUs, the node drains
        (cluster.root / "etc" / "gres.conf").write_text("\n".join(gres_lines[:-1]) + "\n")
        cluster.start()
        shown = cluster.wait_node(("DRAIN", "INVALID_REG"))
        assert "Reason=gres/gpu count reported lower than configured (6 < 7)" in shown, shown
    finally:
        cluster.stop()
    shutil.rmtree(root / "node", ignore_errors=True)
