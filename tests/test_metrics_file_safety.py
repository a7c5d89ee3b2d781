"""The metrics file under a directory another user owns (issue 17.2): Debian's prometheus package makes
/var/lib/prometheus owned by `prometheus`, who can swap node-exporter/ for a symlink or for a directory of its own
holding a FIFO named migd.prom. The attacker here is a real second uid (nobody, in a forked child); root's
`migd apply` runs as a subprocess with a timeout, so a hang fails the test instead of hanging it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from migd import metrics, safefile
from migd.sim.host import SimHost

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the attacker is a second uid")


@pytest.fixture
def site():
    """/var/lib/prometheus (nobody's) with node-exporter/ (root's) under a temp root others can traverse, a
    root-owned directory standing for /etc, a config naming the metrics file there, and a simulated host."""
    base = Path(tempfile.mkdtemp(prefix="migd-prom-"))
    os.chmod(base, 0o755)
    prom = base / "var/lib/prometheus"
    (prom / "node-exporter").mkdir(parents=True)
    for p in (base / "var", base / "var/lib", prom, prom / "node-exporter"):
        os.chmod(p, 0o755)
    os.chown(prom, NOBODY, NOBODY)
    victim = base / "etc"
    victim.mkdir(mode=0o755)
    conf = base / "migd.toml"
    conf.write_text(textwrap.dedent(f"""\
        [[gpu]]
        select = "all"
        mig = true
        instances = ["4g", "2g", "1g"]

        [daemon]
        cdi_refresh = "off"
        metrics_file = "{prom}/node-exporter/migd.prom"
        """))
    os.chmod(conf, 0o644)
    (base / "sim").mkdir()
    SimHost.create("h100-80gb:1", str(base / "sim/state.json"))
    yield {"base": base, "prom": prom, "file": prom / "node-exporter/migd.prom", "victim": victim, "conf": conf}
    shutil.rmtree(base, ignore_errors=True)


def as_nobody(action) -> None:
    """Run action() in a child that is uid/gid nobody; fail the test if it fails."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            sys.stderr.write(f"attacker: {type(e).__name__}: {e}\n")
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the attacker's setup failed"


def apply(site) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_") and k not in ("NOTIFY_SOCKET",)}
    env["MIGD_RUN_DIR"] = str(site["base"] / "run")
    return subprocess.run([sys.executable, "-m", "migd.cli", "--sim-state", str(site["base"] / "sim/state.json"),
                           "--config", str(site["conf"]), "apply"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_debian_layout_prometheus_owned_parent_is_written(site):
    r = apply(site)
    assert r.returncode == 0, r.stderr
    st = os.lstat(site["file"])
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
    assert any(s.name == "migd_last_apply_success" and s.value == 1 for s in metrics.read_samples(str(site["file"])))
    assert "metrics" not in r.stderr, r.stderr


def test_node_exporter_swapped_for_a_symlink_does_not_redirect_the_write(site):
    prom, victim = site["prom"], site["victim"]

    def swap():
        os.rename(prom / "node-exporter", prom / "old")
        os.symlink(victim, prom / "node-exporter")

    as_nobody(swap)
    r = apply(site)
    assert r.returncode == 0, r.stderr  # the GPUs are applied; only the metrics file is refused
    assert list(victim.iterdir()) == [], "root's write followed the prometheus user's symlink"
    assert "node-exporter is a symbolic link in a directory another user can change" in r.stderr, r.stderr
    assert f"owned by uid {NOBODY}" in r.stderr, r.stderr


def test_fifo_planted_as_migd_prom_never_hangs_apply(site):
    prom = site["prom"]

    def plant():
        os.rename(prom / "node-exporter", prom / "old")
        os.mkdir(prom / "node-exporter", 0o755)
        os.mkfifo(prom / "node-exporter/migd.prom", 0o666)

    as_nobody(plant)
    r = apply(site)  # today's main blocks in open() for ever (holding the exclusive lock): a timeout here
    assert r.returncode == 0, r.stderr
    assert f"refusing to write there as root: {prom}/node-exporter is owned by uid {NOBODY}" in r.stderr, r.stderr
    assert stat.S_ISFIFO(os.lstat(prom / "node-exporter/migd.prom").st_mode)  # nothing written in its directory


def test_fifo_or_symlink_as_the_file_in_a_root_directory_is_not_opened(site, tmp_path):
    """Even where only root could have put it: the read never blocks and never follows; the file is refused."""
    d = site["prom"] / "node-exporter"
    os.mkfifo(d / "migd.prom")
    with pytest.raises(safefile.UnsafePath, match="is a FIFO, not a regular file"):
        metrics.read_samples(str(site["file"]))
    os.unlink(d / "migd.prom")
    (tmp_path / "secret").write_text("migd_drift_events_total 7\n")
    os.symlink(tmp_path / "secret", d / "migd.prom")
    with pytest.raises(safefile.UnsafePath, match="is a symbolic link"):
        metrics.read_samples(str(site["file"]))


def test_directory_chain_checks(tmp_path):
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(safefile.UnsafePath, match=r"writable by group/others \(mode 0777\)"):
        metrics.write(str(tmp_path / "open/migd.prom"), [], (), [])
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "link")  # a link root made in root's own directory: followed
    metrics.write(str(tmp_path / "link/migd.prom"), [metrics.Sample("migd_last_check_success", (), 1.0)],
                  ("migd_last_check_success",), [])
    assert metrics.read_samples(str(tmp_path / "real/migd.prom"))[0].value == 1.0
    assert metrics.read_samples(str(tmp_path / "real/absent.prom")) == []
    assert metrics.read_samples(str(tmp_path / "nodir/migd.prom")) == []
