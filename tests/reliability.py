"""Shared by the reliability tests (test_faults, test_crash, test_fuzz, test_security): representative scenarios on
simulated hosts shared through state files, migd run in-process or as a real process, and what the GPUs look like.

Not a test module (no test_ prefix); the tests import it as `reliability`.

A scenario is a host spec, a layout applied first (the GPUs' previous layout), an optional hand-made change behind
migd's back (drift), and the layout to apply. `prepare()` builds it in a state file and measures, with the
simulator's mutation trace, every mutating NVML call a fault-free apply makes: the step positions to inject
faults at.

Sampling: the large matrices run a deterministic subset by default; MIGD_FULL_MATRIX=1 runs every case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import migd.log
from migd import cli, sim
from migd.sim.host import SimHost, load_state

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
T = TypeVar("T")
FULL = os.environ.get("MIGD_FULL_MATRIX", "") not in ("", "0")

MUTATING_CALLS = (
    "nvmlDeviceSetMigMode",
    "nvmlDeviceSetPersistenceMode",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
)
ERRORS = ("IN_USE", "INSUFFICIENT_RESOURCES", "NOT_SUPPORTED", "NO_PERMISSION", "GPU_IS_LOST", "UNKNOWN", "hang")

# Layouts in model-independent sizes, so one file serves the H100 and the A100s.
LAYOUT_A = """
[[gpu]]
select = "all"
mig = true
instances = [{ profile = "4g", name = "train", compute = ["2c", "2c"] }, "2g", "1g"]
"""
LAYOUT_B = """
[[gpu]]
select = "all"
mig = true
instances = [{ profile = "4g", name = "train", compute = ["2c", "2c"] }, "1g", "1g", "1g"]
"""
LAYOUT_C = """
[[gpu]]
select = "all"
mig = true
instances = ["3g", "3g"]
"""
MIG_OFF = """
[[gpu]]
select = "all"
mig = false
"""


def drift_by_hand(host: SimHost) -> None:
    """Behind migd's back on every GPU: the 2g instance destroyed, and one compute instance of the 4g."""
    for g in range(len(host.gpus)):
        gis = host.gpus[g]["gis"]
        two = next(gi for gi in gis if gi["size"] == 2)
        two["cis"] = []
        host.destroy_gi(g, two["id"])
        four = next(gi for gi in gis if gi["size"] == 4)
        host.destroy_ci(g, four["id"], four["cis"][-1]["id"])


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: str
    before: Optional[str]  # layout applied first (None: a fresh host, MIG off)
    target: str
    by_hand: Optional[Callable[[SimHost], None]] = None

    @property
    def gpus(self) -> int:
        from migd.catalog import parse_host_spec

        return len(parse_host_spec(self.spec))


def scenarios(spec: str) -> List[Scenario]:
    return [
        Scenario("fresh boot", spec, None, LAYOUT_A),
        Scenario("re-partition", spec, LAYOUT_A, LAYOUT_B),
        Scenario("re-partition all", spec, LAYOUT_A, LAYOUT_C),
        Scenario("partial drift", spec, LAYOUT_A, LAYOUT_A, drift_by_hand),
        Scenario("disable MIG", spec, LAYOUT_A, MIG_OFF),
    ]


ONE_GPU = "h100-80gb"  # Hopper: MIG mode changes without a reset
EIGHT_GPUS = "dgx-a100"  # 8 x A100-SXM4-40GB: Ampere


# --- what the GPUs look like ---------------------------------------------------------------------------------

def layouts(state: Dict[str, Any]) -> List[object]:
    """Per GPU: "lost", or (MIG current, pending, GIs as (profile, start, size, CIs as (profile, start, size)))."""
    out: List[object] = []
    for g in state["gpus"]:
        if g.get("lost"):
            out.append("lost")
            continue
        gis = tuple(sorted((gi["profile_id"], gi["start"], gi["size"],
                            tuple(sorted((ci["profile_id"], ci["start"], ci["size"]) for ci in gi["cis"])))
                           for gi in g["gis"]))
        out.append((bool(g["mig"][0]), bool(g["mig"][1]), gis))
    return out


