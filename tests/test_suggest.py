"""Every typo gets a suggestion: "did you mean …" with the closest valid spelling, through the CLI as a user types it
(issue 19 point 4), and global options after the verb (issue 16 point 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from migd.suggest import closest, did_you_mean

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess:
    conf = tmp_path / "migd.toml"
    if config:
        conf.write_text(textwrap.dedent(config))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIGD_RUN_DIR": str(tmp_path / "run"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "MIGD_TEXTFILE_DIR": "/nonexistent/migd-test-textfile",
           "MIGD_CONFIG": str(conf)}
    return subprocess.run([sys.executable, "-m", "migd.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)


def test_closest_is_case_insensitive_and_says_nothing_when_nothing_is_close():
    assert closest("STAUTS", ["status", "plan"]) == "status"
    assert closest("xyz", ["status", "plan"]) is None
    assert did_you_mean("status", ["status"]) == ""  # the word itself is no suggestion


@pytest.mark.parametrize("argv, expected", [
    (["stauts"], 'invalid choice: \'stauts\'; did you mean "status"?'),
    (["--simulate", "dgx-a100", "status", "--simulte", "h100-80gb"], 'did you mean "--simulate"?'),
    (["--simulate", "dgx-a100", "status", "--jsn"], 'unrecognized arguments: --jsn (did you mean "--json"?)'),
    (["--simulate", "dgx-a100", "export", "--format", "slrum"], 'did you mean "slurm"?'),
    (["--simulate", "dgx-a10", "status"], 'unknown simulated GPU model \'dgx-a10\'; did you mean "dgx-a100"?'),
    (["--simulate", "h100-80gb:2,a3", "status"], 'did you mean "a30"?'),
])
def test_a_mistyped_verb_option_choice_or_simulated_host_gets_the_closest_spelling(tmp_path, argv, expected):
    r = run(tmp_path, *argv)
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_config_typos_each_get_a_suggestion_all_reported_at_once(tmp_path):
    r = run(tmp_path, "--simulate", "dgx-a100", "validate", config="""\
        [[gpu]]
        select = "al"
        mig = true
        instnaces = ["3g"]

        [[gpu]]
        select = 0
        mig = true
        instances = ["3g.40bg", { profil = "1g" }]

        [daemon]
        drift_polcy = "log"
        on_pending = "reboot-onc"
        cdi_refresh = "of"

        [deamon]
        """)
    conf = tmp_path / "migd.toml"
    assert r.returncode == 2, r.stderr
    for line, text in [
        (2, '[[gpu]] #1 select: \'al\' selects no GPU (a glob without wildcards is a whole model name); '
            'did you mean "all"?'),
        (4, '[[gpu]] #1 instnaces: unknown key; did you mean "instances"?'),
        (9, '[[gpu]] #2 instances #1: not a GPU instance profile: \'3g.40bg\'; did you mean "3g.40gb"?'),
        (9, '[[gpu]] #2 instances #2 profil: unknown key; did you mean "profile"?'),
        (12, 'daemon.drift_polcy: unknown key; did you mean "drift_policy"?'),
        (13, 'daemon.on_pending: must be "fail" or "reboot-once", got \'reboot-onc\'; did you mean "reboot-once"?'),
        (14, 'daemon.cdi_refresh: must be "auto" or "off", got \'of\'; did you mean "off"?'),
        (16, 'deamon: unknown key; did you mean "daemon"?'),
    ]:
        assert f"{conf}:{line}: {text}" in r.stderr, (line, r.stderr)


def test_a_profile_this_gpu_model_lacks_gets_the_closest_one_it_offers(tmp_path):
    config = """\
        [[gpu]]
        select = "all"
        mig = true
        instances = ["3g.40gb"]
        """
    r = run(tmp_path, "--simulate", "a100-40gb", "validate", config=config)
    assert r.returncode == 2
    assert "A100-SXM4-40GB has no profile '3g.40gb'; did you mean \"3g.20gb\"?" in r.stderr, r.stderr
    ok = run(tmp_path, "--simulate", "h100-80gb", "validate", config=config)  # H100 80GB offers it
    assert ok.returncode == 0, ok.stderr


def test_a_real_model_glob_is_not_taken_for_a_typo_of_all(tmp_path):
    r = run(tmp_path, "--simulate", "a30", "validate", config="""\
        [[gpu]]
        select = "A30"
        mig = true
        instances = ["2g"]
        """)
    assert r.returncode == 0 and "did you mean" not in r.stdout + r.stderr, r.stderr


@pytest.mark.parametrize("argv", [
    ["status", "--simulate", "a30", "-v"],
    ["-v", "--simulate", "a30", "status"],
    ["status", "-q", "--simulate", "a30", "-c", "{conf}"],
])
def test_global_options_work_after_the_verb_too(tmp_path, argv):
    conf = tmp_path / "other.toml"
    conf.write_text('[[gpu]]\nselect = "all"\nmig = true\ninstances = ["2g", "2g"]\n')
    argv = [a.replace("{conf}", str(conf)) for a in argv]
    r = run(tmp_path, *argv)
    assert r.returncode == 0, r.stderr
    assert "NVIDIA A30" in r.stdout
    if "-c" in argv:
        assert f"config: {conf}:1" in r.stdout, r.stdout  # the -c after the verb was read


def test_an_option_before_the_verb_is_not_reset_by_the_verb(tmp_path):
    from migd.cli import build_parser

    args = build_parser().parse_args(["-c", "x.toml", "-v", "--simulate", "a30", "apply", "--stop-clients"])
    assert (args.config, args.verbose, args.simulate, args.quiet) == ("x.toml", True, "a30", False)
    args = build_parser().parse_args(["apply", "-q", "--sim-state", "s.json", "-c", "y.toml"])
    assert (args.config, args.quiet, args.sim_state, args.verbose) == ("y.toml", True, "s.json", False)


def test_apply_v_after_the_verb_logs_each_driver_call(tmp_path):
    r = run(tmp_path, "--simulate", "a30", "apply", "-v", config="""\
        [[gpu]]
        select = "all"
        mig = true
        instances = ["2g", "2g"]
        """)
    assert r.returncode == 0, r.stderr
    assert "create_gi" in r.stderr or "create GPU instance" in r.stderr, r.stderr


def test_profiles_takes_profile_names_and_suggests_for_a_typo(tmp_path):
    r = run(tmp_path, "--simulate", "h100-80gb", "profiles", "3g", "1g.20gb")
    assert r.returncode == 0, r.stderr
    assert "3g.40gb" in r.stdout and "1g.20gb" in r.stdout and "7g.80gb" not in r.stdout, r.stdout
    r = run(tmp_path, "--simulate", "h100-80gb", "profiles", "3g.40bg")
    assert r.returncode == 2 and 'has no profile \'3g.40bg\'; did you mean "3g.40gb"?' in r.stderr, r.stderr
