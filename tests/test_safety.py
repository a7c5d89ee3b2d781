"""Issue 9's safety seams, hit the way an admin or an attacker would: through `migd` on simulated GPUs.

- a failed read (MIG mode, instances, processes) is an error or "busy", never "nothing there";
- rollback and check compare compute-instance placements, not only GPU-instance ones;
- a lost GPU does not turn a UUID/PCI selector into a config error;
- devices.env variables never collide or point at the wrong GPU;
- config trust follows no link through a directory another user controls; a hard-linked lock is refused;
- no newline slips through a validation regex or into a holder's name.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import List

import pytest

import reliability as R
from migd.sim.host import SimHost, load_state

THREE_THREE = """
[[gpu]]
select = "all"
mig = true
instances = ["3g", "3g"]
"""
FOUR_TWO_ONE = """
[[gpu]]
select = "all"
mig = true
instances = ["4g", "2g", "1g"]
"""


@pytest.fixture
def site(tmp_path):
    """A state file for simulated GPUs, a run dir, and a way to run `migd` against them with a config."""

    class Site:
        state = str(tmp_path / "sim.json")
        run = str(tmp_path / "run")

        def config(self, text: str, name: str = "migd.toml") -> str:
            return R.write_config(tmp_path / name, textwrap.dedent(text))

        def migd(self, spec: str, config: str, *verb: str, faults: str = "") -> R.Run:
            env = {"MIGD_RUN_DIR": self.run}
            if faults:
                env["MIGD_SIM_FAULTS"] = faults
            return R.run_cli(["--simulate", spec, "--sim-state", self.state, "--config", config, *verb], env)

        def layouts(self) -> List[object]:
            return R.layouts(load_state(self.state))

    return Site()


# --- 1. reads are facts or errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["nvmlDeviceGetMigMode=NOT_SUPPORTED@2", "nvmlDeviceGetMigMode=NO_PERMISSION@2",
                                   "nvmlDeviceGetGpuInstances=NOT_SUPPORTED@1",
                                   "nvmlDeviceGetGpuInstances=UNKNOWN@3"])
def test_failed_state_read_stops_the_gpu_and_changes_nothing(site, fault):
    """Re-applying the live ["3g", "3g"] while the mode or instance read fails: exit 1, the read named, both idle
    instances still there (before: MIG read as off -> both destroyed, MIG off, "rolled back")."""
    conf = site.config(THREE_THREE)
    assert site.migd("h100-80gb", conf, "apply").code == 0
    before = site.layouts()
    r = site.migd("h100-80gb", conf, "apply", faults=fault)
    assert not r.traceback, r.err
    assert r.code == 1, r.out + r.err
    call = fault.split("=")[0]
    assert call in r.out and "rolled back" not in r.out, r.out
    assert site.layouts() == before


def test_unreadable_process_list_is_busy_not_idle(site):
    """Processes cannot be read (NO_PERMISSION): `plan` refuses to destroy the instances and says why, `apply` never
    tries a destroy (exit 1, nothing changed). Before: plan listed the destroys and apply made them."""
    assert site.migd("h100-80gb", site.config(THREE_THREE), "apply").code == 0
    before = site.layouts()
    conf = site.config(FOUR_TWO_ONE, "target.toml")
    faults = "nvmlDeviceGetComputeRunningProcesses=NO_PERMISSION"
    r = site.migd("h100-80gb", conf, "plan", faults=faults)
    assert not r.traceback, r.err
    assert r.code == 1 and ": destroy " not in r.out, r.out
    assert ("GPU instance 1 (3g.40gb at 0:4), whose processes cannot be read (nvmlDeviceGetComputeRunningProcesses: "
            "NO_PERMISSION)") in r.out and "not destroying busy instances" in r.out, r.out
    host = SimHost(load_state(site.state), site.state)
    host.state["trace"] = []
    host.save()
    r = site.migd("h100-80gb", conf, "apply", faults=faults)
    assert r.code == 1 and not r.traceback, r.out + r.err
    assert "cannot be read" in r.out
    assert load_state(site.state)["trace"] == [] and site.layouts() == before  # not one mutating call


def test_library_mismatch_on_processes_is_unknown(sim_backend, monkeypatch):
    """pynvml's NVMLLibraryMismatchError (library older than the driver) on a process list: unknown, so busy."""
    import pynvml

    backend = sim_backend("h100-80gb")
    backend.set_mig_mode(0, True)
    gi = backend.create_gpu_instance(0, 9, placement_of(0, 4))
    backend.create_compute_instance(0, gi, 2, placement_of(0, 3))

    def mismatch(handle):
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called")

    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", mismatch)
    state = backend.state(0, fresh=True)
    assert state.instances[0].busy and "older than the driver" in state.instances[0].pids_unreadable


