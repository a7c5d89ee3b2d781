"""migd.config: the shapes an admin may write, and for everything else a ConfigError naming file, line and key."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migd.config import MAX_BYTES, load, parse
from migd.errors import EXIT_USAGE, ConfigError
from migd.model import DaemonSettings, GpuSelector

PATH = "/etc/migd.toml"


def cfg(text: str):
    return parse(textwrap.dedent(text).lstrip("\n"), PATH)


def problems(text: str, dedent: bool = True) -> List[Tuple[Optional[int], str, str]]:
    body = textwrap.dedent(text).lstrip("\n") if dedent else text
    with pytest.raises(ConfigError) as exc:
        parse(body, PATH)
    err = exc.value
    assert err.exit_code == EXIT_USAGE
    for p in err.problems:
        assert p.path == PATH
        assert str(p).startswith(PATH + (f":{p.line}" if p.line else ""))
    assert str(err) == "\n".join(str(p) for p in err.problems)
    return [(p.line, p.key, p.message) for p in err.problems]


def one(text: str) -> Tuple[Optional[int], str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- valid shapes ------------------------------------------------------------------------------------------

def test_empty_file_manages_nothing():
    c = parse("", PATH)
    assert c.path == PATH and c.entries == () and c.daemon == DaemonSettings()
    assert parse("# only a comment\n\n", PATH).entries == ()


def test_list_of_profiles_in_every_spelling():
    c = cfg("""
        # comment
        [[gpu]]
        select = "all"   # trailing comment
        mig = true
        instances = ["3g.40gb", "MIG 2g.20gb", 19, "1g", "1g.10gb+me", "1g.20gb"]
    """)
    (e,) = c.entries
    assert (e.number, e.selector, e.mig, e.where) == (1, GpuSelector("all"), True, f"{PATH}:2")
    assert [i.profile for i in e.instances] == ["3g.40gb", "MIG 2g.20gb", "19", "1g", "1g.10gb+me", "1g.20gb"]
    assert all(i.name is None and i.compute is None and _line(i.where) == f"{PATH}:5" for i in e.instances)
    assert [i.where.split(": ", 1)[1] for i in e.instances][:2] == ["[[gpu]] #1 instances #1", "[[gpu]] #1 instances #2"]


def test_multi_line_list_gives_each_instance_its_own_line():
    c = cfg("""
        [[gpu]]
        select = "*H100*"
        mig = true
        instances = [
          { profile = "4g.40gb", name = "train", compute = ["2c.4g.40gb", "2c"] },

          # the eval slice
          { profile = "2g.20gb", name = "eval" },
          "1g.10gb",
        ]
    """)
    (e,) = c.entries
    assert [(i.profile, i.name, i.compute, _line(i.where)) for i in e.instances] == [
        ("4g.40gb", "train", ("2c.4g.40gb", "2c"), f"{PATH}:5"),
        ("2g.20gb", "eval", None, f"{PATH}:8"),
        ("1g.10gb", None, None, f"{PATH}:9"),
    ]


def test_count_tables_inline_and_as_sub_table():
    c = cfg("""
        [[gpu]]
        select = 0
        mig = true
        instances = { "1g.10gb" = 3, "2g.20gb" = 2, "3g" = 0 }

        [[gpu]]
        select = 1
        mig = true
        [gpu.instances]
        "1g.20gb" = 2
        "4g" = 1
    """)
    a, b = c.entries
    assert [i.profile for i in a.instances] == ["1g.10gb"] * 3 + ["2g.20gb"] * 2  # in the order written
    assert [i.profile for i in b.instances] == ["1g.20gb", "1g.20gb", "4g"]
    assert [_line(i.where) for i in b.instances] == [f"{PATH}:10"] * 2 + [f"{PATH}:11"]
    assert b.instances[0].where.endswith(': [[gpu]] #2 instances."1g.20gb"')


def test_instances_as_array_of_tables():
    c = cfg("""
        [[gpu]]
        select = "all"
        mig = true

        [[gpu.instances]]
        profile = "3g.40gb"
        name = "big"

        [[gpu.instances]]
        profile = "1g.10gb"
        compute = ["1g.10gb"]
    """)
    (e,) = c.entries
    assert [(i.profile, i.name, i.compute, _line(i.where)) for i in e.instances] == [
        ("3g.40gb", "big", None, f"{PATH}:5"), ("1g.10gb", None, ("1g.10gb",), f"{PATH}:9")]


def test_gpu_entries_as_inline_array():
    c = cfg("""
        gpu = [
          { select = 0, mig = true, instances = ["7g"] },
          { select = 1, mig = false },
        ]
    """)
    assert [(e.number, e.mig, e.where) for e in c.entries] == [(1, True, f"{PATH}:2"), (2, False, f"{PATH}:3")]


@pytest.mark.parametrize("written, selector", [
    ('"all"', GpuSelector("all")),
    # one rule for every string selector: surrounding spaces are dropped, and "all" is a word in any case
    ('" all "', GpuSelector("all")),
    ('"ALL"', GpuSelector("all")),
    ('" All\t"', GpuSelector("all")),
    ('" 07:00.0 "', GpuSelector("pci", ("00000000:07:00.0",))),
    ('" *H100* "', GpuSelector("glob", ("*H100*",))),
    ("0", GpuSelector("index", (0,))),
    ("63", GpuSelector("index", (63,))),
    ("[0, 3, 1]", GpuSelector("index", (0, 3, 1))),
    ('"GPU-ABCDEF01-2345-6789-abcd-ef0123456789"', GpuSelector("uuid", ("GPU-abcdef01-2345-6789-abcd-ef0123456789",))),
    ('"00000000:07:00.0"', GpuSelector("pci", ("00000000:07:00.0",))),
    ('"0000:b7:1f.7"', GpuSelector("pci", ("00000000:B7:1F.7",))),
    ('"07:00.0"', GpuSelector("pci", ("00000000:07:00.0",))),
    ('"*H100*"', GpuSelector("glob", ("*H100*",))),
    ('"NVIDIA A100-SXM4-40GB"', GpuSelector("glob", ("NVIDIA A100-SXM4-40GB",))),
])
def test_selector_kinds(written, selector):
    c = cfg(f"""
        [[gpu]]
        select = {written}
        mig = false
    """)
    assert c.entries[0].selector == selector


def test_daemon_keys():
    c = cfg("""
        [daemon]
        watch_interval = 30
        drift_policy = "reapply"
        driver_wait_timeout = 0.5
        persistence_mode = false
        stop_clients = ["nvidia-dcgm.service", "dcgm-exporter.service", "nvsm@1.service"]
        lock_timeout = 0
    """)
    assert c.daemon == DaemonSettings(watch_interval=30.0, drift_policy="reapply", driver_wait_timeout=0.5,
                                      persistence_mode=False, lock_timeout=0.0,
                                      stop_clients=("nvidia-dcgm.service", "dcgm-exporter.service", "nvsm@1.service"))
    assert isinstance(c.daemon.watch_interval, float)
    assert cfg("[daemon]\n").daemon == DaemonSettings()


def test_shipped_examples_parse():
    root = os.path.join(os.path.dirname(__file__), "..", "etc")
    paths = [os.path.join(root, "migd.toml")] + [os.path.join(root, "examples", n)
                                                  for n in sorted(os.listdir(os.path.join(root, "examples")))]
    assert len(paths) >= 2
    for path in paths:
        config = load(path)
        assert config.path == path


# --- problems: file, line, key path --------------------------------------------------------------------------

def test_unknown_keys_at_every_level():
    found = problems("""
        colour = "red"

        [[gpu]]
        select = "all"
        mig = true
        flavour = 1
        instances = [
          { profile = "3g", nmae = "x" },
        ]

        [daemon]
        watch = 5

        [extra]
        a = 1
    """)
    assert [(line, key) for line, key, _ in found] == [  # in line order, as the admin reads the file
        (1, "colour"), (6, "[[gpu]] #1 flavour"), (8, "[[gpu]] #1 instances #1 nmae"), (12, "daemon.watch"), (14, "extra")]
    messages = {(line, key): msg for line, key, msg in found}
    assert "[[gpu]] tables and one [daemon] table" in messages[(1, "colour")]
    accepted = "cdi_refresh, drift_policy, driver_wait_timeout, gpu_clients, lock_timeout, metrics_file, on_pending"
    assert f"[daemon] accepts {accepted}" in messages[(12, "daemon.watch")]
    assert "accepts hosts, instances, mig, select" in messages[(6, "[[gpu]] #1 flavour")]
    assert "accepts compute, name, profile" in messages[(8, "[[gpu]] #1 instances #1 nmae")]


@pytest.mark.parametrize("line, text, key, message", [
    ("select = true", None, "[[gpu]] #1 select", "must be \"all\", a GPU index (0)"),
    ("select = 1.5", None, "[[gpu]] #1 select", "got 1.5"),
    ("select = 64", None, "[[gpu]] #1 select", "GPU index 64 is out of range (0 to 63)"),
    ("select = -1", None, "[[gpu]] #1 select", "GPU index -1 is out of range"),
    ("select = []", None, "[[gpu]] #1 select", "a list of GPU indices must hold integers from 0 to 63"),
    ('select = [0, "1"]', None, "[[gpu]] #1 select", "a list of GPU indices"),
    ("select = [0, true]", None, "[[gpu]] #1 select", "a list of GPU indices"),
    ("select = [1, 1]", None, "[[gpu]] #1 select", "GPU index listed twice in [1, 1]"),
    ('select = "GPU-1234"', None, "[[gpu]] #1 select", "'GPU-1234' is not a GPU UUID"),
    ('select = ""', None, "[[gpu]] #1 select", "got ''"),
    ('select = "bad\\u0007glob"', None, "[[gpu]] #1 select", "must be"),
    ("select = { index = 0 }", None, "[[gpu]] #1 select", "must be"),
    ('mig = "yes"', None, "[[gpu]] #1 mig", "missing or not true/false"),
    ("mig = 1", None, "[[gpu]] #1 mig", "missing or not true/false"),
])
def test_wrong_types_in_a_gpu_entry(line, text, key, message):
    defaults = {"select": 'select = "all"', "mig": "mig = true"}
    field = line.split(" =")[0]
    defaults[field] = line
    body = f"[[gpu]]\n{defaults['select']}\n{defaults['mig']}\n"
    found = problems(body, dedent=False)
    assert len(found) == 1, found
    want_line = 2 if field == "select" else 3
    assert found[0][0] == want_line and found[0][1] == key
    assert message in found[0][2], found[0][2]


def test_missing_select_and_mig_point_at_the_entry():
    found = problems("""
        [[gpu]]
        select = 0
        mig = false

        [[gpu]]
        instances = ["3g"]
    """)
    # a missing mig is one problem: no follow-on "instances need mig = true" (issue 13, point 8)
    assert [(line, key) for line, key, _ in found] == [(5, "[[gpu]] #2"), (5, "[[gpu]] #2 mig")]
    assert 'missing "select"' in found[0][2]
    assert not any("instances need mig = true" in m for _, _, m in found)


@pytest.mark.parametrize("mig", ["", 'mig = "yes"\n', "mig = 1\n"])
def test_missing_or_non_boolean_mig_is_one_problem_and_instances_are_still_checked(mig):
    found = problems(f'[[gpu]]\nselect = 0\n{mig}instances = ["3g"]\n', dedent=False)
    assert [(key, m.split(":")[0]) for _, key, m in found] == [("[[gpu]] #1 mig", "missing or not true/false")]
    found = problems(f'[[gpu]]\nselect = 0\n{mig}instances = ["3g", "9z"]\n', dedent=False)
    assert [key for _, key, _ in found] == ["[[gpu]] #1 mig", "[[gpu]] #1 instances #2"]
    assert one('[[gpu]]\nselect = 0\nmig = false\ninstances = ["3g"]\n')[1:] == (
        "[[gpu]] #1 instances", "instances need mig = true (with mig = false, drop instances)")


@pytest.mark.parametrize("instances, key, message", [
    ('"3g"', "[[gpu]] #1 instances", "must be a list"),
    ("7", "[[gpu]] #1 instances", "must be a list"),
    ("[true]", "[[gpu]] #1 instances #1", "must be a profile"),
    ("[1.5]", "[[gpu]] #1 instances #1", "must be a profile"),
    ('["3g", "bogus!"]', "[[gpu]] #1 instances #2", "not a GPU instance profile: 'bogus!'"),
    ('["9g"]', "[[gpu]] #1 instances #1", "not a GPU instance profile"),
    ("[1234]", "[[gpu]] #1 instances #1", "not a GPU instance profile: 1234"),
    ('[["3g"]]', "[[gpu]] #1 instances #1", "must be a profile"),
    ('{ "1g.10gb" = -1 }', '[[gpu]] #1 instances."1g.10gb"', "must be an instance count from 0 to 64, got -1"),
    ('{ "1g.10gb" = true }', '[[gpu]] #1 instances."1g.10gb"', "got True"),
    ('{ "1g.10gb" = 65 }', '[[gpu]] #1 instances."1g.10gb"', "got 65"),
    ('{ "bogus!" = 1 }', '[[gpu]] #1 instances."bogus!"', "not a GPU instance profile"),
    ('{ "1g" = 64, "2g" = 1 }', "[[gpu]] #1 instances", "65 instances"),
    ("[{ name = \"x\" }]", "[[gpu]] #1 instances #1", 'missing "profile"'),
    ('[{ profile = true }]', "[[gpu]] #1 instances #1 profile", "not a GPU instance profile: True"),
    ('[{ profile = "3g", name = "9lives" }]', "[[gpu]] #1 instances #1 name", "must start with a letter"),
    ('[{ profile = "3g", name = 5 }]', "[[gpu]] #1 instances #1 name", "got 5"),
    ('[{ profile = "3g", name = "' + "a" * 33 + '" }]', "[[gpu]] #1 instances #1 name", "up to 32"),
    ('[{ profile = "3g", compute = "2c" }]', "[[gpu]] #1 instances #1 compute", "must be a list of compute profiles"),
    ('[{ profile = "3g", compute = ["1c", "9z"] }]', "[[gpu]] #1 instances #1 compute #2", "not a compute profile: '9z'"),
    ('[{ profile = "3g", compute = [true] }]', "[[gpu]] #1 instances #1 compute #1", "not a compute profile: True"),
    ('[{ profile = "3g", name = "a" }, { profile = "2g", name = "a" }]', "[[gpu]] #1 instances",
     "instance name 'a' is used twice"),
])
def test_bad_instances(instances, key, message):
    found = problems(f"[[gpu]]\nselect = 0\nmig = true\ninstances = {instances}\n", dedent=False)
    assert len(found) == 1, found
    line, got_key, got = found[0]
    assert (line, got_key) == (4, key)
    assert message in got, got


@pytest.mark.parametrize("value, message", [
    ("watch_interval = 0", "must be a number of seconds from 1 to 86400, got 0"),
    ('watch_interval = "60"', "got '60'"),
    ("watch_interval = true", "got True"),
    ("watch_interval = inf", "got inf"),
    ("watch_interval = nan", "got nan"),
    ("watch_interval = 86401", "from 1 to 86400"),
    ("watch_interval = 1" + "0" * 400, "from 1 to 86400"),
    ("driver_wait_timeout = -1", "from 0 to 3600"),
    ("lock_timeout = 3600.5", "from 0 to 3600"),
    ('drift_policy = "ignore"', "must be \"log\" or \"reapply\", got 'ignore'"),
    ("persistence_mode = 1", "must be true or false, got 1"),
    ('stop_clients = "nvidia-dcgm.service"', "must be a list of systemd unit names"),
    ('stop_clients = ["dcgm"]', "must be a list of systemd unit names"),
    ('stop_clients = ["a b.service"]', "must be a list of systemd unit names"),
    ("stop_clients = [1]", "must be a list of systemd unit names"),
])
def test_bad_daemon_values(value, message):
    found = problems(f"# settings\n[daemon]\n\n{value}\n", dedent=False)
    assert len(found) == 1, found
    line, key, got = found[0]
    assert (line, key) == (4, "daemon." + value.split(" =")[0])
    assert message in got, got
    assert len(got) < 300  # a huge value is shortened in the message


def test_wrong_table_kinds():
    assert one("[[daemon]]\nwatch_interval = 5\n")[:2] == (1, "daemon")
    assert "must be a table" in one("[[daemon]]\n")[2]
    assert one("[gpu]\nselect = 0\n")[:2] == (1, "gpu")
    assert "array of tables" in one("[gpu]\nselect = 0\n")[2]
    assert problems("\ngpu = 5\n", dedent=False)[0][:2] == (2, "gpu")
    assert one("gpu = [1, 2]\n")[:2] == (1, "gpu")


def test_all_problems_are_reported_at_once_each_with_its_line():
    found = problems("""
        [[gpu]]
        select = "all"
        mig = true
        instances = [
          "3g",
          "nope",
          { profile = "2g", name = "-x" },
        ]

        [[gpu]]
        select = 70
        mig = false

        [[gpu]]
        select = "*A100*"
        mig = true
        [gpu.instances]
        "1g.5gb" = 7
        "also bad" = 1

        [daemon]
        drift_policy = 3
    """)
    assert [(line, key) for line, key, _ in found] == [
        (6, "[[gpu]] #1 instances #2"),
        (7, "[[gpu]] #1 instances #3 name"),
        (11, "[[gpu]] #2 select"),
        (19, '[[gpu]] #3 instances."also bad"'),
        (22, "daemon.drift_policy"),
    ]


def test_key_path_and_line_for_dotted_keys():
    assert one("daemon.watch_interval = 0\n")[:2] == (1, "daemon.watch_interval")
    assert problems('\n\n"daemon"."lock_timeout" = -5\n', dedent=False) == [
        (3, "daemon.lock_timeout", "must be a number of seconds from 0 to 3600, got -5")]


def test_lines_survive_multi_line_strings_before_the_problem():
    found = one('''
        [[gpu]]
        select = """
        *H100*
        """
        mig = true
        instances = ["""1g.10gb""", \'\'\'nope\'\'\']
    ''')
    assert found[:2] == (6, "[[gpu]] #1 instances #2")
    text = '[[gpu]]\nselect = """*H100* \\\n  SXM"""\nmig = true\ninstances = ["a#b", \'c:\\\\\', "q\\"", 7]\n'
    assert [(line, key) for line, key, _ in problems(text, dedent=False)] == [
        (5, "[[gpu]] #1 instances #1"), (5, "[[gpu]] #1 instances #2"), (5, "[[gpu]] #1 instances #3")]


# --- not TOML at all ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ('[[gpu]]\nselect = "all\nmig = true\n', 2),  # unterminated string
    ("[[gpu]]\nselect = \nmig = true\n", 2),  # missing value
    ("[[gpu]]\nselect = 0\nmig = true\ninstances = [\n", 5),  # unclosed array at the end
    ("[[gpu]]\nselect = 0\nselect = 1\n", 3),  # duplicate key
    ("[daemon]\nwatch_interval = 5\n\n[daemon]\n", 4),  # duplicate table
    ("[[gpu]\n", 1),
    ("mig = yes\n", 1),
    ("\n\n\x01\x02\x03\n", 3),  # control characters
    ("a = 1\n\ufeffb = 2\n", 2),
])
def test_toml_syntax_errors_give_the_parsers_line(text, line):
    found = problems(text, dedent=False)
    assert len(found) == 1
    got_line, key, message = found[0]
    assert got_line == line and key == ""
    assert message.startswith("TOML syntax: ") and "(at line" not in message


def test_duplicate_key_message():
    _, _, message = problems("[[gpu]]\nselect = 0\nselect = 1\n", dedent=False)[0]
    assert "Cannot overwrite a value" in message or "overwrite" in message.lower()


def test_binary_junk():
    line, key, message = problems("[[gpu]]\nselect = 0\x00\x01\nmig = true\n", dedent=False)[0]
    assert line == 2 and "binary data" in message


def test_deep_nesting_is_a_config_error():
    with pytest.raises(ConfigError):
        parse("a = " + "[" * 100000 + "]" * 100000 + "\n", PATH)


# --- files ---------------------------------------------------------------------------------------------------

def test_load_reads_a_file(tmp_path):
    p = tmp_path / "migd.toml"
    p.write_text('[[gpu]]\nselect = "all"\nmig = false\n')
    c = load(str(p))
    assert c.path == str(p) and c.entries[0].where == f"{p}:1"


def test_load_refuses_files_over_one_mib(tmp_path):
    p = tmp_path / "big.toml"
    comment = b"# " + b"x" * 98 + b"\n"  # 101 bytes
    body = comment * (MAX_BYTES // len(comment))
    body += b"#" * (MAX_BYTES - len(body) - 1) + b"\n"
    assert len(body) == MAX_BYTES == 1 << 20
    p.write_bytes(body)
    assert load(str(p)).entries == ()  # exactly 1 MiB is fine
    p.write_bytes(body + b"\n")
    with pytest.raises(ConfigError) as exc:
        load(str(p))
    assert str(exc.value) == f"{p}: larger than 1024 KiB: not a migd layout file"


def test_load_refuses_non_utf8(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[[gpu]]\nselect = "all"\n# caf\xe9\nmig = true\n')
    with pytest.raises(ConfigError) as exc:
        load(str(p))
    (problem,) = exc.value.problems
    assert (problem.path, problem.line) == (str(p), 3) and "not UTF-8" in problem.message


def test_load_missing_and_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not a regular file"):
        load(str(tmp_path))  # a directory


# --- properties ----------------------------------------------------------------------------------------------

_TOMLISH = st.text(alphabet='[]{}=,."\'#\n\\ \t0179abgpuimnstcelx+-', max_size=200)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=400), _TOMLISH))
def test_arbitrary_text_only_ever_raises_config_error(text):
    try:
        parse(text, PATH)
    except ConfigError as e:
        assert e.problems and all(p.path == PATH for p in e.problems)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_config_error(data):
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            load(path)
        except ConfigError as e:
            assert e.problems and all(p.path == path for p in e.problems)
    finally:
        os.unlink(path)


# TOML documents built from values, so the parser gets past the syntax and into migd's checks.
_keys = st.sampled_from(["gpu", "daemon", "select", "mig", "instances", "profile", "name", "compute",
                         "watch_interval", "drift_policy", "stop_clients", "lock_timeout", "persistence_mode",
                         "1g.10gb", "3g", "x", "all"])
_scalars = st.one_of(st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([10 ** 400, -10 ** 400]),
                     st.floats(allow_nan=True),
                     st.sampled_from(["all", "3g", "1g.10gb", "MIG 2g.20gb", "*H100*", "GPU-x", "00:07.0",
                                      "nvidia-dcgm.service", "log", "reapply", "2c", ""]),
                     st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


def _toml_str(s: str) -> str:
    """A TOML basic string: control characters and DEL escaped, everything else as is."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == -float("inf") else repr(v))
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[\n" + "".join(f"  {_toml_value(x)},\n" for x in v) + "]"
    return "{ " + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml_doc(gpus, daemon) -> str:
    out = []
    for g in gpus:
        out.append("[[gpu]]")
        out += [f"{_toml_str(k)} = {_toml_value(v)}" for k, v in g.items()]
        out.append("")
    if daemon is not None:
        out.append("[daemon]")
        out += [f"{k} = {_toml_value(v)}" for k, v in daemon.items()]
    return "\n".join(out) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(_keys, _values, max_size=5), max_size=3),
       st.one_of(st.none(), st.dictionaries(_keys, _values, max_size=4)))
