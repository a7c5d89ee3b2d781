"""Read path on a real GPU: migd's read verbs as cold processes vs nvidia-smi giving the same information.

Run on a GPU machine (read-only: MIGD_READ_ONLY=1 is set here for every migd call):
    MIGD_READ_ONLY=1 PYTHONPATH=src:.devicelib python3 bench/readpath.py [--runs 10]

Commands, each a cold process, all interleaved (A B C ... A B C ...) `--runs` times after one warm-up round:
- nvidia-smi mig -lgip, nvidia-smi mig -lgipp, nvidia-smi -q -d MIG (together: what migd's three verbs show);
- migd status --json, migd profiles, migd plan (config: 7 × 1g on GPU 0), each two ways:
  plain (`python3 -m migd.cli`, source tree, site-packages scanned) and installed (the package layout started
  the way /usr/bin/migd starts it: `python3 -IS`, byte-compiled /usr/lib/migd);
- baselines: `python3 -c pass` and `python3 -I -S -c pass`.
Prints the median per command, the totals, and migd total / nvidia-smi total for both ways (goal <= 1.0x), then
an in-process breakdown of one `status` (import, nvmlInit, GPU/profile reads, state reads) with NVML call counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (Installed, Table, child_env, gpu_available, machine_line, ms, ratio,  # noqa: E402
                     time_interleaved)

CONFIG = """
[[gpu]]
select = 0
mig = true
instances = { "1g" = 7 }
"""

SMI = {
    "nvidia-smi mig -lgip": ["nvidia-smi", "mig", "-lgip"],
    "nvidia-smi mig -lgipp": ["nvidia-smi", "mig", "-lgipp"],
    "nvidia-smi -q -d MIG": ["nvidia-smi", "-q", "-d", "MIG"],
}
# `-q -d MIG` is what issue 6 names, but R580's nvidia-smi has no MIG display group ("Failed to parse --display/-d
# flags", exit 2, in ~20 ms). When it fails, the third command of the baseline is the cheapest valid one giving
# what `migd status` shows per GPU (MIG mode current/pending, persistence): a --query-gpu. `nvidia-smi -q` (the
# full query, where the MIG mode and MIG devices are) is timed too, as the lenient alternative.
SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,pci.bus_id,mig.mode.current,mig.mode.pending,"
             "persistence_mode", "--format=csv"]
SMI_EXTRA = {
    "nvidia-smi --query-gpu=...mig.mode... (csv)": SMI_QUERY,
    "nvidia-smi -q (full query)": ["nvidia-smi", "-q"],
}


def _verbs(config: str) -> Dict[str, List[str]]:
    return {
        "migd status --json": ["status", "--json"],
        "migd profiles": ["profiles"],
        "migd plan (7 × 1g)": ["--config", config, "plan"],
    }


# --- in-process breakdown (runs in a child: `readpath.py --phases`) ----------------------------------------------

def phases(lib: Optional[str] = None) -> int:
    """One `status` read, timed by phase, NVML C calls counted. Prints JSON. `lib`: the installed layout."""
    import time

    if lib:
        sys.path.insert(0, lib)
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    t0 = time.perf_counter()
    import migd.cli  # noqa: F401  (what every verb imports first)
    import migd.report  # noqa: F401
    import migd.engine  # noqa: F401
    import migd.schema  # noqa: F401
    # What the CLI does before it reads a GPU (issue 21.4): the parser built and run, the run wired, the config
    # read (the bench's, where the GPU machine has no /etc/migd.toml; a missing one costs its failed open alone).
    import migd.cli as cli
    import migd.config  # noqa: F401  (status loads it for instance names)
    t_imp = time.perf_counter()
    args = cli.build_parser().parse_args(["--config", os.environ.get("BENCH_CONFIG", "/etc/migd.toml"), "status",
                                          "--json"])
    t_parse = time.perf_counter()
    cli._site(args)
    t_site = time.perf_counter()
    with contextlib.suppress(migd.errors.MigdError):
        cli._load_config(args)
    t_config = time.perf_counter()
    import pynvml
    t2 = time.perf_counter()
    calls: Dict[str, int] = {}
    spent: Dict[str, float] = {}
    clock = time.perf_counter

    class Counting:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            fn = getattr(self._inner, name)
            if not name.startswith("nvml") or not callable(fn):
                return fn

            def call(*args):
                t = clock()
                try:
                    return fn(*args)
                finally:
                    spent[name] = spent.get(name, 0.0) + clock() - t
                    calls[name] = calls.get(name, 0) + 1

            return call

    from migd.model import Gpu

    if os.environ.get("BENCH_SIMULATE"):  # (testing only)
        from migd.sim import make_backend as sim_backend

        backend = sim_backend(simulate=os.environ["BENCH_SIMULATE"], read_only=True,
                              cache_dir=os.environ.get("MIGD_RUN_DIR"))  # the profile cache primed by report()
    else:
        from migd.backend import make_backend

        backend = make_backend(read_only=True, cache_dir=os.environ.get("MIGD_RUN_DIR"))
    backend.open()  # pynvml loads libnvidia-ml here; wrap it after
    t3 = time.perf_counter()
    pynvml.nvmlLib = Counting(pynvml.nvmlLib)
    pynvml._nvmlGetFunctionPointer_cache.clear()
    infos = backend.gpus()
    t4 = time.perf_counter()
    gpus = [Gpu(info, backend.state(info.index)) for info in infos]
    t5 = time.perf_counter()
    text = migd.schema.dumps(migd.schema.status([migd.schema.gpu(g.info, g.state) for g in gpus],
                                                 backend.driver_version(), backend.description, backend.simulated))
    t6 = time.perf_counter()
    backend.close()
    t7 = time.perf_counter()
    print(json.dumps({
        "import migd (cli, report, engine, schema)": t_imp - t0, "argparse (build + parse)": t_parse - t_imp,
        "site (wiring)": t_site - t_parse, "config (read + validate)": t_config - t_site,
        "import pynvml": t2 - t_config, "nvmlInit": t3 - t2,
        "GPUs + profiles + placements": t4 - t3, "state (mode, instances, MIG devices)": t5 - t4,
        "report": t6 - t5, "nvmlShutdown": t7 - t6, "calls": sum(calls.values()),
        "nvml_seconds": sum(spent.values()),
        "per_call_us": {n: spent[n] / calls[n] * 1e6 for n in calls},
        "gpu_count": len(infos), "out_chars": len(text),
        "top_calls": sorted(calls.items(), key=lambda kv: -kv[1])[:6],
    }))
    return 0


_PRIME = """
import sys
from migd.backend import make_backend
b = make_backend(read_only=True, cache_dir=sys.argv[1], cache_write=True)
b.open()
try:
    print(len(b.gpus()))
