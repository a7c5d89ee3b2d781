"""The 2026 models: Universal MIG (RTX PRO 6000), graphics capability through the v3 struct, media-engine rules,
compute-instance tables from NVIDIA's documented sets, drifting profile names, hosts and the shipped examples.

Expected values are transcribed from ../shared/reference/mig-models-2026.md and nvml-mig.md, not from the catalog.
"""

from __future__ import annotations

import ctypes
import json
import textwrap
from pathlib import Path

import pynvml as N
import pytest

from migd import cli, sim
from migd.sim import make_backend
from migd.model import GpuProfile
from migd.profiles import derive_compute_profiles, resolve_gpu_profile
from migd.sim.catalog import MODELS, compute_profiles, parse_host_spec
from migd.sim.host import SimHost

from conftest import ROOT

EXAMPLES = ROOT / "etc" / "examples"
# the reference's RTX PRO 6000 table: ID -> name; "+gfx" ones are graphics-capable
RTX_IDS = {14: "1g.24gb", 21: "1g.24gb+me", 47: "1g.24gb+gfx", 65: "1g.24gb+me.all", 67: "1g.24gb-me",
           5: "2g.48gb", 35: "2g.48gb+gfx", 64: "2g.48gb+me.all", 66: "2g.48gb-me", 0: "4g.96gb", 32: "4g.96gb+gfx"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    yield
    sim.uninstall()


def run(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path, text: str) -> str:
    path = tmp_path / "migd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- hosts and the shipped examples -------------------------------------------------------------------------------

def test_new_hosts():
    assert [m.key for m in parse_host_spec("dgx-b200")] == ["b200"] * 8
    assert [m.key for m in parse_host_spec("dgx-h200")] == ["h200"] * 8
    assert [m.key for m in parse_host_spec("hgx-b300")] == ["b300"] * 8
    assert [m.key for m in parse_host_spec("gb200-tray")] == ["gb200"] * 4
    assert [m.key for m in parse_host_spec("rtx-pro-server")] == ["rtx-pro-6000"] * 8


@pytest.mark.parametrize("example, host", [("dgx-b200.toml", "dgx-b200"), ("gb200-tray.toml", "gb200-tray"),
                                           ("rtx-pro-server.toml", "rtx-pro-server")])
def test_example_validates_plans_and_applies_on_its_host(capsys, tmp_path, example, host):
    conf = str(EXAMPLES / example)
    state = str(tmp_path / "sim" / "state.json")
    (tmp_path / "sim").mkdir()
    code, out, err = run(capsys, "--simulate", host, "-c", conf, "validate")
    assert code == 0 and "layout fits every selected GPU" in out, out + err
    code, out, err = run(capsys, "--simulate", host, "-c", conf, "plan")
    assert code == 0 and "create GPU instance" in out, out + err
    code, out, err = run(capsys, "--simulate", host, "--sim-state", state, "-c", conf, "apply")
    assert code == 0, out + err
    code, out, err = run(capsys, "--simulate", host, "--sim-state", state, "-c", conf, "check")
    assert code == 0, out + err
    if host == "rtx-pro-server":
        code, out, _ = run(capsys, "--simulate", host, "--sim-state", state, "-c", conf, "status", "--json")
        gpu0 = json.loads(out)["gpus"][0]
        assert [(i["profile"], i["graphics"]) for i in gpu0["instances"]] == [
            ("2g.48gb+gfx", True), ("1g.24gb+gfx", True), ("1g.24gb+gfx", True)]
        gpu4 = json.loads(out)["gpus"][4]
        assert sorted(i["profile"] for i in gpu4["instances"]) == ["1g.24gb+me.all", "1g.24gb-me", "2g.48gb-me"]
        assert not any(i["graphics"] for i in gpu4["instances"])


# --- Universal MIG: profiles, graphics capability --------------------------------------------------------------------

def test_profiles_shows_the_universal_mig_table(capsys):
    code, out, _ = run(capsys, "--simulate", "rtx-pro-6000", "profiles", "--json")
    assert code == 0
    profiles = json.loads(out)["gpus"][0]["profiles"]
    assert {p["id"]: p["name"] for p in profiles} == RTX_IDS
    assert {p["name"] for p in profiles if p["graphics"]} == {"1g.24gb+gfx", "2g.48gb+gfx", "4g.96gb+gfx"}
    code, out, _ = run(capsys, "--simulate", "rtx-pro-6000", "profiles")
    assert "GFX" in out.splitlines()[1]
    gfx_lines = [line for line in out.splitlines() if "+gfx" in line and "compute:" not in line]
    assert len(gfx_lines) == 3 and all(" yes " in line for line in gfx_lines)
    code, out, _ = run(capsys, "--simulate", "h100-80gb", "profiles", "--json")
    assert not any(p["graphics"] for p in json.loads(out)["gpus"][0]["profiles"])


def _v3_struct():
    from migd.backend.nvml import _GpuInstanceProfileInfoV3

    return _GpuInstanceProfileInfoV3()


def test_v3_struct_matches_nvml_h():
    info = _v3_struct()
    # nvml.h: NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 3) = sizeof | 3 << 24; capabilities after name[96]
    assert info.version == 0x03000098 and ctypes.sizeof(info) == 152
    assert type(info).capabilities.offset == 144 and type(info).memorySizeMB.offset == 40


def test_graphics_bit_through_v3_and_the_fallback_without_it(sim_backend):
    backend = sim_backend("rtx-pro-6000")
    with_v3 = {p.id: p.graphics for p in backend.gpus()[0].profiles}
    assert {pid for pid, g in with_v3.items() if g} == {47, 35, 32}
    # the raw call: v3 struct in, capabilities out (GFX = 0x2)
    h = N.nvmlDeviceGetHandleByIndex(0)
    info = _v3_struct()
    fn = N._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstanceProfileInfoV")
    assert fn(h, ctypes.c_uint(N.NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX), ctypes.byref(info)) == 0
    # R580 (measured on an H200) leaves v3's name empty: migd takes names from v2, v3 only for capabilities
    assert info.id == 47 and info.capabilities == 0x2 and info.name == b""
    assert {p.id: p.name for p in backend.gpus()[0].profiles}[47] == "1g.24gb+gfx"
    backend.close()
    sim.uninstall()
    # a driver without the v3 struct (before R545): ARGUMENT_VERSION_MISMATCH; migd falls back to the spelling
    host = SimHost.create("rtx-pro-6000")
    host.state["profile_info_v3"] = False
    sim.install(host)
    from migd.backend.nvml import NvmlBackend

    old = NvmlBackend(read_only=True)
    old.open()
    try:
        info = _v3_struct()
        fn = N._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstanceProfileInfoV")
        assert fn(N.nvmlDeviceGetHandleByIndex(0), ctypes.c_uint(10), ctypes.byref(info)) == 25
        assert {p.id: p.graphics for p in old.gpus()[0].profiles} == with_v3
    finally:
        old.close()


# --- Universal MIG: the +me.all rule, in the simulator and in the planner ----------------------------------------

def _create(h, pid: int, start: int, size: int):
    p = N.c_nvmlGpuInstancePlacement_t()
    p.start, p.size = start, size
    return N.nvmlDeviceCreateGpuInstanceWithPlacement(h, pid, ctypes.byref(p))


def test_simulator_refuses_what_the_driver_refuses_beside_me_all(sim_backend):
    sim_backend("rtx-pro-6000")
    h = N.nvmlDeviceGetHandleByIndex(0)
    assert N.nvmlDeviceSetMigMode(h, 1) == 0
    me_all = _create(h, 65, 0, 1)
    for pid, start, size in ((14, 1, 1), (47, 1, 1), (21, 1, 1), (5, 2, 2)):  # media engines: refused
        with pytest.raises(N.NVMLError_InsufficientResources):
            _create(h, pid, start, size)
    _create(h, 67, 1, 1)  # -me: fits
    two_me = _create(h, 66, 2, 2)
    N.nvmlGpuInstanceDestroy(me_all)
    N.nvmlGpuInstanceDestroy(two_me)
    plain = _create(h, 14, 0, 1)
    with pytest.raises(N.NVMLError_InsufficientResources):  # and the other way round: slot 3 is free
        _create(h, 65, 3, 1)
    N.nvmlGpuInstanceDestroy(plain)
    _create(h, 65, 3, 1)


@pytest.mark.parametrize("instances, ok", [
    ('["1g+me.all", "1g-me", "2g-me"]', True),
    ('["2g+me.all", "2g-me"]', True),
    ('["1g+me.all", "1g"]', False),
    ('["1g+gfx", "1g+me.all"]', False),
    ('["2g+me.all", "1g+gfx", "1g"]', False),
    ('["1g+gfx", "1g+gfx", "2g+gfx"]', True),
    ('["4g+gfx"]', True),
])
def test_planner_refuses_me_all_at_validate_time(capsys, tmp_path, instances, ok):
    conf = write(tmp_path, f"""
        [[gpu]]
        select = "all"
        mig = true
        instances = {instances}
    """)
    code, out, err = run(capsys, "--simulate", "rtx-pro-6000", "-c", conf, "validate")
    if ok:
        assert code == 0, out + err
        return
    assert code == 2
    assert "takes all of the GPU's media engines: beside it only -me profiles (no media engines) fit" in err
    assert f"{conf}:" in err and "[[gpu]] #1 instances" in err


# --- spellings and drifting names ------------------------------------------------------------------------------

def test_model_independent_spellings_with_attributes():
    infos = {}
    for key in ("rtx-pro-6000", "h100-80gb", "b200"):
        b = make_backend(simulate=key)
        b.open()
        infos[key] = b.gpus()[0]
        b.close()
        sim.uninstall()
    rtx = infos["rtx-pro-6000"]
    for text, pid in (("1g+gfx", 47), ("2g-me", 66), ("1g+me.all", 65), ("2g+me.all", 64), ("4g+gfx", 32),
                      ("1g+me", 21), ("1g", 14), ("2g", 5), ("4g", 0), ("MIG 2g+gfx", 35)):
        p, why = resolve_gpu_profile(text, rtx)
        assert p is not None and p.id == pid, (text, why)
    assert resolve_gpu_profile("1g+me", infos["h100-80gb"])[0].id == 20
    assert resolve_gpu_profile("1g+me", infos["b200"])[0].name == "1g.23gb+me"
    p, why = resolve_gpu_profile("1g+gfx", infos["h100-80gb"])
    assert p is None and "H100 80GB HBM3 has no 1g+gfx profile" in why


@pytest.mark.parametrize("spec, written, offered, advice", [
    ("gb200", "1g.24gb", "1g.23gb (ID 19)", "write '1g', which never drifts"),  # pre-production boards' name
    ("gb200", "3g.95gb", "3g.93gb (ID 9)", "write '3g', which never drifts"),
    ("a100-80gb", "3g.39gb", "3g.40gb (ID 9)", "write '3g', which never drifts"),  # mig-parted#31
    ("b200", "1g.46gb", "1g.45gb (ID 15)", "write '1g.45gb' (or its profile ID 15)"),  # no generic spelling
    ("rtx-pro-6000", "1g.23gb+gfx", "1g.24gb+gfx (ID 47)", "write '1g+gfx', which never drifts"),
])
def test_drifted_profile_names_suggest_what_this_driver_offers(capsys, tmp_path, spec, written, offered, advice):
    conf = write(tmp_path, f"""
        [[gpu]]
        select = "all"
        mig = true
        instances = ["{written}"]
    """)
    code, out, err = run(capsys, "--simulate", spec, "-c", conf, "validate")
    assert code == 2, out + err
    assert f"has no profile '{written}', but this driver offers {offered}" in err
    assert advice in err
    assert f"{conf}:5" in err


def test_unrelated_names_are_not_called_drift(capsys, tmp_path):
    conf = write(tmp_path, """
        [[gpu]]
        select = "all"
        mig = true
        instances = ["1g.24gb"]
    """)
    code, _, err = run(capsys, "--simulate", "h100-80gb", "-c", conf, "validate")
    assert code == 2 and "this driver offers" not in err and "it has 1g.10gb (ID 19)" in err


# --- RTX PRO workstation editions: graphics display mode --------------------------------------------------------

def test_mig_enable_in_graphics_display_mode_says_how_to_fix(capsys, tmp_path):
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    host = SimHost.create("rtx-pro-6000", str(state))
    host.gpus[0]["display_mode"] = "graphics"
    host.save()
    conf = write(tmp_path, """
        [[gpu]]
        select = "all"
        mig = true
        instances = ["4g"]
    """)
    code, out, err = run(capsys, "--sim-state", str(state), "-c", conf, "apply")
    assert code == 1
    text = out + err
    assert "nvmlDeviceSetMigMode failed: NOT_SUPPORTED" in text
    assert "compute display mode" in text and "displaymodeselector --gpumode compute" in text
    assert SimHost.create("rtx-pro-6000", str(state)).gpus[0]["mig"] == [0, 0]


# --- compute instances: the simulator's tables are data; the planner's derivation must agree -----------------------

_LCIP = {  # reference §2.3, transcribed: GI slices -> {CI slices: max instances}
    1: {1: 1}, 2: {1: 2, 2: 1}, 3: {1: 3, 2: 1, 3: 1}, 4: {1: 4, 2: 2, 4: 1}, 7: {1: 7, 2: 3, 3: 2, 4: 1, 7: 1}}


@pytest.mark.parametrize("key", sorted(MODELS))
def test_derived_compute_profiles_equal_the_documented_tables(key):
    model = MODELS[key]
    for info in model.gi_profiles.values():
        table = compute_profiles(model, info)
        assert {c["sliceCount"]: c["instanceCount"] for c in table.values()} == _LCIP[info["sliceCount"]]
        gp = GpuProfile(index=0, id=info["id"], name=info["name"][4:], slices=info["sliceCount"], instance_count=1,
                        memory_mb=info["memorySizeMB"], multiprocessors=info["multiprocessorCount"], copy_engines=0,
                        decoders=0, encoders=0, jpegs=0, ofas=0, placements=())
        derived = {cp.index: (cp.id, cp.name, cp.slices, cp.instance_count,
                              [(p.start, p.size) for p in cp.placements]) for cp in derive_compute_profiles(gp)}
        data = {idx: (c["id"], c["name"][4:], c["sliceCount"], c["instanceCount"], c["placements"])
                for idx, c in table.items()}
        assert derived == data, (key, info["name"])


def test_simulator_no_longer_uses_the_planners_derivation():
    source = (Path(sim.__file__).parent / "catalog.py").read_text() + (Path(sim.__file__).parent / "host.py").read_text()
    assert "derive_compute_profiles" not in source