def test_generated_documents_only_ever_raise_config_error_with_a_line(gpus, daemon):
    text = _toml_doc(gpus, daemon)
    n_lines = text.count("\n")
    try:
        parse(text, PATH)
    except ConfigError as e:
        for p in e.problems:
            assert p.path == PATH and p.key
            assert p.line is not None and 1 <= p.line <= n_lines, (p, text)


_profiles = st.one_of(
    st.sampled_from(["3g", "1g.10gb", "MIG 2g.20gb", "19", "1g.10gb+me"]),  # fine
    st.sampled_from(["bogus!", "", "9g", "3g.40", "MIG", "1g.10gb+", "12345"]),  # not a profile
)
_instance = st.one_of(
    _profiles.map(json.dumps),
    st.tuples(_profiles, st.sampled_from(["ok", "9bad", "x-y_z"])).map(
        lambda t: f"{{ profile = {json.dumps(t[0])}, name = {json.dumps(t[1])} }}"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_instance, st.integers(0, 2), st.booleans()), min_size=1, max_size=10))
def test_problem_lines_point_at_the_element(items):
    """However a multi-line list is laid out, a problem in element n names element n's line."""
    lines = ["[[gpu]]", 'select = "all"', "mig = true", "instances = ["]
    where = []
    for text, blank, comment in items:
        lines += [""] * blank + (["  # a comment, with a , comma"] if comment else [])
        lines.append(f"  {text},")
        where.append(len(lines))
    lines.append("]")
    try:
        config = parse("\n".join(lines) + "\n", PATH)
    except ConfigError as e:
        for p in e.problems:
            if p.key.startswith("[[gpu]] #1 instances #"):
                n = int(p.key[len("[[gpu]] #1 instances #"):].split()[0]) - 1  # messages count from 1
                assert p.line == where[n], (p, lines)
            else:
                assert p.key == "[[gpu]] #1 instances" and "used twice" in p.message
                assert p.line == 4
    else:
        assert [_line(i.where) for i in config.entries[0].instances] == [f"{PATH}:{n}" for n in where]


