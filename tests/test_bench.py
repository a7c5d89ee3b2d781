"""bench/ runs end to end on simulated GPUs (a smoke test, not a timing test: timing belongs in bench/ itself).

The benchmarks drive migd's engine, watchdog and backend directly, so a refactor that breaks them shows here, not on
the GPU machine where they are run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_bench_quick_runs_every_simulated_section_and_prints_the_issue_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_")}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--runs", "1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    for section in ("\n2 ", "\n3 ", "\n4 ", "\n5 ", "\n6 "):
        assert section in r.stdout, (section, r.stdout[-2000:])
    table = r.stdout[r.stdout.index("Issues 12 and 21: figure / now / goal"):]
    assert "NVML reads per GPU, fresh-boot apply of 7 × 1g" in table
    # reads per GPU beside the floor bench computes for the same apply: at most a few above it
    reads, minimum = map(int, re.search(r"\n\s+(\d+) \(minimum (\d+);", table).groups())
    assert minimum <= reads <= minimum + 3, (reads, minimum)
    assert "watchdog RSS" in table and "section 1 not run" not in table.split("watchdog RSS")[1]
    assert "8-GPU vs 1-GPU boot apply" in table and "from the lasting cache" in table


def test_bench_with_a_python_lacking_the_dependencies_stops_at_once_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "bench" / "run.py"), "--quick"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert r.returncode != 0
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0] and "python" in lines[0], lines
