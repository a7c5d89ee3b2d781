"""NVML mutations: migd vs the theoretical minimum vs a model of mig-parted's creation-order search.

For every valid layout (multiset of GPU-instance profiles that fits, each with one compute instance spanning it)
of the given simulated models, starting from an empty GPU with MIG mode on, count the mutating NVML calls
(nvml*Create*, nvml*Destroy*, nvml*Set*) each strategy makes, and how many of them failed:

- minimum: one create per GPU instance and per compute instance, nothing fails, nothing is destroyed;
- migd: `migd.engine.apply_gpu` (the engine `migd apply` runs), counted at the fake libnvidia-ml;
- mig-parted: a model of NVIDIA mig-parted's SetMigConfig (pkg/mig/config/config.go, v0.15; see
  ../shared/reference/prior-art-mig-parted.md §4), written here from that description, on the same simulator:
  profiles flattened and sorted by GPU slices, then compute slices, then attributes (descending); unique
  permutations tried in the order of its swap-based `iteratePermutationsUntilSuccess`; for each: if the GPU holds
  any compute instance, clear it (destroy every CI, then every GI; one clear attempt); then per profile
  nvmlDeviceCreateGpuInstance (no placement: the driver picks the slot) and nvmlGpuInstanceCreateComputeInstance,
  where consecutive entries of the same GI profile first try to put the CI into the previous GI (the call fails when
  that GI is full, and a new GI is created); the first failed create abandons the ordering; when every ordering has
  failed the GPU is cleared and left empty.

The simulator's driver-chosen slot (migd.sim.host.SimHost.create_gi with placement=None) is the rule that
reproduces every transcript in NVIDIA's MIG user guide, including `-cgi 19,19,14,9` failing with Insufficient
Resources: the free placement that blocks the fewest still-free placements, lowest start on ties. mig-parted's
result depends on that rule; migd's does not (it always names the placement).

Run alone: python3 bench/mutations.py [--models a100-40gb,h100-80gb] [--sample N]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Table, ensure_src_on_path, simulated_only  # noqa: E402

ensure_src_on_path()

MUTATING = re.compile(r"Create|Destroy|Set")
DEFAULT_MODELS = ("a100-40gb", "h100-80gb")


# --- valid layouts, from the simulator's own tables (the ground truth for "fits") -------------------------------

def valid_layouts(model_key: str) -> List[Tuple[int, ...]]:
    """Every multiset of GI profile IDs that fits an empty GPU of this model, sorted."""
    from migd.sim.catalog import MODELS

    model = MODELS[model_key]
    profiles = {info["id"]: info for info in model.gi_profiles.values()}
    ids = sorted(profiles)
    out = []
    for k in range(1, model.compute_slices + 1):
        for combo in itertools.combinations_with_replacement(ids, k):
            if _fits(profiles, combo, model.compute_slices):
                out.append(combo)
    return out


def _fits(profiles: Dict[int, dict], combo: Sequence[int], slices: int) -> bool:
    if sum(profiles[i]["sliceCount"] for i in combo) > slices:
        return False
    for pid in set(combo):
        if combo.count(pid) > profiles[pid]["instanceCount"]:
            return False
    if sum(profiles[i]["ofaCount"] for i in combo) > 1:
        return False

    def place(rest: Sequence[int], taken: int) -> bool:
        if not rest:
            return True
        for start, size in profiles[rest[0]]["placements"]:
            mask = ((1 << size) - 1) << start
            if not mask & taken and place(rest[1:], taken | mask):
                return True
        return False

    return place(sorted(combo, key=lambda i: -profiles[i]["sliceCount"]), 0)


# --- call recording ----------------------------------------------------------------------------------------------

class Recorder:
    """Wraps the installed fake libnvidia-ml: every C call's (name, return code) goes to `calls`."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: List[Tuple[str, int]] = []

    def __getattr__(self, name: str):
        target = getattr(self._inner, name)
        if not name.startswith("nvml") or not callable(target):
            return target
        calls = self.calls

        def call(*args):
            rc = target(*args)
            calls.append((name, rc))
            return rc

        return call

    def tally(self) -> Tuple[int, int, int]:
        """(mutating calls, failed mutating calls, destroy calls) since the last reset."""
        mutating = [(n, rc) for n, rc in self.calls if MUTATING.search(n)]
        return (len(mutating), sum(1 for _, rc in mutating if rc != 0),
                sum(1 for n, rc in mutating if "Destroy" in n))


