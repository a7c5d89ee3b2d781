"""`migd export --format slurm`: the node's Gres= and gres.conf lines, named as Slurm's AutoDetect=nvml names them.

Expected names and files follow SchedMD/slurm src/plugins/gpu/nvml/gpu_nvml.c (_handle_mig, _nvml_get_mig_minor_numbers)
and doc/html/gres.shtml ("nvidia_a100_3g.20gb"). tests/data/mig-minors is the driver's table in the layout the NVIDIA
MIG User Guide ("Device Nodes and Capabilities") prints: "config 1", "monitor 2", "gpu0/gi0/access 3",
"gpu0/gi0/ci0/access 4", ..., 15 GIs x (1 + 8 CIs) per GPU; here GPUs 0-7. The spot checks below are lines quoted
from real files (the guide; nvidia-container-toolkit's internal/nvcaps comment).
"""

from __future__ import annotations

import re

import socket
import textwrap
from pathlib import Path

import pytest

from migd import cli, sim, slurm
from migd.errors import MigdError

MINORS = Path(__file__).parent / "data" / "mig-minors"
NODE = socket.gethostname().split(".", 1)[0]
CONFIG = textwrap.dedent("""
    [[gpu]]
    select = 0
    mig = true
    instances = [{ profile = "3g", name = "train" }, "2g", "1g", "1g"]

    [[gpu]]
    select = 1
    mig = true
    instances = [{ profile = "3g.20gb", compute = ["1c", "1c", "1c"] }, "4g"]
""")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_MIG_MINORS", str(MINORS))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    yield
    sim.uninstall()


@pytest.fixture
def host(tmp_path):
    (tmp_path / "migd.toml").write_text(CONFIG)
    return {"state": str(tmp_path / "state.json"), "config": str(tmp_path / "migd.toml")}


def migd(capsys, host, *args):
    code = cli.main(["--simulate", "dgx-a100", "--sim-state", host["state"], "--config", host["config"], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- names and minors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu, profile, expected", [
    ("NVIDIA A100-SXM4-40GB", "3g.20gb", "nvidia_a100_3g.20gb"),  # gres.shtml's example
    ("NVIDIA A100-SXM4-40GB", "1c.3g.20gb", "nvidia_a100_1c.3g.20gb"),  # a CI smaller than its GI
    ("NVIDIA H100 80GB HBM3", "1g.10gb+me", "nvidia_h100_80gb_hbm3_1g.10gb+me"),  # no "-": nothing cut
    ("NVIDIA H100 NVL", "3g.47gb", "nvidia_h100_nvl_3g.47gb"),
    ("NVIDIA A30", "1g.6gb", "nvidia_a30_1g.6gb"),
])
def test_mig_type_is_what_autodetect_nvml_derives(gpu, profile, expected):
    assert slurm.mig_type(gpu, profile) == expected


def test_whole_gpu_type_keeps_the_full_name():
    assert slurm.gpu_type("NVIDIA A100-SXM4-40GB") == "nvidia_a100-sxm4-40gb"


def test_mig_minors_fixture_has_the_documented_lines():
    table = slurm.read_mig_minors(str(MINORS))
    documented = {"config": 1, "monitor": 2, "gpu0/gi0/access": 3, "gpu0/gi0/ci0/access": 4,
                  "gpu0/gi0/ci1/access": 5, "gpu0/gi0/ci2/access": 6, "gpu3/gi3/ci3/access": 439,
                  "gpu3/gi3/ci5/access": 441, "gpu6/gi11/ci7/access": 920}
    assert {k: table[k] for k in documented} == documented


