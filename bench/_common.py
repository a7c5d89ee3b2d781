"""Helpers shared by the benchmarks: cold-process timing, the installed (/usr/lib/migd) layout, GPU detection, tables.

Everything here is stdlib only, so each bench script runs standalone (`python3 bench/<script>.py`) on a machine
with nothing but Python, migd's source tree and migd's dependencies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

def require_dependencies() -> None:
    """Stop at once, in one line, when this interpreter cannot run migd (instead of timing crashing processes)."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    needed = ("pynvml", "structlog", "sdnotify") + (("tomli",) if sys.version_info < (3, 11) else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if sys.version_info < (3, 9) or missing:
        lacks = f"lacks {', '.join(missing)}" if missing else "is older than 3.9"
        sys.exit(f"bench: {sys.executable} {lacks} (migd's dependencies); run it with the project's venv: "
                 f".venv/bin/python bench/{os.path.basename(sys.argv[0]) or 'run.py'} (on the GPU machine: "
                 f"PYTHONPATH=src:.devicelib python3 bench/run.py)")


BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SRC = os.path.join(ROOT, "src")
LAUNCHER = os.path.join(ROOT, "packaging", "bin", "migd")

# Vendored next to migd in /usr/lib/migd (packaging/vendor.txt; tomli only where the interpreter lacks tomllib).
DEPENDENCIES = ("pynvml", "structlog", "sdnotify") + (("tomli",) if sys.version_info < (3, 11) else ())
# structlog imports typing_extensions on Python < 3.11; packaging/vendor.txt may not carry it (see notes()).
EXTRA_DEPENDENCIES = ("typing_extensions",) if sys.version_info < (3, 11) else ()


# --- environment ------------------------------------------------------------------------------------------------

def child_env(simulated: bool = False, **extra: str) -> Dict[str, str]:
    """Environment for child processes: migd importable from the source tree, /run/migd redirected to a temp dir,
    no simulation or fault settings inherited. MIGD_READ_ONLY (the GPU machine's safety switch) is kept, except
    for `simulated` children: every command they run passes --simulate, so pynvml is pointed at the fake
    libnvidia-ml before nvmlInit and the real driver is never loaded (and simulated applies must mutate)."""
    keep = () if simulated else ("MIGD_READ_ONLY",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGD_") or k in keep}
    paths = [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SRC]
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths)
    env["MIGD_RUN_DIR"] = run_dir()
    env["XDG_STATE_HOME"] = os.path.join(run_dir(), "state")  # simulated hosts kept between commands: not in ~
    env.update(extra)
    return env


_RUN_DIR: Optional[str] = None


def run_dir() -> str:
    """A private stand-in for /run/migd (lock, state.json), so benchmarks never touch the real one."""
    global _RUN_DIR
    if _RUN_DIR is None:
        _RUN_DIR = tempfile.mkdtemp(prefix="migd-bench-run-")
    return _RUN_DIR


@contextlib.contextmanager
def simulated_only():
    """In-process simulated runs: lift MIGD_READ_ONLY for the duration (see child_env), restore it after."""
    saved = os.environ.pop("MIGD_READ_ONLY", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MIGD_READ_ONLY"] = saved


def ensure_src_on_path() -> None:
    if SRC not in sys.path:
        sys.path.insert(0, SRC)
    os.environ.setdefault("MIGD_RUN_DIR", run_dir())
    os.environ.setdefault("XDG_STATE_HOME", os.path.join(run_dir(), "state"))


def bytecode_note() -> str:
    """Whether this interpreter writes .pyc files: with PYTHONDONTWRITEBYTECODE every plain run recompiles."""
    return "off (PYTHONDONTWRITEBYTECODE: plain runs recompile migd each time)" if sys.dont_write_bytecode else "on"


def machine_line() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"Python {platform.python_version()} ({sys.executable}), {platform.system()} {platform.release()}, "
            f"{cpus} CPUs, bytecode cache {bytecode_note()}")


