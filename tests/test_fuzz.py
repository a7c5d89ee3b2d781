"""Bad input never gets past migd: config files (a hand-written corpus of nasty files, plus hypothesis mutations of
good ones), the state files migd reads back, and command-line arguments.

For every one: no traceback; a bad config is exit 2 with every problem naming the file and a line (and the key, for
problems about a key), and `migd apply` against a simulated host leaves the host's state file byte for byte as it
was. The corpus lives in tests/corpus/bad (each must be refused) and tests/corpus/ok (odd but valid: must work).

What migd reads back: the simulated host's state file (load_state validates every field the simulator relies on)
and nothing else: /run/migd/state.json and devices.env are written, never read (a test below puts junk there).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reliability as R
from migd import config as config_mod
from migd.errors import ConfigError
from migd.sim.host import SimHost, load_state

CORPUS = Path(__file__).resolve().parent / "corpus"
BAD = sorted((CORPUS / "bad").iterdir())
OK = sorted((CORPUS / "ok").iterdir())
HOST = "h100-80gb,a100-40gb"
FUZZ_EXAMPLES = 1000 if R.FULL else 150
STATS = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures(summary_line):
    """The figures, for the summary, after this file's tests (whichever ran, in whatever order): not a test, which
    would pass with nothing to say when run alone."""
    yield
    if STATS:
        summary_line("bad input: " + ", ".join(f"{n} {k}" for k, n in sorted(STATS.items())))


# Problems about the whole file (no line or key to name): what they say.
WHOLE_FILE = ("larger than", "file not found", "cannot read", "owned by", "writable by", "not a regular file",
              "directory", "nesting too deep")


@pytest.fixture(scope="module")
def sim_host(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-host")
    state = str(d / "state.json")
    SimHost.create(HOST, state)
    r = R.run_cli(["--sim-state", state, "--config", R.write_config(d / "a.toml", R.LAYOUT_A), "apply"],
                  {"MIGD_RUN_DIR": str(d / "run")})
    assert r.code == 0
    return {"state": state, "run": str(d / "run"), "bytes": Path(state).read_bytes(), "dir": d}


def _problem_lines(err: str, path: str):
    """The problem lines of a refused config on stderr (after "invalid configuration, no GPU touched:")."""
    lines = err.splitlines()
    assert lines and lines[0] == "migd: invalid configuration, no GPU touched:", err[-3000:]
    return lines[1:]


def check_refused(r: R.Run, path: str) -> None:
    assert not r.traceback, (r.exception, r.err[-3000:])
    assert r.code == 2, (r.code, r.out[-2000:], r.err[-2000:])
    problems = _problem_lines(r.err, path)
    assert problems
    for line in problems:
        assert line.startswith(path + ":"), line[:300]
        rest = line[len(path) + 1:]
        if not re.match(r"\d+: ", rest):
            assert any(w in rest for w in WHOLE_FILE), line[:300]
        assert len(line) < 2000, "a problem line should stay readable"


# --- the corpus -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_corpus_bad_file_is_refused_with_file_line_and_key(path, sim_host):
    Path(sim_host["state"]).write_bytes(sim_host["bytes"])
    for verb in ("apply", "validate", "plan", "boot"):
        args = ["--sim-state", sim_host["state"], "--config", str(path), verb]
        r = R.run_cli(args, {"MIGD_RUN_DIR": sim_host["run"]})
        if verb == "boot":  # under systemd: the same problems as journal events, exit 2
            assert not r.traceback and r.code == 2, r.err[-2000:]
            assert r.named("config_invalid"), r.events
            continue
        check_refused(r, str(path))
    assert Path(sim_host["state"]).read_bytes() == sim_host["bytes"], "a refused config touched a GPU"
    # Problems about keys name the key (parse-level problems: the key path is structured there).
    try:
        config_mod.load(str(path))
    except ConfigError as e:
        for p in e.problems:
            assert p.path == str(path)
            if p.key:
                assert p.line, p
    STATS["corpus bad"] += 1


@pytest.mark.parametrize("path", OK, ids=[p.name for p in OK])
def test_corpus_odd_but_valid_file_works(path, sim_host):
    Path(sim_host["state"]).write_bytes(sim_host["bytes"])
    r = R.run_cli(["--sim-state", sim_host["state"], "--config", str(path), "apply"], {"MIGD_RUN_DIR": sim_host["run"]})
    assert not r.traceback and r.code == 0, r.err[-2000:]
    STATS["corpus ok"] += 1


def test_ten_megabyte_and_deeply_nested_files(tmp_path, sim_host):
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        line = b'[[gpu]]\nselect = "all"\nmig = true\ninstances = ["1g"]\n'
        f.write(line * (10 * 1024 * 1024 // len(line) + 1))
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    deep_tables = tmp_path / "deep-tables.toml"
    deep_tables.write_text("a = " + "{b = " * 50000 + "1" + "}" * 50000 + "\n")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(random.Random(1).randbytes(10 * 1024 * 1024) if hasattr(random.Random, "randbytes")
                     else os.urandom(10 * 1024 * 1024))
    for path in (big, deep, deep_tables, junk):
        Path(sim_host["state"]).write_bytes(sim_host["bytes"])
        r = R.run_cli(["--sim-state", sim_host["state"], "--config", str(path), "apply"],
                      {"MIGD_RUN_DIR": sim_host["run"]})
        check_refused(r, str(path))
        assert Path(sim_host["state"]).read_bytes() == sim_host["bytes"]
    assert "larger than 1024 KiB" in R.run_cli(["--config", str(big), "validate"]).err


def test_special_files_as_config(tmp_path):
    """A FIFO without a writer must not hang migd (boot!); devices and directories are refused."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    r = R.run_cli(["--config", str(fifo), "validate"])
    assert not r.traceback and r.code in (0, 2)
    for path, verb in ((fifo, "apply"), ("/dev/zero", "apply"), ("/dev/null", "apply"), (str(tmp_path), "apply"),
                       ("/dev/zero", "validate"), (str(tmp_path), "validate")):
        r = R.run_cli(["--sim-state", str(tmp_path / "s.json"), "--config", str(path), verb],
                      {"MIGD_RUN_DIR": str(tmp_path / "run")})
        check_refused(r, str(path))