def placement_of(start: int, size: int):
    from migd.model import Placement

    return Placement(start, size)


# --- 2. compute-instance placements: rolled back exactly, compared by check --------------------------------------

ONE_C = """
[[gpu]]
select = "all"
mig = true
instances = [{ profile = "3g", compute = ["1c", "1c"] }, "3g"]
"""


def _move_ci_by_hand(site) -> None:
    """Like `nvidia-smi mig -dci` + `-cci` with another placement: the 3g's second 1c moved from slice 1 to 2."""
    gi = next(gi for gi in load_state(site.state)["gpus"][0]["gis"] if len(gi["cis"]) == 2)
    ci = next(ci for ci in gi["cis"] if ci["start"] == 1)
    R.sim_tool(site.state, "destroy-ci", "0", str(gi["id"]), str(ci["id"]))
    R.sim_tool(site.state, "create-ci", "0", str(gi["id"]), str(ci["profile_id"]), "2", "1")


def _ci_starts(site) -> List[List[int]]:
    return sorted(sorted(ci["start"] for ci in gi["cis"]) for gi in load_state(site.state)["gpus"][0]["gis"])


def test_check_sees_a_compute_instance_moved_by_hand(site):
    conf = site.config(ONE_C)
    assert site.migd("h100-80gb", conf, "apply").code == 0
    assert _ci_starts(site) == [[0], [0, 1]]
    assert site.migd("h100-80gb", conf, "check").code == 0
    _move_ci_by_hand(site)
    r = site.migd("h100-80gb", conf, "check")
    assert r.code == 3 and "drift" in r.out, r.out  # before: "ok", exit 0
    r = site.migd("h100-80gb", conf, "apply")  # and apply puts it back where the planner places it
    assert r.code == 0 and _ci_starts(site) == [[0], [0, 1]], r.out


def test_rollback_restores_compute_instances_at_their_exact_placements(site):
    """A 1c at slice 2 (placed by hand), then a re-partition that fails: the rollback puts the CI back at slice 2
    (before: at slice 1, and verify called that a match)."""
    assert site.migd("h100-80gb", site.config(ONE_C), "apply").code == 0
    _move_ci_by_hand(site)
    before = site.layouts()
    assert _ci_starts(site) == [[0], [0, 2]]
    r = site.migd("h100-80gb", site.config(FOUR_TWO_ONE, "target.toml"), "apply",
                  faults="nvmlDeviceCreateGpuInstanceWithPlacement=UNKNOWN@2")
    assert r.code == 1 and "rolled back to the previous layout" in r.out, r.out + r.err
    assert site.layouts() == before, R.describe_layout(site.layouts()[0])


