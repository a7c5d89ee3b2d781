"""Watchdog footprint: RSS and CPU time per check of migd.watch.Watcher.check_once, against an idle Python.

Simulated (any machine): an 8-GPU dgx-h100 in a state file, the layout applied first (so every check finds it
matching, the steady state), then one process constructs Watcher(config, site.build(simulate, sim_state)) and calls
check_once N times. Real GPU (read-only): Watcher(config, site.build()) with MIGD_READ_ONLY=1; check_once only reads.

Figures (all from the measuring process itself): VmRSS before migd is imported (= idle interpreter), after the
first check, after N checks (growth = leak); CPU time (time.process_time) and wall time per check, medians over
checks 2..N (the first one imports what the checks need). Baseline: a separate idle `python3 -c` process's VmRSS.

Run alone:  python3 bench/watchdog.py [--checks 50]                     (simulated)
            MIGD_READ_ONLY=1 python3 bench/watchdog.py --real [--checks 20]   (the GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIM_CONFIG = """
[[gpu]]
select = "all"
mig = true
instances = [
  { profile = "3g.40gb", name = "train" },
  { profile = "2g.20gb", name = "eval" },
  "1g.10gb",
  "1g.10gb",
]
"""

REAL_CONFIG = """
[[gpu]]
select = "all"
mig = true
instances = { "1g" = 7 }
"""

def rss_split() -> dict:
    """VmRSS of this process by what holds it (KiB), from /proc/self/smaps: libnvidia-ml (the driver library,
    mapped once), the interpreter (python binary, libpython), other shared libraries (ctypes, _ssl, ...), Python's
    heap and other anonymous memory (objects, ctypes buffers, arenas), everything else (stack, vdso, files)."""
    out = {"libnvidia-ml": 0, "interpreter": 0, "other libraries": 0, "heap + anonymous (Python objects)": 0,
           "other": 0}
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            path = ""
            for line in f:
                head = line.split(None, 6)
                if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                    path = head[5].strip() if len(head) > 5 else ""
                elif line.startswith("Rss:"):
                    kib = int(line.split()[1])
                    name = os.path.basename(path)
                    if "libnvidia-ml" in name:
                        key = "libnvidia-ml"
                    elif name.startswith(("python", "libpython")):
                        key = "interpreter"
                    elif ".so" in name:
                        key = "other libraries"
                    elif not path or path == "[heap]":
                        key = "heap + anonymous (Python objects)"
                    else:
                        key = "other"
                    out[key] += kib
    except OSError:
        pass
    return out


IDLE = ("import sys\nfor l in open('/proc/self/status'):\n    l.startswith('VmRSS:') and print(l.split()[1])")


def _median(values):
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(args) -> int:
    """The measuring process: prints one JSON object. Imports in stages, RSS after each (what holds it); nothing
    from bench's own helpers is imported, so the stages are the watchdog's."""
    stages = [("interpreter", _rss_kib())]
    if args.lib:
        sys.path.insert(0, args.lib)
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import migd.watch  # noqa: F401  (migd's modules; structlog never: the resident watch logs without it)
    stages.append(("migd modules", _rss_kib()))
    rss_idle = stages[0][1]
    import migd.log
    from migd import site
    from migd.watch import Watcher

    migd.log.setup(level="info", target="stderr")  # the service logs at info (to the journal there)

    w = Watcher(args.config, site.build()) if args.real else Watcher(args.config, site.build(args.simulate, args.sim_state))
    stages.append(("what every reader process needs, imported once (pynvml, the NVML backend, metrics)", _rss_kib()))
    rss_import = _rss_kib()
    split_import = rss_split()
    split_first: dict = {}
    cpu, wall, statuses = [], [], []
    rss_first = 0
    reader_cpu = []
    for n in range(args.checks):
        c, t, k = time.process_time(), time.perf_counter(), os.times()
        result = w.check_once()
        k2 = os.times()
        # the round's reads run in a forked reader process: its CPU (reaped by now) is the check's too
        child = k2.children_user - k.children_user + k2.children_system - k.children_system
        reader_cpu.append(child)
        cpu.append(time.process_time() - c + child)
        wall.append(time.perf_counter() - t)
        statuses.append(sorted(set(result.values())))
        if n == 0:
            rss_first = _rss_kib()
            stages.append(("first check (the NVML library is loaded by its reader process alone)", rss_first))
            split_first = rss_split()
    import resource

    with open("/proc/self/maps") as maps:
        nvml_mapped = any("libnvidia-ml" in line for line in maps)
    out = {
        "rss_idle": rss_idle, "rss_import": rss_import, "rss_first": rss_first, "rss_last": _rss_kib(),
        "stages": stages + [(f"{args.checks - 1} more checks", _rss_kib())],
        "split_import": split_import, "split_first": split_first, "split_last": rss_split(),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu_first": cpu[0], "wall_first": wall[0],
        "cpu": _median(cpu[1:] or cpu), "wall": _median(wall[1:] or wall),
        "reader_cpu": _median(reader_cpu[1:] or reader_cpu),
        "loaded": sorted(m for m in ("structlog", "asyncio", "ssl") if m in sys.modules),
        "nvml_library_mapped": nvml_mapped,
        "checks": args.checks, "statuses": sorted({s for st in statuses for s in st}),
        "gpus": len(w.gpus),
    }
    print(json.dumps(out))
    return 0


def _run_child(argv, env, interpreter) -> dict:
    import subprocess

    r = subprocess.run(interpreter + [os.path.abspath(__file__), "--child"] + argv, env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"watchdog child failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _idle_rss(env, interpreter) -> int:
    import statistics
    import subprocess

    values = []
    for _ in range(3):
        r = subprocess.run(interpreter + ["-c", IDLE], env=env, capture_output=True, text=True, check=True)
        values.append(int(r.stdout.strip()))
    return int(statistics.median(values))


def measure(checks: int, real: bool = False, installed=None) -> dict:
    import subprocess
    import tempfile

    from _common import child_env

    env = child_env(simulated=not real)  # simulated: every migd call passes --simulate/--sim-state
    tmp = tempfile.mkdtemp(prefix="migd-bench-watch-")
    config = os.path.join(tmp, "migd.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(REAL_CONFIG if real else SIM_CONFIG)
    argv = ["--config", config, "--checks", str(checks)]
    # The plain interpreter (with site) runs the child; under -I -S the installed layout is what is imported.
    interpreter = [sys.executable]
    if installed is not None:
        interpreter = [sys.executable, "-I", "-S"]
        argv += ["--lib", installed.lib]
    if real:
        env["MIGD_READ_ONLY"] = "1"
        argv.append("--real")
    else:
        state = os.path.join(tmp, "sim", "state.json")
        os.makedirs(os.path.dirname(state))
        argv += ["--simulate", "dgx-h100", "--sim-state", state]
        subprocess.run([sys.executable, "-m", "migd.cli", "--simulate", "dgx-h100", "--sim-state", state,
                        "--config", config, "-q", "apply"], env=env, check=True, stdout=subprocess.DEVNULL)
    result = _run_child(argv, env, interpreter)
    result["idle_process"] = _idle_rss(env, interpreter)
    return result


def report(table, section: str, checks: int, real: bool = False, label: str = "", installed=None) -> dict:
    from _common import ms

    r = measure(checks, real, installed)
    what = label or ("real GPU, read-only" if real else "simulated dgx-h100 (8 GPUs, state file)")
    idle = r["idle_process"]
    table.row(section, f"{what}: {r['checks']} checks, {r['gpus']} GPUs, status {'/'.join(r['statuses'])}")
    stages = r["stages"]
    table.note("RSS added by: " + ", ".join(
        f"{name} {(kib - (stages[n - 1][1] if n else 0)) / 1024:+.1f} MiB" for n, (name, kib) in enumerate(stages)))
    split = r["split_last"]
    table.note(f"RSS after {r['checks']} checks by mapping: " + ", ".join(
        f"{k} {v / 1024:.1f} MiB" for k, v in sorted(split.items(), key=lambda kv: -kv[1])))
    table.row(section, "  RSS after the first check", f"{r['rss_first'] / 1024:.1f} MiB",
              f"idle python {idle / 1024:.1f} MiB", f"{r['rss_first'] / idle:.2f}x")
    growth = r["rss_last"] - r["rss_first"]
    table.row(section, f"  RSS after {r['checks']} checks (growth)",
              f"{r['rss_last'] / 1024:.1f} MiB ({growth:+d} KiB)", f"idle python {idle / 1024:.1f} MiB",
              f"{r['rss_last'] / idle:.2f}x")
    table.row(section, "  CPU time per check (median; resident + reader process)", ms(r["cpu"]),
              f"wall {ms(r['wall'])}; reader {ms(r['reader_cpu'])}", "")
    table.note(f"resident process: libnvidia-ml mapped: {'YES' if r['nvml_library_mapped'] else 'no'}; "
               f"structlog/asyncio/ssl loaded: {', '.join(r['loaded']) or 'none'}")
    table.row(section, "  first check (imports, NVML profiles)", f"CPU {ms(r['cpu_first'])}",
              f"wall {ms(r['wall_first'])}", "")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", type=int, default=50)
    ap.add_argument("--real", action="store_true", help="the real GPUs (needs MIGD_READ_ONLY=1)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--simulate", help=argparse.SUPPRESS)
    ap.add_argument("--sim-state", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from _common import require_dependencies

    require_dependencies()
    from _common import Table, gpu_available

    if args.real:
        ok, why = gpu_available()
        if not ok:
            print(f"skipped (no GPU: {why})")
            return 0
    table = Table()
    table.header()
    report(table, "5", args.checks, args.real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
