"""How cost grows with the number of GPUs (issue 21.5): 1, 2, 4, 8, 16 simulated H200s with the H200's read latencies.

Per size, three figures, each migd's own time (the simulator's own Python work, which a real GPU does not have, and
mutating calls' latencies, unknown here and 0, left out):
- boot apply: cold `migd --simulate h200:N apply` of 7 × 1g from MIG off (in memory: no cache, as the first boot
  after a driver update);
- status: cold `migd --sim-state S status --json` on the applied host (the per-boot cache written by the apply);
- one watchdog round: Watcher.check_once on that host in one process, wall and CPU (its own and its reader
  process's), median of the rounds after the first.
On a machine with GPUs (MIGD_READ_ONLY=1, nvmlInit works) the read-only rows run on however many it has: cold
`status --json` and a watchdog round (read-only: drift is only logged).

Goal (issue 21.1): the 8-GPU boot apply at <= 1.5x the 1-GPU one and <= 250 ms.

Run alone: python3 bench/scaling.py [--runs 5] [--sizes 1,2,4,8,16]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Installed, Table, child_env, ms, time_interleaved  # noqa: E402
from bootapply import DEFAULT_LATENCY, latency_spec, run_counting  # noqa: E402

SIZES = (1, 2, 4, 8, 16)
MODEL = "h200"
CONFIG = """
[[gpu]]
select = "all"
mig = true
instances = { "1g" = 7 }
"""
GOAL_RATIO, GOAL_MS = 1.5, 250

# One process: a Watcher on the applied host, `rounds` checks; wall and CPU per round (CPU: this process's and its
# reader processes', reaped by then).
_ROUND = """
import json, os, sys, time
sys.path.insert(0, {lib!r})
from migd.log import setup
setup("warning", "stderr", "migd-watch")
from migd import site
from migd.watch import Watcher
w = Watcher({config!r}, site.build(None, {state!r} or None))
w.check_once()
walls, cpus = [], []
for _ in range({rounds}):
    t0, c0, k0 = time.perf_counter(), time.process_time(), os.times()
    statuses = w.check_once()
    k1 = os.times()
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0 + (k1.children_user - k0.children_user)
                + (k1.children_system - k0.children_system))
walls.sort(); cpus.sort()
print(json.dumps({{"wall": walls[len(walls) // 2], "cpu": cpus[len(cpus) // 2], "gpus": len(statuses),
                  "statuses": sorted(set(statuses.values()))}}))
"""


def _round(installed: Installed, config: str, state: Optional[str], env: Dict[str, str], rounds: int) -> dict:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", _ROUND.format(lib=installed.lib, config=config,
                                                                        state=state or "", rounds=rounds)],
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not r.stdout.strip():
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _own(wall: float, counted: dict) -> float:
    return wall - float(counted.get("own_s", 0.0)) - float(counted.get("mutating_s", 0.0))


def report(table: Table, section: str, runs: int, installed: Installed, sizes: Sequence[int] = SIZES,
           nvml_call_s: Optional[float] = None, gpu: str = "") -> Dict[str, object]:
    latency = dict(DEFAULT_LATENCY)
    if nvml_call_s:
        latency["reads"] = nvml_call_s
    env = child_env(simulated=True, MIGD_SIM_LATENCY=latency_spec(latency))
    tmp = tempfile.mkdtemp(prefix="migd-bench-scaling-")
    config = os.path.join(tmp, "migd.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    table.row(section, f"how cost grows: {MODEL} × N, 7 × 1g each, read latencies {latency_spec(latency)}",
              "", "", "")
    table.row(section, "  N: boot apply | status | watchdog round (wall, CPU)", "", "", "")
    rows: List[dict] = []
    for n in sizes:
        spec = f"{MODEL}:{n}"
        state = os.path.join(tmp, f"h{n}", "state.json")
        os.makedirs(os.path.dirname(state))
        run_env = dict(env, MIGD_RUN_DIR=os.path.join(tmp, f"h{n}", "run"),
                       MIGD_STATE_DIR=os.path.join(tmp, f"h{n}", "lib"))
        subprocess.run(installed.argv("--simulate", spec, "--sim-state", state, "--config", config, "-q", "apply"),
                       env=run_env, check=True, stdout=subprocess.DEVNULL, cwd=installed.root)
        boot = ["--simulate", spec, "--config", config, "-q", "apply"]
        status = ["--sim-state", state, "status", "--json"]
        cold = time_interleaved({"boot": installed.argv(*boot), "status": installed.argv(*status)}, runs, run_env,
                                cwd=installed.root)
        row = {"n": n, "boot": _own(cold["boot"].median, run_counting(installed, boot, run_env)),
               "status": _own(cold["status"].median, run_counting(installed, status, run_env))}
        row.update(_round(installed, config, state, run_env, max(runs, 3)))
        rows.append(row)
        rnd = f"{ms(row['wall'])}, CPU {ms(row['cpu'])}" if "wall" in row else f"failed: {row.get('error')}"
        table.row(section, f"  {n:>2}", f"{ms(row['boot'])} | {ms(row['status'])} | {rnd}",
                  "" if n == sizes[0] else f"x{row['boot'] / rows[0]['boot']:.2f} | x{row['status'] / rows[0]['status']:.2f}",
                  "")
    out: Dict[str, object] = {"rows": rows, "latency": latency_spec(latency)}
    one = next((r for r in rows if r["n"] == 1), None)
    eight = next((r for r in rows if r["n"] == 8), None)
    if one and eight:
        out.update(boot1=one["boot"], boot8=eight["boot"])
        table.row(section, "  8-GPU boot apply vs 1 GPU", f"{ms(eight['boot'])} vs {ms(one['boot'])}",
                  f"goal <= {GOAL_RATIO}x and <= {GOAL_MS} ms", f"{eight['boot'] / one['boot']:.2f}x")
    if gpu:
        out["real"] = real_rows(table, section, runs, installed, gpu)
    return out


def real_rows(table: Table, section: str, runs: int, installed: Installed, gpu: str) -> dict:
    """The read-only rows on the machine's own GPUs (as many as it has): cold status, one watchdog round."""
    env = child_env(simulated=False, MIGD_READ_ONLY="1")
    tmp = tempfile.mkdtemp(prefix="migd-bench-scaling-real-")
    config = os.path.join(tmp, "migd.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    env["MIGD_RUN_DIR"] = os.path.join(tmp, "run")
    env["MIGD_STATE_DIR"] = os.path.join(tmp, "lib")
    cold = time_interleaved({"status": installed.argv("status", "--json")}, runs, env, cwd=installed.root)
    rnd = _round(installed, config, None, env, max(runs, 3))
    what = f"{rnd['wall'] and ms(rnd['wall'])}, CPU {ms(rnd['cpu'])}" if "wall" in rnd else f"failed: {rnd.get('error')}"
    table.row(section, f"  real GPUs ({rnd.get('gpus', '?')} × {gpu}), read-only: status | watchdog round",
              f"{ms(cold['status'].median)} | {what}", "", "")
    return {"status": cold["status"].median, **rnd}


def main() -> int:
    import argparse

    from _common import require_dependencies

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = ap.parse_args()
    require_dependencies()
    installed = Installed()
    try:
        table = Table()
        table.header()
        report(table, "6", args.runs, installed, [int(x) for x in args.sizes.split(",")])
    finally:
        installed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
