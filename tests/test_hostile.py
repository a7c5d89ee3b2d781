"""What a local user, a neighbouring daemon or an odd driver answer can do to a root apply (issue 17), run the way
each was found: a second user where a user is the attacker, migd as a real process where it could hang.

- bytes from /proc (a holder's comm, cgroup, fd targets) are untrusted: decoded safely and escaped; an unexpected
  exception in one GPU's work fails that GPU only (never "invalid configuration", never the other GPUs);
- the drop-in directory itself is checked (owner, mode, the chain above), by apply and, the same way, by
  validate and plan; every path in a message is escaped like a holder name;
- the profile cache in the run directory cannot hang or crash a verb (a FIFO, a deeply nested JSON);
- `hosts = [...]` matching is bounded;
- a failed MIG-mode read is an error for that GPU, never "not MIG-capable"; a GPU lost mid-apply is recorded lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reliability as R
from migd import site as site_mod
from migd.sim.host import SimHost, load_state
import functools

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a second user, chown)")
NOBODY = 65534


@pytest.fixture
def site(tmp_path):
    """A simulated host in a state file, a root-owned /etc with a config, a run dir: all in tmp_path."""
    os.chmod(tmp_path, 0o755)
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir(mode=0o755)
    SimHost.create("h100-80gb:3", str(state))
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    conf = R.write_config(etc / "migd.toml", R.LAYOUT_A)
    return {"state": str(state), "config": conf, "etc": etc, "run": str(tmp_path / "run"), "tmp": tmp_path}


def _cli(site, *verb, config=None, **env):
    return R.run_cli(["--sim-state", site["state"], "--config", config or site["config"], *verb],
                     {"MIGD_RUN_DIR": site["run"], **env})


def _process(site, *verb, timeout=30.0):
    """migd as a real process (so a hang is a timeout, not a hung test run)."""
    return subprocess.run([sys.executable, "-m", "migd.cli", "--sim-state", site["state"], "--config",
                           site["config"], *verb], env=R.child_env(site["run"]), capture_output=True, text=True,
                          timeout=timeout, cwd=str(R.ROOT))


# --- 5: the profile cache -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", [["status"], ["check"], ["apply"]])
def test_a_fifo_as_the_profile_cache_hangs_no_verb(site, verb):
    run = Path(site["run"])
    run.mkdir(mode=0o755)
    os.mkfifo(run / "profiles.json", 0o644)
    t0 = time.monotonic()
    r = _process(site, *verb, timeout=30)
    assert r.returncode in (0, 3), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("verb", [["status"], ["apply"]])
def test_a_deeply_nested_profile_cache_is_a_miss_not_a_traceback(site, verb):
    run = Path(site["run"])
    run.mkdir(mode=0o755)
    cache = run / "profiles.json"
    cache.write_text("[" * 200_000 + "]" * 200_000)
    os.chmod(cache, 0o644)
    r = _process(site, *verb)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    if verb == ["apply"]:  # the writer replaced it with a good one
        assert json.loads(cache.read_text())["version"] == 1


# --- 1: bytes from /proc; an unexpected exception fails one GPU -------------------------------------------------------

HOLDER = """
import ctypes, os, sys, time
f = open(sys.argv[1])                      # the simulated /dev/nvidia0, opened as root ...
os.setgroups([]); os.setgid(65534); os.setuid(65534)   # ... then held by another user
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"\\xff\\xfe\\x1b[31mGPU"), 0, 0, 0)   # PR_SET_NAME, not UTF-8
print("ready", flush=True)
time.sleep(120)
"""


@ROOT_ONLY
def test_a_holder_of_another_user_with_a_non_utf8_name_fails_nothing(site):
    """Issue 17.1 as found: user 65534 holds GPU 0's node under a name that is not UTF-8 (with an ESC): GPU 0's
    mode change is pending and says who holds it, escaped; GPUs 1 and 2 are applied; all three are recorded;
    exit 4 (pending), never "invalid configuration"."""
    node = os.path.join(os.path.dirname(site["state"]), "dev", "nvidia0")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, node], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert os.stat(f"/proc/{holder.pid}").st_uid == NOBODY
        r = _cli(site, "apply")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    text = r.out + r.err
    assert not r.traceback and r.code == 4, text
    assert "invalid configuration" not in text and "codec" not in text, text
    assert f"held by \\xff\\xfe\\x1b[31mGPU (pid {holder.pid}" in r.out, r.out
    assert "\x1b" not in text, text
    state = load_state(site["state"])
    assert [len(g["gis"]) for g in state["gpus"]] == [0, 3, 3], R.layouts(state)
    recorded = json.loads((Path(site["run"]) / "state.json").read_text())
    assert [g["outcome"] for g in recorded["gpus"]] == ["pending", "applied", "applied"], recorded


def test_an_unexpected_exception_in_one_gpu_fails_that_gpu_only(site, monkeypatch):
    """A bug (here: a ValueError out of the holders code, as a non-UTF-8 name was) in one GPU's work: that GPU
    fails, rolled back where it changed; the others are applied; recorded; exit 1, not 2 ("invalid
    configuration")."""
    from migd import engine

    real = engine.apply_gpu

    def buggy(backend, info, *a, **kw):
        if info.index == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real(backend, info, *a, **kw)

    monkeypatch.setattr(engine, "apply_gpu", buggy)
    r = _cli(site, "apply")
    assert not r.traceback and r.code == 1, r.out + r.err
    assert "invalid configuration" not in r.err and "GPU 1: internal error (UnicodeDecodeError" in r.out, r.out
    assert r.named("gpu_error", gpu=1), r.events
    recorded = json.loads((Path(site["run"]) / "state.json").read_text())
    assert [g["outcome"] for g in recorded["gpus"]] == ["applied", "failed", "applied"], recorded
    assert [len(g["gis"]) for g in load_state(site["state"])["gpus"]] == [3, 0, 3]


def test_an_unexpected_exception_mid_apply_rolls_that_gpu_back(site):
    """An exception migd did not expect, from the driver library in the middle of GPU 1's changes (the simulator
    raises a Python error there): GPU 1 is rolled back to its previous layout, GPUs 0 and 2 are applied, exit 1."""
    R.run_cli(["--sim-state", site["state"], "--config", R.write_config(site["tmp"] / "b.toml", R.LAYOUT_B),
               "apply"], {"MIGD_RUN_DIR": site["run"]})
    before = R.layouts(load_state(site["state"]))
    r = _cli(site, "apply", MIGD_SIM_FAULTS="nvmlDeviceCreateGpuInstanceWithPlacement=raise@1/gpu1")
    assert not r.traceback and r.code == 1, r.out + r.err
    assert "GPU 1: internal error (RuntimeError: injected" in r.out and "rolled back" in r.out, r.out
    now = R.layouts(load_state(site["state"]))
    assert now[1] == before[1] and now[0] == now[2] != before[0], now
    assert r.named("apply_failed", gpu=1, error="RuntimeError") and r.named("rolled_back", gpu=1), r.events


# --- 8: a failed MIG-mode read is an error for that GPU -------------------------------------------------------------

@pytest.mark.parametrize("mig", [False, True])
def test_not_supported_from_the_first_mig_mode_read_is_an_error_for_that_gpu(site, mig):
    """Issue 17.8 as found: NOT_SUPPORTED from GPU 1's first nvmlDeviceGetMigMode (MIG on with instances there).
    Never "not MIG-capable": with mig = false never "already matches", with mig = true never "invalid
    configuration"; GPU 1 is untouched and reported; the others are applied; exit 1."""
    R.run_cli(["--sim-state", site["state"], "--config", site["config"], "apply"], {"MIGD_RUN_DIR": site["run"]})
    before = R.layouts(load_state(site["state"]))
    conf = R.write_config(site["tmp"] / "t.toml", R.LAYOUT_B if mig else R.MIG_OFF)
    r = _cli(site, "apply", config=conf, MIGD_SIM_FAULTS="nvmlDeviceGetMigMode=NOT_SUPPORTED@1/gpu1")
    text = r.out + r.err
    assert not r.traceback and r.code == 1, text
    assert "already matches" not in text and "invalid configuration" not in text and "not support" not in text, text
    assert "GPU 1: cannot read" in r.out and "nvmlDeviceGetMigMode failed: NOT_SUPPORTED" in r.out, r.out
    now = R.layouts(load_state(site["state"]))
    assert now[1] == before[1] and now[0] == now[2] != before[0], now
    recorded = json.loads((Path(site["run"]) / "state.json").read_text())
    assert [g["outcome"] for g in recorded["gpus"]] == ["applied", "failed", "applied"], recorded
    assert recorded["gpus"][1]["mig"] == {"current": None, "pending": None}  # unknown, not "off"


def test_a_failed_mig_mode_read_in_check_and_status_is_an_error_not_no_mig(site):
    R.run_cli(["--sim-state", site["state"], "--config", site["config"], "apply"], {"MIGD_RUN_DIR": site["run"]})
    fault = {"MIGD_SIM_FAULTS": "nvmlDeviceGetMigMode=UNKNOWN@1/gpu2"}
    r = _cli(site, "check", **fault)
    assert not r.traceback and r.code == 1 and "GPU 2: error: unreadable" in r.out, r.out + r.err
    r = _cli(site, "status", **fault)
    assert not r.traceback and r.code == 0 and "UNREADABLE" in r.out and "MIG not supported" not in r.out, r.out


# --- 9: a GPU lost mid-apply is recorded lost ----------------------------------------------------------------------

@pytest.mark.parametrize("call", ["nvmlDeviceGetGpuInstanceById", "nvmlGpuInstanceGetComputeInstanceById"])
def test_a_gpu_lost_mid_apply_is_recorded_lost_and_leaves_devices_env(site, call):
    """Issue 17.9 as found: GPU_IS_LOST on GetGpuInstanceById / GetComputeInstanceById while GPU 1 is
    re-partitioned: state.json says lost, devices.env has none of GPU 1's MIG devices, the others are applied."""
    R.run_cli(["--sim-state", site["state"], "--config", site["config"], "apply"], {"MIGD_RUN_DIR": site["run"]})
    conf = R.write_config(site["tmp"] / "c.toml", R.LAYOUT_C)
    r = _cli(site, "apply", config=conf, MIGD_SIM_FAULTS=f"{call}=GPU_IS_LOST@1/gpu1")
    assert not r.traceback and r.code == 1, r.out + r.err
    assert "GPU 1: lost" in r.out, r.out
    recorded = json.loads((Path(site["run"]) / "state.json").read_text())
    assert [(g["lost"], g["outcome"]) for g in recorded["gpus"]] == [(False, "applied"), (True, "lost"),
                                                                    (False, "applied")], recorded
    assert recorded["gpus"][1]["instances"] == []
    env = (Path(site["run"]) / "devices.env").read_text()
    assert "MIGD_GPU1_" not in env and "MIGD_GPU0_MIG1=" in env and "MIGD_GPU2_MIG1=" in env, env


# --- 6: host-name matching is bounded -----------------------------------------------------------------------------

LONG_HOST = "1" * 126 + "." + "1" * 126  # 253 characters: the longest DNS name, digits everywhere


def _hard_patterns(n=1000):
    """Legal patterns that made the old matcher backtrack (stars and ranges, distinct so nothing is cached)."""
    out = []
    for k in range(n):
        if k % 2:
            out.append(("*[1-9]" * 20)[:240] + f"{k}z")
        else:
            out.append(f"*[0-{999999000 + k}]" * 14)
    return [p[:253] for p in out]


def test_a_thousand_range_patterns_against_a_253_character_name_match_fast():
    from migd import hostnames

    patterns = _hard_patterns()
    t0 = time.monotonic()
    assert hostnames.host_matches(patterns, LONG_HOST)  # the star-range ones match
    assert not any(hostnames.matches(p, LONG_HOST) for p in patterns if p.endswith("z"))
    assert time.monotonic() - t0 < 2.0


def test_validate_with_a_thousand_range_patterns_finishes(tmp_path):
    """Through the CLI as an admin checks a fleet file, in a process that must end (main took minutes)."""
    hosts = ", ".join(f'"{p}"' for p in _hard_patterns() if p.endswith("z"))
    conf = R.write_config(tmp_path / "fleet.toml", f'[[gpu]]\nselect = "all"\nhosts = [{hosts}]\nmig = false\n')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "migd.cli", "--config", conf, "validate", "--host", LONG_HOST],
                       env=R.child_env(str(tmp_path / "run")), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "0 of 1 GPU entry apply" in r.stdout, r.stdout
    assert time.monotonic() - t0 < 10


