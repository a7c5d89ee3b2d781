"""GPUs side by side (issue 21.1): each GPU's reads, plan and changes run on its own thread.

Shown the way it matters, never by timing (timing is bench/'s): a GPU whose driver call hangs does not hold up the
others; a failure on one GPU never stops the others; faults count each GPU's own calls (so the fault matrix stays
exact with threads); every log line is one event with its GPU bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import reliability as R
from migd import pergpu
from migd.sim.host import SimHost, load_state

EVERY_GPU = """
[[gpu]]
select = "all"
mig = true
instances = ["3g.20gb", "2g.10gb", "1g.5gb"]
"""


@pytest.fixture
def dgx(tmp_path):
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    SimHost.create("dgx-a100", str(state))
    return {"state": str(state), "config": R.write_config(tmp_path / "migd.toml", EVERY_GPU),
            "run": str(tmp_path / "run")}


def _applied(gpu: dict) -> bool:
    return gpu["mig"] == [1, 1] and len(gpu["gis"]) == 3 and all(gi["cis"] for gi in gpu["gis"])


def test_a_gpu_hung_in_the_driver_does_not_hold_up_the_others(dgx):
    """GPU 3's first GI create hangs (a wedged ioctl): GPUs 0-2 and 4-7 are applied meanwhile (one after another,
    GPU 4 onwards never were); after the kill, the next apply converges GPU 3 too."""
    proc = R.migd_process(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"],
                          R.child_env(dgx["run"], MIGD_SIM_FAULTS="nvmlDeviceCreateGpuInstanceWithPlacement=hang@1/gpu3"))
    try:
        hung, err = R.wait_for_hang(proc)
        assert hung, err
        deadline = time.monotonic() + 30
        while not all(_applied(g) for i, g in enumerate(load_state(dgx["state"])["gpus"]) if i != 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the other GPUs were not applied"
            time.sleep(0.02)
        assert not load_state(dgx["state"])["gpus"][3]["gis"]  # still hung before its first create
    finally:
        R.kill(proc)
    r = R.run_cli(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"], {"MIGD_RUN_DIR": dgx["run"]})
    assert r.code == 0 and all(_applied(g) for g in load_state(dgx["state"])["gpus"]), r.out + r.err


def test_a_fault_without_a_gpu_counts_each_gpus_calls(dgx):
    """`CALL=CODE@N` (no /gpuK): the N-th such call on every GPU, whatever order the threads run in; `/gpuK`: on
    GPU K alone. Both give the same record every time."""
    records = []
    for fault in ["nvmlGpuInstanceCreateComputeInstanceWithPlacement=UNKNOWN@2"] * 2 + \
                 ["nvmlGpuInstanceCreateComputeInstanceWithPlacement=UNKNOWN@2/gpu5"]:
        SimHost.create("dgx-a100", dgx["state"] + ".x")  # a fresh host each time
        os.replace(dgx["state"] + ".x", dgx["state"])
        r = R.run_cli(["--sim-state", dgx["state"], "--config", dgx["config"], "apply"],
                      {"MIGD_RUN_DIR": dgx["run"], "MIGD_SIM_FAULTS": fault})
        assert r.code == 1 and not r.traceback, r.err
        doc = json.loads(Path(dgx["run"], "state.json").read_text())
        records.append({g["index"]: g["outcome"] for g in doc["gpus"]})
    assert records[0] == records[1] == dict.fromkeys(range(8), "rolled_back")
    assert records[2] == {i: "rolled_back" if i == 5 else "applied" for i in range(8)}


def test_one_gpus_unexpected_exception_never_stops_the_others(dgx, monkeypatch):
    """An exception (not a DriverError) in GPU 2's work: every other GPU is still applied."""
    from migd import config as config_mod
    from migd import engine as engine_mod
    from migd.site import build

    monkeypatch.setenv("MIGD_RUN_DIR", dgx["run"])
    real_apply_gpu = engine_mod.apply_gpu

    def apply_gpu(backend, info, *a, **k):
        if info.index == 2:
            raise RuntimeError("a bug in GPU 2's work")
        return real_apply_gpu(backend, info, *a, **k)

    monkeypatch.setattr(engine_mod, "apply_gpu", apply_gpu)
    wired = build(None, dgx["state"])
    backend = wired.open_backend()
    engine = engine_mod.Engine(backend, config_mod.load(dgx["config"]), wired.env)
    backend.open()
    try:
        with contextlib.suppress(RuntimeError):  # reported by the engine, or raised once all GPUs are done
            engine.apply(engine.desired())
    finally:
        backend.close()
    gpus = load_state(dgx["state"])["gpus"]
    assert [_applied(g) for g in gpus] == [i != 2 for i in range(8)]


def test_each_runs_every_gpu_then_raises_the_first_error_in_gpu_order():
    ran = []
    lock = threading.Lock()

    def work(g):
        with lock:
            ran.append(g)
        if g in (3, 1):
            raise ValueError(f"GPU {g}")
        return g * 10

    with pytest.raises(ValueError, match="GPU 1"):
        pergpu.each(work, [0, 1, 2, 3, 4])
    assert sorted(ran) == [0, 1, 2, 3, 4]
    done = pergpu.settle(work, [4, 3, 2])
    assert list(done) == [4, 3, 2] and done[4].get() == 40 and isinstance(done[3].error, ValueError)
    assert pergpu.each(work, [2]) == {2: 20}  # one GPU: on the calling thread
    names = pergpu.each(lambda g: threading.current_thread().name, [0, 5])
    assert names == {0: "migd-gpu0", 5: "migd-gpu5"}


def test_every_log_line_is_one_event_with_its_gpu(dgx):
    """The GPUs' threads log side by side: on stderr each line is one whole event, and every per-GPU event names
    its GPU."""
    env = R.child_env(dgx["run"], MIGD_SIM_LATENCY="reads=0.2ms")  # latencies make the threads interleave
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--sim-state", dgx["state"], "--config", dgx["config"],
                        "-v", "apply"], env=env, capture_output=True, text=True, cwd=str(R.ROOT))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(re.match(r"migd\[(debug|info)\]: ", line) and line.count("migd[") == 1 for line in lines), lines
    per_gpu = [(int(m.group(1)), line) for m, line in ((re.match(r"migd\[\w+\]: GPU (\d+): ", x), x) for x in lines) if m]
    assert len(per_gpu) >= 8 * 5 and all(f"(gpu={g} " in line for g, line in per_gpu), per_gpu
    applied = sorted(g for g, line in per_gpu if "applied 8 changes" in line)
    assert applied == list(range(8))