# --- 4. a lost GPU and a UUID/PCI selector -----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["uuid", "pci_bus_id"])
@pytest.mark.parametrize("verb", ["apply", "boot"])
def test_lost_gpu_selected_by_uuid_or_pci_is_lost_not_a_config_error(site, key, verb):
    """GPU 1 selected by UUID (or PCI id) falls off the bus before migd starts: GPU 1 is reported lost, naming the
    entry that may mean it, GPU 0 is still applied, exit 1 (before: a config error, exit 2, no GPU applied)."""
    probe = site.config(THREE_THREE, "probe.toml")
    r = site.migd("h100-80gb:2", probe, "status", "--json")
    gpu1 = json.loads(r.out)["gpus"][1][key]
    conf = site.config(f"""
        [[gpu]]
        select = 0
        mig = true
        instances = ["3g", "3g"]

        [[gpu]]
        select = "{gpu1}"
        mig = true
        instances = {{ "1g" = 7 }}
        """)
    R.sim_tool(site.state, "lose", "1")
    r = site.migd("h100-80gb:2", conf, verb)
    assert not r.traceback, r.err
    assert r.code == 1, r.out + r.err
    lost = r.named("gpu_lost", gpu=1)
    assert lost
    # apply prints each outcome; boot (a service) only logs it: under systemd stdout is the journal too
    said = r.out if verb == "apply" else lost[0]["msg"]
    assert f"GPU 1: lost (fell off the bus) before migd could read it: not configured ({conf}:7: [[gpu]] #2 select = " in said
    assert "it may be this one" in said
    assert site.layouts()[0][2] and site.layouts()[1] == "lost"  # GPU 0 applied


def test_unknown_uuid_is_still_a_config_error_when_no_gpu_is_lost(site):
    conf = site.config("""
        [[gpu]]
        select = "GPU-00000000-0000-0000-0000-000000000000"
        mig = false
        """)
    r = site.migd("h100-80gb:2", conf, "apply")
    assert r.code == 2 and "no GPU GPU-00000000-0000-0000-0000-000000000000 on this host" in r.out + r.err


# --- 5. devices.env: one variable, one MIG device ----------------------------------------------------------------

