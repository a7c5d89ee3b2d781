"""One config for a fleet (issue 11): `[[gpu]] hosts = [...]`, drop-ins in migd.d/, and `migd validate --host`,
the way an admin (or a config repository's CI) uses them: through the CLI, on real files, with simulated GPUs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reliability as R
from migd import config as config_mod
from migd.errors import ConfigError
from migd.hostnames import PatternError, compile_pattern, matches, names_of
from migd.model import DaemonSettings
from migd.sim.host import load_state


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return R.write_config(path, textwrap.dedent(text).lstrip("\n"))


def validate(conf: str, *extra: str, spec: str = "h100-80gb:2") -> R.Run:
    return R.run_cli(["--config", conf, "--simulate", spec, "validate", *extra])


FLEET = """
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g", "3g"]

    [[gpu]]
    select = 1
    hosts = ["node[01-16]", "dgx-a*"]
    mig = true
    instances = { "1g" = 7 }

    [[gpu]]
    select = 7
    hosts = ["big[1-4]"]
    mig = false
"""


# --- host-name patterns -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, yes, no", [
    ("node[01-16]", ["node01", "node09", "node10", "node16", "NODE07"], ["node1", "node00", "node17", "node001", "node"]),
    ("node[1,3,5-7]", ["node1", "node3", "node5", "node6", "node7"], ["node2", "node4", "node8", "node01", "node13"]),
    ("node[8-10]", ["node8", "node9", "node10"], ["node08", "node11", "node7"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"], ["node98", "node102"]),
    ("rack[1-2]-n[01-04]", ["rack1-n01", "rack2-n04"], ["rack3-n01", "rack1-n05", "rack1-n1"]),
    ("dgx-a*", ["dgx-a100-01", "dgx-a", "DGX-A7"], ["dgx-h100-01", "xdgx-a1"]),
    ("gpu?", ["gpu1", "gpux"], ["gpu", "gpu12"]),
    ("*[1-3]", ["a1", "node12", "b-3"], ["a4", "node"]),  # a glob before a range: backtracking finds "2"
    ("n[0-999999999]", ["n0", "n123456789"], ["n1234567890", "nx"]),  # never expanded
    ("node07", ["node07", "Node07"], ["node7", "node07x"]),
])
def test_host_patterns(pattern, yes, no):
    assert [n for n in yes if not matches(pattern, n)] == []
    assert [n for n in no if matches(pattern, n)] == []


def _expand(prefix: str, spans, suffix: str):
    """Slurm's hostlist expansion, written out: the reference the matcher must agree with."""
    return {f"{prefix}{str(v).zfill(w)}{suffix}" for lo, hi, w in spans for v in range(lo, hi + 1)}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 30), st.integers(1, 3)), min_size=1, max_size=3),
       st.sampled_from(["node", "n-", ""]), st.sampled_from(["", ".ib", "-gpu"]), st.integers(0, 400),
       st.integers(1, 4))
def test_ranges_match_exactly_what_slurm_expands_them_to(spans, prefix, suffix, value, width):
    spans = [(lo, lo + n, max(w, len(str(lo)))) for lo, n, w in spans]
    body = ",".join(f"{str(lo).zfill(w)}-{str(hi).zfill(w)}" for lo, hi, w in spans)
    pattern = f"{prefix}[{body}]{suffix}"
    names = _expand(prefix, spans, suffix)
    assert all(matches(pattern, n) for n in names)
    candidate = f"{prefix}{str(value).zfill(width)}{suffix}"
    assert matches(pattern, candidate) == (candidate in names)


@pytest.mark.parametrize("pattern, message", [
    ("node[5-1]", "the range 5-1 runs backwards"),
    ("node[]", "an empty range"),
    ("node[a-c]", "brackets hold numbers only"),
    ("node[1-3", "'[' without ']'"),
    ("node[1--3]", "is not a number or a range"),
    ("node_1 x", "' ' cannot be in a host name"),
    ("", "an empty host-name pattern"),
    ("a" * 254, "longer than 253"),
])
def test_bad_host_patterns(pattern, message):
    with pytest.raises(PatternError) as e:
        compile_pattern(pattern)
    assert message in str(e.value)


