"""The CLI as an admin uses it: verbs, outputs, exit codes, files in /run/migd."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reliability as R
from migd import cli, sim
from migd.sim.host import SimHost, load_state

MIXED = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = [{ profile = "3g", name = "train" }, "2g", "1g", "1g"]

    [[gpu]]
    select = [1]
    mig = true
    instances = { "1g" = 7 }
""")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    yield
    sim.uninstall()


@pytest.fixture
def host(tmp_path):
    """A simulated 2 × H100 host shared through a state file, and a config file."""
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    conf = tmp_path / "migd.toml"
    conf.write_text(MIXED)
    return {"state": str(state), "config": str(conf)}


def migd(capsys, host, *args, spec="h100-80gb:2"):
    code = cli.main(["--simulate", spec, "--sim-state", host["state"], "--config", host["config"], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_then_check_status_export_round_trip(capsys, host, tmp_path):
    code, out, _ = migd(capsys, host, "check")
    assert code == 3 and "drift" in out  # nothing applied yet

    code, out, _ = migd(capsys, host, "apply")
    assert code == 0, out
    assert "GPU 0: applied" in out and "GPU 1: applied" in out

    code, out, _ = migd(capsys, host, "check")
    assert code == 0 and out.count(": ok:") == 2

    code, out, _ = migd(capsys, host, "status", "--json")
    data = json.loads(out)
    g0, g1 = data["gpus"]
    assert g0["mig"] == {"current": True, "pending": True}  # NVML's pair: current mode, pending mode
    # 3g at 0:4 would leave no room for two 1g (slot 7 hosts none), so the exact planner puts it at 4:4
    assert [(i["profile"], i["placement"]["start"], i["name"]) for i in g0["instances"]] == [
        ("2g.20gb", 0, None), ("1g.10gb", 2, None), ("1g.10gb", 3, None), ("3g.40gb", 4, "train")]
    assert len(g1["instances"]) == 7 and all(i["profile"] == "1g.10gb" for i in g1["instances"])
    for inst in g0["instances"] + g1["instances"]:
        assert inst["uuid"].startswith("MIG-") and len(inst["compute"]) == 1
        assert set(inst) >= {"profile", "profile_id", "placement", "uuid", "name", "compute"}

    # export -> apply on the same GPUs changes nothing
    code, exported, _ = migd(capsys, host, "export")
    assert code == 0 and exported.count("[[gpu]]") == 2
    host2 = dict(host, config=str(tmp_path / "exported.toml"))
    (tmp_path / "exported.toml").write_text(exported)
    code, out, _ = migd(capsys, host2, "plan")
    assert code == 0 and out.count("nothing to do") == 2, out

    # /run/migd files
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert [g["outcome"] for g in state["gpus"]] == ["applied", "applied"]
    env = (run / "devices.env").read_text()
    assert "MIGD_TRAIN=MIG-" in env and "MIGD_GPU0_TRAIN=MIG-" in env and "MIGD_GPU1_MIG6=MIG-" in env
    assert oct((run / "devices.env").stat().st_mode & 0o777) == "0o644"

    # a second apply is a no-op with zero mutating driver calls
    code, out, _ = migd(capsys, host, "apply")
    assert code == 0 and out.count("already matches") == 2


def test_plan_changes_nothing_and_read_verbs_are_read_only(capsys, host, tmp_path):
    def snapshot():
        run = tmp_path / "run"
        # (check takes the lock shared, which may create the empty lock file: not state)
        files = {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != "lock"} if run.exists() else {}
        return json.dumps(load_state(host["state"]), sort_keys=True), files

    SimHost.create("h100-80gb:2", host["state"])
    for setup in ([], ["apply"]):  # a bare host, then a laid-out one with state files
        if setup:
            assert migd(capsys, host, *setup)[0] == 0
            with open(host["config"], "a") as f:  # drifted against the config: plan has work to show
                f.write('\n[[gpu]]\nselect = 1\nmig = true\ninstances = ["7g"]\n')
        before = snapshot()
        outputs = {}
        for verb in (["plan"], ["apply", "--dry-run"], ["status"], ["profiles"], ["check"], ["export"], ["validate"]):
            outputs[verb[0] + "".join(verb[1:])] = migd(capsys, host, *verb)
        assert snapshot() == before, verb
        assert "create GPU instance" in outputs["plan"][1]  # the read verbs did run, and had something to say
        assert outputs["plan"][1] == outputs["apply--dry-run"][1]


def test_read_only_env_refuses_apply(capsys, host, monkeypatch):
    monkeypatch.setenv("MIGD_READ_ONLY", "1")
    code, out, err = migd(capsys, host, "apply")
    assert code == 1
    assert "read-only" in (out + err)
    assert not load_state(host["state"])["gpus"][0]["gis"]
    assert load_state(host["state"])["gpus"][0]["mig"] == [0, 0]


def test_bad_config_exits_2_and_touches_nothing(capsys, host, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gpu]]\nselect = "all"\nmig = true\ninstances = ["1g.10gb+me", "1g.10gb+me"]\n')
    host = dict(host, config=str(bad))
    code, out, err = migd(capsys, host, "apply")
    assert code == 2
    assert f"{bad}:4: [[gpu]] #1 instances: 1g.10gb+me allows 1 instance, 2 requested (GPUs 0, 1)" in err, err
    assert all(g["mig"] == [0, 0] and not g["gis"] for g in load_state(host["state"])["gpus"])

    bad.write_text('[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g.20gb"]\n')  # an A100 name on an H100
    code, _, err = migd(capsys, host, "apply")
    assert code == 2 and f"{bad}:4: [[gpu]] #1 instances #1: H100 80GB HBM3 has no profile '3g.20gb'" in err, err
    assert "(GPUs 0, 1)" in err, err

    bad.write_text('[[gpu]]\nselect = 5\nmig = false\n')
    code, _, err = migd(capsys, host, "apply")
    assert code == 2 and "no GPU with index 5" in err


def test_validate_reports_entry_per_gpu(capsys, host):
    code, out, _ = migd(capsys, host, "validate")
    assert code == 0
    assert "GPU 0 NVIDIA H100 80GB HBM3: [[gpu]] #1 (" in out
    assert "GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #2 (" in out  # the last matching entry wins


def test_pending_mode_change_exit_4_names_holder(capsys, host):
    with open(host["config"], "w") as f:
        f.write('[[gpu]]\nselect = 0\nmig = true\ninstances = ["7g"]\n')
    SimHost.create("a100-40gb", host["state"])
    node = os.path.join(os.path.dirname(host["state"]), "dev", "nvidia0")
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); time.sleep(60)", node])
    try:
        R.wait_until_holding(holder, node)
        code, out, err = migd(capsys, host, "apply", spec="a100-40gb")
        assert code == 4, out + err
        assert "pending" in out and f"pid {holder.pid}" in out
        assert load_state(host["state"])["gpus"][0]["mig"] == [0, 1]
    finally:
        holder.kill()
        holder.wait()
    code, out, _ = migd(capsys, host, "apply", spec="a100-40gb")
    assert code == 0, out  # the holder is gone: the Ampere GPU is reset by the driver and the layout applied