def test_too_many_host_patterns_is_a_config_error_naming_file_and_line(tmp_path):
    hosts = ", ".join(f'"n{k}"' for k in range(5000))
    conf = R.write_config(tmp_path / "fleet.toml", f'# fleet\n[[gpu]]\nselect = "all"\nhosts = [{hosts}]\n'
                                                   'mig = false\n')
    r = R.run_cli(["--config", conf, "validate"])
    assert r.code == 2 and f"{conf}:4: [[gpu]] #1 hosts: 5000 host-name patterns: at most 4096" in r.err, r.err


def _old_matches(pattern: str, name: str) -> bool:
    """The reference: main's backtracking matcher (exponential-free only thanks to memoising), as the oracle."""

    from migd.hostnames import PatternError, _Range, compile_pattern

    try:
        tokens = compile_pattern(pattern)
    except PatternError:
        return False
    name = name.strip().lower()

    @functools.cache
    def at(t, i):
        if t == len(tokens):
            return i == len(name)
        tok = tokens[t]
        if tok == "*":
            return any(at(t + 1, j) for j in range(i, len(name) + 1))
        if tok == "?":
            return i < len(name) and at(t + 1, i + 1)
        if isinstance(tok, _Range):
            j = i
            while j < len(name) and name[j].isdigit():
                j += 1
                if tok.accepts(name[i:j]) and at(t + 1, j):
                    return True
            return False
        return name.startswith(tok, i) and at(t + 1, i + len(tok))

    return at(0, 0)