def test_selectors_and_profiles_matching_nothing_or_several(sim_host):
    """An explicit selector that matches no GPU, a glob that matches no GPU model migd knows ("al") and a profile
    a GPU's model lacks: exit 2, nothing touched. A glob of a known model matching nothing here is fine (one fleet
    file for hosts with different GPUs), and said; several entries matching one GPU: the last one wins."""
    Path(sim_host["state"]).write_bytes(sim_host["bytes"])
    d = sim_host["dir"]
    for name in ("layout-no-such-index.toml", "layout-no-such-uuid.toml", "layout-no-such-pci.toml",
                 "layout-wrong-model-profile.toml", "layout-glob-typo.toml"):
        r = R.run_cli(["--sim-state", sim_host["state"], "--config", str(CORPUS / "bad" / name), "apply"],
                      {"MIGD_RUN_DIR": sim_host["run"]})
        check_refused(r, str(CORPUS / "bad" / name))
    assert Path(sim_host["state"]).read_bytes() == sim_host["bytes"]
    r = R.run_cli(["--sim-state", sim_host["state"], "--config", str(CORPUS / "ok" / "glob-matches-nothing.toml"),
                   "apply"], {"MIGD_RUN_DIR": sim_host["run"]})
    assert r.code == 0 and "not managed" not in r.err and "select = *B200*): selects no GPU on this host" in r.out
    assert Path(sim_host["state"]).read_bytes() == sim_host["bytes"]
    r = R.run_cli(["--sim-state", sim_host["state"], "--config", str(CORPUS / "ok" / "glob-matches-several.toml"),
                   "validate"], {"MIGD_RUN_DIR": sim_host["run"]})
    assert r.code == 0 and "GPU 0 NVIDIA H100 80GB HBM3: [[gpu]] #1 (" in r.out
    assert "GPU 1 NVIDIA A100-SXM4-40GB: [[gpu]] #2 (" in r.out
    del d