def test_lock_held_exits_5(capsys, host, monkeypatch):
    from migd import runstate

    monkeypatch.setattr(cli, "_load_config", cli._load_config)
    conf = host["config"]
    with open(conf, "a") as f:
        f.write("\n[daemon]\nlock_timeout = 0.2\n")
    with runstate.locked(1, directory=os.environ["MIGD_RUN_DIR"]):
        code, out, err = migd(capsys, host, "apply")
    assert code == 5 and "another migd holds" in err


def test_cli_entry_point_as_subprocess(host):
    """What an admin types: the console script, a real process, stdout/exit code."""
    env = dict(os.environ, MIGD_RUN_DIR=os.path.join(os.path.dirname(host["state"]), "run"))
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", "dgx-a100", "--config",
                        "etc/examples/dgx-a100-mixed.toml", "apply"], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    # the README's demo: one line per GPU saying what changed, then identical GPUs on one row (was 224 lines)
    assert r.stderr == "" and r.stdout.splitlines() == [
        *(f"GPU {i}: applied 10 changes (MIG mode on, 4 GPU instances created)" for i in range(4)),
        *(f"GPU {i}: applied 16 changes (MIG mode on, 7 GPU instances created)" for i in range(4, 8)),
        "GPU 0-3  A100-SXM4-40GB  MIG on: GI 3 2g.10gb@0:2, GI 9 1g.5gb@2:1, GI 10 1g.5gb@3:1, GI 2 3g.20gb@4:4",
        "GPU 4-7  A100-SXM4-40GB  MIG on: " + ", ".join(f"GI {7 + i} 1g.5gb@{i}:1" for i in range(7))], r.stdout
    # -v: each driver call, naming GPU instances by the driver's GI id as status does
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", "dgx-a100", "--config",
                        "etc/examples/dgx-a100-mixed.toml", "-v", "apply"], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert "migd[info]: GPU 0: create GPU instance 3g.20gb (profile ID 9) at 4:4: GI 2 " in r.stderr, r.stderr
    assert "migd[info]: GPU 0: create compute instance 3g.20gb (profile ID 2) at 0:3 in GI 2 " in r.stderr
    assert "  GI  2  3g.20gb        at 4:4" in r.stdout and "CI 0  3g.20gb" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("migd ")
    r = subprocess.run([sys.executable, "-m", "migd.cli", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2


def test_run_dirs_real_and_simulated(tmp_path):
    """Real GPUs: /run/migd, whoever asks (a user's check runs without the lock it cannot open); simulated GPUs:
    the simulated host's own, beside its state file, never /run/migd."""
    from migd import site

    assert site.build(None, None, {}).env.run_dir == "/run/migd"
    state = str(tmp_path / "state.json")
    env = site.build("h100-80gb", state, {}).env
    assert env.simulated and env.run_dir == state + ".run" and env.state_dir == state + ".lib"


def test_export_round_trips_a_gpu_instance_without_compute_instances(capsys, host, tmp_path):
    """`nvidia-smi mig -cgi 9` without -C leaves a GI with no CI: export writes compute = [], apply keeps it."""
    s = SimHost.create("h100-80gb:2", host["state"])
    s.gpus[0]["mig"] = [1, 1]
    for g in s.gpus:
        g["persistence"] = 1
    s.create_gi(0, 9, (4, 4))
    s.save()
    code, exported, _ = migd(capsys, host, "export")
    assert code == 0 and '{ profile = "3g.40gb", compute = [] }' in exported, exported
    (tmp_path / "exported.toml").write_text(exported)
    host2 = dict(host, config=str(tmp_path / "exported.toml"))
    code, out, _ = migd(capsys, host2, "plan")
    assert code == 0 and out.count("nothing to do") == 2, out
    code, out, _ = migd(capsys, host2, "check")
    assert code == 0, out


def test_check_reports_a_lost_gpu_as_failure(capsys, host):
    assert migd(capsys, host, "apply")[0] == 0
    s = SimHost.create("", host["state"])
    s.gpus[1]["lost"] = True
    s.save()
    code, out, _ = migd(capsys, host, "check", "--json")
    data = json.loads(out)
    assert code == 1 and data["status"] == "lost"
    assert [(g["index"], g["status"]) for g in data["gpus"]] == [(0, "ok"), (1, "lost")]


def test_profiles_lists_the_model_table_as_text_and_json(capsys, host):
    code, out, _ = migd(capsys, host, "profiles", spec="a30")
    assert code == 0
    assert "1g.6gb" in out and "{0,1,2,3}:1" in out and "compute: 1c.4g.24gb, 2c.4g.24gb, 4g.24gb" in out
    code, out, _ = migd(capsys, host, "profiles", "--json", spec="a30")
    table = {p["name"]: p for p in json.loads(out)["gpus"][0]["profiles"]}
    # A30: the plain 1g is profile ID 14 (ID 19 on A100/H100), 4 memory slots (reference §2.2)
    assert table["1g.6gb"]["id"] == 14 and table["4g.24gb"]["placements"] == [{"start": 0, "size": 4}]
    assert table["2g.12gb+me"]["instance_count"] == 1


def test_the_entry_point_delivers_all_output_and_quits_quietly_on_a_closed_pipe(tmp_path):
    """`run()` ends the process with os._exit after flushing: everything printed still arrives, whole, and a
    reader that stops early (`| head`) gets no traceback and exit 0."""
    import contextlib
    import io

    from migd.cli import main

    argv = ["--simulate", "dgx-a100", "profiles", "--json"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    entry = [sys.executable, "-c", "import sys; from migd.cli import run; sys.argv[0] = 'migd'; run()"]
    full = subprocess.run(entry + argv, capture_output=True, text=True, check=False)
    assert full.returncode == 0 and full.stdout == buf.getvalue() and len(full.stdout) > 40000, full.stderr
    head = subprocess.run(f"{shlex.join(entry + argv)} | head -c 100 >/dev/null; echo ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, check=False)
    assert head.stdout.strip() == "0" and "Traceback" not in head.stderr and "Exception" not in head.stderr, head
    launcher = (Path(__file__).resolve().parent.parent / "packaging" / "bin" / "migd").read_text()
    assert "from migd.cli import run" in launcher and launcher.rstrip().endswith("run()")
