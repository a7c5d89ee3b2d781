"""Boot apply overhead: `migd --simulate dgx-a100 apply` as a cold process vs `python3 -c pass`, same run.

8 simulated A100-40GB GPUs, fresh and in memory for every run (no --sim-state: MIG off, nothing on them), zero
latency (the simulator answers at once), config: a full layout on every GPU (7 × 1g.5gb, the most driver calls:
MIG mode, persistence, 7 GPU instances and 7 compute instances per GPU = 128 mutating calls). The figure is
therefore migd's own cost on the boot path: interpreter, imports, reads, planning, logging, the /run/migd record
(redirected to a temp dir here), and the status it prints. Plain and installed (-I -S, byte-compiled) as in
startup.py; the import share comes from `python -X importtime` runs of the same command.

Run alone: python3 bench/bootapply.py [--runs 10]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Installed, Table, child_env, ms, run_installed_section  # noqa: E402
from startup import cold_compare, importtime  # noqa: E402

CONFIG = """
[[gpu]]
select = "all"
mig = true
instances = { "1g.5gb" = 7 }
"""


# Runs the same apply in one process with the installed layout and counts the fake library's C calls.
_COUNT = """
import contextlib, io, json, sys
sys.path.insert(0, {lib!r})
import migd.sim as S
libs = []
_install = S.install
def install(*a, **k):
    lib = _install(*a, **k)
    libs.append(lib)
    return lib
S.install = install
from migd.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = main({args!r})
calls = {{}}
for lib in libs:
    for name, n in lib.calls.items():
        calls[name] = calls.get(name, 0) + n
print(json.dumps({{"rc": rc, "calls": calls}}))
"""
MUTATING = re.compile(r"Create|Destroy|Set")


def count_calls(installed: Installed, args, env) -> Dict[str, int]:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", _COUNT.format(lib=installed.lib, args=list(args))],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {}
    return json.loads(r.stdout.strip().splitlines()[-1])["calls"]


def report(table: Table, section: str, runs: int, imp_runs: int, installed: Installed,
           raw: Optional[Installed], nvml_call_s: Optional[float] = None, gpu: str = "") -> Dict[str, float]:
    env = child_env(simulated=True)  # every command passes --simulate
    tmp = tempfile.mkdtemp(prefix="migd-bench-boot-")
    config = os.path.join(tmp, "migd.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    args = ["--simulate", "dgx-a100", "--config", config, "apply"]
    s = cold_compare(table, section, "cold `migd --simulate dgx-a100 apply` (8 GPUs × 7 × 1g.5gb, from MIG off)",
                     args, runs, installed, raw, env)
    total, _, groups = importtime(installed.argv(*args), env, imp_runs)
    base = s["base_is"].median
    inst = s["installed"].median
    rest = max(inst - base - total, 0.0)
    table.row(section, "  installed, split: interpreter | imports | work", f"{ms(base)} | {ms(total)} | {ms(rest)}",
              "imports by -X importtime (inflates them)", "")
    table.note("import self time by package: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:5]))
    calls = count_calls(installed, args, env)
    if calls:
        mutating = sum(n for name, n in calls.items() if MUTATING.search(name))
        reads = sum(calls.values()) - mutating
        top = sorted(((n, name) for name, n in calls.items() if not MUTATING.search(name)), reverse=True)[:3]
        table.row(section, "  NVML calls in this apply: reads | mutating", f"{reads} | {mutating}",
                  f"reads per GPU {reads / 8:.0f}", "")
        table.note("most frequent reads: " + ", ".join(f"{name} ×{n}" for n, name in top))
        if nvml_call_s:
            table.row(section, f"  projected read time on {gpu or 'the GPU'}", ms(reads * nvml_call_s),
                      f"{reads} reads × {nvml_call_s * 1e6:.0f} µs (section 1)", "")
    return {"installed": inst, "base": base, "imports": total}


def main() -> int:
    return run_installed_section(__doc__, report, "3")


if __name__ == "__main__":
    sys.exit(main())