def test_a_host_is_known_by_its_full_and_its_short_name():
    assert names_of("node07.cluster.example.") == ("node07.cluster.example", "node07")
    assert names_of("Node07") == ("node07",)


# --- hosts in the config: validated with file, line and key ----------------------------------------------------

@pytest.mark.parametrize("hosts, key, message", [
    ('"node01"', "[[gpu]] #1 hosts", "must be a list of host-name patterns"),
    ("[]", "[[gpu]] #1 hosts", "an empty list matches no host"),
    ('["node[01-04]", 7]', "[[gpu]] #1 hosts #2", "must be a host-name pattern (a string)"),
    ('["ok", "node[5-1]"]', "[[gpu]] #1 hosts #2", "the range 5-1 runs backwards (write 1-5)"),
    ('["node[x]"]', "[[gpu]] #1 hosts #1", "brackets hold numbers only"),
])
def test_bad_hosts_are_refused_with_file_line_and_key(tmp_path, hosts, key, message):
    conf = write(tmp_path / "migd.toml", f'# fleet\n[[gpu]]\nselect = "all"\nhosts = {hosts}\nmig = false\n')
    r = validate(conf)
    assert r.code == 2 and not r.traceback, r.err
    (line,) = r.err.splitlines()[1:]
    assert line.startswith(f"{conf}:4: {key}: ") and message in line, line


# --- validate --host: the fleet file as one host sees it ------------------------------------------------------

def test_validate_as_another_host_shows_each_gpus_entry(tmp_path):
    conf = write(tmp_path / "fleet.toml", FLEET)
    r = validate(conf, "--host", "node07.cluster.example")
    assert r.code == 0, r.err
    assert "as host node07.cluster.example: 2 of 3 GPU entries apply" in r.out
    assert f"GPU 0 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({conf}:1, select = all)" in r.out
    assert f"GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #2 ({conf}:6, select = 1, hosts = node[01-16], dgx-a*)" in r.out

    r = validate(conf, "--host", "node17")  # outside the range: entry #2 is not for it
    assert r.code == 0, r.err
    assert "as host node17: 1 of 3 GPU entries apply" in r.out
    assert f"GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({conf}:1, select = all)" in r.out

    # An index this host lacks is an error only on the hosts the entry is for.
    r = validate(conf, "--host", "big2")
    assert r.code == 2 and f"{conf}:12: [[gpu]] #3 select: no GPU with index 7 (this host has 2 GPUs: 0 to 1)" in r.err


def test_without_host_the_entry_applies_by_this_machines_name(tmp_path):
    from migd.hostnames import static_host

    me = static_host().name.split(".")[0]
    conf = write(tmp_path / "fleet.toml", f"""
        [[gpu]]
        select = "all"
        hosts = ["{me}"]
        mig = false

        [[gpu]]
        select = 1
        hosts = ["{me}-not"]
        mig = true
    """)
    r = validate(conf)
    assert r.code == 0, r.err
    from migd.hostnames import static_host

    this = static_host()
    assert f"as host {this.name} (this host: {this.source}; --host NAME for another): 1 of 2 GPU entries apply" \
        in r.out
    assert f"GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({conf}:1" in r.out


def test_validate_host_needs_a_host_name(tmp_path):
    conf = write(tmp_path / "fleet.toml", FLEET)
    r = validate(conf, "--host", "bad name")
    assert r.code == 2 and "not a host name" in r.err and not r.traceback


# --- drop-ins --------------------------------------------------------------------------------------------------