def describe_layout(layout) -> str:
    if layout == "lost":
        return "lost"
    mig, pending, gis = layout
    text = "MIG " + ("on" if mig else "off") + ("" if mig == pending else f" (pending {'on' if pending else 'off'})")
    return text + "".join(f" {p}@{s}:{n}[{len(cis)} CI]" for p, s, n, cis in gis)


# --- running migd ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    code: int
    out: str
    err: str
    events: List[Tuple[str, str, Dict[str, Any]]] = field(default_factory=list)  # (level, event, fields)
    exception: Optional[BaseException] = None

    def named(self, event: str, **fields) -> List[Dict[str, Any]]:
        return [f for _, e, f in self.events if e == event and all(f.get(k) == v for k, v in fields.items())]

    @property
    def traceback(self) -> bool:
        return self.exception is not None or "Traceback" in self.err or "Traceback" in self.out


@contextlib.contextmanager
def captured_events() -> Iterator[List[Tuple[str, str, Dict[str, Any]]]]:
    """Every event migd logs in this process at the level the CLI set up: (level, event name, fields with msg),
    through structlog's own capture_logs (the pipeline's processors swapped for a capture)."""
    from structlog.testing import capture_logs

    events: List[Tuple[str, str, Dict[str, Any]]] = []
    with capture_logs() as entries:
        try:
            yield events
        finally:
            for entry in entries:
                fields = {k: v for k, v in entry.items() if k not in ("log_level", "event", "exc_info")}
                fields.setdefault("msg", entry["event"])
                events.append((entry["log_level"], entry["event"], fields))


def run_cli(args: Sequence[str], env: Optional[Dict[str, str]] = None) -> Run:
    """cli.main in this process with `env` set (and MIGD_SIM_FAULTS cleared unless given); never raises."""
    saved = {k: os.environ.get(k) for k in list(env or {}) + ["MIGD_SIM_FAULTS"]}
    os.environ.pop("MIGD_SIM_FAULTS", None)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    exc = None
    code = -1
    try:
        with captured_events() as events, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 2
            except BaseException as e:  # noqa: BLE001 - a traceback is what the test looks for
                exc = e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sim.uninstall()
        migd.log.setup(level="critical", target="stderr")
    return Run(code, out.getvalue(), err.getvalue(), events, exc)


def child_env(run_dir: str, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_") and k not in ("NOTIFY_SOCKET",)}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["MIGD_RUN_DIR"] = run_dir
    env.update(extra)
    return env


def migd_process(args: Sequence[str], env: Dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "migd.cli", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))


