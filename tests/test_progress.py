"""apply's progress as a person at a terminal sees it (issue 19 point 3): each GPU's result as soon as that GPU is
done, a status line on a TTY for a driver call that takes over a second, and nothing of it in the log twice."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

# GPU 0 gets one instance (2 creates), GPUs 1 and 2 seven each (14 creates): GPU 0 is done first whether the GPUs
# are applied one after another or side by side.
UNEVEN = """\
[[gpu]]
select = [0]
mig = true
instances = ["7g"]

[[gpu]]
select = [1, 2]
mig = true
instances = { "1g" = 7 }
"""


def _env(tmp_path: Path, latency: str) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIGD_RUN_DIR": str(tmp_path / "run"),
            "XDG_STATE_HOME": str(tmp_path / "state"), "MIGD_TEXTFILE_DIR": "/nonexistent/migd-test-textfile",
            "MIGD_SIM_LATENCY": latency}


def _argv(tmp_path: Path, *extra: str) -> List[str]:
    conf = tmp_path / "migd.toml"
    conf.write_text(UNEVEN)
    return [sys.executable, "-m", "migd.cli", "--simulate", "h100-80gb:3", "-c", str(conf), "apply", *extra]


def test_each_gpu_result_is_printed_as_soon_as_that_gpu_is_done(tmp_path):
    proc = subprocess.Popen(_argv(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=_env(tmp_path, "create=0.2s"))
    assert proc.stdout is not None
    lines: List[Tuple[float, str]] = []
    for raw in iter(proc.stdout.readline, b""):  # as the lines come, with when they came
        lines.append((time.monotonic(), raw.decode()))
    proc.wait(timeout=60)
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    first = next(t for t, text in lines if text.startswith("GPU 0: applied "))
    # GPU 0 needs 0.4 s of creates; the others 2.8 s each: its line comes long before the apply ends
    assert ended - first > 2.0, [(round(t - first, 2), text) for t, text in lines]
    gpu_lines = [text for _, text in lines if ": applied " in text]
    assert len(gpu_lines) == 3, lines


def test_a_slow_driver_call_is_named_on_a_tty_and_cleared_after(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen(_argv(tmp_path), stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path,
                            env=_env(tmp_path, "mode=1.6s"))
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(timeout=60) == 0, seen
    os.close(master)
    text = seen.decode()
    # the GPUs change mode side by side (threads): the line names one of them, and the others as "+N more"
    assert re.search(r"\r\x1b\[K[|/\\-] GPU \d: changing MIG mode\.\.\. [12] s", text), text
    assert text.endswith("\r\x1b[K"), repr(text[-40:])  # the status line is erased, not left behind
    assert out.count(": applied ") == 3, out  # stdout carries the results, never the status line
    assert "\x1b" not in out


def test_no_status_line_when_stderr_is_not_a_tty_and_each_result_once(tmp_path):
    r = subprocess.run(_argv(tmp_path, "-v"), capture_output=True, text=True, cwd=tmp_path,
                       env=_env(tmp_path, "mode=1.2s"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "changing MIG mode" not in r.stderr and "\x1b" not in r.stderr
    for gpu in range(3):
        # the log has each GPU's result once (the engine's gpu_applied; apply_finished sums them up), stdout once
        # (the progress line)
        assert sum(line.startswith(f"migd[info]: GPU {gpu}: applied ") for line in r.stderr.splitlines()) == 1, \
            r.stderr
        assert r.stdout.count(f"GPU {gpu}: applied ") == 1, r.stdout


def test_engine_calls_back_once_per_gpu_with_the_final_result(tmp_path, monkeypatch):
    from migd import cli
    from migd.engine import Engine

    seen = []
    real = Engine.apply

    def spy(self, desired, gpus=None, stop_clients=False, on_gpu_done=None):
        def record(result):
            seen.append(result.gpu)
            on_gpu_done(result)
        return real(self, desired, gpus, stop_clients, on_gpu_done=record)

    monkeypatch.setattr(Engine, "apply", spy)
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    conf = tmp_path / "migd.toml"
    conf.write_text(UNEVEN)
    assert cli.main(["--simulate", "h100-80gb:3", "-c", str(conf), "apply", "--stop-clients"]) == 0
    assert sorted(seen) == [0, 1, 2]