# --- hypothesis: mutations of good configs ------------------------------------------------------------------------

SEEDS = [R.LAYOUT_A, R.LAYOUT_B, R.LAYOUT_C, R.MIG_OFF] + [p.read_text() for p in sorted(
    (R.ROOT / "etc" / "examples").glob("*.toml"))] + [(R.ROOT / "etc" / "migd.toml").read_text()]
NASTY = ["\x00", "\ufeff", "\u202e", "\u200d", "😀", "é", "[[gpu]]\n", "[daemon]\n", "[gpu]\n", "=", '"', "'", "[",
         "]", "{", "}", "\n", ",", "#", ".", "1e400", "-1", "nan", "inf", "99999999999999999999999", "true", '"""',
         "\\", "\\u0000", "select", "mig", "instances", "profile", "compute", "name", "stop_clients",
         "drift_policy", "7g", "3g.40gb", "0x7f", "\r\n", "\t", " = ", 'select = "all"\n', "mig = true\n",
         "instances = [" * 3, "{ profile = ", "a" * 300]


@st.composite
def mutated_config(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup", "swap", "truncate", "bytes"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if op == "insert":
            text = text[:i] + draw(st.one_of(st.sampled_from(NASTY), st.text(max_size=8))) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "replace":
            j = draw(st.integers(i, min(n, i + 12)))
            text = text[:i] + draw(st.sampled_from(NASTY)) + text[j:]
        elif op in ("dup", "swap"):
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "dup":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        elif op == "truncate":
            text = text[:i]
        else:  # bytes that are not text at all
            return (text[:i].encode() + draw(st.binary(min_size=1, max_size=16)) + text[i:].encode())
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None, derandomize=not R.FULL,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_config())
def test_mutated_configs_parse_or_fail_with_file_line_key(data):
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        try:
            config_mod.load(path, owner=0 if os.geteuid() == 0 else None)
            STATS["mutated: valid"] += 1
        except ConfigError as e:
            STATS["mutated: refused"] += 1
            n_lines = data.count(b"\n") + 1
            for p in e.problems:
                assert p.path == path, p
                assert p.line is None or 1 <= p.line <= n_lines, (p, data)
                if p.key:
                    assert p.line is not None, (p, data)
                elif p.line is None:
                    assert any(w in p.message for w in WHOLE_FILE), (p, data)
    finally:
        os.unlink(path)


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not R.FULL,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated_config())
def test_mutated_configs_through_the_cli_never_touch_a_gpu_when_refused(data, sim_host):
    """`migd apply` with the file against a simulated host: a refused file (exit 2) leaves the host untouched."""
    Path(sim_host["state"]).write_bytes(sim_host["bytes"])
    path = os.path.join(sim_host["dir"], "fuzz.toml")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)
    r = R.run_cli(["--sim-state", sim_host["state"], "--config", path, "apply"], {"MIGD_RUN_DIR": sim_host["run"]})
    assert not r.traceback, (r.exception, r.err[-3000:])
    if r.code == 2:
        STATS["cli: refused, untouched"] += 1
        check_refused(r, path)
        assert Path(sim_host["state"]).read_bytes() == sim_host["bytes"], data
    else:
        STATS[f"cli: exit {r.code}"] += 1
        assert r.code in (0, 1, 4), (r.code, r.err[-2000:])


