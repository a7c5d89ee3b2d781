"""What a local user, a neighbouring daemon or an odd driver answer can do to a root apply (issue 17), run the way
each was found: a second user where a user is the attacker, migd as a real process where it could hang.

- bytes from /proc (a holder's comm, cgroup, fd targets) are untrusted: decoded safely and escaped; an unexpected
  exception in one GPU's work fails that GPU only (never "invalid configuration", never the other GPUs);
- the drop-in directory itself is checked (owner, mode, the chain above), by apply and, the same way, by
  validate and plan; every path in a message is escaped like a holder name;
- the profile cache in the run directory cannot hang or crash a verb (a FIFO, a deeply nested JSON);
- `hosts = [...]` matching is bounded;
- a failed MIG-mode read is an error for that GPU, never "not MIG-capable"; a GPU lost mid-apply is recorded lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reliability as R
from migd.sim.host import SimHost

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a second user, chown)")
NOBODY = 65534


@pytest.fixture
def site(tmp_path):
    """A simulated host in a state file, a root-owned /etc with a config, a run dir: all in tmp_path."""
    os.chmod(tmp_path, 0o755)
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir(mode=0o755)
    SimHost.create("h100-80gb:3", str(state))
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    conf = R.write_config(etc / "migd.toml", R.LAYOUT_A)
    return {"state": str(state), "config": conf, "etc": etc, "run": str(tmp_path / "run"), "tmp": tmp_path}


def _cli(site, *verb, config=None, **env):
    return R.run_cli(["--sim-state", site["state"], "--config", config or site["config"], *verb],
                     {"MIGD_RUN_DIR": site["run"], **env})


def _process(site, *verb, timeout=30.0):
    """migd as a real process (so a hang is a timeout, not a hung test run)."""
    return subprocess.run([sys.executable, "-m", "migd.cli", "--sim-state", site["state"], "--config",
                           site["config"], *verb], env=R.child_env(site["run"]), capture_output=True, text=True,
                          timeout=timeout, cwd=str(R.ROOT))


# --- 5: the profile cache -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", [["status"], ["check"], ["apply"]])
def test_a_fifo_as_the_profile_cache_hangs_no_verb(site, verb):
    run = Path(site["run"])
    run.mkdir(mode=0o755)
    os.mkfifo(run / "profiles.json", 0o644)
    t0 = time.monotonic()
    r = _process(site, *verb, timeout=30)
    assert r.returncode in (0, 3), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("verb", [["status"], ["apply"]])
def test_a_deeply_nested_profile_cache_is_a_miss_not_a_traceback(site, verb):
    run = Path(site["run"])
    run.mkdir(mode=0o755)
    cache = run / "profiles.json"
    cache.write_text("[" * 200_000 + "]" * 200_000)
    os.chmod(cache, 0o644)
    r = _process(site, *verb)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    if verb == ["apply"]:  # the writer replaced it with a good one
        assert json.loads(cache.read_text())["version"] == 1