_PIECES = ["*", "?", "a", "n", "-", ".", "0", "1", "9", "[1-9]", "[01-16]", "[8-10]", "[0-99]", "[1,3,5-7]",
           "[007-012]", "[5]"]


def _near():
    from hypothesis import strategies as st

    numbers = {"[1-9]": ["1", "5", "9", "0", "10"], "[01-16]": ["01", "16", "1", "17", "07", "00"],
               "[8-10]": ["8", "10", "9", "08", "11", "7"], "[0-99]": ["0", "99", "5", "05", "100"],
               "[1,3,5-7]": ["1", "3", "6", "2", "8", "4"], "[007-012]": ["007", "010", "012", "7", "013", "006"],
               "[5]": ["5", "05", "6"]}
    out = {k: st.sampled_from(v) for k, v in numbers.items()}
    out["*"] = st.text(alphabet="an019-", max_size=3)
    out["?"] = st.sampled_from(list("an01-."))
    return out


_NEAR = _near()


@pytest.mark.slow
def test_the_linear_matcher_agrees_with_the_backtracking_one():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from migd import hostnames

    @settings(max_examples=1000, deadline=None, derandomize=True)
    @given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=7),
           name=st.text(alphabet="an01789-.", max_size=14))
    def agree(pieces, name):
        pattern = "".join(pieces)
        assert hostnames.matches(pattern, name) == _old_matches(pattern, name), (pattern, name)

    agree()

    # names built from the pattern's own pieces (a number in or just outside each range), so that many match
    @settings(max_examples=2000, deadline=None, derandomize=True)
    @given(data=st.data(), pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=7))
    def agree_near(data, pieces):
        name = "".join(data.draw(_NEAR[p]) if p in _NEAR else p for p in pieces)
        pattern = "".join(pieces)
        assert hostnames.matches(pattern, name) == _old_matches(pattern, name), (pattern, name)
        _near_stats[hostnames.matches(pattern, name)] += 1

    _near_stats = {True: 0, False: 0}
    agree_near()
    assert min(_near_stats.values()) > 200, _near_stats
    for pattern, name in [("node[01-16]", "node07"), ("node[8-10]", "node10"), ("n[1-9]*", "n15"),
                          ("*[007-012]", "ab010"), ("[0-99]?", "991"), ("a[1,3,5-7]", "a6")]:
        assert hostnames.matches(pattern, name) and _old_matches(pattern, name)


