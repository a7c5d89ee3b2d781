"""Large simulated hosts (issue 13, point 12): `--simulate h100-80gb:17` wrote a state file it then refused (PCI
bus 0x107); every host up to the 64-GPU maximum now gets distinct, valid bus ids, and above it a clear error."""

from __future__ import annotations

import json
import re

import pytest

import reliability as R
from migd.sim.host import load_state

BUS_ID = re.compile(r"^00000000:[0-9A-F]{2}:00\.0$")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)


def test_seventeen_gpus_through_a_state_file(tmp_path):
    state = str(tmp_path / "state.json")
    base = ["--simulate", "h100-80gb:17", "--sim-state", state]
    for _ in range(2):  # the first run writes the state file, the second reads it back
        r = R.run_cli([*base, "status", "--json"])
        assert r.code == 0 and not r.traceback, r.err
    buses = [g["pci_bus_id"] for g in load_state(state)["gpus"]]
    assert len(set(buses)) == 17 and all(BUS_ID.match(b) for b in buses), buses
    assert buses[:2] == ["00000000:07:00.0", "00000000:17:00.0"]  # the first 16 as before
    # the 17th GPU is selected by its bus id and applied
    conf = R.write_config(tmp_path / "migd.toml", f'[[gpu]]\nselect = "{buses[16]}"\nmig = true\ninstances = ["7g"]\n')
    r = R.run_cli([*base, "-c", conf, "apply"])
    assert r.code == 0, r.err
    assert [len(g["gis"]) for g in load_state(state)["gpus"]] == [0] * 16 + [1]
    r = R.run_cli([*base, "-c", conf, "validate"])
    assert f"GPU 16 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({conf}:1, select = {buses[16]})" in r.out


def test_the_most_gpus_a_simulated_host_has_and_one_more(tmp_path):
    state = str(tmp_path / "state.json")
    r = R.run_cli(["--simulate", "h100-80gb:40,a30:24", "--sim-state", state, "status", "--json"])
    assert r.code == 0, r.err
    gpus = json.loads(R.run_cli(["--sim-state", state, "status", "--json"]).out)["gpus"]
    buses = [g["pci_bus_id"] for g in gpus]
    assert len(gpus) == 64 and len(set(buses)) == 64 and all(BUS_ID.match(b) for b in buses)
    for spec, message in (("h100-80gb:65", "bad GPU count in 'h100-80gb:65': 1 to 64"),
                          ("h100-80gb:40,a30:25", "65 GPUs in 'h100-80gb:40,a30:25': a simulated host has 1 to 64")):
        r = R.run_cli(["--simulate", spec, "status"])
        assert r.code == 2 and not r.traceback and message in r.err, r.err


def test_a_state_file_with_two_gpus_on_one_bus_is_refused(tmp_path):
    state = tmp_path / "state.json"
    assert R.run_cli(["--simulate", "h100-80gb:3", "--sim-state", str(state), "status"]).code == 0
    data = json.loads(state.read_text())
    data["gpus"][2]["pci_bus_id"] = data["gpus"][0]["pci_bus_id"].lower()
    state.write_text(json.dumps(data))
    r = R.run_cli(["--sim-state", str(state), "status"])
    assert r.code == 2 and not r.traceback
    assert "gpus[2].pci_bus_id: '00000000:07:00.0' is also GPU 0's" in r.err, r.err
