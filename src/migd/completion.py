"""Shell completion for bash, zsh and fish, generated from migd's one argument parser (`migd completion SHELL`).

The parser says which verbs and options there are; this module knows only what kind of value an option takes
(a file, a --simulate spec, a host name, a choice) and writes each shell's script from that. Profile names depend on
the GPU model, so the scripts ask `migd --simulate SPEC completion profiles` for them as the user types.
The packages ship these scripts (packaging/completion), written by `migd completion SHELL`; a test keeps them in
step with the parser.
"""

from __future__ import annotations

import argparse
import re
from typing import Dict, Iterable, List, Optional, Tuple

from ._record import dataclass

SHELLS = ("bash", "zsh", "fish")
HIDDEN_VERBS = ("completion",)
FILES = {"bash": "migd.bash", "zsh": "_migd", "fish": "migd.fish"}  # file names under packaging/completion

# what an option's value is, by its dest (an option with choices completes those)
_VALUE_KINDS = {"config": "toml", "sim_state": "file", "simulate": "simulate", "host": "host"}


@dataclass(frozen=True)
class Option:
    flags: Tuple[str, ...]
    help: str
    value: str  # "" (a switch), "toml", "file", "simulate", "host", "profile", "choice", "any"
    choices: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    options: Tuple[Option, ...]
    profiles: bool  # takes profile names as arguments


@dataclass(frozen=True)
class Spec:
    options: Tuple[Option, ...]  # before the verb
    verbs: Tuple[Verb, ...]
    simulated: Tuple[str, ...]  # --simulate names: hosts, then models


def spec(parser: argparse.ArgumentParser) -> Spec:
    from .catalog import HOSTS, MODELS  # plain tables: no NVML is loaded

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    verbs = tuple(Verb(name, helps.get(name, ""), _options(p),
                       any(a.metavar == "PROFILE" for a in p._actions if not a.option_strings))
                  for name, p in sub.choices.items() if name not in HIDDEN_VERBS)
    return Spec(_options(parser), verbs, tuple(HOSTS) + tuple(MODELS))


def _options(parser: argparse.ArgumentParser) -> Tuple[Option, ...]:
    out = []
    for a in parser._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        if a.nargs == 0:
            value = ""
        elif a.choices is not None:
            value = "choice"
        else:
            value = _VALUE_KINDS.get(a.dest, "any")
        text = (a.help or "").split(" (", 1)[0].split(";", 1)[0]  # the first clause: a one-line description
        if a.choices is not None:
            text = "one of " + ", ".join(str(c) for c in a.choices)
        out.append(Option(tuple(a.option_strings), text, value, tuple(str(c) for c in a.choices or ())))
    return tuple(out)


def profile_names(simulate: Optional[str]) -> List[str]:
    """The profile names the --simulate spec's GPU models offer (nothing without one: the real GPUs are not read
    while a user is typing)."""
    if not simulate:
        return []
    from .profiles import strip_mig
    from .catalog import parse_host_spec

    try:
        models = parse_host_spec(simulate)
    except ValueError:
        return []
    names: Dict[str, None] = {}
    for m in models:
        for _, p in sorted(m.gi_profiles.items()):
            names.setdefault(strip_mig(p["name"]), None)
    return list(names)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    s = spec(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](s)


# --- bash ---------------------------------------------------------------------------------------------------------


def _words(items: Iterable[str]) -> str:
    return " ".join(items)


def _all_options(s: Spec) -> List[Option]:
    """Every option once, by its flags (the global ones repeat after each verb)."""
    seen: Dict[Tuple[str, ...], Option] = {}
    for o in list(s.options) + [o for v in s.verbs for o in v.options]:
        seen.setdefault(o.flags, o)
    return list(seen.values())