# --- 3: the drop-in directory itself; validate and plan say what apply would -----------------------------------------

def _as_nobody(directory: Path, action) -> str:
    """`action(dir_fd)` run by user 65534 (the attacker) on `directory`, in a forked child that opened the
    directory as root and then became that user (pytest's tmp dirs are root's alone, so the directory is handed
    over as an fd; every write the attacker makes is still checked against its own uid). Returns "" or the
    error the attacker got."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action(fd)
            os.write(write, b"ok")
        except BaseException as e:  # noqa: BLE001
            os.write(write, type(e).__name__.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    return "" if answer == "ok" else answer


def _plant(name: str):
    def action(fd):
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(out, b"[daemon]\n")
        os.close(out)
    return action


@pytest.fixture
def dropins(site):
    """/etc/migd.d with root's drop-in that changes the layout (GPU 1 gets LAYOUT_C)."""
    d = site["etc"] / "migd.d"
    d.mkdir(mode=0o755)
    R.write_config(d / "50-gpu1.toml", R.LAYOUT_C.replace('select = "all"', "select = 1"))
    os.chmod(site["tmp"], 0o755)
    return d


@ROOT_ONLY
def test_a_world_writable_dropin_dir_is_refused_even_after_the_attacker_emptied_it(site, dropins):
    os.chmod(dropins, 0o777)
    assert _as_nobody(dropins, lambda fd: os.unlink("50-gpu1.toml", dir_fd=fd)) == ""  # the attack works...
    before = Path(site["state"]).read_bytes()
    r = _cli(site, "apply")  # ...but root's apply refuses to act on what is left
    assert not r.traceback and r.code == 2, r.out + r.err
    assert f"{dropins}: drop-in directory writable by group/others (mode 0777)" in r.err, r.err
    assert f"chmod go-w {dropins}" in r.err
    assert Path(site["state"]).read_bytes() == before