def test_drop_ins_are_read_after_the_main_file_in_lexical_order(tmp_path):
    conf = write(tmp_path / "migd.toml", FLEET)
    d = tmp_path / "migd.d"
    write(d / "20-gpu0.toml", '[[gpu]]\nselect = 0\nmig = true\ninstances = ["7g"]\n')
    write(d / "10-gpu0.toml", '[[gpu]]\nselect = 0\nmig = true\ninstances = ["4g"]\n')
    # not drop-ins: package-manager leftovers, editor backups and temporary files, other names
    for junk in ("30-x.toml.dpkg-old", "30-x.toml~", ".30-x.toml", "#30-x.toml#", "README", "30-x.toml.swp"):
        (d / junk).write_text("this is not TOML [[[")
    r = validate(conf, "--host", "node01")
    assert r.code == 0, r.err
    assert f"(5 GPU entries, with drop-ins {d}/10-gpu0.toml, {d}/20-gpu0.toml)" in r.out
    assert f"GPU 0 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({d}/20-gpu0.toml:1, select = 0)" in r.out  # the last wins
    assert f"GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #2 ({conf}:6, select = 1, hosts = node[01-16], dgx-a*)" in r.out

    # and apply does what validate said
    state = str(tmp_path / "state.json")
    r = R.run_cli(["--config", conf, "--simulate", "h100-80gb:2", "--sim-state", state, "apply"])
    assert r.code == 0, r.err
    gpus = load_state(state)["gpus"]
    assert [gi["size"] for gi in gpus[0]["gis"]] == [8]  # 7g
    assert [gi["size"] for gi in gpus[1]["gis"]] == [4, 4]  # this machine is no node01: entry #1's two 3g


def test_a_drop_in_cannot_reuse_an_instance_name_of_the_main_file_as_a_devices_env_variable(tmp_path):
    """devices.env is one namespace for the main file and every drop-in: "train" there and "Train" in a drop-in
    would both write MIGD_TRAIN. Refused at the drop-in's line, naming the main file's."""
    conf = write(tmp_path / "migd.toml", '[[gpu]]\nselect = 0\nmig = true\ninstances = [{ profile = "3g", name = "train" }]\n')
    dropin = write(tmp_path / "migd.d" / "10-gpu1.toml",
                   '[[gpu]]\nselect = 1\nmig = true\ninstances = [{ profile = "3g", name = "Train" }]\n')
    r = validate(conf)
    assert r.code == 2, r.out + r.err
    assert f"{dropin}:4: [[gpu]] #1 instances #1 name: instance name 'Train' and 'train' ({conf}:4) are one " \
           "devices.env variable" in r.err, r.err


def test_drop_in_daemon_keys_override_key_by_key(tmp_path):
    conf = write(tmp_path / "migd.toml", '[daemon]\nwatch_interval = 30\ndrift_policy = "reapply"\n')
    write(tmp_path / "migd.d" / "50-watch.toml", "[daemon]\nwatch_interval = 10\n")
    write(tmp_path / "migd.d" / "60-pm.toml", "[daemon]\npersistence_mode = false\n")
    cfg = config_mod.load(conf)
    assert cfg.daemon == DaemonSettings(watch_interval=10.0, drift_policy="reapply", persistence_mode=False)
    assert cfg.files == (conf, str(tmp_path / "migd.d" / "50-watch.toml"), str(tmp_path / "migd.d" / "60-pm.toml"))


def test_problems_name_the_drop_in_file_and_line_after_the_main_files(tmp_path):
    conf = write(tmp_path / "migd.toml", '[[gpu]]\nselect = "all"\nmig = "yes"\n')
    d = tmp_path / "migd.d"
    b = write(d / "20-b.toml", "[daemon]\nwatch_interval = 0\n")
    a = write(d / "10-a.toml", '# role: inference\n[[gpu]]\nselect = 0\nmig = true\ninstances = ["9g"]\n')
    r = validate(conf)
    assert r.code == 2, r.err
    assert r.err.splitlines()[1:] == [
        f"{conf}:3: [[gpu]] #1 mig: missing or not true/false: say mig = true (with instances) or mig = false",
        (f'{a}:5: [[gpu]] #1 instances #1: not a GPU instance profile: \'9g\' (e.g. "1g.10gb", "MIG 1g.10gb", '
         '"1g.10gb+me", 19, or "1g"…"7g")'),
        f"{b}:2: daemon.watch_interval: must be a number of seconds from 1 to 86400, got 0",
    ]
    write(d / "10-a.toml", "[[gpu]\n")  # a syntax error in a drop-in, with the parser's line
    r = validate(conf)
    assert f"{a}:1: TOML syntax:" in r.err


