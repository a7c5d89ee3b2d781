"""Structural pins for the read path and the boot path (counts, not times: timing belongs in bench/).

- a fresh boot apply of 7 × 1g on a simulated DGX A100 reads at most READS_PER_GPU NVML functions per GPU;
- shortcuts in the state read (occupied slots end the per-profile instance walk, the MIG-device walk stops once
  every compute instance is found) never hide an instance.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

import migd.sim
from migd.cli import main
from migd.model import Placement

MUTATING = re.compile(r"Create|Destroy|Set")
# What a fresh boot apply of 7 × 1g must read per GPU, and the pin (bench section 3 prints both).
READS_PER_GPU = 114

SEVEN_1G = """
[[gpu]]
select = "all"
mig = true
instances = { "1g.5gb" = 7 }
"""


def _apply_counting(monkeypatch, tmp_path, argv):
    libs = []
    real_install = migd.sim.install

    def install(*a, **k):
        lib = real_install(*a, **k)
        libs.append(lib)
        return lib

    monkeypatch.setattr(migd.sim, "install", install)
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    calls = {}
    for lib in libs:
        for name, n in lib.calls.items():
            calls[name] = calls.get(name, 0) + n
    return rc, calls, out.getvalue()


def test_fresh_boot_apply_reads_per_gpu_are_pinned(monkeypatch, tmp_path):
    cfg = tmp_path / "migd.toml"
    cfg.write_text(SEVEN_1G)
    rc, calls, out = _apply_counting(monkeypatch, tmp_path,
                                     ["--simulate", "dgx-a100", "--config", str(cfg), "-q", "apply"])
    assert rc == 0, out
    assert out.count("applied 16 changes") == 8  # MIG mode, persistence, 7 GIs, 7 CIs on each GPU
    mutating = sum(n for name, n in calls.items() if MUTATING.search(name))
    reads = sum(calls.values()) - mutating
    assert mutating == 8 * 16
    assert reads <= 8 * READS_PER_GPU, sorted(calls.items(), key=lambda kv: -kv[1])
    # the verification still re-reads the live layout: every GI and CI read back after its create and again
    assert calls["nvmlGpuInstanceGetInfo"] == 8 * 7 * 2
    assert calls["nvmlComputeInstanceGetInfo"] == 8 * 7 * 2
    assert calls["nvmlDeviceGetUUID"] >= 8 * 7  # every MIG device's UUID
    # processes are read before anything changes (MIG off: the whole GPU), and on every MIG device after
    assert calls["nvmlDeviceGetComputeRunningProcesses"] == 8 + 8 * 7


def test_instance_walk_shortcuts_never_hide_an_instance(sim_backend):
    """Taken slots end the per-profile walk only for profiles that cannot fit: a 1g.10gb (a later profile) in the
    slots six 1g.5gb left free is found, and so are GIs without compute instances."""
    backend = sim_backend("a100-40gb")
    backend.set_mig_mode(0, True)
    gis = [backend.create_gpu_instance(0, 19, Placement(s, 1)) for s in range(5)]
    for gi in gis[:4]:
        backend.create_compute_instance(0, gi, 0, Placement(0, 1))
    big = backend.create_gpu_instance(0, 15, Placement(6, 2))  # 1g.10gb
    backend.create_compute_instance(0, big, 0, Placement(0, 1))
    state = backend.state(0, fresh=True)
    assert [(g.profile_id, str(g.placement), len(g.compute)) for g in state.instances] == [
        (19, "0:1", 1), (19, "1:1", 1), (19, "2:1", 1), (19, "3:1", 1), (19, "4:1", 0), (15, "6:2", 1)]
    assert all(ci.uuid for g in state.instances for ci in g.compute)


@pytest.mark.parametrize("v3", [True, False])
def test_profile_table_is_the_same_through_v3_or_v2(sim_backend, v3):
    backend = sim_backend("h100-80gb")
    backend._sim_host.state["profile_info_v3"] = v3
    backend._infos = None
    profiles = backend.gpus()[0].profiles
    assert [p.id for p in profiles] and all(p.placements for p in profiles)
    graphics = [p.name for p in profiles if p.graphics]
    assert graphics == [p.name for p in profiles if p.name.endswith("+gfx")]