@ROOT_ONLY
def test_a_dropin_dir_owned_by_another_user_is_refused_after_a_hidden_rename(site, dropins):
    os.chown(dropins, NOBODY, NOBODY)
    assert _as_nobody(dropins, lambda fd: os.rename("50-gpu1.toml", ".50.toml", src_dir_fd=fd, dst_dir_fd=fd)) == ""
    r = _cli(site, "apply")
    assert r.code == 2 and f"{dropins}: drop-in directory owned by uid {NOBODY}, not root" in r.err, r.err


@ROOT_ONLY
def test_a_sticky_dropin_dir_keeps_roots_dropins_and_refuses_planted_ones(site, dropins):
    os.chmod(dropins, 0o1777)
    assert _as_nobody(dropins, lambda fd: os.unlink("50-gpu1.toml", dir_fd=fd)) == "PermissionError"  # sticky
    r = _cli(site, "apply")
    assert r.code == 0, r.err
    assert [len(g["gis"]) for g in load_state(site["state"])["gpus"]] == [3, 2, 3]
    assert _as_nobody(dropins, _plant("60-mine.toml")) == ""
    r = _cli(site, "apply")
    assert r.code == 2 and f"{dropins / '60-mine.toml'}: owned by uid {NOBODY}, not root" in r.err, r.err


@ROOT_ONLY
@pytest.mark.parametrize("verb", [["validate"], ["plan"], ["apply", "--dry-run"]])
def test_validate_and_plan_as_root_refuse_what_apply_refuses(site, dropins, verb):
    os.chmod(dropins / "50-gpu1.toml", 0o664)
    applied = _cli(site, "apply")
    r = _cli(site, *verb)
    assert applied.code == r.code == 2, (applied.err, r.out, r.err)
    assert f"{dropins / '50-gpu1.toml'}: writable by group/others (mode 0664)" in r.err, r.err
    os.chmod(dropins / "50-gpu1.toml", 0o644)
    os.chmod(dropins, 0o775)
    r = _cli(site, *verb)
    assert r.code == 2 and "drop-in directory writable by group/others (mode 0775)" in r.err, r.err


SYSTEM_PYTHON = "/usr/bin/python3"