def _reset_gpu(host, gpu: int = 0) -> None:
    """An empty GPU with MIG mode on (what a Hopper looks like right after `migd` set the mode, or an Ampere)."""
    g = host.gpus[gpu]
    g["mig"], g["gis"], g["processes"], g["clients"] = [1, 1], [], [], []


# --- the mig-parted model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MigProfile:
    """One flattened entry, like mig-parted's `MigProfile` (C compute slices of a G-slice GI, attributes)."""

    gi_index: int
    gi_id: int
    ci_index: int
    ci_id: int
    g: int
    c: int
    attrs: str  # "me" for +me profiles
    memory_mb: int
    name: str


def _flatten(info, layout: Sequence[int]) -> List[MigProfile]:
    mps = []
    for pid in layout:
        p = info.profile_by_id(pid)
        cp = p.full_compute_profile
        attrs = ",".join(sorted(a for a in p.name.split("+")[1:]))
        mps.append(MigProfile(p.index, p.id, cp.index, cp.id, p.slices, cp.slices, attrs, p.memory_mb, p.name))

    def before(a: MigProfile, b: MigProfile) -> int:  # mig-parted's Flatten sort: G, C, attributes, descending
        if a.g != b.g:
            return -1 if a.g > b.g else 1
        if a.c != b.c:
            return -1 if a.c > b.c else 1
        if a.attrs != b.attrs:
            return -1 if b.attrs < a.attrs else 1
        # Go's map order + unstable sort leave ties unordered; we break them by memory (larger first), fixed.
        return (b.memory_mb > a.memory_mb) - (b.memory_mb < a.memory_mb)

    return sorted(mps, key=functools.cmp_to_key(before))


class MigPartedModel:
    def __init__(self, pynvml, host, info, gpu: int = 0):
        self.n = pynvml
        self.host = host
        self.info = info
        self.gpu = gpu
        self.device = pynvml.nvmlDeviceGetHandleByIndex(gpu)

    def set_config(self, layout: Sequence[int]) -> Tuple[bool, int]:
        """(created?, orderings tried)."""
        tried = 0
        for mps in self._unique_permutations(_flatten(self.info, layout)):
            tried += 1
            if self._attempt(mps):
                return True, tried
        self._clear()  # "all orderings failed": clear the GPU, leave it empty
        return False, tried

    @staticmethod
    def _unique_permutations(mps: List[MigProfile]):
        """iteratePermutationsUntilSuccess: swap-based recursion, skipping a swap partner equal to an earlier one."""
        def rec(i: int):
            if i >= len(mps):
                yield list(mps)
                return
            for j in range(i, len(mps)):
                if any(mps[k] == mps[j] for k in range(i, j)):
                    continue
                mps[i], mps[j] = mps[j], mps[i]
                yield from rec(i + 1)
                mps[i], mps[j] = mps[j], mps[i]

        yield from rec(0)

    def _has_compute_instances(self) -> bool:
        # GetMigConfig counts compute instances (a GI without CIs is invisible to it), read through NVML.
        for gi in self.host.gpus[self.gpu]["gis"]:
            h = self.n.nvmlDeviceGetGpuInstanceById(self.device, gi["id"])
            self.n.nvmlGpuInstanceGetInfo(h)
            if gi["cis"]:
                return True
        return False

    def _clear(self) -> bool:
        """ClearMigConfig: destroy every CI of every GI, then the GI. False on the first failure."""
        for gi in list(self.host.gpus[self.gpu]["gis"]):
            try:
                h = self.n.nvmlDeviceGetGpuInstanceById(self.device, gi["id"])
                for ci in list(gi["cis"]):
                    c = self.n.nvmlGpuInstanceGetComputeInstanceById(h, ci["id"])
                    self.n.nvmlComputeInstanceDestroy(c)
                self.n.nvmlGpuInstanceDestroy(h)
            except self.n.NVMLError:
                return False
        return True

    def _attempt(self, mps: List[MigProfile]) -> bool:
        cleared = 0
        while self._has_compute_instances():
            if cleared == 1 or not self._clear():  # maxClearAttempts = 1
                return False
            cleared += 1
        last_gi_profile, gi = -1, None
        for mp in mps:
            self.n.nvmlDeviceGetGpuInstanceProfileInfo(self.device, mp.gi_index)
            reuse = gi is not None and last_gi_profile == mp.gi_id
            last_gi_profile = mp.gi_id
            while True:
                if not reuse:
                    try:
                        gi = self.n.nvmlDeviceCreateGpuInstance(self.device, mp.gi_id)
                    except self.n.NVMLError:
                        return False
                try:
                    self.n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, mp.ci_index, 0)
                    self.n.nvmlGpuInstanceCreateComputeInstance(gi, mp.ci_id)
                except self.n.NVMLError:
                    if reuse:
                        reuse = False
                        continue
                    return False
                break
        return True


