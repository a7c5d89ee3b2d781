"""The slot pictures, read the way a person reads them: the CLI's real output on several simulated models, in a
UTF-8 and an ASCII terminal, compared with golden files (tests/golden/); no line wider than 80 columns on any
simulated model's fullest layouts; colour only on a terminal, never with NO_COLOR or into the journal.

Regenerate the golden files after an intended change with MIGD_GOLDEN_UPDATE=1 (and read the diff).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from migd import cli, sim
from migd.picture import style_for
from migd.catalog import MODELS
from migd.sim.host import SimHost

from conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("MIGD_GOLDEN_UPDATE") == "1"


def migd(tmp: Path, *args: str, encoding: str = "utf-8", cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The console script as a terminal runs it: PYTHONIOENCODING stands for the terminal's encoding. Configs
    are named relative to cwd (the repository for its examples, tmp for a test's own), as the pictures name them."""
    env = {"PATH": "/usr/bin:/bin", "MIGD_RUN_DIR": str(tmp / "run"), "PYTHONIOENCODING": encoding,
           "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "migd.cli", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=60)


def check_golden(name: str, out: bytes, encoding: str) -> None:
    text = out.decode(encoding)
    path = GOLDEN / f"{name}.{'utf8' if encoding == 'utf-8' else 'ascii'}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path} differs:\n{text}"
    # every line of the pictures fits 80 columns; check's one-line wording above them is today's, as long as it is
    assert max(len(line) for line in text.splitlines() if not re.match(r"GPU \d+: drift: ", line)) <= 80, text
    if encoding == "ascii":
        assert text.isascii() and "+--" in text, text
    else:
        assert "┌" in text and "+--" not in text, text
    assert "\x1b" not in text  # not a terminal: no colour


def config(tmp: Path, text: str, name: str = "migd.toml") -> str:
    """The file, by its name relative to tmp (run with cwd=tmp)."""
    (tmp / name).write_text(textwrap.dedent(text))
    return name


H100_NAMED = """
    [[gpu]]
    select = "all"
    mig = true
    instances = [{ profile = "3g.40gb", name = "train", compute = ["1c.3g.40gb", "2c.3g.40gb"] },
                 { profile = "1g.10gb+me", name = "inference-small" }, "1g.20gb", "1g.10gb"]
"""
H100_OTHER = """
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g.40gb", "2g.20gb", "1g.10gb"]
"""

H100_RESHAPED = """
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g.40gb", "1g.10gb", "1g.20gb", "1g.10gb"]
"""

ENCODINGS = ["utf-8", "ascii"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_status_and_apply_on_a_dgx_a100(tmp_path, encoding):
    """8 slots, 7 compute slices: identical GPUs drawn once, the free eighth slot shown as free."""
    state = str(tmp_path / "state.json")
    base = ["--simulate", "dgx-a100", "--sim-state", state, "-c", "etc/examples/dgx-a100-mixed.toml"]
    r = migd(tmp_path, *base, "apply", encoding=encoding)
    assert r.returncode == 0, r.stderr
    check_golden("apply-dgx-a100", r.stdout, encoding)
    r = migd(tmp_path, *base, "status", encoding=encoding)
    assert r.returncode == 0, r.stderr
    check_golden("status-dgx-a100", r.stdout, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_status_on_rtx_pro_server_has_four_slots(tmp_path, encoding):
    state = str(tmp_path / "state.json")
    base = ["--simulate", "rtx-pro-server", "--sim-state", state, "-c", "etc/examples/rtx-pro-server.toml"]
    assert migd(tmp_path, *base, "apply", encoding=encoding).returncode == 0
    r = migd(tmp_path, *base, "status", encoding=encoding)
    assert r.returncode == 0, r.stderr
    check_golden("status-rtx-pro-server", r.stdout, encoding)
    grid = [line for line in r.stdout.decode(encoding).splitlines() if line.strip().startswith("0 ")]
    assert grid and all(line.split() == ["0", "1", "2", "3"] for line in grid), grid  # from the placement data


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_status_names_compute_instances_and_a_legend_for_wide_labels(tmp_path, encoding):
    """+me profile and a long name in a one-slot box: keyed into a legend under the grid; compute instances of
    the 3g listed inside it."""
    state = str(tmp_path / "state.json")
    base = ["--simulate", "h100-80gb", "--sim-state", state, "-c", config(tmp_path, H100_NAMED)]
    assert migd(tmp_path, *base, "apply", encoding=encoding, cwd=tmp_path).returncode == 0
    r = migd(tmp_path, *base, "status", encoding=encoding, cwd=tmp_path)
    check_golden("status-h100-named", r.stdout, encoding)
    text = r.stdout.decode(encoding)
    assert "(a) 1g.10gb+me" in text and "(b) inference-small" in text, text
    assert "CI 0 1c.3g.40gb" in text and "CI 1 2c.3g.40gb" in text and "train" in text, text


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_plan_draws_now_and_after_then_a_summary_and_v_lists_the_calls(tmp_path, encoding):
    state = str(tmp_path / "state.json")
    base = ["--simulate", "h100-80gb:2", "--sim-state", state]
    assert migd(tmp_path, *base, "-c", config(tmp_path, H100_NAMED), "apply", cwd=tmp_path).returncode == 0
    other = config(tmp_path, H100_RESHAPED, "other.toml")
    r = migd(tmp_path, *base, "-c", other, "plan", encoding=encoding, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_golden("plan-h100", r.stdout, encoding)
    text = r.stdout.decode(encoding)
    assert text.startswith("GPU 0-1: ") and "  now:" in text and "  after:" in text and "destroy" in text
    assert "keep" in text and "new" in text and "create GPU instance" not in text, text
    summary = [line for line in text.splitlines() if "driver calls" in line and line.startswith("  ")]
    assert summary == ["  2 GPU instances to create, 2 GPU instances to destroy; 9 driver calls"], text
    r = migd(tmp_path, *base, "-c", other, "-v", "plan", encoding=encoding, cwd=tmp_path)
    calls = r.stdout.decode(encoding).split("driver calls:\n")[1].splitlines()
    assert len(calls) == 2 * 9 and calls[0].startswith("  GPU 0: destroy compute instance"), calls


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_check_draws_the_drift_beside_its_wording(tmp_path, encoding):
    state = str(tmp_path / "state.json")
    base = ["--simulate", "h100-80gb", "--sim-state", state, "-c", config(tmp_path, H100_OTHER)]
    assert migd(tmp_path, *base, "apply", cwd=tmp_path).returncode == 0
    host = SimHost.create("", state)
    gis = sorted(host.gpus[0]["gis"], key=lambda g: g["start"])
    for gi in gis[1:]:  # the 2g and the 1g destroyed; a 2g made where the 1g was; one 1g.10gb extra
        gi["cis"] = []
        host.destroy_gi(0, gi["id"])
    assert host.create_gi(0, 19, (4, 1)) is not None  # 1g.10gb at 4:1 (the 2g's place): the 2g is missing
    assert host.create_gi(0, 19, (6, 1)) is not None  # 1g.10gb where the config puts one, without compute
    host.save()
    sim.uninstall()
    r = migd(tmp_path, *base, "check", encoding=encoding, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    check_golden("check-h100", r.stdout, encoding)
    text = r.stdout.decode(encoding)
    assert text.splitlines()[0] == ("GPU 0: drift: missing 2g.20gb@4:2; extra 1g.10gb@4:1[no compute]; "
                                    "1g.10gb@6:1 compute: missing 1g.10gb@0:1"), text
    assert "missing" in text.split("found:")[0] and "extra" in text.split("found:")[1], text
    assert "changed" in text.split("found:")[1], text


@pytest.mark.parametrize("model", ["rtx-pro-6000", "a30", "h100-80gb"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_profiles_draws_each_profiles_placements(tmp_path, model, encoding):
    r = migd(tmp_path, "--simulate", model, "profiles", encoding=encoding)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode(encoding)
    lines = text.splitlines()
    bars = lines[next(i for i, x in enumerate(lines) if x.startswith("  placements")) + 1:]
    path = GOLDEN / f"profiles-{model}.{'utf8' if encoding == 'utf-8' else 'ascii'}.txt"
    if UPDATE:
        path.write_text("\n".join(bars) + "\n", encoding="utf-8")
    assert "\n".join(bars) + "\n" == path.read_text(encoding="utf-8"), text
    assert all(len(line) <= 80 for line in bars), bars


def test_profiles_bars_start_where_the_driver_says():
    """h100: 1g.20gb sits at 0, 2, 4, 6 (two slots each): the bar's marks are its starts, in slot columns."""
    text = (GOLDEN / "profiles-h100-80gb.ascii.txt").read_text()
    line = next(x for x in text.splitlines() if x.split()[0] == "1g.20gb")
    assert re.findall(r"\[(\d)", line) == ["0", "2", "4", "6"], line


# --- 80 columns, every simulated model's fullest layouts ------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    yield
    sim.uninstall()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_line_wider_than_80_columns_on_any_model(tmp_path, capsys, isolated, monkeypatch, model):
    """Each profile of the model as many times as it fits, every instance named (long names), through plan (from
    MIG off), apply and status."""
    from migd.sim import make_backend

    backend = make_backend(simulate=model)
    backend.open()
    try:
        profiles = backend.gpus()[0].profiles
    finally:
        backend.close()
    sim.uninstall()
    monkeypatch.chdir(tmp_path)  # configs by relative name, as an admin's /etc/migd.toml is short
    tried = 0
    for p in profiles:
        items = ", ".join(f'{{ profile = "{p.name}", name = "worker-{p.id}-{k}-with-a-long-name" }}'
                          for k in range(p.instance_count))
        conf = config(tmp_path, f'[[gpu]]\nselect = "all"\nmig = true\ninstances = [{items}]\n', f"{p.id}.toml")
        state = str(tmp_path / f"{p.id}.json")
        for verb in ("plan", "apply", "status"):
            code = cli.main(["--simulate", model, "--sim-state", state, "-c", conf, verb])
            out = capsys.readouterr().out
            assert code == 0, (p.name, verb, out)
            wide = [line for line in out.splitlines() if len(line) > 80]
            assert not wide, (model, p.name, verb, wide)
        tried += 1
        sim.uninstall()
    assert tried == len(profiles) > 0


# --- colour ---------------------------------------------------------------------------------------------------------


def test_style_colour_only_on_a_terminal_without_no_color_or_journal():
    assert style_for("utf-8", True, {}).color and style_for("UTF-8", True, {}).unicode
    assert not style_for("utf-8", False, {}).color
    assert not style_for("utf-8", True, {"NO_COLOR": ""}).color
    assert not style_for("utf-8", True, {"JOURNAL_STREAM": "8:1234"}).color
    assert not style_for("ascii", True, {}).unicode and not style_for(None, False, {}).unicode


def _on_a_tty(tmp: Path, args, env_extra) -> bytes:
    leader, follower = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "MIGD_RUN_DIR": str(tmp / "run"), "PYTHONIOENCODING": "utf-8",
           "PYTHONPATH": str(ROOT / "src"), **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "migd.cli", *args], stdout=follower, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return out


def test_plan_on_a_terminal_is_coloured_unless_no_color(tmp_path):
    args = ["--simulate", "h100-80gb", "-c", str(tmp_path / config(tmp_path, H100_OTHER)), "plan"]
    coloured = _on_a_tty(tmp_path, args, {})
    assert b"\x1b[32mnew" in coloured, coloured  # what is created, in green
    plain = _on_a_tty(tmp_path, args, {"NO_COLOR": "1"})
    assert b"\x1b[" not in plain and b"new" in plain, plain
    assert b"\x1b[" not in _on_a_tty(tmp_path, args, {"JOURNAL_STREAM": "8:1"})


# --- the README's pictures ------------------------------------------------------------------------------------------


# Every README picture is produced by the `$ migd` console blocks that tests/test_readme_examples.py runs.


# --- the grid's own rules -------------------------------------------------------------------------------------------


def test_slots_come_from_the_placement_data_and_untrusted_text_is_escaped():
    from migd.model import GpuInfo, GpuProfile, Placement
    from migd.picture import Box, Style, escape, grid, slot_count

    def profile(name, size, starts):
        return GpuProfile(0, 1, name, size, 1, 1024, 1, 1, 0, 0, 0, 0, tuple(Placement(s, size) for s in starts))

    # a GPU whose placements span 6 slots is drawn with 6, whatever its memory-slot count says
    info = GpuInfo(0, "GPU-x", "NVIDIA Test", "0", "test", True, (profile("1g.1gb", 1, range(6)),),
                   total_memory_slots=8)
    assert slot_count(info) == 6
    assert escape("ok\x1b[31m\u00e9") == "ok\\x1b[31m\\xe9"
    lines = grid(6, [Box(Placement(0, 2), ("\x1b[2Jevil",)), Box(Placement(1, 1), ("overlap",))], Style(False))
    text = "\n".join(lines)
    assert "\x1b" not in text and "\\x1b[2Jevil" in text, text
    assert "not drawn, overlaps or outside the grid: overlap at 1:1" in text, text  # said, never silently dropped
    assert lines[0].split() == ["0", "1", "2", "3", "4", "5"]
