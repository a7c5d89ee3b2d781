"""The README's first screen: the demo's output as it prints it, and the words it needs explained."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_first_screen_shows_the_demo_output_and_explains_its_words(tmp_path):
    readme = (ROOT / "README.md").read_text()
    first = readme[:readme.index("\n---\n")]
    shown = re.search(r"```console\n(.*?)```", first, re.S).group(1).splitlines()
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", "dgx-a100", "--config",
                        "etc/examples/dgx-a100-mixed.toml", "apply"], capture_output=True, text=True, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "MIGD_RUN_DIR": str(tmp_path / "run"),
                            "XDG_STATE_HOME": str(tmp_path / "state")})
    # the one line on stderr: where the simulated host is kept between commands (the README says it too)
    assert r.returncode == 0 and r.stderr.startswith("migd: simulated dgx-a100 host created in "), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "starts over" in r.stderr, r.stderr
    out = r.stdout.splitlines()
    assert len(out) <= 24, out  # was 224 lines
    # every line as it prints (the first screen is the real output, slot grids included), the GPUs between the
    # first and the last result line left out as "..."
    assert shown == [out[0], "...", out[7]] + out[8:], "\n".join(out)
    assert "│GI 3             │GI 9    │GI 10   │GI 2" in r.stdout  # the GI ids the text explains
    for words in ("**GPU instances** (GI)", "**compute instance** (CI)", "**placement**", "`start:size`",
                  "**profile ID**", "`GI 2` is the ID the\ndriver gave", "`4:4`", "`free`"):
        assert words in first, words