@ROOT_ONLY
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs a python another user can run")
def test_validate_as_another_user_warns_what_root_would_refuse(tmp_path):
    """A CI job (user 65534) validates its checkout: a group-writable drop-in passes the syntax check but is named
    in a warning saying apply and boot would refuse it; a clean checkout gets no warning."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="migd-ci-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "migd.d").mkdir()
        R.write_config(base / "migd.toml", R.LAYOUT_A)
        R.write_config(base / "migd.d" / "50.toml", "[daemon]\nwatch_interval = 30\n")
        for p in (base, base / "migd.d", base / "migd.toml", base / "migd.d" / "50.toml"):
            os.chown(p, NOBODY, NOBODY)

        def validate():
            def drop():
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(R.SRC), "MIGD_RUN_DIR": str(base / "run")}
            return subprocess.run([SYSTEM_PYTHON, "-m", "migd.cli", "--config", str(base / "migd.toml"), "validate"],
                                  preexec_fn=drop, env=env, capture_output=True, text=True, timeout=60, cwd="/tmp")

        r = validate()
        if "No module named" in r.stderr:
            pytest.skip(f"{SYSTEM_PYTHON} lacks migd's dependencies: {r.stderr[-200:]}")
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        os.chmod(base / "migd.d" / "50.toml", 0o664)
        r = validate()
        assert r.returncode == 0 and "syntax and keys OK" in r.stdout, r.stdout + r.stderr
        assert "warning: apply and boot (as root) would refuse this config" in r.stderr, r.stderr
        assert f"{base}/migd.d/50.toml: writable by group/others (mode 0664)" in r.stderr, r.stderr
    finally:
        shutil.rmtree(base)


# --- 4: paths escaped in every message -------------------------------------------------------------------------

@ROOT_ONLY
def test_a_planted_dropin_name_cannot_forge_lines_or_drive_the_terminal(site, dropins):
    """In a sticky migd.d (allowed) user 65534 plants a drop-in named with an ESC sequence and a newline: root's
    apply refuses it, naming it escaped; no ESC and no forged line reach stderr or the journal fields."""
    os.chmod(dropins, 0o1777)
    evil = "\x1b[2J\nGPU 0: applied.toml"
    assert _as_nobody(dropins, _plant(evil)) == ""
    for verb in (["apply"], ["validate"], ["boot"]):
        r = _cli(site, *verb)
        assert r.code == 2, (verb, r.err)
        text = r.out + r.err + json.dumps([f for _, _, f in r.events])
        assert "\x1b" not in text and not any(line.startswith("GPU 0: applied") for line in text.splitlines())
        shown = r.err + " ".join(str(f.get("msg", "")) for _, _, f in r.events)
        assert f"{dropins}/\\x1b[2J\\x0aGPU 0: applied.toml: owned by uid {NOBODY}" in shown, (verb, shown)


# --- 12: a compute-instance change keeps its GPU instance ------------------------------------------------------------

SPLIT = R.LAYOUT_A.replace('compute = ["2c", "2c"]', 'compute = ["1c", "1c", "2c"]')


def _gis(state_path):
    """Per GPU: {GI id: (profile, start, size, CI UUIDs)}."""
    out = []
    for g in load_state(state_path)["gpus"]:
        out.append({gi["id"]: (gi["profile_id"], gi["start"], gi["size"], tuple(ci.get("uuid") for ci in gi["cis"]))
                    for gi in g["gis"]})
    return out


def test_changing_only_compute_instances_keeps_the_gpu_instance(site):
    """Issue 17.12 through the CLI on the simulator: the 4g instance's compute split changes from 2c+2c to 1c+1c+2c:
    the GI keeps its id and placement (and the other GIs their MIG UUIDs); only its compute instances change:
    destroyed and created in place, no GPU instance destroyed or created."""
    assert _cli(site, "apply").code == 0
    before = _gis(site["state"])
    conf = R.write_config(site["tmp"] / "split.toml", SPLIT)
    r = _cli(site, "-v", "apply", config=conf)
    assert r.code == 0 and not r.traceback, r.out + r.err
    assert "(compute instances of GPU instance 1 changed)" in r.out, r.out
    assert not r.named("destroy_gi") and not r.named("create_gi"), [e for _, e, _ in r.events]
    assert r.named("destroy_ci") and r.named("create_ci")
    after = _gis(site["state"])
    for g in range(3):
        four = next(i for i, gi in before[g].items() if gi[2] == 4)
        assert four in after[g] and after[g][four][:3] == before[g][four][:3], (before[g], after[g])
        assert len(after[g][four][3]) == 3 and after[g][four][3] != before[g][four][3]
        for gi_id, gi in before[g].items():
            if gi_id != four:
                assert after[g][gi_id] == gi  # untouched, MIG UUID and all
    r = _cli(site, "check", config=conf)
    assert r.code == 0, r.out
    status = json.loads(_cli(site, "status", "--json", config=conf).out)
    assert [gi["name"] for gi in status["gpus"][0]["instances"]].count("train") == 1


# --- 7: the watchdog never reverts a layout applied from an edited config ---------------------------------------------

WATCHED = R.LAYOUT_A + '\n[daemon]\ndrift_policy = "reapply"\nwatch_interval = 1\n'


def _edit(path: str, text: str) -> None:
    """As Ansible's template module writes: a new file renamed over the old one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


