"""Every README example that shows a migd command is run, and prints what the README shows (issue 16 point 12).

A ```console block whose lines start with `$ migd …` is a session: each command runs through the CLI (it must use
--simulate) in a temp dir where etc/examples is available and the files of ```toml file=NAME blocks are written,
with a fresh simulated host for each block (its own XDG_STATE_HOME) kept between the block's commands. The block's
other lines are the commands' output (stdout and stderr as a terminal interleaves them); a line `...` stands for
any number of elided lines.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


CHECKED_BY = re.compile(r"<!-- checked by (tests/\S+\.py)[^>]*-->\n$")  # a block another test runs


def _blocks() -> List[Tuple[int, str, str]]:
    """(line, language and attributes, body) of every fenced block; "checked" as its language where the line before
    it says which test checks it instead."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1,
             "checked" if CHECKED_BY.search(text[:m.start()]) else (m.group(1) + m.group(2)).strip(), m.group(3))
            for m in FENCE.finditer(text)]


def _files() -> List[Tuple[str, str]]:
    out = []
    for _, info, body in _blocks():
        m = re.fullmatch(r"toml\s+file=(\S+)", info)
        if m:
            out.append((m.group(1), body))
    return out


def _sessions() -> List[Tuple[int, str]]:
    return [(line, body) for line, info, body in _blocks()
            if info == "console" and body.startswith("$ migd ")]


def _steps(body: str) -> List[Tuple[str, List[str]]]:
    """[(command, expected lines)] of one console block."""
    steps: List[Tuple[str, List[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def _pattern(expected: List[str]) -> re.Pattern[str]:
    parts = ["(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + "\n" for line in expected]
    return re.compile("".join(parts))


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "etc").symlink_to(ROOT / "etc")
    for name, body in _files():
        (tmp_path / name).write_text(body)
    return tmp_path


def test_the_readme_has_examples_to_run():
    assert len(_sessions()) >= 3, "the README's examples are found by ```console blocks starting with `$ migd`"


@pytest.mark.parametrize("line, body", _sessions(), ids=[f"README.md:{line}" for line, _ in _sessions()])
def test_readme_example_prints_what_the_readme_shows(line, body, workdir, tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8",
           "HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "MIGD_RUN_DIR": str(tmp_path / "run"), "MIGD_TEXTFILE_DIR": "/nonexistent/migd-test-textfile",
           "PYTHONPATH": str(ROOT / "src")}
    host = socket.gethostname().split(".", 1)[0]
    for command, expected in _steps(body):
        argv = shlex.split(command)
        assert argv[0] == "migd" and "--simulate" in argv, f"README.md:{line}: {command}: examples use --simulate"
        r = subprocess.run([sys.executable, "-m", "migd.cli", *argv[1:]], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=workdir, env=env, timeout=120)
        out = r.stdout
        out = out.replace(env["XDG_STATE_HOME"], "~/.local/state")  # where a simulated host is kept, as for a user
        if host != "node01":  # the README's host is node01, whatever this machine is called
            out = re.sub(rf"\b{re.escape(host)}\b", "node01", out)
        assert _pattern(expected).fullmatch(out), (
            f"README.md:{line}: `{command}` printed (exit {r.returncode}):\n{out}\nthe README shows:\n"
            + "\n".join(expected))


def test_an_example_checked_elsewhere_names_a_test_that_reads_the_readme():
    named = set(re.findall(r"<!-- checked by (tests/\S+\.py)", README.read_text()))
    # the live Slurm export (simulated driver files), and the adoption examples, which need their input files
    assert named == {"tests/test_slurm.py", "tests/test_readme_adoption.py"}
    for name in named:
        assert "README.md" in (ROOT / name).read_text(), name


def test_dots_stand_for_elided_lines_only():
    assert _pattern(["a", "...", "d"]).fullmatch("a\nb\nc\nd\n")
    assert _pattern(["a", "...", "d"]).fullmatch("a\nd\n")
    assert not _pattern(["a", "d"]).fullmatch("a\nb\nd\n")
    assert not _pattern(["a", "...", "d"]).fullmatch("a\nb\n")