def wait_for_hang(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> Tuple[bool, str]:
    """Read the process's stderr until the simulator says a call hangs (True), or it exits / time runs out."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
        if b" hangs (injected fault)" in seen:
            return True, seen.decode(errors="replace")
    return False, seen.decode(errors="replace")


def wait_until_holding(proc: subprocess.Popen[bytes], node: str, timeout: float = 30.0) -> None:
    """Readiness, not a sleep: return once `proc` has the (simulated) device node open."""
    from migd.holders import pids_holding

    deadline = time.monotonic() + timeout
    while proc.pid not in pids_holding([node]):
        assert proc.poll() is None, f"holder exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"pid {proc.pid} never opened {node}"
        time.sleep(0.01)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


# --- scenarios in state files ------------------------------------------------------------------------------------

@dataclass
class Prepared:
    scenario: Scenario
    dir: Path
    state: str  # the sim state file, in the scenario's starting point
    config: str  # the target layout
    pristine: bytes  # the state file's bytes at the starting point
    before: List[object]  # each GPU's layout at the starting point
    desired: List[object]  # each GPU's layout after a fault-free apply
    steps: List[Tuple[str, int, int]]  # the fault-free apply's mutations: (call, gpu, n-th such call on that gpu),
    # GPU by GPU

    def args(self, *verb: str) -> List[str]:
        return ["--sim-state", self.state, "--config", self.config, *verb]

    def reset(self) -> None:
        with open(self.state, "wb") as f:
            f.write(self.pristine)
        for p in Path(self.dir).glob("state.json.*.tmp"):
            p.unlink()

    def current(self) -> List[object]:
        return layouts(load_state(self.state))


def watch_site(tmp_path: Path, monkeypatch, config: str, spec: str = "h100-80gb:2") -> Dict[str, str]:
    """A config file and a state-file host in tmp_path, the run dir there too, and none of the caller's migd,
    systemd-notify or watchdog variables: what the watch, drift and metrics tests start from."""
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS", "NOTIFY_SOCKET",
                "WATCHDOG_USEC"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "migd.toml"
    conf.write_text(config)
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    SimHost.create(spec, str(state))
    return {"config": str(conf), "state": str(state)}


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def prepare(scenario: Scenario, where: Path) -> Prepared:
    """Build the scenario's starting point in `where`, then measure a fault-free apply on a copy of it."""
    where.mkdir(parents=True, exist_ok=True)
    state = str(where / "state.json")
    run_dir = str(where / "run")
    env = {"MIGD_RUN_DIR": run_dir}
    SimHost.create(scenario.spec, state)
    if scenario.before:
        r = run_cli(["--sim-state", state, "--config", write_config(where / "before.toml", scenario.before),
                     "apply"], env)
        assert r.code == 0 and not r.traceback, (scenario, r.err)
    if scenario.by_hand:
        host = SimHost(load_state(state), state)
        scenario.by_hand(host)
        host.save()
    config = write_config(where / "target.toml", scenario.target)
    pristine = Path(state).read_bytes()
    before = layouts(json.loads(pristine))

    # The fault-free apply, traced: its mutations are the step positions.
    host = SimHost(load_state(state), state)
    host.state["trace"] = []
    host.save()
    r = run_cli(["--sim-state", state, "--config", config, "apply"], env)
    assert r.code == 0 and not r.traceback, (scenario, r.err)
    after = load_state(state)
    desired = layouts(after)
    counts: Dict[Tuple[str, int], int] = {}
    steps = []
    for _pid, call, gpu, _t in after["trace"]:
        counts[(call, gpu)] = counts.get((call, gpu), 0) + 1
        steps.append((call, gpu, counts[(call, gpu)]))
    # GPU by GPU, each in its own order: the GPUs' threads interleave differently every run, each GPU's steps never.
    steps = [s for g in sorted({s[1] for s in steps}) for s in steps if s[1] == g]
    Path(state).write_bytes(pristine)
    return Prepared(scenario, where, state, config, pristine, before, desired, steps)


def sample(cases: List[T], k: int, seed: str) -> List[T]:
    """Every case under MIGD_FULL_MATRIX=1, else a deterministic sample of k (always the same ones)."""
    if FULL or len(cases) <= k:
        return list(cases)
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(cases)), k))
    return [cases[i] for i in picked]


def traced_run(p: Prepared, faults: str) -> List[Tuple[str, int]]:
    """The mutations (call, gpu) an apply with these faults makes, from the starting point (which is restored)."""
    p.reset()
    host = SimHost(load_state(p.state), p.state)
    host.state["trace"] = []
    host.save()
    run_cli(p.args("apply"), {"MIGD_RUN_DIR": str(p.dir / "run"), "MIGD_SIM_FAULTS": faults})
    trace = [(call, gpu) for _pid, call, gpu, _t in load_state(p.state)["trace"]]
    p.reset()
    return trace


def nth(calls: Sequence[Tuple[str, int]], upto: int) -> int:
    """Which call of its kind on its GPU calls[upto] is (1-based)."""
    return sum(1 for c in calls[:upto + 1] if c == calls[upto])


def sim_tool(state: str, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "migd.sim.tool", "--state", state, *args],
                       env=child_env("/nonexistent"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def cli_capsys(capsys: Any, *args: object) -> Tuple[int, str, str]:
    """cli.main in process with these arguments: (exit code, stdout, stderr) as pytest's capsys caught them."""
    from migd import cli

    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