@pytest.fixture
def watched(tmp_path, monkeypatch):
    from migd import sim

    site = R.watch_site(tmp_path, monkeypatch, WATCHED)
    os.chmod(site["config"], 0o644)
    yield site
    sim.uninstall()


def _apply(site):
    import migd.log

    r = R.run_cli(["--sim-state", site["state"], "--config", site["config"], "apply"],
                  {"MIGD_RUN_DIR": os.environ["MIGD_RUN_DIR"]})
    migd.log.setup(level="info", target="stderr")  # the watcher's events, for capture_logs
    return r


def test_watch_does_not_revert_a_layout_applied_from_an_edited_config(watched):
    """Issue 17.7 as found: migd-watch (drift_policy = "reapply") holds layout A; the admin rewrites
    /etc/migd.toml to layout B and runs `migd apply` without reloading migd-watch. The next rounds find the config
    changed on disk, load it (said once), and keep B."""
    from structlog.testing import capture_logs

    from migd.watch import Watcher

    assert _apply(watched).code == 0
    w = Watcher(watched["config"], site_mod.build(None, watched["state"]))
    assert set(w.check_once().values()) == {"ok"}
    _edit(watched["config"], WATCHED.replace(R.LAYOUT_A, R.LAYOUT_C))
    assert _apply(watched).code == 0
    applied = R.layouts(load_state(watched["state"]))
    with capture_logs() as logs:
        for _ in range(3):
            assert set(w.check_once().values()) == {"ok"}
    assert R.layouts(load_state(watched["state"])) == applied  # layout B kept
    assert [e["event"] for e in logs].count("config_changed") == 1, logs
    assert not [e for e in logs if e["event"] in ("drift", "drift_reapplied")], logs


def test_watch_reapply_waiting_for_the_admins_apply_does_not_revert_it(watched, monkeypatch):
    """The race: the round found drift with layout A and decided to re-apply; meanwhile the admin rewrote the
    config and applied layout B (the re-apply waited for the lock). Once it holds the lock, the re-apply sees the
    config changed and does nothing; the next round checks against B."""
    from structlog.testing import capture_logs

    from migd.watch import Watcher

    assert _apply(watched).code == 0
    w = Watcher(watched["config"], site_mod.build(None, watched["state"]))
    real_reapply = w._reapply
    said = os.path.join(os.path.dirname(watched["state"]), "admin-apply-exit")  # the re-apply runs in migd-watch's
    #                                                                          reader process: its exit comes back here

    def admin_applies_first(gpus):  # between the round's check (lock released) and the re-apply's lock
        _edit(watched["config"], WATCHED.replace(R.LAYOUT_A, R.LAYOUT_C))
        with open(said, "w") as f:
            f.write(str(_apply(watched).code))
        return real_reapply(gpus)

    host = SimHost.create("", watched["state"])  # drift on GPU 0: its smallest instance destroyed by hand
    gi = host.gpus[0]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(0, gi["id"])
    host.save()
    monkeypatch.setattr(w, "_reapply", admin_applies_first)
    with capture_logs() as logs:
        w.check_once()
    with open(said) as f:
        assert f.read() == "0"
    applied = R.layouts(load_state(watched["state"]))
    assert all(len(g[2]) == 2 for g in applied), applied  # layout B (3g + 3g), not reverted to A
    assert any(e["event"] == "reapply_superseded" for e in logs), logs
    monkeypatch.setattr(w, "_reapply", real_reapply)
    assert set(w.check_once().values()) == {"ok"}
    assert R.layouts(load_state(watched["state"])) == applied