def test_layout_problems_in_a_drop_in_name_it(tmp_path):
    conf = write(tmp_path / "migd.toml", '[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g"]\n')
    a = write(tmp_path / "migd.d" / "10-a.toml", '[[gpu]]\nselect = 1\nmig = true\ninstances = ["4g", "4g"]\n')
    r = validate(conf)
    assert r.code == 2
    assert f"{a}:4: [[gpu]] #1 instances: needs 8 compute slices" in r.err, r.err


def test_drop_ins_must_be_regular_files(tmp_path):
    conf = write(tmp_path / "migd.toml", "")
    d = tmp_path / "migd.d"
    target = write(tmp_path / "elsewhere.toml", '[[gpu]]\nselect = "all"\nmig = false\n')
    d.mkdir()
    os.symlink(target, d / "10-link.toml")
    r = validate(conf)
    assert r.code == 2 and f"{d}/10-link.toml: a symbolic link: a drop-in must be a regular file" in r.err, r.err
    os.unlink(d / "10-link.toml")
    (d / "10-dir.toml").mkdir()
    r = validate(conf)
    assert r.code == 2 and f"{d}/10-dir.toml: not a regular file" in r.err, r.err
    os.rmdir(d / "10-dir.toml")
    os.rmdir(d)
    Path(d).write_text("")  # migd.d is a file, not a directory
    r = validate(conf)
    assert r.code == 2 and f"{d}: not a directory" in r.err, r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, and apply's trust check runs as root)")
def test_trust_check_covers_each_drop_in_and_the_directory(tmp_path):
    """As root, apply refuses a drop-in another user could change, as it refuses such a main file."""
    os.chmod(tmp_path, 0o755)
    conf = write(tmp_path / "migd.toml", "")
    d = tmp_path / "migd.d"
    drop = write(d / "10-a.toml", '[[gpu]]\nselect = "all"\nmig = false\n')
    state = str(tmp_path / "state.json")
    apply = ["--config", conf, "--simulate", "h100-80gb", "--sim-state", state, "apply"]
    assert R.run_cli(apply).code == 0
    os.chmod(drop, 0o666)
    r = R.run_cli(apply)
    assert r.code == 2 and f"{drop}: writable by group/others (mode 0666)" in r.err, r.err
    os.chmod(drop, 0o644)
    os.chown(drop, 1234, 1234)
    r = R.run_cli(apply)
    assert r.code == 2 and f"{drop}: owned by uid 1234, not root" in r.err, r.err
    os.chown(drop, 0, 0)
    os.chmod(d, 0o777)
    r = R.run_cli(apply)
    assert r.code == 2 and f"{d}: drop-in directory writable by group/others (mode 0777)" in r.err, r.err
    with pytest.raises(ConfigError):
        config_mod.load(conf, owner=0)
    assert config_mod.load(conf).files == (conf, drop)  # read verbs read anything: they change no GPU


def test_boot_on_a_host_no_entry_is_for_does_nothing_and_waits_for_no_driver(tmp_path):
    """A fleet file whose entries all name other hosts: migd boot is done at once, even with no driver at all."""
    conf = write(tmp_path / "fleet.toml", '[[gpu]]\nselect = "all"\nhosts = ["no-such-host-[1-9]"]\nmig = false\n'
                                          "[daemon]\ndriver_wait_timeout = 2\n")  # was: waited, then exit 1
    r = R.run_cli(["--config", conf, "boot"])
    assert r.code == 0 and r.named("boot_nothing"), (r.code, r.events, r.err)
