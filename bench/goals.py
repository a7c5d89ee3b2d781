"""Issue 12's and 21's table from one run: figure, now, goal, met or missed, and for a missed goal what dominates it
(measured in the same run) and what would remove it. Printed by run.py after the sections."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

WIDTHS = (62, 44, 10)

# What removes each share of a cold read verb (in-process phases of readpath.py), for a missed goal.
_REMEDY = {
    "interpreter": "the interpreter's own start (python3 -I -S -c pass): not migd's",
    "import migd (cli, report, engine, schema)": "fewer or lighter modules on the read path (1b names the top ones)",
    "argparse (build + parse)": "argparse: building the whole parser (every verb's options, a HelpFormatter per "
                                "option) to parse two words; (shutil, which that formatter imports, comes with "
                                "pynvml's ctypes.util anyway: the floor pays it)",
    "site (wiring)": "the host environment and backend factory (migd.site)",
    "config (read + validate)": "reading and validating the config (tomli, the layout checks) for instance names",
    "import pynvml": "pynvml itself (one ~5000-line ctypes module); a trimmed NVML binding would remove most of it",
    "nvmlInit": "the driver's init (nvidia-persistenced keeps the driver loaded; nothing in migd)",
    "GPUs + profiles + placements": "the per-boot profile cache (only identity and mode are read live)",
    "state (mode, instances, MIG devices)": "fewer reads per instance (the MIG-device walk: 4 per instance)",
    "report": "the report itself",
    "nvmlShutdown": "the library's shutdown",
    "outside the phases": "what the in-process phases do not see: process start and exit, loading and relocating "
                          "libnvidia-ml, page faults; the floor's own cold run pays most of it too (compare the floor's "
                          "cold time with its in-process phases)",
}


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def _verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def _line(cells: Sequence[str]) -> None:
    if len(cells[0]) > WIDTHS[0]:
        print(cells[0])
        cells = ("",) + tuple(cells[1:])
    print(" ".join(f"{c:<{w}}" for c, w in zip(cells, WIDTHS)) + " " + cells[-1])


def _note(text: str) -> None:
    print(f"    {text}")


def _split_of(values: Dict[str, float], total: float) -> str:
    top = sorted(values.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {_ms(v)} ({v / total * 100:.0f}%)" for k, v in top if v > 0)


def summary(results: Dict[str, Any], only: Sequence[str], gpu: bool) -> None:
    print("Issues 12 and 21: figure / now / goal (this run)")
    _line(("figure", "now", "goal", "verdict"))
    _line(("-" * (WIDTHS[0] - 1), "-" * (WIDTHS[1] - 1), "-" * (WIDTHS[2] - 1), "-------"))
    rows: List[Tuple[str, str, str, Optional[bool], List[str]]] = []
    r1 = results.get("1")
    if r1 and "status" in r1:
        status, smi, total, floor = r1["status"], r1["smi"], r1["installed"], r1["floor"]
        ph = r1.get("phases") or {}
        shares = {k: ph[k] for k in _REMEDY if k in ph}
        if "base" in r1:
            shares["interpreter"] = r1["base"]
        shares["outside the phases"] = max(status - sum(shares.values()), 0.0)
        reads_s = ph.get("GPUs + profiles + placements", 0.0) + ph.get("state (mode, instances, MIG devices)", 0.0)
        why = [f"split of `status` ({ph.get('calls', '?')} NVML calls): {_split_of(shares, status)}"] + [
            f"{k}: {_REMEDY[k]}" for k, _ in sorted(shares.items(), key=lambda kv: -kv[1])[:2]]
        if not ph:
            why = ["the in-process split of `status` failed: see section 1's notes"]
        rows.append(("`migd status --json` vs the 3 nvidia-smi commands, cold", f"{_ms(status)} vs {_ms(smi)} "
                     f"({status / smi:.2f}x)", "<= 1.0x", status / smi <= 1.0, why))
        rows.append(("migd total [installed] vs nvidia-smi total (status+profiles+plan)",
                     f"{_ms(total)} vs {_ms(smi)} ({total / smi:.2f}x)", "<= 2.0x", total / smi <= 2.0,
                     ["each verb pays the same start: interpreter, imports, nvmlInit (split above)"]))
        rows.append(("`status` [installed] above the floor (python -I -S, pynvml, nvmlInit)",
                     f"{_ms(status)} - {_ms(floor)} = {_ms(status - floor)}", "<= 15 ms",
                     status - floor <= 0.015,
                     [f"above the floor: import migd {_ms(ph.get('import migd (cli, report, engine, schema)', 0))}, "
                      f"reads {_ms(reads_s)}, report {_ms(ph.get('report', 0))}"]))
    else:
        for what, goal in (("`migd status --json` vs the 3 nvidia-smi commands, cold", "<= 1.0x"),
                           ("migd total [installed] vs nvidia-smi total", "<= 2.0x"),
                           ("`status` [installed] above the floor", "<= 15 ms")):
            rows.append((what, "not measured (no GPU)" if "1" in only else "section 1 not run", goal, None, []))
    r3 = results.get("3") or {}
    if "reads_per_gpu" in r3:
        floor3: Dict[str, int] = r3["reads_floor"]
        per_gpu = r3["reads_per_gpu"]
        why = [f"minimum per GPU ({r3['reads_minimum']}): " + ", ".join(f"{k} {v}" for k, v in floor3.items()),
               "most frequent: " + ", ".join(f"{n} ×{c}" for n, c in r3["top_reads"]),
               "removes it: the profile table from the per-boot cache (a later apply, check, watchdog round); "
               "a fresh boot has no cache"]
        lasting = r3.get("reads_lasting")
        why[-1] = ("what is left: identity, the processes before a change, the creates' results, one verification and "
                   "the MIG devices (the minimum above without the profile table); +1 VBIOS read keys the lasting cache")
        rows.append(("NVML reads per GPU, fresh-boot apply of 7 × 1g (simulated dgx-a100)",
                     f"{per_gpu:.0f} (minimum {r3['reads_minimum']}; "
                     + (f"{lasting:.1f} from the lasting cache)" if lasting else "lasting cache not measured)"),
                     "<= 90 cached", lasting <= 90 if lasting else None, why))
    else:
        rows.append(("NVML reads per GPU, fresh-boot apply of 7 × 1g (simulated)", "section 3 not run", "<= 80",
                     None, []))
    if "own_s" in r3:
        own = r3["own_s"]
        shares = {"interpreter": r3["own_base_s"], "imports": r3["own_imports_s"], "NVML reads (simulated latency)":
                  r3["own_nvml_s"], "migd's own work": r3["own_rest_s"]}
        why = [f"split: {_split_of(shares, own)}",
               "removes it: fewer reads (above), and reading the 8 GPUs in parallel threads (ctypes releases the GIL "
               "during each NVML call)"]
        why[-1] = "removes it: imports (structlog is loaded at the first event), then the slowest GPU's reads"
        rows.append((f"migd's time for an 8-GPU boot apply but mutating calls ({r3['latency']}, simulated)",
                     f"{_ms(own)} (reads waited for: {_ms(r3['own_nvml_s'])})", "<= 250 ms",
                     own <= 0.250, why))
    r6 = results.get("6") or {}
    if "boot8" in r6:
        b1, b8 = r6["boot1"], r6["boot8"]
        rows.append(("8-GPU vs 1-GPU boot apply (simulated H200s, GPUs side by side)",
                     f"{_ms(b8)} vs {_ms(b1)} ({b8 / b1:.2f}x)", "<= 1.5x", b8 / b1 <= 1.5,
                     ["what grows with GPUs: the simulator's and migd's Python work per GPU (one GIL); the reads "
                      "overlap (section 6)"]))
    r5 = results.get("5")
    r5s = results.get("5sim") or {}
    sim_rss = f" (sim 8 GPUs: {r5s['rss_last'] / 1024:.1f} MiB)" if r5s else ""
    sim_cpu = f" (sim 8 GPUs: {_ms(r5s['cpu'])})" if r5s else ""
    if r5:
        split = r5.get("split_last") or {}
        rss = r5["rss_last"] / 1024
        rows.append(("watchdog RSS on the real GPU", f"{rss:.1f} MiB", "<= 25 MiB", rss <= 25,
                     ["RSS by mapping: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in
                                                     sorted(split.items(), key=lambda kv: -kv[1]))]))
        rows.append(("watchdog CPU per check on the real GPU", _ms(r5["cpu"]), "<= 15 ms", r5["cpu"] <= 0.015,
                     [f"first check {_ms(r5['cpu_first'])} CPU (imports, profile table)"]))
    else:
        rows.append(("watchdog RSS on the real GPU", "no GPU" + sim_rss, "<= 25 MiB", None, []))
        rows.append(("watchdog CPU per check on the real GPU", "no GPU" + sim_cpu, "<= 15 ms", None,
                     []))
    for what, now, goal, met, why in rows:
        _line((what, now, goal, _verdict(met)))
        if met is False:
            for w in why:
                _note(w)
