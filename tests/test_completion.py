"""Shell completion (issue 19 point 5): the scripts the packages ship are what `migd completion SHELL` generates
from the argument parser, and each shell completes verbs, options, option values, --simulate names and the profile
names of the --simulate model, driven the way the shell itself drives them (bash with bash-completion, zsh with
compinit in a pseudo-terminal, fish's `complete -C`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Set

import pytest

from migd import completion
from migd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "packaging" / "completion"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

def _verbs() -> Set[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices) - set(completion.HIDDEN_VERBS)


VERBS = _verbs()

# (words typed, what the shell must offer): the same cases for every shell
CASES = [
    ("migd sta", {"status"}),
    ("migd ap", {"apply"}),
    ("migd -c x.toml --simulate dgx-a100 pl", {"plan"}),
    ("migd apply --", {"--dry-run", "--stop-clients", "--help", "--config", "--simulate", "--sim-state",
                       "--verbose", "--quiet"}),
    ("migd status --j", {"--json"}),
    ("migd export --format ", {"toml", "slurm"}),
    ("migd --simulate dgx-h", {"dgx-h100", "dgx-h200"}),
    ("migd --simulate a30 profiles 2g", {"2g.12gb", "2g.12gb+me"}),
    ("migd profiles --simulate h100-80gb 1g", {"1g.10gb", "1g.10gb+me", "1g.20gb"}),
]


@pytest.fixture
def path(tmp_path) -> str:
    """PATH with a `migd` that runs this checkout (the scripts call it for profile names)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "migd"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT / "src"} exec {sys.executable} -m migd.cli "$@"\n')
    wrapper.chmod(0o755)
    return f"{bindir}:{SYSTEM_PATH}"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t, path=SYSTEM_PATH) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")


def _env(path: str, tmp_path: Path) -> dict:
    return {"PATH": path, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
            "MIGD_RUN_DIR": str(tmp_path / "run"), "TERM": "dumb", "LANG": "C.UTF-8"}


def test_the_shipped_scripts_are_generated_from_the_parser():
    for shell, name in completion.FILES.items():
        shipped = (SCRIPTS / name).read_text()
        assert shipped == completion.script(build_parser(), shell), \
            f"packaging/completion/{name} is stale: run `migd completion {shell} > packaging/completion/{name}`"


def test_the_completion_verb_prints_each_script_and_the_simulated_models_profile_names(capsys):
    from migd import cli

    assert cli.main(["completion", "fish"]) == 0
    assert capsys.readouterr().out == completion.script(build_parser(), "fish")
    assert cli.main(["--simulate", "a30", "completion", "profiles"]) == 0
    assert capsys.readouterr().out.split() == ["1g.6gb", "2g.12gb", "4g.24gb", "1g.6gb+me", "2g.12gb+me"]
    assert cli.main(["completion", "profiles"]) == 0  # no --simulate: real GPUs are not read while typing
    assert capsys.readouterr().out.strip() == ""


def test_every_verb_option_and_simulated_name_is_in_every_script():
    from migd import catalog

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"status", "profiles", "validate", "plan", "apply", "check", "export", "boot", "watch"} <= VERBS
    for name in completion.FILES.values():
        text = (SCRIPTS / name).read_text()
        missing = [w for w in sorted(VERBS) + list(catalog.MODELS) + list(catalog.HOSTS) if w not in text]
        for verb, parser in sub.choices.items():
            if verb not in completion.HIDDEN_VERBS:
                missing += [o for a in parser._actions for o in a.option_strings
                            if o.lstrip("-") not in text]
        assert not missing, (name, missing)


# --- bash: bash-completion's loader, COMP_WORDS and the function `complete -p migd` names ---------------------------

BASH = r"""
source /usr/share/bash-completion/bash_completion
source "$1"; shift
read -r -a COMP_WORDS <<< "$1"
[[ $1 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE=$1; COMP_POINT=${#COMP_LINE}
func=$(complete -p migd | sed -E 's/.*-F ([^ ]+).*/\1/')
"$func" migd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def _bash(line: str, path: str, tmp_path: Path) -> Set[str]:
    script = tmp_path / "complete.sh"
    script.write_text(BASH)
    r = subprocess.run(["bash", str(script), str(SCRIPTS / "migd.bash"), line], capture_output=True, text=True,
                       env=_env(path, tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.mark.parametrize("line, expected", CASES + [
    ("migd ", VERBS),
    ("migd --simulate a30,h1", {"a30,h100-80gb", "a30,h100-94gb"}),
])
def test_bash_completes(line, expected, path, tmp_path):
    _need("bash")
    if not Path("/usr/share/bash-completion/bash_completion").exists():
        pytest.skip("bash-completion not installed")
    assert _bash(line, path, tmp_path) == expected


# --- zsh: compinit in an interactive zsh on a pseudo-terminal (zpty), TAB typed, compadd's matches recorded -------

ZSH = r"""
zmodload zsh/zpty
local dir=$1 out=$2 line=$3
zpty z zsh -f -i
zpty -w z "PS1='' PROMPT='' RPROMPT=''"
zpty -w z "fpath=(${(q)dir} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' menu no"
zpty -w z 'compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  local -a __hits; builtin compadd -A __hits "$@"
  (( $#__hits )) && print -rl -- $__hits >> '${(q)out}'
  builtin compadd "$@"
}'
zpty -w z "print -r -- ready > ${(q)out}.ready"
local i
for i in {1..200}; do [[ -e $out.ready ]] && break; sleep 0.05; done
zpty -w -n z "$line"$'\t'
for i in {1..200}; do [[ -s $out ]] && break; sleep 0.05; done
sleep 0.5
zpty -d z
"""


def _zsh(line: str, path: str, tmp_path: Path) -> Set[str]:
    script, out = tmp_path / "complete.zsh", tmp_path / "matches"
    script.write_text(ZSH)
    r = subprocess.run(["zsh", "-f", str(script), str(SCRIPTS), str(out), line], capture_output=True, text=True,
                       env=_env(path, tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    return set(out.read_text().split()) if out.exists() else set()


@pytest.mark.parametrize("line, expected", CASES + [
    ("migd ", VERBS),
    ("migd --simulate a30,h1", {"h100-80gb", "h100-94gb"}),  # zsh completes the part after the comma
])
def test_zsh_completes(line, expected, path, tmp_path):
    _need("zsh")
    assert _zsh(line, path, tmp_path) == expected


# --- fish: `complete -C` -------------------------------------------------------------------------------------------


def _fish(line: str, path: str, tmp_path: Path) -> Set[str]:
    r = subprocess.run(["fish", "--no-config", "-c", f"source {SCRIPTS / 'migd.fish'}; complete -C {_fish_quote(line)}"],
                       capture_output=True, text=True, env=_env(path, tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    return {row.split("\t", 1)[0] for row in r.stdout.splitlines() if row}


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.parametrize("line, expected", CASES + [
    ("migd ", VERBS),
    ("migd --simulate a30,h1", {"a30,h100-80gb", "a30,h100-94gb"}),
])
def test_fish_completes(line, expected, path, tmp_path):
    _need("fish")
    got = _fish(line, path, tmp_path)
    if line.endswith("--"):  # fish also offers the short forms' long names; compare the long options only
        got = {g for g in got if g.startswith("--")}
    assert got == expected