# --- the benchmark -----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    mutating: List[int] = field(default_factory=list)
    failed: List[int] = field(default_factory=list)
    destroys: List[int] = field(default_factory=list)
    not_created: int = 0
    orderings: List[int] = field(default_factory=list)

    def add(self, t: Tuple[int, int, int]) -> None:
        self.mutating.append(t[0])
        self.failed.append(t[1])
        self.destroys.append(t[2])


def _mmm(values: Sequence[int]) -> str:
    return f"{min(values)} / {statistics.mean(values):.2f} / {max(values)}"


RULES = {
    "sim": "least-blocking slot (simulator default, matches the guide)",
    "highest": "highest free slot",
    "lowest": "lowest free slot",
}


def _use_rule(host, rule: str) -> None:
    """Swap the simulated driver's slot choice for nvmlDeviceCreateGpuInstance (placement=None) on this host."""
    if rule == "sim":
        return
    from migd import errors as E
    from migd.sim.host import SimError

    create = host.create_gi

    def create_gi(gpu: int, profile_id: int, placement=None):
        if placement is None:
            free = host.free_placements(gpu, profile_id)
            if not free:
                raise SimError(E.INSUFFICIENT_RESOURCES, "no free placement")
            placement = max(free) if rule == "highest" else min(free)
        return create(gpu, profile_id, placement)

    host.create_gi = create_gi


def measure(model_key: str, sample: int = 1, rule: str = "sim", with_migd: bool = True) -> Dict[str, object]:
    """Counts for every valid layout of the model (every `sample`-th one if sample > 1)."""
    with simulated_only():
        return _measure(model_key, sample, rule, with_migd)


def _measure(model_key: str, sample: int, rule: str, with_migd: bool) -> Dict[str, object]:
    import pynvml

    import migd.log
    import migd.sim
    from migd import engine
    from migd.sim import make_backend
    from migd.layout import DesiredGpu, DesiredInstance
    from migd.model import GpuEntry, GpuSelector

    migd.log.setup(level="critical", target="stderr")
    layouts = valid_layouts(model_key)
    if sample > 1:
        layouts = layouts[::sample]
    backend = make_backend(simulate=model_key)
    backend.open()
    t0 = time.perf_counter()
    try:
        host = pynvml.nvmlLib.host
        _use_rule(host, rule)
        info = backend.gpus()[0]
        recorder = Recorder(pynvml.nvmlLib)
        pynvml.nvmlLib = recorder
        pynvml._nvmlGetFunctionPointer_cache.clear()
        parted = MigPartedModel(pynvml, host, info)
        entry = GpuEntry(number=1, selector=GpuSelector("index", (0,)), mig=True, where="bench")
        minimum, migd_t, parted_t = Tally(), Tally(), Tally()
        migd_failures: List[str] = []
        examples: List[str] = []
        worst: Tuple[int, str, int] = (-1, "", 0)
        for layout in layouts:
            minimum.add((2 * len(layout), 0, 0))
            items = []
            for pid in layout:
                p = info.profile_by_id(pid)
                items.append(DesiredInstance(p, (p.full_compute_profile,)))
            desired = DesiredGpu(entry, True, tuple(items))

            if with_migd:
                _reset_gpu(host)
                del recorder.calls[:]
                result = engine.apply_gpu(backend, info, desired)
                migd_t.add(recorder.tally())
                if result.outcome != engine.Outcome.APPLIED or len(host.gpus[0]["gis"]) != len(layout):
                    migd_failures.append(f"{_names(info, layout)}: {result.outcome} {result.message}")

            _reset_gpu(host)
            del recorder.calls[:]
            ok, tried = parted.set_config(layout)
            parted_t.add(recorder.tally())
            parted_t.orderings.append(tried)
            if parted_t.mutating[-1] > worst[0]:
                worst = (parted_t.mutating[-1], _names(info, layout), tried)
            if not ok:
                parted_t.not_created += 1
                if len(examples) < 3:
                    examples.append(_names(info, layout))
            elif sorted(gi["profile_id"] for gi in host.gpus[0]["gis"]) != sorted(layout):
                raise AssertionError(f"mig-parted model created the wrong layout for {layout}")
    finally:
        backend.close()
        migd.sim.uninstall()
    return {"model": model_key, "name": info.name, "layouts": len(layouts), "minimum": minimum, "migd": migd_t,
            "mig-parted": parted_t, "migd_failures": migd_failures, "examples": examples, "worst": worst,
            "seconds": time.perf_counter() - t0}