def _bash(s: Spec) -> str:
    valued = [o for o in _all_options(s) if o.value]
    value_cases = []
    for o in valued:
        pattern = " | ".join(o.flags)
        if o.value == "toml":
            body = "_filedir toml"
        elif o.value == "file":
            body = "_filedir"
        elif o.value == "simulate":
            body = ('local head=""\n'
                    '            [[ $cur == *,* ]] && head=${cur%,*},\n'
                    '            COMPREPLY=($(compgen -P "$head" -W "$sims" -- "${cur##*,}"))\n'
                    '            compopt -o nospace 2>/dev/null')
        elif o.value == "host":
            body = '_known_hosts_real -- "$cur"'
        elif o.value == "choice":
            body = f'COMPREPLY=($(compgen -W "{_words(o.choices)}" -- "$cur"))'
        else:
            body = ":"
        value_cases.append(f"        {pattern})\n            {body}\n            return\n            ;;")
    verb_cases = []
    for v in s.verbs:
        opts = _words([f for o in v.options for f in o.flags])
        verb_cases.append(f'        {v.name}) opts="{opts}"; profiles={int(v.profiles)} ;;')
    takes_value = " | ".join(f for o in valued for f in o.flags)
    global_opts = _words([f for o in s.options for f in o.flags])
    return f"""\
# bash completion for migd(8)                                    -*- shell-script -*-
# Generated by `migd completion bash` from migd's argument parser: do not edit.
# Installed as /usr/share/bash-completion/completions/migd (loaded on demand by bash-completion).

_migd()
{{
    local cur prev words cword split
    _init_completion -s || return

    local verbs="{_words(v.name for v in s.verbs)}"
    local global_opts="{global_opts}"
    local sims="{_words(s.simulated)}"

    case $prev in
{chr(10).join(value_cases)}
    esac
    $split && return

    # the verb: the first word that is no option nor an option's value; --simulate's value, for profile names
    local i verb="" sim=""
    for ((i = 1; i < cword; i++)); do
        case ${{words[i]}} in
            --simulate) sim=${{words[i + 1]}}; ((i++)) ;;
            --simulate=*) sim=${{words[i]#*=}} ;;
            {takes_value}) ((i++)) ;;
            -*) ;;
            *) [[ -z $verb ]] && verb=${{words[i]}} ;;
        esac
    done

    if [[ -z $verb ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$global_opts" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
        fi
        return
    fi

    local opts="" profiles=0
    case $verb in
{chr(10).join(verb_cases)}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif ((profiles)) && [[ -n $sim ]]; then
        COMPREPLY=($(compgen -W "$("${{words[0]}}" --simulate "$sim" completion profiles 2>/dev/null)" -- "$cur"))
    fi
}} &&
    complete -F _migd migd

# ex: filetype=sh
"""


# --- zsh ----------------------------------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    """Option help inside '…[help]…' of _arguments: no brackets, colons or single quotes."""
    return re.sub(r"[\[\]:']", "", text.replace("[", "(").replace("]", ")")).replace("'", "")


def _zsh_option(o: Option) -> str:
    action = {"toml": ':file:_files -g "*.toml"', "file": ":file:_files", "simulate": ":spec:_migd_simulated",
              "host": ":host:_hosts", "choice": f":value:({' '.join(o.choices)})", "any": ":value: "}.get(o.value, "")
    help_ = _zsh_text(o.help or o.flags[-1].lstrip("-"))
    if len(o.flags) == 1:
        flag = o.flags[0] + ("=" if o.value and o.flags[0].startswith("--") else "+" if o.value else "")
        return f"'{flag}[{help_}]{action}'"
    exclusive = " ".join(o.flags)
    flags = ",".join(f + ("=" if o.value and f.startswith("--") else "+" if o.value else "") for f in o.flags)
    return f"'({exclusive})'{{{flags}}}'[{help_}]{action}'"