# --- the installed layout ---------------------------------------------------------------------------------------

class Installed:
    """migd laid out the way the package installs it: /usr/lib/migd/{migd,pynvml,...} byte-compiled, run by
    packaging/bin/migd (`python3 -I -S`: no site-packages scan, no PYTHONPATH). Built in a temp dir."""

    def __init__(self, compiled: bool = True, src: str = SRC):
        # <root>/bin/migd and <root>/lib/migd, like /usr/bin/migd and /usr/lib/migd.
        self.root = tempfile.mkdtemp(prefix="migd-bench-prefix-")
        self.lib = os.path.join(self.root, "lib", "migd")
        os.makedirs(self.lib)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(os.path.join(src, "migd"), os.path.join(self.lib, "migd"), ignore=ignore)
        self.missing: List[str] = []
        self.notes: List[str] = []
        vendored = _vendored_names()
        for dep in EXTRA_DEPENDENCIES:
            if vendored is not None and dep.replace("-", "_").lower() not in {v.replace("-", "_").lower() for v in vendored}:
                self.notes.append(f"installed layout: added {dep}, which packaging/vendor.txt lacks but structlog "
                                  f"imports on Python {sys.version_info[0]}.{sys.version_info[1]} (without it, "
                                  f"/usr/bin/migd fails at its first log line there)")
        for dep in DEPENDENCIES + EXTRA_DEPENDENCIES:
            origin = _module_origin(dep)
            if origin is None:
                self.missing.append(dep)
                continue
            if os.path.basename(origin) == "__init__.py":
                src = os.path.dirname(origin)
                shutil.copytree(src, os.path.join(self.lib, os.path.basename(src)), ignore=ignore)
            else:
                shutil.copy2(origin, os.path.join(self.lib, os.path.basename(origin)))
        # The launcher finds <prefix>/lib/migd beside its own <prefix>/bin; an older one named /usr/lib/migd.
        with open(LAUNCHER, encoding="utf-8") as f:
            text = f.read()
        text = text.replace('"/usr/lib/migd"', repr(self.lib))
        os.makedirs(os.path.join(self.root, "bin"))
        self.launcher = os.path.join(self.root, "bin", "migd")
        with open(self.launcher, "w", encoding="utf-8") as f:
            f.write(text)
        self.compiled = compiled
        if compiled:  # what dh_python3 / %py_byte_compile do at install time
            subprocess.run([sys.executable, "-m", "compileall", "-q", self.lib], check=True,
                           stdout=subprocess.DEVNULL)

    def argv(self, *args: str) -> List[str]:
        """The command line systemd runs (`#!/usr/bin/python3 -IS`), with this interpreter. -B when not compiled:
        a read-only /usr, where every start compiles everything again."""
        flags = "-IS" if self.compiled else "-ISB"
        return [sys.executable, flags, self.launcher, *args]

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _vendored_names() -> Optional[List[str]]:
    path = os.path.join(ROOT, "packaging", "vendor.txt")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split("==")[0].strip().lower() for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return None