# --- hypothesis: the simulated host's state file ---------------------------------------------------------------

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
                               st.text(max_size=10)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4),
                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=10)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_state(draw, good: bytes):
    doc = json.loads(good)
    paths = [p for p in _paths(doc) if p]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            how = draw(st.sampled_from(["same type", "same type", "any", "delete"]))
            value = parent[path[-1]]
            if how == "same type":  # plausible but wrong: another int, string, flag, a shorter list
                if isinstance(value, bool):
                    parent[path[-1]] = not value
                elif isinstance(value, int):
                    parent[path[-1]] = draw(st.integers(-3, 70))
                elif isinstance(value, str):
                    parent[path[-1]] = draw(st.sampled_from(["", "loaded", "not-loaded", "a100-40gb", "x" * 100])
                                            | st.text(max_size=8))
                elif isinstance(value, list):
                    parent[path[-1]] = value[:draw(st.integers(0, len(value)))] * draw(st.integers(1, 3))
                else:
                    parent[path[-1]] = draw(_json)
            elif how == "any":
                parent[path[-1]] = draw(_json)
            elif isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(doc).encode()
    if draw(st.integers(0, 9)) == 0:  # sometimes not even JSON
        text = text[:draw(st.integers(0, len(text)))] + draw(st.binary(max_size=8))
    return text


def _good_state() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        state = os.path.join(d, "state.json")
        SimHost.create("h100-80gb,a100-40gb", state)
        R.run_cli(["--sim-state", state, "--config", R.write_config(Path(d) / "a.toml", R.LAYOUT_A), "apply"],
                  {"MIGD_RUN_DIR": os.path.join(d, "run")})
        host = SimHost(load_state(state), state)
        host.add_process(0, 4242, host.gpus[0]["gis"][0]["id"], 0)
        host.save()
        return Path(state).read_bytes()


GOOD_STATE = _good_state()


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not R.FULL,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated_state(GOOD_STATE))
def test_mutated_state_files_are_refused_or_used_never_a_traceback(data, tmp_path_factory):
    d = tempfile.mkdtemp(dir=str(tmp_path_factory.getbasetemp()))
    state = os.path.join(d, "state.json")
    with open(state, "wb") as f:
        f.write(data)
    try:
        load_state(state)
        ok = True
    except ValueError as e:
        ok = False
        assert str(e).startswith(state + ": "), e
    conf = R.write_config(Path(d) / "a.toml", R.LAYOUT_B)
    for verb in (["status", "--json"], ["check"], ["apply"]):
        r = R.run_cli(["--sim-state", state, "--config", conf, *verb], {"MIGD_RUN_DIR": os.path.join(d, "run")})
        assert not r.traceback, (verb, r.exception, r.err[-3000:], data[:3000])
        if not ok:
            assert r.code == 2 and state in r.err, (verb, r.code, r.err[-2000:])
        else:
            assert r.code in (0, 1, 3, 4), (verb, r.code, r.err[-2000:])
    STATS["state file: " + ("used" if ok else "refused, exit 2")] += 1


def test_junk_in_run_dir_is_never_read(tmp_path):
    """/run/migd/state.json, devices.env and the lock's content are written, never trusted: junk there changes
    nothing, and apply replaces it."""
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    for name in ("state.json", "devices.env", "lock"):
        (run / name).write_bytes(b"\x00\xff junk {{{ " * 1000)
        os.chmod(run / name, 0o644)
    state = str(tmp_path / "state.json")
    SimHost.create("h100-80gb", state)
    conf = R.write_config(tmp_path / "a.toml", R.LAYOUT_A)
    for verb in ("apply", "check", "status"):
        r = R.run_cli(["--sim-state", state, "--config", conf, verb], {"MIGD_RUN_DIR": str(run)})
        assert not r.traceback and r.code == 0, r.err
    assert json.loads((run / "state.json").read_text())["gpus"][0]["outcome"] == "applied"
    assert (run / "devices.env").read_text().startswith("# Written by migd")


# --- command-line arguments ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-fuzz")
    bad = d / "bad.toml"
    bad.write_bytes((CORPUS / "bad" / "wrong-types.toml").read_bytes())
    return {"good": R.write_config(d / "good.toml", R.LAYOUT_A), "state": str(d / "state.json"),
            "bad": str(bad), "run": str(d / "run"), "dir": str(d)}