finally:
    b.close()
"""


def prime_cache(env: Dict[str, str]) -> str:
    """Write the profile cache into the bench's run dir (read-only NVML, like a check). Returns what happened."""
    r = subprocess.run([sys.executable, "-c", _PRIME, env["MIGD_RUN_DIR"]], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return "not written: " + ((r.stderr.strip().splitlines() or ["failed"])[-1])[:60]
    path = os.path.join(env["MIGD_RUN_DIR"], "profiles.json")
    return f"{r.stdout.strip()} GPU(s), {os.path.getsize(path)} bytes" if os.path.exists(path) else "not written"


def run_phases(env: Dict[str, str], runs: int = 3, installed: Optional[Installed] = None) -> Optional[dict]:
    """Median per phase over `runs` child processes (plain, or the installed layout under -I -S)."""
    results = []
    cmd = [sys.executable, os.path.abspath(__file__), "--phases"]
    if installed is not None:
        cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--phases", "--lib", installed.lib]
    for _ in range(runs):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = dict(results[-1])
    for key, value in results[0].items():
        if isinstance(value, float):
            out[key] = sorted(r[key] for r in results)[len(results) // 2]
    return out


# --- the table -------------------------------------------------------------------------------------------------

def report(table: Table, section: str, runs: int, installed: Installed, gpu_label: str = "") -> Dict[str, Any]:
    env = child_env(MIGD_READ_ONLY="1")
    tmp = tempfile.mkdtemp(prefix="migd-bench-read-")
    config = os.path.join(tmp, "migd.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    py = sys.executable
    cmds: Dict[str, Sequence[str]] = {
        "python -c pass": [py, "-c", "pass"],
        "python -I -S -c pass": [py, "-I", "-S", "-c", "pass"],
    }
    cmds.update(SMI)
    cmds.update(SMI_EXTRA)
    cmds["floor: python -I -S, import pynvml, nvmlInit, nvmlShutdown"] = [
        py, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {installed.lib!r}); import pynvml; "
                              "pynvml.nvmlInit(); pynvml.nvmlShutdown()"]
    verbs = _verbs(config)
    for label, args in verbs.items():
        cmds[f"{label} [plain]"] = [py, "-m", "migd.cli", *args]
        cmds[f"{label} [installed]"] = installed.argv(*args)
    # The per-boot profile cache as migd.service leaves it in /run/migd (here: the bench's run dir), written by a
    # read-only backend; and `status` without it (an empty run dir) to show what it saves.
    primed = prime_cache(env)
    empty = tempfile.mkdtemp(prefix="migd-bench-nocache-")
    cmds["migd status --json [installed, no profile cache]"] = ["env", f"MIGD_RUN_DIR={empty}",
                                                                 *installed.argv("status", "--json")]
    samples = time_interleaved(cmds, runs, env, cwd=tmp)
    if gpu_label:
        table.row(section, f"read path on {gpu_label}", f"median of {runs}", "", "")
    table.row(section, "  profile cache (as migd.service leaves it)", primed, "", "")
    third = "nvidia-smi -q -d MIG"
    if samples[third].rc != 0:
        third = "nvidia-smi --query-gpu=...mig.mode... (csv)"
    smi_keys = ["nvidia-smi mig -lgip", "nvidia-smi mig -lgipp", third]
    smi_total = sum(samples[k].median for k in smi_keys)
    lenient = samples["nvidia-smi mig -lgip"].median + samples["nvidia-smi mig -lgipp"].median + \
        samples["nvidia-smi -q (full query)"].median
    totals: Dict[str, Any] = {"smi": smi_total}
    for key in ("python -c pass", "python -I -S -c pass"):
        table.row(section, f"  {key}", ms(samples[key].median), "", "")
    for key in list(SMI) + list(SMI_EXTRA):
        used = "in total" if key in smi_keys else "not in total"
        table.row(section, f"  {key}", ms(samples[key].median), f"{samples[key].spread}, {used}",
                  f"exit {samples[key].rc}" if samples[key].rc else "")
    floor = "floor: python -I -S, import pynvml, nvmlInit, nvmlShutdown"
    table.row(section, f"  {floor}", ms(samples[floor].median), "mean nvidia-smi command " + ms(smi_total / 3),
              ratio(samples[floor].median, smi_total / 3))
    for way in ("plain", "installed"):
        base = samples["python -c pass" if way == "plain" else "python -I -S -c pass"].median
        total = 0.0
        for label in verbs:
            s = samples[f"{label} [{way}]"]
            total += s.median
            table.row(section, f"  {label} [{way}]", ms(s.median), f"interpreter alone {ms(base)}",
                      ratio(s.median, base) + (f" exit {s.rc}" if s.rc else ""))
        totals[way] = total
    nc = samples["migd status --json [installed, no profile cache]"]
    table.row(section, "  migd status --json [installed, no profile cache]", ms(nc.median),
              f"with it {ms(samples['migd status --json [installed]'].median)}",
              ratio(samples["migd status --json [installed]"].median, nc.median))
    table.row(section, "  nvidia-smi total (3 commands)", ms(smi_total), "lgip + lgipp + " + third.split(" (")[0][11:],
              "")
    for way in ("plain", "installed"):
        table.row(section, f"  migd total [{way}] vs nvidia-smi total", ms(totals[way]),
                  f"nvidia-smi {ms(smi_total)}", ratio(totals[way], smi_total) + " (goal <= 1.0x)")
    table.row(section, "  migd total [installed] vs lenient nvidia-smi total", ms(totals["installed"]),
              f"lgip + lgipp + -q {ms(lenient)}", ratio(totals["installed"], lenient))
    totals["lenient"] = lenient
    totals["status"] = samples["migd status --json [installed]"].median
    totals["base"] = samples["python -I -S -c pass"].median
    totals["floor"] = samples[floor].median
    totals["smi_names"] = " + ".join(smi_keys)
    for way, inst in (("plain", None), ("installed", installed)):
        ph = run_phases(dict(env, BENCH_CONFIG=config), installed=inst)
        if ph and "error" in ph:
            table.note(f"in-process breakdown [{way}] failed: {ph['error']}")
            continue
        table.row(section, f"  in-process `status` [{way}] on {ph['gpu_count']} GPU(s): {ph['calls']} NVML calls",
                  "", "median of 3", "")
        for key in ("import migd (cli, report, engine, schema)", "argparse (build + parse)", "site (wiring)",
                    "config (read + validate)", "import pynvml", "nvmlInit", "GPUs + profiles + placements",
                    "state (mode, instances, MIG devices)", "report", "nvmlShutdown"):
            table.row(section, f"    {key}", ms(ph[key]), "", "")
        if inst is not None:
            mean = ph["nvml_seconds"] / ph["calls"] if ph["calls"] else 0.0
            table.row(section, "    mean NVML read call (C library, timed in process)", f"{mean * 1e6:.0f} µs",
                      f"{ph['calls']} calls, {ms(ph['nvml_seconds'])}", "")
            table.note("most frequent NVML calls: " + ", ".join(
                f"{n} ×{c} ({ph['per_call_us'][n]:.0f} µs)" for n, c in ph["top_calls"]))
            totals["nvml_call_s"] = mean
            totals["phases"] = {k: v for k, v in ph.items() if isinstance(v, float)}
            totals["phases"]["calls"] = ph["calls"]
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phases:
        return phases(args.lib)
    from _common import require_dependencies

    require_dependencies()
    os.environ["MIGD_READ_ONLY"] = "1"
    ok, what = gpu_available()
    if not ok:
        print(f"read path: skipped (no GPU: {what})")
        return 0
    print(machine_line())
    installed = Installed()
    try:
        table = Table()
        table.header()
        report(table, "1", args.runs, installed, what)
    finally:
        installed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
