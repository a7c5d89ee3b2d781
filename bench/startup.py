"""Cold-process cost of the CLI: interpreter start, imports (`python -X importtime`), the rest; plain vs -I -S.

"plain" is `python3 -m migd.cli ...` from the source tree (PYTHONPATH=src, site-packages scanned: what a developer
runs). "installed" is migd laid out as the package installs it (/usr/lib/migd with its vendored dependencies,
byte-compiled) and started the way /usr/bin/migd starts it (`#!/usr/bin/python3 -IS`): no site-packages scan, no
.pth files. "installed, no .pyc" is the same with -B and no bytecode: a read-only /usr nobody byte-compiled,
where every start compiles migd and pynvml again.

Without a GPU, `status --json` stops at nvmlInit (exit 1, LIBRARY_NOT_FOUND) after every import it makes, so its
cost is start + imports; `--simulate dgx-a100 status --json` runs to the end on 8 simulated GPUs (and imports
migd.sim, which the real path does not).

Run alone: python3 bench/startup.py [--runs 10]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Installed, Samples, Table, child_env, ms, ratio, run_installed_section, time_interleaved  # noqa: E402

_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def importtime(cmd: Sequence[str], env: Dict[str, str], runs: int) -> Tuple[float, Dict[str, float], Dict[str, float]]:
    """Median over `runs` of: total import seconds, self seconds per module, self seconds per top-level package."""
    totals: List[float] = []
    per_module: Dict[str, List[float]] = {}
    for _ in range(runs):
        r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True)
        total = 0.0
        seen: Dict[str, float] = {}
        for line in r.stderr.splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            seen[name] = seen.get(name, 0.0) + self_us / 1e6
            if len(indent) <= 1:  # top level: cumulative covers everything below it
                total += cum_us / 1e6
        totals.append(total)
        for name, v in seen.items():
            per_module.setdefault(name, []).append(v)
    modules = {k: statistics.median(v + [0.0] * (runs - len(v))) for k, v in per_module.items()}
    groups: Dict[str, float] = {}
    for name, v in modules.items():
        groups[_group(name)] = groups.get(_group(name), 0.0) + v
    return statistics.median(totals), modules, groups


def _group(module: str) -> str:
    top = module.split(".")[0]
    if top == "migd":
        return "migd.sim" if module.startswith("migd.sim") else "migd"
    if top in ("pynvml", "structlog", "sdnotify", "tomli", "typing_extensions"):
        return top
    if top in ("site", "sitecustomize", "usercustomize", "_distutils_hack") or module.endswith("pth"):
        return "site (.pth)"
    return "stdlib/other"


def _fmt_groups(groups: Dict[str, float], limit: int = 5) -> str:
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{k} {v * 1000:.1f}" for k, v in top)


def cold_compare(table: Table, section: str, label: str, args: Sequence[str], runs: int,
                 installed: Installed, raw: Optional[Installed], env: Dict[str, str],
                 extra: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, Samples]:
    """One interleaved batch: both interpreter baselines, plain, installed (and installed without .pyc)."""
    py = sys.executable
    cmds: Dict[str, Sequence[str]] = {
        "base": [py, "-c", "pass"],
        "base_is": [py, "-I", "-S", "-c", "pass"],
        "plain": [py, "-m", "migd.cli", *args],
        "installed": installed.argv(*args),
    }
    if raw is not None:
        cmds["raw"] = raw.argv(*args)
    cmds.update(extra or {})
    s = time_interleaved(cmds, runs, env, cwd=installed.root)
    b, bi = s["base"].median, s["base_is"].median
    rc = f" (exit {s['plain'].rc})" if s["plain"].rc else ""
    table.row(section, f"{label}{rc}", "", f"median of {runs}, {s['plain'].spread}", "")
    table.row(section, "  plain: python3 -m migd.cli", ms(s["plain"].median), f"python -c pass {ms(b)}",
              ratio(s["plain"].median, b))
    table.row(section, "  installed: python3 -IS /usr/bin/migd (.pyc)", ms(s["installed"].median),
              f"python -I -S -c pass {ms(bi)}", ratio(s["installed"].median, bi))
    if raw is not None:
        table.row(section, "  installed, no .pyc (-B, read-only /usr)", ms(s["raw"].median),
                  f"python -I -S -c pass {ms(bi)}", ratio(s["raw"].median, bi))
    table.row(section, "  installed vs plain", ms(s["installed"].median), f"plain {ms(s['plain'].median)}",
              ratio(s["installed"].median, s["plain"].median))
    check_codes(table, s)
    return s


def check_codes(table: Table, samples: Dict[str, Samples]) -> None:
    """A variant that exits differently from the plain run did something else (an import error is fast)."""
    want = samples["plain"].rc
    for key, smp in samples.items():
        if not key.startswith("base") and smp.rc != want:
            table.note(f"WARNING: {key} exited {smp.rc}, plain exited {want}: its time is not comparable")


def report(table: Table, section: str, runs: int, imp_runs: int, installed: Installed,
           raw: Optional[Installed]) -> None:
    env = child_env()
    py = sys.executable
    # Import breakdown of the exact command the issue names, then of the installed layout.
    for label, cmd in (("python -X importtime -m migd.cli status --json", [py, "-m", "migd.cli", "status", "--json"]),
                       ("same, installed (-I -S, .pyc)", installed.argv("status", "--json"))):
        total, modules, groups = importtime(cmd, env, imp_runs)
        table.row(section, f"imports: {label}", ms(total), f"median of {imp_runs}", "")
        table.row(section, "  by package (self ms)", "", _fmt_groups(groups), "")
        top = sorted(modules.items(), key=lambda kv: -kv[1])[:6]
        table.note("top self times: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in top))
    cold_compare(table, section, "cold `migd status --json` (real path; stops at nvmlInit without a GPU)",
                 ["status", "--json"], runs, installed, raw, env)
    cold_compare(table, section, "cold `migd --simulate dgx-a100 status --json` (8 simulated GPUs)",
                 ["--simulate", "dgx-a100", "status", "--json"], runs, installed, raw, env)


def main() -> int:
    return run_installed_section(__doc__, report, "1b")


if __name__ == "__main__":
    sys.exit(main())
