"""The engine's seams, as an admin (or an attacker) hits them through `migd` on simulated GPUs: a verify that cannot
read, simulated runs and the real run dir, check during an apply, state files that cannot be written, the
watchdog's re-apply, export round trips, and what check/status/apply print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import reliability as R
from migd import site
from migd import runstate
from migd.sim.host import SimHost, load_state
from migd.watch import Watcher

NAMED = textwrap.dedent("""
    [[gpu]]
    select = 0
    mig = true
    instances = [{ profile = "3g", name = "train" }, "2g", { profile = "1g", name = "infer" }]
""")


@pytest.fixture
def host(tmp_path, monkeypatch):
    """2 × H100 in a state file; MIGD_RUN_DIR unset, so the run dir is the one migd picks for simulated GPUs."""
    for var in ("MIGD_RUN_DIR", "MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS",
                "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(var, raising=False)
    real = tmp_path / "real-run-migd"  # stands in for /run/migd: a simulated run must never create it
    monkeypatch.setattr(runstate, "RUN_DIR", str(real))
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    SimHost.create("h100-80gb:2", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(NAMED)
    return {"state": str(state), "config": str(conf), "real": real, "run": Path(str(state) + ".run"),
            "tmp": tmp_path}


def migd(host, *args, config=None, **env):
    return R.run_cli(["--sim-state", host["state"], "--config", config or host["config"], *args], env)


def live(host):
    return load_state(host["state"])["gpus"]


# --- point 3: a verify re-read that fails after changes --------------------------------------------------------------


@pytest.mark.parametrize("code", ["NOT_SUPPORTED", "UNKNOWN"])
def test_verify_read_failing_after_changes_is_a_failed_apply_that_rolls_back(host, code):
    # MIG off -> on with instances: the first read of a GI's compute instances is the verify's (before the apply
    # there are no GIs, and the mode change's re-read finds none either).
    r = migd(host, "apply", MIGD_SIM_FAULTS=f"nvmlGpuInstanceGetComputeInstances={code}@1/gpu0")
    assert r.code == 1, r.out
    assert r.named("apply_failed", gpu=0) and r.named("rolled_back", gpu=0), r.events
    assert "rolled back to the previous layout" in r.out
    assert "before anything changed" not in r.out + r.err and "nothing changed" not in r.out
    g0 = live(host)[0]
    assert g0["mig"] == [0, 0] and not g0["gis"]  # the previous layout: MIG off, nothing created left behind


def test_gpu_lost_at_verify_is_lost_during_apply(host):
    r = migd(host, "apply", MIGD_SIM_FAULTS="nvmlGpuInstanceGetComputeInstances=GPU_IS_LOST@1/gpu0")
    assert r.code == 1
    assert "GPU 0: lost (fell off the bus) during apply" in r.out, r.out
    assert "before it was applied" not in r.out


# --- point 6: simulated runs and the real /run/migd -----------------------------------------------------------------


def test_simulated_apply_as_root_never_touches_the_real_run_dir(host, monkeypatch):
    r = migd(host, "apply")
    assert r.code == 0, r.out + r.err
    assert not host["real"].exists()
    assert (host["run"] / "state.json").is_file() and (host["run"] / "devices.env").is_file()
    assert json.loads((host["run"] / "state.json").read_text())["simulated"] is True
    # --simulate without a state file: a per-user temp dir, still not the real one
    monkeypatch.setattr("tempfile.tempdir", str(host["tmp"] / "tmp"))
    (host["tmp"] / "tmp").mkdir()
    r = R.run_cli(["--simulate", "h100-80gb", "--config", host["config"], "apply"])
    assert r.code == 0, r.out + r.err
    assert not host["real"].exists()
    assert (host["tmp"] / "tmp" / f"migd-sim-{os.geteuid()}" / "state.json").is_file()


def test_sim_state_of_one_model_with_simulate_of_another_is_an_error(host):
    before = load_state(host["state"])
    r = R.run_cli(["--simulate", "a100-40gb", "--sim-state", host["state"], "--config", host["config"], "apply"])
    assert r.code == 2
    assert "--simulate a100-40gb" in r.err and "h100-80gb:2" in r.err, r.err
    assert load_state(host["state"]) == before
    r = R.run_cli(["--simulate", "h100-80gb:2", "--sim-state", host["state"], "--config", host["config"], "status"])
    assert r.code == 0  # the same model: fine


# --- point 8: check during an apply ----------------------------------------------------------------------------------


def test_check_never_reports_a_half_applied_layout_as_drift(host):
    conf = Path(host["config"])
    conf.write_text(NAMED + "\n[daemon]\nlock_timeout = 0.3\n")
    assert migd(host, "apply").code == 0
    with runstate.locked(1, directory=str(host["run"])):  # an apply in progress ...
        s = SimHost.create("", host["state"])
        half = s.gpus[0]["gis"][-1]
        half["cis"] = []
        s.destroy_gi(0, half["id"])  # ... half done
        s.save()
        r = migd(host, "check")
        assert r.code == 5 and "drift" not in r.out, (r.code, r.out)  # it waited, then said busy
        assert "another migd holds" in r.err
    assert migd(host, "apply").code == 0
    assert migd(host, "check").code == 0


# --- point 9: state files that cannot be written ---------------------------------------------------------------------


def test_apply_that_cannot_write_state_json_exits_1_and_says_so(host):
    host["run"].mkdir(mode=0o755)
    (host["run"] / "state.json").mkdir()  # a directory in the way
    r = migd(host, "apply")
    assert r.code == 1, r.out
    assert "cannot write" in r.err and "state.json" in r.err, r.err
    assert r.named("state_write_failed")
    assert len(live(host)[0]["gis"]) == 3  # the GPU itself was applied


# --- point 10: the watchdog's re-apply records like apply ------------------------------------------------------------


def test_watchdog_reapply_rewrites_state_json_and_devices_env(host):
    conf = Path(host["config"])
    conf.write_text(NAMED + '\n[daemon]\ndrift_policy = "reapply"\n')
    assert migd(host, "apply").code == 0
    env_file, state_file = host["run"] / "devices.env", host["run"] / "state.json"
    s = SimHost.create("", host["state"])
    train = next(g for g in s.gpus[0]["gis"] if g["size"] == 4)
    train["cis"] = []
    s.destroy_gi(0, train["id"])
    s.save()
    env_file.write_text("MIGD_TRAIN=stale\n")  # what the last apply left: MIG UUIDs can change on a re-create
    state_file.write_text("{}")
    w = Watcher(host["config"], site.build(None, host["state"]))
    assert w.check_once()[0] == "drift"
    new = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if not line.startswith("#"))
    s = SimHost.create("", host["state"])
    uuids = [s.mig_uuid(0, gi["id"], ci["id"]) for gi in s.gpus[0]["gis"] for ci in gi["cis"]]
    assert len(uuids) == 3
    assert new["MIGD_TRAIN"] in uuids and new["MIGD_INFER"] in uuids
    doc = json.loads((host["run"] / "state.json").read_text())
    assert [g["outcome"] for g in doc["gpus"]] == ["applied"]
    assert new["MIGD_TRAIN"] in [i["uuid"] for i in doc["gpus"][0]["instances"]]


# --- point 11: export is what apply reproduces -----------------------------------------------------------------------


def test_export_then_plan_says_nothing_to_do_and_check_ok(host):
    assert migd(host, "apply").code == 0  # GPU 0 managed (named), persistence on
    s = SimHost.create("", host["state"])  # GPU 1: unmanaged, laid out by hand, persistence off
    s.set_mig_mode(1, 1)
    s.create_gi(1, 9, (0, 4))
    s.save()
    r = migd(host, "export")
    assert r.code == 0
    assert 'name = "train"' in r.out and 'name = "infer"' in r.out, r.out
    exported = host["tmp"] / "exported.toml"
    exported.write_text(r.out)
    plan = migd(host, "plan", config=str(exported))
    assert plan.code == 0 and plan.out.splitlines() == ["GPU 0: nothing to do", "GPU 1: nothing to do"], plan.out
    check = migd(host, "check", config=str(exported))
    assert check.code == 0 and check.out.count(": ok:") == 2, check.out
    status = migd(host, "status", config=str(exported))
    assert "[train]" in status.out and "[infer]" in status.out
    # every GPU with persistence on: the export turns it on (and plan still says nothing to do)
    s = SimHost.create("", host["state"])
    s.gpus[1]["persistence"] = 1
    s.save()
    r = migd(host, "export")
    assert "persistence_mode = true" in r.out
    exported.write_text(r.out)
    assert migd(host, "plan", config=str(exported)).out.count("nothing to do") == 2


# --- point 12: what check, status and apply print --------------------------------------------------------------------


def test_check_prints_the_expected_layout_never_a_refusal(host):
    assert migd(host, "apply").code == 0
    s = SimHost.create("", host["state"])
    busy = s.gpus[0]["gis"][0]
    s.add_process(0, 4242, busy["id"], busy["cis"][0]["id"])
    s.save()
    other = host["tmp"] / "seven.toml"
    other.write_text('[[gpu]]\nselect = 0\nmig = true\ninstances = { "1g" = 7 }\n')
    r = migd(host, "check", config=str(other))
    assert r.code == 3
    line = r.out.splitlines()[0]
    # what differs (the layout as placed on an empty GPU vs. the live one), not a refusal
    assert line == "GPU 0: drift: missing " + ", ".join(f"1g.10gb@{i}:1" for i in range(6)) + \
        "; extra 3g.40gb@0:4, 2g.20gb@4:2", line
    assert "processes" not in r.out
    doc = json.loads(migd(host, "check", "--json", config=str(other)).out)
    assert doc["gpus"][0]["expected"].startswith("MIG on: 1g.10gb@0:1") and "processes" not in json.dumps(doc)
    # the refused apply's status says the GPU does not match
    r = migd(host, "apply", config=str(other))
    assert r.code == 1 and "4242" in r.out
    assert "(drift: does not match its config" in r.out, r.out


def test_no_message_repeats_the_gpu_prefix(host):
    r = migd(host, "apply", MIGD_SIM_FAULTS="nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES@2")
    assert r.code == 1 and "rolled back" in r.out
    texts = [r.out, r.err] + [str(f.get("msg", "")) for _, _, f in r.events]
    assert not any("GPU 0: GPU 0:" in t for t in texts), texts
    r = migd(host, "apply", MIGD_SIM_FAULTS="nvmlDeviceGetHandleByIndex=UNKNOWN@1/gpu0")
    texts = [r.out, r.err] + [str(f.get("msg", "")) for _, _, f in r.events]
    assert not any("GPU 0: GPU 0:" in t for t in texts), texts
    src = Path(R.ROOT / "src" / "migd")
    for path in src.rglob("*.py"):  # a DriverError already says "GPU n:"; messages use its .reason
        assert "{error}" not in path.read_text() or path.name == "log.py", path


def test_a_holder_named_with_a_newline_cannot_forge_an_output_line(host):
    s = SimHost.create("", host["state"])
    node = s.device_node(0)
    ready = host["tmp"] / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        f = open(sys.argv[1])
        with open("/proc/self/comm", "w") as c:
            c.write("x\\nGPU 1: ok")
        open(sys.argv[2], "w").close()
        time.sleep(60)
    """), node, str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # readiness: the child holds the node and has its name
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        r = migd(host, "apply")
    finally:
        child.kill()
        child.wait()
    assert r.code == 4, r.out  # the H100 mode change stays pending while held
    assert "x\\x0aGPU 1: ok" in r.out
    assert not any(line.startswith("GPU 1: ok") for line in r.out.splitlines()), r.out


# --- structure -------------------------------------------------------------------------------------------------------


def _imports(root: Path):
    """module -> the migd modules it imports (anywhere in it, also inside functions)."""
    import ast

    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).replace(".__init__", ""): p
             for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1]) if node.level else ""
                mod = ".".join(x for x in (base, node.module or "") if x)
                deps |= {m for m in [mod] + [f"{mod}.{a.name}" for a in node.names] if m in files}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles():
    graph = _imports(R.ROOT / "src" / "migd")
    assert graph["migd.layout"] and "migd.plan" not in graph["migd.layout"]
    state = {}

    def visit(n, path):
        state[n] = "open"
        for d in graph[n]:
            assert state.get(d) != "open", " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])
