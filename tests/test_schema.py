"""One JSON schema for `status --json`, `check --json`, `profiles --json` and state.json, as README "JSON output"
documents it: every verb's real output (simulated GPUs, through the CLI) is checked against the spec below, and
the spec against the README."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

import reliability as R
from migd.sim.host import SimHost

INT, STR, BOOL, NULL = int, str, bool, type(None)
PLACEMENT = {"start": INT, "size": INT}
COMPUTE = {"ci_id": INT, "profile": (STR, NULL), "profile_id": INT, "placement": PLACEMENT, "uuid": STR, "pids": [INT]}
INSTANCE = {"gi_id": INT, "profile": (STR, NULL), "profile_id": INT, "graphics": (BOOL, NULL),
            "placement": PLACEMENT, "uuid": (STR, NULL),
            "name": (STR, NULL), "compute": [COMPUTE]}
GPU = {"index": INT, "uuid": STR, "name": STR, "pci_bus_id": STR, "lost": BOOL, "architecture": STR,
       "mig_capable": BOOL, "mig": {"current": (BOOL, NULL), "pending": (BOOL, NULL)}, "persistence": (BOOL, NULL),
       "processes": [INT], "instances": [INSTANCE]}
PROFILE = {"index": INT, "id": INT, "name": STR, "slices": INT, "instance_count": INT, "memory_mb": INT,
           "multiprocessors": INT, "copy_engines": INT, "decoders": INT, "encoders": INT, "jpegs": INT, "ofas": INT,
           "graphics": BOOL, "placements": [PLACEMENT], "compute": [STR]}
OUTCOMES = ("unchanged", "applied", "pending", "refused", "failed", "rolled_back", "lost")
STATUSES = ("ok", "drift", "pending", "lost", "error")

SCHEMA = {
    "status": {"simulated": BOOL, "driver_version": STR, "backend": STR, "gpus": [GPU]},
    "check": {"simulated": BOOL, "status": STATUSES, "gpus": [
        {"index": INT, "status": STATUSES, "expected": STR, "found": STR, "diff": STR}]},
    "profiles": {"simulated": BOOL, "gpus": [{"index": INT, "name": STR, "profiles": [PROFILE]}]},
    "state.json": {"simulated": BOOL, "applied_at": STR, "config": STR, "boot_id": (STR, NULL), "gpus": [
        dict(GPU, outcome=OUTCOMES + (None,), message=STR)]},
}


def conforms(doc, spec, where="$"):
    """Problems of `doc` against `spec`: a dict (exactly these keys), [item spec], a type, a tuple of types or of
    allowed values."""
    if isinstance(spec, dict):
        if not isinstance(doc, dict):
            return [f"{where}: expected an object, got {doc!r}"]
        problems = [f"{where}: keys {sorted(set(doc) ^ set(spec))} differ"] if set(doc) != set(spec) else []
        for key, sub in spec.items():
            if key in doc:
                problems += conforms(doc[key], sub, f"{where}.{key}")
        return problems
    if isinstance(spec, list):
        if not isinstance(doc, list):
            return [f"{where}: expected a list, got {doc!r}"]
        return [p for i, item in enumerate(doc) for p in conforms(item, spec[0], f"{where}[{i}]")]
    if isinstance(spec, tuple) and spec and not isinstance(spec[0], type):
        return [] if doc in spec else [f"{where}: {doc!r} not one of {spec}"]
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(doc, bool) and BOOL not in types:
        return [f"{where}: {doc!r} is a bool"]
    return [] if isinstance(doc, types) else [f"{where}: {doc!r} is not {types}"]


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_SIM_FAULTS", "MIGD_READ_ONLY", "MIGD_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state.json"
    SimHost.create("h100-80gb:2,a100-40gb", str(state))
    conf = tmp_path / "migd.toml"
    conf.write_text(textwrap.dedent("""
        [[gpu]]
        select = 0
        mig = true
        instances = [{ profile = "4g", name = "train", compute = ["2c", "2c"] }, "2g", "1g"]
        [[gpu]]
        select = 2
        mig = true
        instances = ["3g"]
    """))
    return {"state": str(state), "config": str(conf), "run": tmp_path / "run"}


def run(host, *args):
    r = R.run_cli(["--sim-state", host["state"], "--config", host["config"], *args])
    assert not r.traceback, r.err
    return r


def test_every_verb_and_state_json_follow_the_one_schema(host):
    docs = {"check-before": ("check", json.loads(run(host, "check", "--json").out))}
    assert run(host, "apply").code == 0
    s = SimHost.create("", host["state"])
    s.gpus[1]["lost"] = True  # a lost GPU and an unmanaged one in every document
    s.save()
    docs["status"] = ("status", json.loads(run(host, "status", "--json").out))
    docs["check"] = ("check", json.loads(run(host, "check", "--json").out))
    docs["profiles"] = ("profiles", json.loads(run(host, "profiles", "--json").out))
    docs["state.json"] = ("state.json", json.loads((host["run"] / "state.json").read_text()))
    for name, (kind, doc) in docs.items():
        assert conforms(doc, SCHEMA[kind]) == [], (name, conforms(doc, SCHEMA[kind]))
        assert doc["simulated"] is True
    # the same GPU reads the same in status and state.json (but for this apply's outcome)
    status_gpu0 = docs["status"][1]["gpus"][0]
    state_gpu0 = dict(docs["state.json"][1]["gpus"][0])
    assert (state_gpu0.pop("outcome"), state_gpu0.pop("message")) == (
        "applied", "GPU 0: applied 9 changes (MIG mode on, 3 GPU instances created)")
    assert state_gpu0 == status_gpu0
    assert sorted(filter(None, (i["name"] for i in status_gpu0["instances"]))) == ["train"]
    assert [g["status"] for g in docs["check"][1]["gpus"]] == ["ok", "lost", "ok"]
    assert docs["status"][1]["gpus"][1]["lost"] is True and docs["status"][1]["gpus"][1]["mig"]["current"] is None


def test_readme_documents_exactly_these_keys():
    readme = (R.ROOT / "README.md").read_text()
    section = readme.split("## JSON output", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r'"(\w+)":', section))

    def keys(spec):
        if isinstance(spec, dict):
            return set(spec) | {k for v in spec.values() for k in keys(v)}
        if isinstance(spec, list):
            return keys(spec[0])
        return set()

    expected = set().union(*(keys(s) for s in SCHEMA.values()))
    assert documented == expected, (sorted(documented - expected), sorted(expected - documented))
    for verb in ("status --json", "check --json", "profiles --json", "state.json"):
        assert verb in section


def test_plain_json_module_has_no_second_serializer():
    """One serializer: json.dumps of a document appears only in schema.py (and the TOML export's quoting)."""
    src = Path(R.ROOT / "src" / "migd")
    users = sorted(p.name for p in src.glob("*.py") if "json.dumps({" in p.read_text())
    assert users == [], users
