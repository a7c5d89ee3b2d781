"""What an operator reads when a config is wrong (issue 13, point 8), through `migd validate` as an admin runs it:
problems in the order of the file, one way of naming an entry, plain grammar, no follow-on noise."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

import reliability as R


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS"):
        monkeypatch.delenv(var, raising=False)


def validate(tmp_path, text: str, spec: str = "h100-80gb:2") -> R.Run:
    path = R.write_config(tmp_path / "migd.toml", textwrap.dedent(text).lstrip("\n"))
    return R.run_cli(["--config", path, "--simulate", spec, "validate"])


def problem_lines(r: R.Run):
    assert not r.traceback and r.code == 2, (r.code, r.out, r.err)
    # (the first run on a simulated host says where it keeps it: not a problem line)
    lines = [line for line in r.err.splitlines() if not line.startswith("migd: simulated ")]
    assert lines[0] == "migd: invalid configuration, no GPU touched:"
    return lines[1:]


def line_numbers(lines):
    return [int(re.match(r"[^:]+:(\d+): ", line).group(1)) for line in lines]


def test_problems_are_listed_in_line_order(tmp_path):
    """Parse problems: [[gpu]] entries before a [daemon] table further down (was: the [daemon] one first)."""
    r = validate(tmp_path, """
        [[gpu]]
        select = 70
        mig = false

        [[gpu]]
        select = 0
        mig = true
        instances = ["3g", "bogus!"]

        [daemon]
        drift_policy = "ignore"
    """)
    lines = problem_lines(r)
    assert line_numbers(lines) == [2, 8, 11], lines


def test_layout_problems_are_listed_in_line_order(tmp_path):
    """Problems found against the GPUs: entry #1's profile before entry #2's missing index (was: the other way)."""
    r = validate(tmp_path, """
        [[gpu]]
        select = 0
        mig = true
        instances = ["3g.20gb"]

        [[gpu]]
        select = 5
        mig = false
    """)
    lines = problem_lines(r)
    assert line_numbers(lines) == [4, 6], lines
    assert "[[gpu]] #1 instances #1: H100 80GB HBM3 has no profile '3g.20gb'" in lines[0]
    assert "[[gpu]] #2 select: no GPU with index 5" in lines[1]


def test_one_numbering_in_errors_and_in_validate(tmp_path):
    """An entry is "[[gpu]] #n", counted from 1 in its file, in problems and in validate's listing alike."""
    r = validate(tmp_path, """
        [[gpu]]
        select = "all"
        mig = false

        [[gpu]]
        select = 1
        mig = true
        instances = ["3g", { profile = "2g", name = "9x" }]
    """)
    (line,) = problem_lines(r)
    assert line == f"{tmp_path / 'migd.toml'}:8: [[gpu]] #2 instances #2 name: must start with a letter and hold up " \
                   "to 32 letters, digits, _ or -, got '9x'"
    assert "gpu[" not in r.err
    r = validate(tmp_path, """
        [[gpu]]
        select = "all"
        mig = false

        [[gpu]]
        select = 1
        mig = true
        instances = ["3g"]
    """)
    assert r.code == 0, r.err
    assert f"GPU 0 NVIDIA H100 80GB HBM3: [[gpu]] #1 ({tmp_path / 'migd.toml'}:1, select = all)" in r.out
    assert f"GPU 1 NVIDIA H100 80GB HBM3: [[gpu]] #2 ({tmp_path / 'migd.toml'}:5, select = 1)" in r.out


@pytest.mark.parametrize("spec, said", [
    ("h100-80gb", "(this host has 1 GPU: 0)"),
    ("h100-80gb:2", "(this host has 2 GPUs: 0 to 1)"),
])
def test_gpu_count_grammar(tmp_path, spec, said):
    r = validate(tmp_path, "[[gpu]]\nselect = [0, 3]\nmig = false\n", spec=spec)
    (line,) = problem_lines(r)
    assert line.endswith(f":1: [[gpu]] #1 select: no GPU with index 3 {said}"), line


@pytest.mark.parametrize("mig", ["", "mig = 1\n", 'mig = "true"\n'])
def test_missing_or_non_boolean_mig_has_no_follow_on_error(tmp_path, mig):
    r = validate(tmp_path, f'[[gpu]]\nselect = "all"\n{mig}instances = ["3g", "2g"]\n')
    (line,) = problem_lines(r)
    assert "[[gpu]] #1 mig: missing or not true/false" in line
    assert "instances need mig = true" not in r.err


@pytest.mark.parametrize("written", ['"all"', '"ALL"', '"All"', '" all "', '"\\tALL "'])
def test_select_all_in_any_case_with_or_without_spaces(tmp_path, written):
    """One rule for string selectors: surrounding whitespace never counts, and "all" is a word, not a glob."""
    r = validate(tmp_path, f'[[gpu]]\nselect = {written}\nmig = true\ninstances = ["7g"]\n')
    assert r.code == 0, r.err
    assert r.out.count(": [[gpu]] #1 (") == 2, r.out
    assert "not managed" not in r.out


# --- profiles: identical GPUs once (issue 13, point 9) -------------------------------------------------------------

def test_profiles_groups_identical_gpus_in_text_and_keeps_json_per_gpu():
    r = R.run_cli(["--simulate", "dgx-a100", "profiles"])
    assert r.code == 0, r.err
    headers = [line for line in r.out.splitlines() if line.startswith("GPU ")]
    assert headers == ["GPU 0-7: NVIDIA A100-SXM4-40GB"]
    assert r.out.count("placements (start:size)") == 1
    assert len([line for line in r.out.splitlines() if line.split()[:2] == ["1g.5gb", "19"]]) == 1

    r = R.run_cli(["--simulate", "h100-80gb,a100-40gb,h100-80gb,h100-80gb,a30", "profiles"])
    assert [line for line in r.out.splitlines() if line.startswith("GPU ")] == [
        "GPU 0,2-3: NVIDIA H100 80GB HBM3", "GPU 1: NVIDIA A100-SXM4-40GB", "GPU 4: NVIDIA A30"]
    assert r.out.count("placements (start:size)") == 3

    r = R.run_cli(["--simulate", "dgx-a100", "profiles", "--json"])
    gpus = json.loads(r.out)["gpus"]
    assert [g["index"] for g in gpus] == list(range(8)) and all(g["profiles"] == gpus[0]["profiles"] for g in gpus)