def _zsh(s: Spec) -> str:
    joint = " \\\n        "
    global_opts = joint.join(_zsh_option(o) for o in s.options if not {"-h", "--version"} & set(o.flags))
    verbs = "\n        ".join(f"'{v.name}:{_zsh_text(v.help)}'" for v in s.verbs)
    cases = []
    for v in s.verbs:
        args = [_zsh_option(o) for o in v.options] + (["'*:profile:_migd_profiles'"] if v.profiles else [])
        cases.append(f"            ({v.name})\n                _arguments -s \\\n                    "
                     + " \\\n                    ".join(args) + " && ret=0 ;;")
    return f"""\
#compdef migd
# zsh completion for migd(8). Generated by `migd completion zsh` from migd's argument parser: do not edit.

_migd_simulated() {{
    local -a names
    names=({_words(s.simulated)})
    _sequence compadd - $names
}}

_migd_profiles() {{
    local sim=${{opt_args[--simulate]:-$_migd_sim}}
    [[ -n $sim ]] || return 1
    local -a names
    names=(${{(f)"$(_call_program profiles migd --simulate ${{(q)sim}} completion profiles 2>/dev/null)"}})
    compadd -a names
}}

_migd() {{
    local curcontext=$curcontext state line ret=1
    local -A opt_args
    local -a verbs
    verbs=(
        {verbs}
    )
    _arguments -C -s -A "-*" \\
        '(- *)--version[show the version]' \\
        '(- *)'{{-h,--help}}'[show help]' \\
        {global_opts} \\
        '1:verb:->verb' \\
        '*::arg:->args' && ret=0
    case $state in
        (verb) _describe -t verbs 'migd verb' verbs && ret=0 ;;
        (args)
            local _migd_sim=${{opt_args[--simulate]}}
            curcontext=${{curcontext%:*:*}}:migd-$line[1]:
            case $line[1] in
{chr(10).join(cases)}
            esac
            ;;
    esac
    return ret
}}

_migd "$@"
"""


# --- fish ---------------------------------------------------------------------------------------------------------


def _fish_text(text: str) -> str:
    return text.replace("\\", "").replace("'", "")


def _fish_option(o: Option, condition: str) -> str:
    parts = ["complete -c migd"]
    if condition:
        parts.append(f"-n '{condition}'")
    for f in o.flags:
        parts.append(f"-s {f[1:]}" if len(f) == 2 else f"-l {f[2:]}")
    parts.append({"": "", "toml": "-r -F", "file": "-r -F", "simulate": "-x -a '(__migd_simulated)'",
                  "host": "-x -a '(__fish_print_hostnames)'", "any": "-x",
                  "choice": f"-x -a '{' '.join(o.choices)}'"}[o.value])
    parts.append(f"-d '{_fish_text(o.help)}'")
    return " ".join(p for p in parts if p)


def _fish(s: Spec) -> str:
    verbs = " ".join(v.name for v in s.verbs)
    no_verb = f"not __fish_seen_subcommand_from {verbs}"
    in_verbs = {o.flags for v in s.verbs for o in v.options}
    lines = [_fish_option(o, "" if o.flags in in_verbs else no_verb) for o in s.options]  # --version: before a verb
    lines += [f"complete -c migd -n '{no_verb}' -a {v.name} -d '{_fish_text(v.help)}'" for v in s.verbs]
    global_flags = {o.flags for o in s.options}
    for v in s.verbs:
        cond = f"__fish_seen_subcommand_from {v.name}"
        lines += [_fish_option(o, cond) for o in v.options if o.flags not in global_flags]
        if v.profiles:
            lines.append(f"complete -c migd -n '{cond}' -a '(__migd_profiles)'")
    body = "\n".join(lines)
    return f"""\
# fish completion for migd(8). Generated by `migd completion fish` from migd's argument parser: do not edit.

function __migd_simulated
    set -l token (commandline -ct)
    set -l head (string match -r '^.*,' -- $token; or echo '')
    for name in {_words(s.simulated)}
        echo $head$name
    end
end

function __migd_profiles
    set -l words (commandline -opc)
    set -l sim
    for i in (seq (count $words))
        switch $words[$i]
            case --simulate
                set sim $words[(math $i + 1)]
            case '--simulate=*'
                set sim (string replace -- --simulate= '' $words[$i])
        end
    end
    test -n "$sim"; and migd --simulate $sim completion profiles 2>/dev/null
end

complete -c migd -f
{body}
"""