def test_selector_uuid_any_case_and_quoted_index_refused():
    from migd.config import parse
    from migd.errors import ConfigError

    cfg = parse('[[gpu]]\nselect = "gpu-0A0B0C0D-0000-1111-2222-333344445555"\nmig = false\n', "u.toml")
    assert cfg.entries[0].selector.values == ("GPU-0a0b0c0d-0000-1111-2222-333344445555",)
    with pytest.raises(ConfigError) as e:
        parse('[[gpu]]\nselect = "0"\nmig = false\n', "q.toml")
    assert "q.toml:2: [[gpu]] #1 select: a GPU index is a number: write select = 0 without quotes" in str(e.value)


def test_empty_compute_list_means_a_gpu_instance_without_compute_instances():
    from migd.config import parse

    cfg = parse('[[gpu]]\nselect = 0\nmig = true\ninstances = [{ profile = "3g", compute = [] }, "1g"]\n', "c.toml")
    assert [i.compute for i in cfg.entries[0].instances] == [(), None]


def _line(where: str) -> str:
    """"file:line" of an instance's "file:line: key.path"."""
    return where.split(": ", 1)[0]


def test_entries_carry_locations_and_problems_against_a_gpu_are_made_from_them(sim_backend):
    """Where each key was written travels with the entry as a Location (file, line, key path), and a problem found
    later against a GPU (the layout does not fit, an index this host lacks) is built from it: path, line and key
    are fields of the problem, never read back out of a message."""
    from migd.engine import desired_layouts
    from migd.model import Location

    cfg = parse(textwrap.dedent("""\
        [[gpu]]
        select = "all"
        mig = true
        instances = ["1g.10gb", "7g.80gb"]

        [[gpu]]
        select = 5
        mig = false
        """), PATH)
    first = cfg.entries[0]
    assert (first.at, first.mig_at, first.instances_at) == (
        Location(PATH, 1), Location(PATH, 3, "[[gpu]] #1 mig"), Location(PATH, 4, "[[gpu]] #1 instances"))
    assert [i.at for i in first.instances] == [Location(PATH, 4, f"[[gpu]] #1 instances #{n}") for n in (1, 2)]
    with pytest.raises(ConfigError) as e:
        desired_layouts(cfg, sim_backend("h100-80gb").gpus())
    assert [(p.path, p.line, p.key) for p in e.value.problems] == [
        (PATH, 4, "[[gpu]] #1 instances"), (PATH, 6, "[[gpu]] #2 select")]
    assert e.value.problems[0].message == "needs 8 compute slices (1g.10gb, 7g.80gb), H100 80GB HBM3 has 7 (GPU 0)"
    assert str(e.value.problems[1]) == f"{PATH}:6: [[gpu]] #2 select: no GPU with index 5 (this host has 1 GPU: 0)"


def test_selector_kinds_and_daemon_policies_are_enums_with_the_words_of_the_file():
    """Typed, not strings (issue 20.3): each member's value is the word the file (and every message) uses."""
    from migd.model import CdiRefresh, DriftPolicy, OnPending, SelectorKind

    c = parse('[daemon]\ndrift_policy = "reapply"\non_pending = "reboot-once"\ncdi_refresh = "off"\n'
              '[[gpu]]\nselect = "*H100*"\nmig = false\n[[gpu]]\nselect = [0, 1]\nmig = false\n', PATH)
    assert (c.daemon.drift_policy, c.daemon.on_pending, c.daemon.cdi_refresh) == (
        DriftPolicy.REAPPLY, OnPending.REBOOT_ONCE, CdiRefresh.OFF)
    assert [e.selector.kind for e in c.entries] == [SelectorKind.GLOB, SelectorKind.INDEX]
    assert [str(e.selector) for e in c.entries] == ["*H100*", "0,1"] and f"{c.daemon.on_pending}" == "reboot-once"
    assert parse("", PATH).daemon.drift_policy is DriftPolicy.LOG