def test_mig_minors_absent_or_malformed_is_an_error_never_an_empty_table(tmp_path):
    with pytest.raises(MigdError, match=r"nope: cannot read the MIG capability minors \(No such file"):
        slurm.read_mig_minors(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.write_text("config 1\ngpu0/gi0/access\n")
    with pytest.raises(MigdError, match=r"bad:2: expected '<capability> <minor>', found 'gpu0/gi0/access'"):
        slurm.read_mig_minors(str(bad))


# --- through the CLI ----------------------------------------------------------------------------------------------


def _expected_live() -> str:
    def mig(gpu: int, t: str, gi: int, ci: int) -> str:
        base = 3 + gpu * 135 + gi * 9  # the fixture's table: gpu<g>/gi<gi>/access, then its 8 CIs
        return (f"NodeName={NODE} AutoDetect=off Name=gpu Type=nvidia_a100_{t} MultipleFiles=/dev/nvidia{gpu},"
                f"/dev/nvidia-caps/nvidia-cap{base},/dev/nvidia-caps/nvidia-cap{base + 1 + ci}")

    # GI ids as the (simulated) driver numbers them: 2g at 0:2 -> 3, 1g at 2:1 -> 9, at 3:1 -> 10, 3g/4g at
    # 4:4 -> 2, at 0:4 -> 1 (`migd status` shows them); lines in MIG device order (by placement).
    lines = [
        f"# Slurm GRES of {NODE} for the live MIG layout (`migd export --format slurm`); types as AutoDetect=nvml "
        "names them.",
        "# slurm.conf (GresTypes=gpu; keep the node's other settings):",
        f"NodeName={NODE} Gres=gpu:nvidia_a100_2g.10gb:1,gpu:nvidia_a100_1g.5gb:2,gpu:nvidia_a100_3g.20gb:1,"
        "gpu:nvidia_a100_4g.20gb:1,gpu:nvidia_a100_1c.3g.20gb:3,gpu:nvidia_a100-sxm4-40gb:6",
        "# gres.conf: either `AutoDetect=nvml` alone (slurmd finds these devices itself), or these lines:",
        mig(0, "2g.10gb", 3, 0), mig(0, "1g.5gb", 9, 0), mig(0, "1g.5gb", 10, 0), mig(0, "3g.20gb", 2, 0),
        mig(1, "4g.20gb", 1, 0), mig(1, "1c.3g.20gb", 2, 0), mig(1, "1c.3g.20gb", 2, 1), mig(1, "1c.3g.20gb", 2, 2),
    ] + [f"NodeName={NODE} AutoDetect=off Name=gpu Type=nvidia_a100-sxm4-40gb File=/dev/nvidia{g}" for g in range(2, 8)]
    return "\n".join(lines) + "\n"


def test_export_slurm_lists_the_live_layout_with_autodetect_names_and_cap_files(capsys, host):
    code, out, err = migd(capsys, host, "apply")
    assert code == 0, out + err
    code, out, err = migd(capsys, host, "status")
    lines = out.splitlines()  # the GI ids the expected minors use: under each profile in its grid box
    for profile, gi in (("2g.10gb", "GI 3"), ("4g.20gb", "GI 1")):
        row = next(i for i, line in enumerate(lines) if re.search(rf"[|│]{profile} ", line))
        assert lines[row + 1][lines[row].index(profile):].startswith(gi), out
    code, out, err = migd(capsys, host, "export", "--format", "slurm")
    assert (code, err) == (0, "")
    assert out == _expected_live()
    assert out.count("nvidia-cap1") and "/dev/nvidia-caps/nvidia-cap30," in out  # gpu0/gi3/access is 30
    code, toml, _ = migd(capsys, host, "export")  # the default format is still the migd.toml
    assert code == 0 and toml.startswith("# Exported by `migd export`")


def test_export_slurm_declared_gives_the_same_gres_before_anything_is_applied(capsys, host):
    code, out, err = migd(capsys, host, "export", "--format", "slurm", "--declared")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"# Slurm GRES of {NODE} for the layout {host['config']} declares (`migd export --format slurm`); types "
        "as AutoDetect=nvml names them.",
        "# slurm.conf (GresTypes=gpu; keep the node's other settings):",
        _expected_live().splitlines()[2],  # the same Gres= as the live layout will have once applied
        "# gres.conf: a MIG device's files depend on the GPU instance IDs the driver assigns when it creates",
        "# it, so they are known only once the layout exists: let slurmd detect them (it starts after",
        "# migd.service), or run `migd export --format slurm` then.",
        f"NodeName={NODE} AutoDetect=nvml",
    ]
    code, live, _ = migd(capsys, host, "export", "--format", "slurm")
    assert code == 0 and "Gres=gpu:nvidia_a100-sxm4-40gb:8\n" in live  # fresh GPUs: MIG off
    assert migd(capsys, host, "apply")[0] == 0
    code, live, _ = migd(capsys, host, "export", "--format", "slurm")
    assert code == 0 and live.splitlines()[2] == out.splitlines()[2]  # the declared Gres= is what appeared


