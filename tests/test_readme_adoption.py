"""The README's examples for adopting migd run as written: the fleet preview (Fleet), `migd import` (Migrating
from mig-parted), `instances = "unmanaged"` (Kubernetes) and `export --format slurm` on a simulated host (Slurm)."""

from __future__ import annotations

import json
import re
import shlex
import textwrap

import pytest

from migd import cli, sim
from migd.sim.host import SimHost

from conftest import ROOT

README = (ROOT / "README.md").read_text()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS",
                "MIGD_MIG_MINORS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    sim.uninstall()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start:README.index("\n## ", start + 1)]


def blocks(text: str, lang: str) -> list:
    return [textwrap.dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S)]


def run_console(capsys, console: str):
    """Run the console block's `$ migd ...` line; its other lines, split at "...", must appear in order."""
    first, *shown = console.rstrip("\n").split("\n")
    args = shlex.split(first[2:])
    assert args[0] == "migd"
    code = cli.main(args[1:])
    out, err = capsys.readouterr()
    # the first command on a simulated host says where it keeps it (stderr); nothing else may go there
    assert not [ln for ln in err.splitlines() if not re.match(r"migd: simulated \S+ host created in ", ln)], err
    lines, at = out.splitlines(), 0
    chunk: list = []
    for line in shown + ["..."]:
        if line != "...":
            chunk.append(line)
            continue
        while at < len(lines) and lines[at:at + len(chunk)] != chunk:
            at += 1
        assert lines[at:at + len(chunk)] == chunk, f"README lines not in the output:\n{chunk}\n---\n{out}"
        at += len(chunk)
        chunk = []
    return code, out, shown


def test_fleet_preview_example(tmp_path, capsys):
    text = section("Fleet")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "migd.toml").write_text(blocks(text, "toml")[0])
    code, _, _ = run_console(capsys, blocks(text, "console")[0])
    assert code == 0


def test_mig_parted_import_example(tmp_path, capsys):
    text = section("Migrating from mig-parted")
    (tmp_path / "config.yaml").write_text(blocks(text, "yaml")[0])
    code, out, shown = run_console(capsys, blocks(text, "console")[0])
    assert code == 0 and out.splitlines() == shown  # the whole output, as the README prints it
    (tmp_path / "migd.toml").write_text(out)
    spec = "h100-80gb,a100-40gb"
    assert cli.main(["--simulate", spec, "--sim-state", "s.json", "-c", "migd.toml", "apply"]) == 0
    capsys.readouterr()
    assert cli.main(["--sim-state", "s.json", "status", "--json"]) == 0
    gpus = json.loads(capsys.readouterr().out)["gpus"]
    assert [i["profile"] for i in gpus[0]["instances"]] == ["3g.40gb", "3g.40gb"]
    assert gpus[1]["mig"]["current"] is False  # the A100-40GB: the filtered entry, MIG off


def test_kubernetes_dynamic_mig_example(tmp_path, capsys):
    text = section("Kubernetes")
    (tmp_path / "migd.toml").write_text(blocks(text, "toml")[0])
    assert cli.main(["--simulate", "h100-80gb", "--sim-state", "s.json", "-c", "migd.toml", "apply"]) == 0
    host = SimHost.create("", "s.json")  # the DRA driver prepares a claim: a 3g.40gb appears
    host.create_ci(0, host.create_gi(0, 9), 2)
    host.save()
    capsys.readouterr()
    assert cli.main(["--sim-state", "s.json", "-c", "migd.toml", "check", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["gpus"][0]
    assert row["expected"] == "MIG on, instances unmanaged" and "`MIG on, instances unmanaged`" in " ".join(text.split())
    assert row["found"].startswith("MIG on: 3g.40gb@") and row["status"] == "ok"


def test_slurm_export_on_a_simulated_host(capsys):
    assert "`migd --simulate dgx-a100 export --format slurm` works like on a GPU node" in " ".join(README.split())
    assert cli.main(["--simulate", "dgx-a100", "export", "--format", "slurm"]) == 0
    assert "Gres=gpu:nvidia_a100-sxm4-40gb:8" in capsys.readouterr().out