def _env(site) -> dict:
    lines = Path(site.run, "devices.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_devices_env_counts_mig_devices_and_names_every_compute_instance(site):
    """MIGD_GPU0_MIG<k> counts compute instances in MIG device order; an instance with two compute instances still
    gets MIGD_TRAIN (its first) and MIGD_TRAIN_CI<j> (before: MIG<k> counted GPU instances, no MIGD_TRAIN)."""
    conf = site.config("""
        [[gpu]]
        select = "all"
        mig = true
        instances = [{ profile = "4g", name = "train", compute = ["2c", "2c"] }, { profile = "2g", name = "infer" },
                     "1g"]
        """)
    assert site.migd("h100-80gb", conf, "apply").code == 0
    env = _env(site)
    gis = json.loads(site.migd("h100-80gb", conf, "status", "--json").out)["gpus"][0]["instances"]
    devices = [ci["uuid"] for gi in sorted(gis, key=lambda gi: gi["placement"]["start"]) for ci in gi["compute"]]
    assert len(devices) == 4
    assert [env[f"MIGD_GPU0_MIG{k}"] for k in range(4)] == devices and "MIGD_GPU0_MIG4" not in env
    train = next(gi for gi in gis if gi["name"] == "train")
    cis = [ci["uuid"] for ci in train["compute"]]
    assert env["MIGD_TRAIN"] == env["MIGD_GPU0_TRAIN"] == cis[0]
    assert [env["MIGD_TRAIN_CI0"], env["MIGD_TRAIN_CI1"]] == cis
    assert env["MIGD_INFER"] == next(gi for gi in gis if gi["name"] == "infer")["uuid"]


@pytest.mark.parametrize("first,second", [("a-b", "a_b"), ("Train", "train")])
def test_names_that_are_one_variable_are_refused(site, first, second):
    conf = site.config(f"""
        [[gpu]]
        select = 0
        mig = true
        instances = [{{ profile = "3g", name = "{first}" }}]

        [[gpu]]
        select = 1
        mig = true
        instances = [{{ profile = "3g", name = "{second}" }}]
        """)
    r = site.migd("h100-80gb:2", conf, "apply")
    assert r.code == 2 and not os.path.exists(site.state), r.out + r.err  # refused before any GPU is opened
    assert f"{conf}:10: [[gpu]] #2 instances #1 name: instance name '{second}' and '{first}' ({conf}:5) are one " \
           "devices.env variable" in r.err, r.err


@pytest.mark.parametrize("name", ["GPU0_MIG0", "gpu1-train", "Gpu12", "train_ci0"])
def test_names_devices_env_writes_itself_are_refused(site, name):
    """A name "GPU0_MIG0" on GPU 1 would write MIGD_GPU0_MIG0 pointing at GPU 1's device."""
    conf = site.config(f"""
        [[gpu]]
        select = 1
        mig = true
        instances = [{{ profile = "3g", name = "{name}" }}]
        """)
    r = site.migd("h100-80gb:2", conf, "validate")
    assert r.code == 2 and f"{conf}:5: [[gpu]] #1 instances #1 name: '{name}' is reserved" in r.err, r.err


def test_devices_env_leaves_out_a_variable_two_devices_would_share():
    """Whatever the state says (say, written under an older config), no variable is written with two meanings."""
    from migd.runstate import devices_env

    gpus = [{"index": 0, "instances": [{"name": "a-b", "uuid": "MIG-a", "compute": [{"uuid": "MIG-a"}]}]},
            {"index": 1, "instances": [{"name": "a_b", "uuid": "MIG-b", "compute": [{"uuid": "MIG-b"}]}]}]
    text = devices_env(gpus)
    assert "MIGD_A_B=" not in text and "MIGD_GPU0_A_B=MIG-a" in text and "MIGD_GPU1_A_B=MIG-b" in text


# --- 7. trust: links in directories others control, hard-linked lock files ---------------------------------------

ATTACKER = 4242
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


@pytest.fixture
def trusted(tmp_path, site):
    """A root-owned /etc-like directory with a good config, and an attacker-owned directory next to it."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    conf = R.write_config(etc / "migd.toml", THREE_THREE)
    evil = tmp_path / "evil"
    evil.mkdir(mode=0o755)
    os.chown(evil, ATTACKER, ATTACKER)
    return {"conf": conf, "evil": evil, "tmp": tmp_path}


@AS_ROOT
def test_symlink_in_a_directory_another_user_owns_is_refused(site, trusted):
    """The link points at a perfectly trusted file, but its owner can re-point it at any time: refused, naming the
    directory (before: the target was checked, the link's directory never)."""
    link = trusted["evil"] / "migd.toml"
    link.symlink_to(trusted["conf"])
    os.lchown(link, ATTACKER, ATTACKER)
    r = site.migd("h100-80gb", str(link), "apply")
    assert r.code == 2 and not os.path.exists(site.state), r.out + r.err
    assert f"directory {trusted['evil']} is owned by uid {ATTACKER}, not root" in r.err, r.err


@AS_ROOT
def test_symlink_owned_by_another_user_in_a_sticky_directory_is_refused(site, trusted):
    """In a sticky world-writable directory (like /tmp) another user cannot replace root's files, but can own a link
    of their own there: refused, naming the link."""
    sticky = trusted["tmp"] / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "migd.toml"
    link.symlink_to(trusted["conf"])
    os.lchown(link, ATTACKER, ATTACKER)
    r = site.migd("h100-80gb", str(link), "apply")
    assert r.code == 2 and f"symlink {link} is owned by uid {ATTACKER}, not root" in r.err, r.err
    os.lchown(link, 0, 0)  # the same link owned by root: fine
    assert site.migd("h100-80gb", str(link), "apply").code == 0


@AS_ROOT
def test_a_link_through_an_attacker_directory_is_refused_even_if_the_file_is_root_owned(site, trusted):
    """A trusted-looking link (root's, in a root directory) whose target path runs through the attacker's
    directory: the target is checked component by component too."""
    inner = trusted["evil"] / "real.toml"
    inner.write_text(THREE_THREE)
    os.chmod(inner, 0o644)  # root-owned file, in a directory the attacker owns (and can rename it away)
    link = Path(trusted["conf"]).parent / "via.toml"
    link.symlink_to(inner)
    r = site.migd("h100-80gb", str(link), "apply")
    assert r.code == 2 and f"directory {trusted['evil']} is owned by uid {ATTACKER}" in r.err, r.err


@AS_ROOT
@pytest.mark.parametrize("how", ["hard link", "foreign owner"])
def test_a_planted_lock_file_is_refused_not_truncated(site, trusted, how):
    """/run/migd/lock as a hard link to another file (or owned by someone else): refused naming the path, the
    other file untouched (before: truncated to "pid N" and chmod'ed 0600)."""
    conf = trusted["conf"]
    run = Path(site.run)
    run.mkdir(mode=0o755)
    victim = trusted["tmp"] / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    if how == "hard link":
        os.link(victim, run / "lock")
    else:
        (run / "lock").write_text("precious\n")
        os.chmod(run / "lock", 0o644)
        os.chown(run / "lock", ATTACKER, ATTACKER)
        victim = run / "lock"
    r = site.migd("h100-80gb", conf, "apply")
    assert r.code == 1 and not r.traceback, r.out + r.err
    assert f"{run / 'lock'}" in r.err and ("hard link" in r.err or f"owned by uid {ATTACKER}" in r.err), r.err
    assert victim.read_text() == "precious\n" and stat_mode(victim) == 0o644
    assert all(g["mig"] == [0, 0] for g in load_state(site.state)["gpus"])  # no GPU touched


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o7777


# --- 12. no newline through a regex or a process name ------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("name", "train\n"), ("name", "GPU-x\n")])
def test_a_trailing_newline_is_not_a_valid_value(site, key, value):
    """`$` matches before a final newline: "train\\n" passed as a name (and went into devices.env). (Profiles and
    selectors are stripped of surrounding blanks before they are matched: "3g\\n" is "3g".)"""
    item = {"profile": "3g", key: value}
    text = "[[gpu]]\nselect = 0\nmig = true\ninstances = [" + ", ".join(
        f"{k} = {json.dumps(v)}" for k, v in item.items()).join(["{ ", " }"]) + "]\n"
    r = site.migd("h100-80gb", site.config(text), "validate")
    assert r.code == 2 and f"{site.config(text)}:4: [[gpu]] #1 instances #1" in r.err, (text, r.out, r.err)


def test_stop_clients_unit_with_a_newline_is_refused(site):
    conf = site.config('[daemon]\nstop_clients = ["nvidia-dcgm.service\\n"]\n')
    r = site.migd("h100-80gb", conf, "validate")
    assert r.code == 2 and "daemon.stop_clients" in r.err, r.err


def test_a_holder_named_with_a_newline_cannot_forge_an_output_line(site, tmp_path):
    """A process holding the GPU renames itself "x\\nGPU 0: ok" (prctl PR_SET_NAME): the pending message names it
    escaped, on one line; no stdout line says "GPU 0: ok"."""
    import subprocess
    import sys

    SimHost.create("a100-40gb", site.state)
    node = os.path.join(os.path.dirname(site.state), "dev", "nvidia0")
    script = ("import ctypes,sys,time; f=open(sys.argv[1]); "
              "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'x\\nGPU 0: ok'), 0, 0, 0); "
              "print('ready', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, node], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        conf = site.config('[[gpu]]\nselect = 0\nmig = true\ninstances = ["7g"]\n')
        r = site.migd("a100-40gb", conf, "apply")
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 4, r.out + r.err
    assert f"held by x\\x0aGPU 0: ok (pid {holder.pid}" in r.out, r.out
    assert not any(line.startswith("GPU 0: ok") for line in (r.out + r.err).splitlines()), r.out + r.err
