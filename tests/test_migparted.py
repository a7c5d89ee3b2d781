"""`migd import --from mig-parted`: NVIDIA's shipped config-default.yaml (tests/data/mig-parted, see SOURCE there),
every named config converted and applied on each simulated GPU it targets, through the CLI as an admin runs it.

What a config means is worked out here from mig-parted's documented rules (api/spec/v1; assert.go's walk: every
entry matching a GPU applies in order, device-filter on the PCI device ID, devices "all" or indices), never from
migd's converter; the simulated GPUs' PCI IDs and profile names are the catalog's (recorded or documented data).
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import reliability as R

from migd import miniyaml
from migd.catalog import MODELS

DATA = Path(__file__).parent / "data" / "mig-parted"
DEFAULT = DATA / "config-default.yaml"
MIXED = """version: v1
mig-configs:
  edge-cases:
    - devices: [0, 1]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - device-filter: 0x20b010de        # lower case, one ID, unquoted (mig-parted reads it as text too)
      devices: all
      mig-enabled: false
"""


pytestmark = pytest.mark.usefixtures("cli_isolated")
run = R.cli_capsys


def _offered(model) -> set:
    return {p["name"][len("MIG "):] for p in model.gi_profiles.values()}


def _expected(entries, model, index):
    """mig-parted's rule: every entry matching GPU `index` applies, in order; the last one's layout stays."""
    out = None
    for e in entries:
        filters = e.get("device-filter")
        filters = filters if isinstance(filters, list) else [filters] if filters else []
        if filters and not any(int(f.split(":")[0], 16) == model.pci_device_id for f in filters):
            continue
        if e["devices"] != "all" and index not in e["devices"]:
            continue
        out = e
    return out


def test_reader_agrees_with_pyyaml_on_the_shipped_file():
    """The subset reader gives exactly what a full YAML parser gives for NVIDIA's file (PyYAML from the system
    Python, when it has one: migd's runtime does not depend on it)."""
    doc = miniyaml.parse(DEFAULT.read_text()).value
    assert doc["version"] == "v1" and len(doc["mig-configs"]) == 81
    assert doc["mig-configs"]["all-balanced"][0] == {"device-filter": ["0x294110DE"], "devices": "all",
                                                     "mig-enabled": True,
                                                     "mig-devices": {"1g.23gb": 2, "2g.47gb": 1, "3g.93gb": 1}}
    assert doc["mig-configs"]["all-enabled"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {}}]
    python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([python or "python3", "-c", "import yaml"], capture_output=True) if python else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no PyYAML in the system Python to compare with")
    full = subprocess.run([python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                          input=DEFAULT.read_text(), capture_output=True, text=True, check=True)
    assert json.loads(full.stdout) == doc


def test_every_shipped_config_applies_as_mig_parted_says(tmp_path, capsys):
    """Each of the 81 configs, on 2 simulated GPUs of each model it targets (its filter matches the model's PCI
    device ID, or it has none and the model offers its profile names): `migd import`, then `migd apply`, then
    `status --json` shows per GPU exactly the instance counts by profile that the YAML gives."""
    configs = miniyaml.parse(DEFAULT.read_text()).value["mig-configs"]
    applied, untargeted = 0, []
    for name, entries in configs.items():
        code, toml, err = run(capsys, "import", "--from", "mig-parted", DEFAULT, "--name", name)
        assert code == 0, err
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(toml)
        hits = 0
        for model in MODELS.values():
            expected = [_expected(entries, model, i) for i in (0, 1)]
            if any(e is None for e in expected) or any(
                    not set(e.get("mig-devices") or {}) <= _offered(model) for e in expected):
                continue
            hits += 1
            state = tmp_path / f"{name}-{model.key}.json"
            code, out, err = run(capsys, "--simulate", f"{model.key}:2", "--sim-state", state, "-c", cfg, "apply")
            assert code == 0, (name, model.key, out, err)
            code, out, _ = run(capsys, "--simulate", f"{model.key}:2", "--sim-state", state, "status", "--json")
            for gpu, want in zip(json.loads(out)["gpus"], expected):
                assert gpu["mig"]["current"] is want["mig-enabled"], (name, model.key)
                got = collections.Counter(i["profile"] for i in gpu["instances"])
                assert got == collections.Counter(want.get("mig-devices") or {}), (name, model.key, got)
            applied += 1
        if not hits:
            untargeted.append(name)
    # the configs for GPUs the simulator does not have (GB200 on newer drivers: 3g.95gb, 4g.95gb, 7g.189gb)
    assert untargeted == ["all-3g.95gb", "all-4g.95gb", "all-7g.189gb"]
    assert applied > 120
    print(f"\nmigd checks: mig-parted config-default.yaml: {len(configs) - len(untargeted)} of {len(configs)} "
          f"configs applied on every simulated model they target ({applied} config x model runs)")


def test_mixed_host_and_index_entries(tmp_path, capsys):
    """An index entry then a device-filter entry: GPUs 0-1 of a mixed host get 7 x 1g.10gb, except an A100-40GB
    among them, which the later filtered entry sets to MIG off (the last matching entry wins, as in mig-parted)."""
    src = tmp_path / "config.yaml"
    src.write_text(MIXED)
    code, toml, err = run(capsys, "import", "--from", "mig-parted", src)  # one config: no --name needed
    assert code == 0, err
    assert 'select = [0, 1]' in toml and 'select = ["0x20B010DE"]' in toml and "config.yaml:4" in toml
    cfg = tmp_path / "migd.toml"
    cfg.write_text(toml)
    state = tmp_path / "s.json"
    spec = "h100-80gb,a100-40gb,h100-80gb"
    code, out, err = run(capsys, "--simulate", spec, "--sim-state", state, "-c", cfg, "apply")
    assert code == 0, out + err
    code, out, _ = run(capsys, "--simulate", spec, "--sim-state", state, "status", "--json")
    gpus = json.loads(out)["gpus"]
    assert [g["mig"]["current"] for g in gpus] == [True, False, False]
    assert [i["profile"] for i in gpus[0]["instances"]] == ["1g.10gb"] * 7


@pytest.mark.parametrize("yaml, where, says", [
    ("    - device-filter: [\"0x233010DE\"]\n      devices: [0]\n      mig-enabled: false\n",
     "config.yaml:5: mig-configs.c[0].devices", "a device-filter together with a list of GPU indices"),
    ("    - devices: all\n      mig-enabled: true\n      mig-devices:\n        \"1c.3g.40gb\": 3\n",
     "config.yaml:7: mig-configs.c[0].mig-devices.1c.3g.40gb", "compute-instance profile '1c.3g.40gb' as a count"),
    ("    - devices: all\n      mig-enabled: false\n      mig-devices: {\"1g.10gb\": 1}\n",
     "config.yaml:6: mig-configs.c[0].mig-devices", "mig-devices with mig-enabled: false"),
    ("    - device-filter: H100\n      devices: all\n      mig-enabled: false\n",
     "config.yaml:4: mig-configs.c[0].device-filter", "must be PCI device IDs"),
    ("    - devices: all\n      mig-enabled: yes please\n", "config.yaml:5: mig-configs.c[0].mig-enabled",
     "not true/false"),
    ("    - devices: all\n      mig-enabled: true\n      mig-devices: &anchor {}\n", "config.yaml:6",
     "anchors, aliases, tags"),
])
def test_what_migd_cannot_express_is_an_error_naming_the_yaml_path(tmp_path, capsys, yaml, where, says):
    src = tmp_path / "config.yaml"
    src.write_text("version: v1\nmig-configs:\n  c:\n" + yaml)
    code, out, err = run(capsys, "import", "--from", "mig-parted", src)
    assert code == 2 and out == ""
    assert f"{src.parent}/{where}" in err and says in err, err


def test_several_configs_need_a_name(capsys):
    code, out, err = run(capsys, "import", "--from", "mig-parted", DEFAULT)
    assert code == 2 and out == "" and "81 configs: choose one with --name (all-disabled, all-enabled," in err
    code, out, err = run(capsys, "import", "--from", "mig-parted", DEFAULT, "--name", "all-balance")
    assert code == 2 and "no config named 'all-balance': did you mean 'all-balanced'?" in err
    code, out, err = run(capsys, "import", "--from", "mig-parted", "/nonexistent/config.yaml")
    assert code == 2 and "/nonexistent/config.yaml: cannot read: No such file or directory" in err


def test_device_id_selectors():
    """select = "0xDEVICEVENDOR[:0xSUBSYSTEM]" or a list of them: PCI IDs as NVML and mig-parted pack them."""
    from migd import config, layout
    from migd.model import GpuInfo

    cfg = config.parse('[[gpu]]\nselect = ["0x233010de", "0x20B010DE:0x147E10DE"]\nmig = false\n')
    sel = cfg.entries[0].selector
    assert (sel.kind, sel.values) == ("device", ("0x233010DE", "0x20B010DE:0x147E10DE"))

    def gpu(device, subsystem=0):
        return GpuInfo(index=0, uuid="GPU-x", name="x", pci_bus_id="", architecture="", mig_capable=True,
                       pci_device_id=device, pci_subsystem_id=subsystem)

    assert layout.matches(sel, gpu(0x233010DE, 0x16C110DE))
    assert layout.matches(sel, gpu(0x20B010DE, 0x147E10DE))
    assert not layout.matches(sel, gpu(0x20B010DE, 0x145F10DE))  # another board of the same chip
    assert not layout.matches(sel, gpu(0x233110DE))
    with pytest.raises(config.ConfigError, match=r"<config>:2: \[\[gpu\]\] #1 select: a list of PCI device IDs"):
        config.parse('[[gpu]]\nselect = ["0x2330"]\nmig = false\n')


def test_mangled_yaml_is_an_error_never_a_traceback():
    """Mutations of NVIDIA's file (deleted, repeated and inserted characters and lines): each converts or is refused
    with a ConfigError naming the file, never another exception. Seeded: the same cases every run."""
    import random

    from migd import migparted
    from migd.errors import ConfigError

    text = DEFAULT.read_text()[:3000]  # the first configs: every construct of the file
    rng = random.Random(18)
    nasty = ["\t", " ", "-", ":", "[", "]", "{", "}", ",", "#", '"', "'", "&a", "*a", "!t", "|", ">", "---", "\n",
             "0x", "1c.3g.40gb", "mig-devices:", "  - ", "\x00", "é"]
    refused = converted = 0
    for _ in range(400):
        t = text
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(t))
            op = rng.random()
            if op < 0.4:
                t = t[:i] + t[i + rng.randint(1, 8):]
            elif op < 0.8:
                t = t[:i] + rng.choice(nasty) + t[i:]
            else:
                lines = t.split("\n")
                j = rng.randrange(len(lines))
                lines.insert(j, lines[rng.randrange(len(lines))])
                t = "\n".join(lines)
        try:
            migparted.convert(t, "config.yaml", "all-1g.5gb")
            converted += 1
        except ConfigError as e:
            assert all(p.path == "config.yaml" for p in e.problems), e
            refused += 1
    assert refused > 100 and converted > 10, (refused, converted)