def _names(info, layout: Sequence[int]) -> str:
    return "+".join(info.profile_by_id(pid).name for pid in layout)


def report(table: Table, section: str, models: Sequence[str], sample: int = 1,
           rules: Sequence[str] = tuple(RULES)) -> List[Dict[str, object]]:
    out = []
    for model in models:
        r = measure(model, sample)
        out.append(r)
        mini, mg, mp = r["minimum"], r["migd"], r["mig-parted"]
        mean_min = statistics.mean(mini.mutating)
        scope = f"{r['layouts']} valid layouts" + (f" (every {sample}th)" if sample > 1 else "")
        table.row(section, f"{r['name']}: {scope}, from empty (MIG on)", "min / mean / max", "", "")
        table.row(section, "  mutating calls: migd apply", _mmm(mg.mutating), f"minimum {_mmm(mini.mutating)}",
                  f"{statistics.mean(mg.mutating) / mean_min:.2f}x")
        table.row(section, "  mutating calls: mig-parted model", _mmm(mp.mutating), f"minimum {_mmm(mini.mutating)}",
                  f"{statistics.mean(mp.mutating) / mean_min:.2f}x")
        table.row(section, "  failed calls: migd | mig-parted", _mmm(mg.failed), f"mig-parted {_mmm(mp.failed)}", "")
        table.row(section, "  destroy calls: migd | mig-parted", _mmm(mg.destroys), f"mig-parted {_mmm(mp.destroys)}",
                  "")
        table.row(section, "  orderings tried by mig-parted", _mmm(mp.orderings), "", "")
        table.row(section, "  layouts not created: migd | mig-parted", f"{len(r['migd_failures'])} of {r['layouts']}",
                  f"mig-parted {mp.not_created} of {r['layouts']}", "")
        w = r["worst"]
        table.note(f"mig-parted worst case: {w[1]}: {w[0]} mutating calls, {w[2]} orderings")
        for e in r["examples"]:
            table.note(f"mig-parted cannot create: {e}")
        for e in r["migd_failures"][:3]:
            table.note(f"migd FAILED: {e}")
        for rule in rules:
            if rule == "sim":
                continue
            alt = measure(model, sample, rule=rule, with_migd=False)
            a = alt["mig-parted"]
            table.row(section, f"  mig-parted, driver picking the {RULES[rule]}", _mmm(a.mutating),
                      f"not created: {a.not_created} of {alt['layouts']}",
                      f"{statistics.mean(a.mutating) / mean_min:.2f}x")
            for e in alt["examples"][:2]:
                table.note(f"e.g. cannot create: {e}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--sample", type=int, default=1, help="every N-th layout only")
    args = ap.parse_args()
    table = Table()
    table.header()
    report(table, "2", [m for m in args.models.split(",") if m], args.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
