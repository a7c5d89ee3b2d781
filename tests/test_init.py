"""`migd init`: a commented starter migd.toml for the GPUs seen (here simulated), through the CLI: it validates as
written and matches the live layout (`check` exits 0, `plan` creates and destroys nothing); every common layout it
suggests in a comment validates on that model once uncommented; an existing -o FILE is never overwritten."""

from __future__ import annotations

import re

import pytest
import reliability as R

from migd.catalog import MODELS


pytestmark = pytest.mark.usefixtures("cli_isolated")
run = R.cli_capsys


def test_init_writes_the_live_layout_and_it_validates(tmp_path, capsys):
    state, spec = tmp_path / "s.json", "h100-80gb:2,a30"
    live = tmp_path / "live.toml"
    live.write_text('[[gpu]]\nselect = 1\nmig = true\ninstances = ["3g", { profile = "3g", compute = ["1c", "2c"] }]'
                    '\n\n[[gpu]]\nselect = 2\nmig = true\ninstances = { "1g" = 4 }\n')
    assert run(capsys, "--simulate", spec, "--sim-state", state, "-c", live, "apply")[0] == 0
    out_file = tmp_path / "migd.toml"
    code, out, err = run(capsys, "--sim-state", state, "init", "-o", out_file)
    assert code == 0 and f"wrote {out_file}" in out, err
    text = out_file.read_text()
    assert 'select = "NVIDIA H100 80GB HBM3"\nmig = false\n' in text  # GPU 0: MIG off, the model's entry
    assert "select = 1\nmig = true\n" in text and 'select = "NVIDIA A30"\nmig = true\n' in text
    assert "# profiles: 1g.10gb x7, 1g.10gb+me x1, 1g.20gb x4, 2g.20gb x3, 3g.40gb x2, 4g.40gb x1, 7g.80gb x1\n" in text
    assert '# instances = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]  # balanced\n' in text
    code, out, err = run(capsys, "--sim-state", state, "-c", out_file, "validate")
    assert code == 0 and out.endswith("layout fits every selected GPU\n"), out + err
    code, out, err = run(capsys, "--sim-state", state, "-c", out_file, "check")
    assert code == 0, out + err
    code, out, _ = run(capsys, "--sim-state", state, "-c", out_file, "plan")
    assert code == 0 and not re.search(r"create|destroy|MIG mode", out), out
    # never over an existing file
    code, out, err = run(capsys, "--sim-state", state, "init", "-o", out_file)
    assert code == 2 and "exists; migd init never overwrites a file" in err
    assert out_file.read_text() == text


def test_init_says_which_gpu_it_leaves_out(tmp_path, capsys):
    """A GPU migd cannot read gets no entry in the starter file, and init says so (never silently)."""
    import subprocess
    import sys

    state = str(tmp_path / "s.json")
    assert run(capsys, "--simulate", "h100-80gb:2", "--sim-state", state, "status")[0] == 0
    subprocess.run([sys.executable, "-m", "migd.sim.tool", "--state", state, "lose", "1"], check=True)
    code, out, err = run(capsys, "--sim-state", state, "init")
    assert code == 0 and "(GPU 0, PCI device ID" in out and "GPU 1" not in out, out
    assert "migd: GPU 1 left out of the starter file: lost (fell off the bus)" in err, err


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_suggested_layout_validates_on_its_model(tmp_path, capsys, model):
    code, text, err = run(capsys, "--simulate", f"{model}:2", "init")
    assert code == 0, err
    suggestions = re.findall(r"^# (instances = .*?)  # (.*)$", text, re.M)
    assert len(suggestions) >= 3, text
    cfg = tmp_path / "migd.toml"
    cfg.write_text(text)
    code, out, err = run(capsys, "--simulate", f"{model}:2", "-c", cfg, "validate")
    assert code == 0, out + err
    for line, _label in suggestions:
        edited = text.replace("mig = false\n", f"mig = true\n{line}\n", 1)
        cfg.write_text(edited)
        code, out, err = run(capsys, "--simulate", f"{model}:2", "-c", cfg, "validate")
        assert code == 0, (model, line, err)