def test_watch_stops_repairing_when_the_edited_config_does_not_load(watched):
    """The config on disk changed and is invalid: the old layout is not what the admin declares any more, so drift
    is reported but not repaired to it (said once); once the file loads again, re-applying resumes."""
    from structlog.testing import capture_logs

    from migd.watch import Watcher

    assert _apply(watched).code == 0
    w = Watcher(watched["config"], site_mod.build(None, watched["state"]))
    host = SimHost.create("", watched["state"])
    gi = host.gpus[1]["gis"][-1]
    gi["cis"] = []
    host.destroy_gi(1, gi["id"])
    host.save()
    drifted = R.layouts(load_state(watched["state"]))
    _edit(watched["config"], "[[gpu]]\nselect = 'all'\nmig = [\n")
    with capture_logs() as logs:
        w.check_once()
        w.check_once()
    assert R.layouts(load_state(watched["state"])) == drifted
    assert [e["event"] for e in logs].count("reapply_stopped") == 1, logs
    _edit(watched["config"], WATCHED)
    with capture_logs() as logs:
        w.check_once()
    assert any(e["event"] == "reapply_allowed" for e in logs) and any(e["event"] == "drift_reapplied" for e in logs)


# --- 10: hosts = [...] matched on the static host name, and said ---------------------------------------------------

def test_the_static_host_name_is_read_from_etc_hostname(tmp_path, monkeypatch):
    import socket

    from migd import hostnames

    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")  # what the kernel says before DHCP names it
    f = tmp_path / "hostname"
    f.write_text("# set by the installer\n  gpu-node-07.cluster  \n")
    assert hostnames.static_host(str(f)) == hostnames.HostName("gpu-node-07.cluster", f"static host name, {f}")
    for text, why in [("", "has no host name"), ("# only a comment\n", "has no host name"),
                      ("bad name\n", "holds no valid host name"), ("\xff\xfe\n", "holds no valid host name")]:
        f.write_text(text, encoding="latin-1")
        got = hostnames.static_host(str(f))
        assert got.name == "localhost" and why in got.source and "not seen at boot" in got.source, (text, got)
    assert hostnames.static_host(str(tmp_path / "none")).name == "localhost"


FLEET10 = """
[[gpu]]
select = "all"
hosts = ["gpu-node-[01-16]"]
mig = true
instances = ["3g", "3g"]
"""


def test_boot_matches_hosts_on_the_static_name_not_the_kernels_and_says_which(site, monkeypatch):
    """Issue 17.10 as found: at boot the kernel's name is still "localhost" (DHCP names the node later); the
    static name is gpu-node-07. boot matches the entry on the static name, applies, and logs which name it used;
    validate says the same."""
    import socket

    from migd import hostnames

    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    etc_hostname = site["tmp"] / "hostname"
    etc_hostname.write_text("gpu-node-07\n")
    real = hostnames.static_host
    monkeypatch.setattr(hostnames, "static_host", lambda path=str(etc_hostname): real(path))
    conf = R.write_config(site["tmp"] / "fleet.toml", FLEET10)
    r = _cli(site, "boot", config=conf)
    assert r.code == 0 and not r.traceback, r.err + str(r.events)
    said = r.named("boot_host")
    assert said and said[0]["host"] == "gpu-node-07" and said[0]["source"].startswith("static host name"), r.events
    assert all(len(g["gis"]) == 2 for g in load_state(site["state"])["gpus"])
    r = _cli(site, "validate", config=conf)
    assert f"as host gpu-node-07 (this host: static host name, {etc_hostname}; --host NAME for another): 1 of 1" \
        in r.out, r.out
    # no static name: the kernel's, and boot says why that may be the wrong one
    etc_hostname.write_text("")
    r = _cli(site, "boot", config=conf)
    assert r.code == 0 and r.named("boot_nothing"), r.events
    said = r.named("boot_host")
    assert said[0]["host"] == "localhost" and "not seen at boot" in said[0]["source"], said