def _module_origin(name: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec and spec.origin and spec.origin not in ("built-in", "frozen") else None


# --- timing -----------------------------------------------------------------------------------------------------

def run_once(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Tuple[float, int]:
    t = time.perf_counter()
    rc = subprocess.run(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        check=False).returncode
    return time.perf_counter() - t, rc


def time_interleaved(cmds: Dict[str, Sequence[str]], runs: int, env: Optional[Dict[str, str]] = None,
                     warmup: int = 1, cwd: Optional[str] = None) -> Dict[str, Samples]:
    """Wall time of each command as a cold process, `runs` times, interleaved (A B C A B C ...) so that drift in
    machine load hits every command alike. One unrecorded warm-up round first (page cache, pyc files)."""
    out = {k: Samples() for k in cmds}
    for r in range(warmup + runs):
        for key, cmd in cmds.items():
            dt, rc = run_once(cmd, env, cwd)
            if r >= warmup:
                out[key].add(dt, rc)
    return out


class Samples:
    def __init__(self) -> None:
        self.values: List[float] = []
        self.codes: List[int] = []

    def add(self, value: float, rc: int = 0) -> None:
        self.values.append(value)
        self.codes.append(rc)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        """Interquartile range as a percentage of the median: how noisy the figure is."""
        v = sorted(self.values)
        if len(v) < 4:
            return f"±{(v[-1] - v[0]) / 2 / self.median * 100:.0f}%" if self.median else ""
        q = statistics.quantiles(v, n=4)
        return f"IQR {(q[2] - q[0]) / self.median * 100:.0f}%" if self.median else ""

    @property
    def rc(self) -> int:
        return max(self.codes, key=lambda c: c != 0) if self.codes else 0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def rss_kib() -> int:
    """VmRSS of this process from /proc/self/status (KiB); ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- GPU detection ----------------------------------------------------------------------------------------------

def gpu_available() -> Tuple[bool, str]:
    """(True, "H100 ..., driver ...") when MIGD_READ_ONLY=1 is set and pynvml initialises a real driver.
    Probed in a child process so this one never loads NVML."""
    if os.environ.get("MIGD_READ_ONLY", "") in ("", "0", "false", "no"):
        return False, "MIGD_READ_ONLY=1 not set"
    probe = ("import pynvml; pynvml.nvmlInit(); n = pynvml.nvmlDeviceGetCount(); "
             "names = sorted({pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(n)}); "
             "v = pynvml.nvmlSystemGetDriverVersion(); pynvml.nvmlShutdown(); "
             "d = lambda s: s.decode() if isinstance(s, bytes) else s; "
             "print(f\"{n} x {', '.join(d(x) for x in names)}, driver {d(v)}\" if n else '')")
    try:
        r = subprocess.run([sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if r.returncode != 0 or not r.stdout.strip():
        return False, (r.stderr.strip().splitlines() or ["no GPU"])[-1]
    return True, r.stdout.strip()


# --- table ------------------------------------------------------------------------------------------------------

class Table:
    """Rows of (section, what, figure, baseline, ratio). Printed as they come (long runs show progress)."""

    WIDTHS = (3, 58, 26, 38, 10)

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.rows: List[Tuple[str, ...]] = []

    def header(self) -> None:
        self._line(("#", "measurement", "figure", "baseline (same run)", "ratio"))
        self._line(tuple("-" * (w - 1) for w in self.WIDTHS))

    def row(self, section: str, what: str, figure: str = "", baseline: str = "", ratio: str = "") -> None:
        r = (section, what, figure, baseline, ratio)
        self.rows.append(r)
        self._line(r)

    def note(self, text: str) -> None:
        self.rows.append(("", text))
        print(f"{'':{self.WIDTHS[0]}}  {text}", file=self.stream, flush=True)

    def _line(self, cells: Tuple[str, ...]) -> None:
        """A cell longer than its column goes on a line of its own (the label) or pushes only the cells after it
        on that line; the values of a row always start in their columns."""
        cells = tuple(cells)
        if len(cells) > 1 and len(cells[1]) > self.WIDTHS[1] and any(cells[2:]):
            print(f"{cells[0]:<{self.WIDTHS[0]}} {cells[1]}", file=self.stream, flush=True)
            cells = (cells[0], "") + cells[2:]
        parts = []
        for cell, width in zip(cells, self.WIDTHS):
            parts.append(f"{cell:<{width}}")
        print(" ".join(parts).rstrip(), file=self.stream, flush=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def run_installed_section(doc: str, report: Callable[..., object], section: str) -> int:
    """The standalone main of a cold-process section: lay migd out as installed (with and without .pyc), report."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    require_dependencies()
    installed, raw = Installed(), Installed(compiled=False)
    try:
        table = Table()
        table.header()
        report(table, section, args.runs, 3, installed, raw)
    finally:
        installed.cleanup()
        raw.cleanup()
    return 0