BAD_ARGS = [
    ["--simulate", "", "status"], ["--simulate", "bogus", "status"], ["--simulate", "a100-40gb:0", "status"],
    ["--simulate", "a100-40gb:-1", "status"], ["--simulate", "a100-40gb:65", "status"],
    ["--simulate", "a100-40gb:x", "status"], ["--simulate", ":", "status"], ["--simulate", ",", "status"],
    ["--simulate", "h100-80gb:64,h100-80gb:64", "status"], ["--simulate", "ａ100-40gb", "status"],
    ["--simulate", "a100-40gb\x00", "status"], ["frobnicate"], [], ["--config"], ["status", "--bogus"],
    ["apply", "--dry-run", "extra"], ["--sim-state", "{dir}", "status"], ["--sim-state", "/dev/null", "status"],
    ["--sim-state", "/dev/null/state.json", "status"], ["--simulate", "dgx-a100", "-c", "{bad}", "plan"],
    ["--simulate", "dgx-a100", "-c", "/nonexistent.toml", "apply"], ["-c", "", "validate"],
    ["--sim-state", "{junk}", "status"],
]


@pytest.mark.parametrize("argv", BAD_ARGS, ids=[" ".join(a)[:40] or "(none)" for a in BAD_ARGS])
def test_bad_arguments_exit_2_without_traceback(argv, cli_env, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_bytes((CORPUS / "bad" / "binary-junk.bin").read_bytes())
    argv = [a.format(dir=cli_env["dir"], bad=cli_env["bad"], junk=str(junk)) for a in argv]
    r = R.run_cli(argv, {"MIGD_RUN_DIR": str(tmp_path / "run")})
    assert not r.traceback, (r.exception, r.err[-2000:])
    assert r.code == 2, (argv, r.code, r.err[-2000:])
    assert r.err.strip(), "say what is wrong"


def test_bad_fault_spec_is_a_usage_error(cli_env, tmp_path):
    r = R.run_cli(["--simulate", "h100-80gb", "status"], {"MIGD_RUN_DIR": str(tmp_path / "run"),
                                                           "MIGD_SIM_FAULTS": "nvmlX=BOGUS"})
    assert not r.traceback and r.code == 2 and "bad fault code" in r.err, r.err


_TOKENS = ["status", "profiles", "validate", "plan", "apply", "check", "export", "--json", "--dry-run",
           "--stop-clients", "-v", "-q", "--config", "-c", "--simulate", "--sim-state", "{good}", "{bad}",
           "{dir}/nonexistent", "", "-", "--", "dgx-a100", "h100-80gb:2", "a30", "bogus", "a100-40gb:0", "{state}",
           "{dir}", "/dev/null", "ü", "\u202e", "-x", "--version", "GPU-0"]


@pytest.mark.slow
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not R.FULL,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=6)), max_size=7))
def test_random_arguments_never_traceback(argv, cli_env):
    argv = [a.replace("{good}", cli_env["good"]).replace("{bad}", cli_env["bad"]).replace("{state}", cli_env["state"])
            .replace("{dir}", cli_env["dir"]) for a in argv]
    for n, a in enumerate(argv[:-1]):  # --sim-state (or a prefix argparse accepts) creates what it names
        if a.startswith("--sim-") and argv[n + 1].startswith("/") and not argv[n + 1].startswith(cli_env["dir"]):
            return
    if {"boot", "watch"} & set(argv):
        return  # boot waits for a driver, watch runs until stopped: covered by their own tests
    cwd = Path.cwd()
    os.chdir(cli_env["dir"])  # relative paths land in the test's directory
    try:
        r = R.run_cli(argv, {"MIGD_RUN_DIR": cli_env["run"]})
    finally:
        os.chdir(cwd)
    assert not r.traceback, (argv, r.exception, r.err[-2000:])
    assert r.code in (0, 1, 2, 3, 4, 5), (argv, r.code)
    STATS[f"argv: exit {r.code}"] += 1
