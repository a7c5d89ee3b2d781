"""Read-only tests against a real NVIDIA GPU.

They run only with MIGD_READ_ONLY=1 (the backend then refuses every mutating NVML call before it reaches the
driver) and a loadable driver: `MIGD_READ_ONLY=1 pytest -m gpu`. Nothing here sets, creates, destroys or resets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gpu

READ_ONLY = os.environ.get("MIGD_READ_ONLY") == "1"


def _driver_present() -> bool:
    if not READ_ONLY:
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not _driver_present(), reason="needs MIGD_READ_ONLY=1 and an NVIDIA driver")


def migd(*args: str, config: str = "") -> subprocess.CompletedProcess:
    assert os.environ["MIGD_READ_ONLY"] == "1"
    env = dict(os.environ, MIGD_READ_ONLY="1")
    env.pop("MIGD_SIMULATE", None)
    env.pop("MIGD_SIM_STATE", None)
    cmd = [sys.executable, "-m", "migd.cli"] + (["--config", config] if config else []) + list(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def seven_instance_config(tmp_path):
    path = tmp_path / "migd.toml"
    path.write_text(textwrap.dedent("""
        [[gpu]]
        select = 0
        mig = true
        instances = { "1g" = 7 }
    """))
    return str(path)


@requires_gpu
def test_status_json_reads_the_real_gpu():
    r = migd("status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["backend"] == "nvml"
    gpu = data["gpus"][0]
    assert gpu["uuid"].startswith("GPU-") and gpu["name"].startswith("NVIDIA")
    assert set(gpu["mig"]) == {"current", "pending"}
    print(f"\nGPU 0: {gpu['name']} driver {data['driver_version']} MIG {gpu['mig']} instances {len(gpu['instances'])}")


def _pci_device_id(index: int = 0) -> int:
    """The GPU's PCI device ID (e.g. 0x233510DE), read-only through pynvml."""
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).pciDeviceId)
    finally:
        pynvml.nvmlShutdown()


@requires_gpu
def test_profiles_through_nvml_equal_the_simulated_model():
    """The profile table read through the nvml backend equals the simulated model with the same PCI device ID.

    Works for any GPU the simulator has a model of; skips only where it has none (and says which ID that is)."""
    from migd.backend.nvml import NvmlBackend
    from migd.sim.catalog import MODELS

    device_id = _pci_device_id(0)
    twins = [m for m in MODELS.values() if m.pci_device_id == device_id]
    real = NvmlBackend(read_only=True)
    real.open()
    try:
        info = real.gpus()[0]
    finally:
        real.close()
    if not twins:
        pytest.skip(f"no simulated model with PCI device ID {device_id:#010X} ({info.name})")
    model = twins[0]
    code = ("import sys, json; from migd._record import asdict; from migd.sim import make_backend; "
            "b = make_backend(simulate=sys.argv[1]); b.open(); print(json.dumps([asdict(p) for p in b.gpus()[0].profiles]))")
    sim = subprocess.run([sys.executable, "-c", code, model.key], capture_output=True, text=True, check=True)
    from migd._record import asdict

    real_profiles = json.loads(json.dumps([asdict(p) for p in info.profiles]))
    assert info.name == model.name
    assert real_profiles == json.loads(sim.stdout)
    print(f"\n{info.name} ({device_id:#010X}) = simulated {model.key}: {len(info.profiles)} profiles equal: "
          + ", ".join(f"{p.name} (ID {p.id})" for p in info.profiles))


@requires_gpu
def test_profiles_verb_lists_the_real_table():
    r = migd("profiles")
    assert r.returncode == 0, r.stderr
    assert "Profile" not in r.stderr
    for name in ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"):
        if "H100 80GB" in r.stdout:
            assert name in r.stdout


@requires_gpu
def test_plan_and_validate_against_the_real_gpu(seven_instance_config):
    v = migd("validate", config=seven_instance_config)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "GPU 0" in v.stdout and "[[gpu]] #1" in v.stdout
    p = migd("plan", config=seven_instance_config)
    assert p.returncode == 0, p.stdout + p.stderr
    creates = [line for line in p.stdout.splitlines() if "create GPU instance" in line]
    assert len(creates) == 7
    assert sorted(line.rsplit(" at ", 1)[1] for line in creates) == [f"{s}:1" for s in range(7)]
    print("\n" + p.stdout)


@requires_gpu
def test_check_reports_drift_without_changing_anything(seven_instance_config):
    before = migd("status", "--json")
    r = migd("check", config=seven_instance_config)
    assert r.returncode in (3, 4), r.stdout + r.stderr  # MIG is off on the test machine: drift
    after = migd("status", "--json")
    assert json.loads(before.stdout)["gpus"] == json.loads(after.stdout)["gpus"]
