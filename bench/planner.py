"""Planner: time to plan every valid layout for 8 GPUs (plan_gpu over all valid layouts × 8), in process.

Rows, per model:
- boot plan: every valid layout × 8 GPUs from a fresh GPU (MIG off, nothing on it): what `migd boot` plans;
- re-plan: the same, against a GPU that already holds the layout (what `check`, the watchdog and apply's
  verification do): must come out "nothing to do";
- baseline: the same loop building the inputs (DesiredGpu, GpuState) but not planning.
Each is timed `reps` times (a fresh loop each time, interleaved); the medians are printed.

Run alone: python3 bench/planner.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Table, ensure_src_on_path, ms, ratio, simulated_only, us  # noqa: E402
from mutations import DEFAULT_MODELS, valid_layouts  # noqa: E402

ensure_src_on_path()
GPUS = 8


def _infos(model_key: str):
    import migd.log
    import migd.sim
    from migd.sim import make_backend

    migd.log.setup(level="critical", target="stderr")
    with simulated_only():
        backend = make_backend(simulate=f"{model_key}:{GPUS}")
        backend.open()
        try:
            return backend.gpus()
        finally:
            backend.close()
            migd.sim.uninstall()


def _applied_states(info, layouts, desired, fresh) -> Dict[tuple, object]:
    """The live state each layout leaves behind (from one plan), for the re-plan row."""
    from migd.model import GpuState, LiveComputeInstance, LiveGpuInstance
    from migd.plan import plan_gpu

    applied: Dict[tuple, object] = {}
    for layout in layouts:
        plan = plan_gpu(info, desired(info, layout), fresh)
        assert plan.ok, (layout, plan.refusal)
        gis = []
        for gi_id, a in enumerate(plan.assignments):
            cis = tuple(LiveComputeInstance(id=0, profile_id=cp.id, placement=pl)
                        for cp, pl in zip(a.instance.compute, a.compute_placements))
            gis.append(LiveGpuInstance(id=gi_id, profile_id=a.instance.profile.id, placement=a.placement, compute=cis))
        applied[layout] = GpuState(mig_current=True, mig_pending=True, persistence=None, instances=tuple(gis))
    return applied


def measure(model_key: str, reps: int) -> Dict[str, object]:
    from migd.layout import DesiredGpu, DesiredInstance
    from migd.model import GpuEntry, GpuSelector, GpuState
    from migd.plan import plan_gpu

    infos = _infos(model_key)
    layouts = valid_layouts(model_key)
    entry = GpuEntry(number=1, selector=GpuSelector("all"), mig=True, where="bench")
    fresh = GpuState(mig_current=False, mig_pending=False, persistence=None)

    def desired(info, layout):
        items = []
        for pid in layout:
            p = info.profile_by_id(pid)
            items.append(DesiredInstance(p, (p.full_compute_profile,)))
        return DesiredGpu(entry, True, tuple(items))

    applied = _applied_states(infos[0], layouts, desired, fresh)

    def baseline() -> int:
        n = 0
        for layout in layouts:
            for info in infos:
                d = desired(info, layout)
                s = GpuState(mig_current=False, mig_pending=False, persistence=None)
                n += len(d.instances) + (s.persistence is None)
        return n

    def boot() -> int:
        n = 0
        for layout in layouts:
            for info in infos:
                plan = plan_gpu(info, desired(info, layout),
                                GpuState(mig_current=False, mig_pending=False, persistence=None))
                n += len(plan.actions)
        return n

    def replan() -> int:
        n = 0
        for layout in layouts:
            state = applied[layout]
            for info in infos:
                plan = plan_gpu(info, desired(info, layout), state)
                if not plan.noop:
                    raise AssertionError(f"re-plan of {layout} is not a no-op: {plan.actions}")
                n += 1
        return n

    times: Dict[str, List[float]] = {"baseline": [], "boot": [], "replan": []}
    for _ in range(reps):
        for key, fn in (("baseline", baseline), ("boot", boot), ("replan", replan)):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"name": infos[0].name, "layouts": len(layouts), "plans": len(layouts) * GPUS, "median": med}


def report(table: Table, section: str, models: Sequence[str], reps: int) -> None:
    for model in models:
        r = measure(model, reps)
        med, plans = r["median"], r["plans"]
        table.row(section, f"{r['name']}: {r['layouts']} layouts × {GPUS} GPUs = {plans} plans", f"median of {reps}")
        table.row(section, "  plan all, fresh GPUs (boot)", ms(med["boot"]), f"inputs only {ms(med['baseline'])}",
                  ratio(med["boot"], med["baseline"]))
        table.row(section, "    per plan", us(med["boot"] / plans), f"inputs only {us(med['baseline'] / plans)}", "")
        table.row(section, "  re-plan all, layout already there (check)", ms(med["replan"]),
                  f"inputs only {ms(med['baseline'])}", ratio(med["replan"], med["baseline"]))
        table.row(section, "    per plan", us(med["replan"] / plans), "", "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    table = Table()
    table.header()
    report(table, "4", [m for m in args.models.split(",") if m], args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