def test_export_slurm_declared_needs_no_minors_and_names_config_errors(capsys, host, monkeypatch, tmp_path):
    monkeypatch.setenv("MIGD_MIG_MINORS", str(tmp_path / "absent"))
    assert migd(capsys, host, "export", "--format", "slurm", "--declared")[0] == 0
    Path(host["config"]).write_text(CONFIG.replace('"4g"', '"4g", "4g"'))
    code, out, err = migd(capsys, host, "export", "--format", "slurm", "--declared")
    assert code == 2 and out == "" and "migd.toml:10: [[gpu]] #2 instances: needs 11 compute slices" in err, err


def test_export_slurm_refuses_without_the_minors_never_guesses(capsys, host, monkeypatch, tmp_path):
    assert migd(capsys, host, "apply")[0] == 0
    monkeypatch.setenv("MIGD_MIG_MINORS", str(tmp_path / "absent"))
    code, out, err = migd(capsys, host, "export", "--format", "slurm")
    assert code == 1 and out == "" and "absent: cannot read the MIG capability minors" in err, err
    partial = tmp_path / "partial"
    partial.write_text("".join(line + "\n" for line in MINORS.read_text().splitlines()
                               if line.split()[0] != "gpu1/gi2/ci1/access"))
    monkeypatch.setenv("MIGD_MIG_MINORS", str(partial))
    code, out, err = migd(capsys, host, "export", "--format", "slurm")
    assert code == 1 and out == "" and "GPU 1: /proc/driver/nvidia-caps/mig-minors has no line for " \
        "gpu1/gi2/ci1/access: refusing to guess" in err, err


def test_export_slurm_mig_on_without_compute_instances_is_the_whole_gpu_like_slurm(capsys, host, tmp_path):
    Path(host["config"]).write_text('[[gpu]]\nselect = 0\nmig = true\ninstances = [{ profile = "7g", compute = [] }]\n')
    assert migd(capsys, host, "apply")[0] == 0
    code, out, err = migd(capsys, host, "export", "--format", "slurm")
    assert code == 0, err
    assert (f"# GPU 0: MIG is on but there is no MIG device (no compute instance): slurmd lists the whole GPU, "
            f"which no CUDA job can use\nNodeName={NODE} AutoDetect=off Name=gpu Type=nvidia_a100-sxm4-40gb "
            "File=/dev/nvidia0\n") in out


def test_export_declared_needs_format_slurm(capsys, host):
    code, out, err = migd(capsys, host, "export", "--declared")
    assert code == 2 and out == "" and "--declared needs --format slurm" in err


def test_readme_slurm_example_is_what_migd_prints(capsys, host, monkeypatch):
    """README "Using the layout": the console block is migd's own output (one A100 with the config's GPU 0 layout)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("$ migd export --format slurm\n", 1)[1].split("```", 1)[0]
    shown = [line.replace("node01", NODE) for line in block.splitlines() if line != "..."]
    Path(host["config"]).write_text(CONFIG.split("[[gpu]]\nselect = 1", 1)[0])
    code = cli.main(["--simulate", "a100-40gb", "--sim-state", host["state"], "--config", host["config"], "apply"])
    assert code == 0
    capsys.readouterr()
    code = cli.main(["--simulate", "a100-40gb", "--sim-state", host["state"], "--config", host["config"],
                     "export", "--format", "slurm"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and shown == out[:len(shown)], (shown, out)


def test_export_slurm_on_a_simulated_host_reads_its_own_mig_minors(capsys, host, monkeypatch):
    """Under --simulate the simulated host provides /proc/driver/nvidia-caps/mig-minors, laid out as the driver
    writes it: for 8 GPUs byte for byte the real file in tests/data."""
    monkeypatch.delenv("MIGD_MIG_MINORS")
    assert migd(capsys, host, "apply")[0] == 0
    code, out, err = migd(capsys, host, "export", "--format", "slurm")
    assert code == 0, err
    assert "MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap" in out
    simulated = sim.SimHost.create("dgx-a100", host["state"]).mig_minors_path()
    assert Path(simulated).read_text() == MINORS.read_text()
    assert not simulated.startswith("/proc")
