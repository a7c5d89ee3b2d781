"""migd's benchmarks, one table: `python3 bench/run.py` (full) or `python3 bench/run.py --quick` (CI, < 1 min).

Sections (bench/README.md explains every row):
  1   read path on a real GPU vs nvidia-smi (only with MIGD_READ_ONLY=1 and a working driver; else skipped)
  1b  CLI start-up: import-time breakdown, cold `status --json` plain vs installed (-I -S)
  2   NVML mutations over every valid A100-40GB and H100 80GB layout: migd vs minimum vs a mig-parted model
  3   boot apply overhead: cold `migd --simulate dgx-a100 apply` vs `python3 -c pass`
  4   planner: every valid layout × 8 GPUs
  5   watchdog footprint: RSS and CPU per check (simulated dgx-h100; plus the real GPU, read-only, when present)
  6   how cost grows: 1-16 simulated H200s (boot apply, status, a watchdog round); the real GPUs' read-only rows
Every timed figure is a median of several runs with its baseline measured in the same run (interleaved for cold
processes); compare ratios across machines, absolute times only on the same one.

On the GPU machine:  MIGD_READ_ONLY=1 PYTHONPATH=src:.devicelib python3 bench/run.py
Exit status: 0, or 1 when a correctness check failed (migd above the minimum or failing a layout, a variant
exiting differently from the plain run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, Installed, Table, gpu_available, machine_line, require_dependencies  # noqa: E402

SECTIONS = ("1", "1b", "2", "3", "4", "5", "6")


def _git() -> str:
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes in src/' if dirty else ''}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Sections: " + ", ".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (CI)")
    ap.add_argument("--runs", type=int, help="cold-process repetitions (default 5 quick, 15 full)")
    ap.add_argument("--only", help="comma-separated sections, e.g. 2,4")
    args = ap.parse_args()
    require_dependencies()
    runs = args.runs or (5 if args.quick else 15)
    imp_runs = 2 if args.quick else 5
    reps = 3 if args.quick else 7
    checks = 10 if args.quick else 50
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    failures = []

    started = time.perf_counter()
    print(f"migd benchmarks, {'quick' if args.quick else 'full'} mode, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"commit {_git()}")
    print(machine_line())
    ok, gpu = gpu_available()
    print(f"GPU: {gpu if ok else 'none (' + gpu + ')'}")
    print(f"cold processes: median of {runs} interleaved runs after one warm-up round; "
          f"ratio = figure / baseline")
    installed = Installed()
    raw = Installed(compiled=False)
    for note in installed.notes:
        print(f"note: {note}")
    if installed.missing:
        print(f"note: installed layout lacks {', '.join(installed.missing)} (not importable here)")
    print()
    table = Table()
    table.header()
    results: Dict[str, Any] = {}
    try:
        nvml_call_s = None
        if "1" in only:
            if ok:
                import readpath

                results["1"] = readpath.report(table, "1", runs, installed, gpu)
                nvml_call_s = results["1"].get("nvml_call_s")
            else:
                table.row("1", "read path on a real GPU vs nvidia-smi", "skipped (no GPU)", "", "")
        if "1b" in only:
            import startup

            startup.report(table, "1b", runs, imp_runs, installed, raw)
        if "2" in only:
            import mutations

            for r in mutations.report(table, "2", mutations.DEFAULT_MODELS):
                if r["migd_failures"] or r["migd"].mutating != r["minimum"].mutating or any(r["migd"].failed):
                    failures.append(f"2: migd is not minimal on {r['name']}")
        if "3" in only:
            import bootapply

            results["3"] = bootapply.report(table, "3", runs, imp_runs, installed, raw, nvml_call_s, gpu if ok else "")
        if "4" in only:
            import planner

            planner.report(table, "4", ("a100-40gb", "h100-80gb"), reps)
        if "5" in only:
            import watchdog

            watchdog.report(table, "5", checks)
            results["5sim"] = watchdog.report(table, "5", checks, installed=installed,
                                              label="simulated dgx-h100, installed (-I -S)")
            if ok:
                results["5"] = watchdog.report(table, "5", checks, real=True, label=f"real GPU, read-only: {gpu}")
            else:
                table.row("5", "watchdog on a real GPU, read-only", "skipped (no GPU)", "", "")
        if "6" in only:
            import scaling

            sizes = (1, 8) if args.quick else scaling.SIZES
            results["6"] = scaling.report(table, "6", min(runs, 5), installed, sizes, nvml_call_s, gpu if ok else "")
    finally:
        installed.cleanup()
        raw.cleanup()
    failures += [r[1] for r in table.rows if len(r) == 2 and r[1].startswith(("WARNING", "migd FAILED"))]
    print()
    import goals

    goals.summary(results, only, ok)
    print()
    print(f"done in {time.perf_counter() - started:.0f} s" + (f"; {len(failures)} check(s) failed" if failures else ""))
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
