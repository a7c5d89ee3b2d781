"""migd's command line: `migd [--config PATH] [--simulate SPEC] VERB`.

Read verbs (status, profiles, validate, plan, check, export) always run behind the read-only guard. Every verb that
takes a config validates all of it, against every GPU it selects, before touching any GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

from . import __version__
from . import errors as E
from . import site as site_mod
from .errors import ConfigError, MigdError

if TYPE_CHECKING:
    from .backend import Backend
    from .engine import ApplyResult, Engine, StatusView
    from .layout import DesiredGpu
    from .model import Config
    from .picture import Style
    from .site import Site

READ_VERBS = ("status", "profiles", "validate", "plan", "check", "export", "import", "init", "completion")
SERVICE_IDENTIFIERS = {"watch": "migd-watch"}  # verb -> SyslogIdentifier= of its unit (migd.service's is "migd")


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean …" for a mistyped verb, choice or option (suggest.py)."""

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            from .suggest import did_you_mean

            hint = did_you_mean(str(value), [str(c) for c in action.choices])
            choices = ", ".join(repr(c) for c in action.choices)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}"
                                         + (f"; {hint}" if hint else f" (choose from {choices})"))

    def parse_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                   namespace: Optional[argparse.Namespace] = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            from .suggest import did_you_mean

            verb = self._verbs().get(getattr(parsed, "verb", None) or "")
            options = [o for parser in (self, verb) if parser is not None
                       for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
            hints = [did_you_mean(x.split("=", 1)[0], options) for x in extras if x.startswith("-")]
            shown = "; ".join(h for h in hints if h)
            self.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({shown})" if shown else ""))
        return parsed

    def _verbs(self) -> Dict[str, argparse.ArgumentParser]:
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                return dict(a.choices)
        return {}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="migd", description="Put NVIDIA GPUs into the MIG layout declared in /etc/migd.toml.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad config or usage, 3 drift (check), 4 MIG mode change pending "
               "(needs idle GPU + reset, or reboot), 5 busy (lock held). `systemctl status` names 3, 4 and 5 by "
               "systemd's table (NOTIMPLEMENTED, NOPERMISSION, NOTINSTALLED); migd.service's status line says what "
               "the exit means.")
    p.add_argument("--version", action="version", version=f"migd {__version__}")
    _global_options(p, {"config": os.environ.get("MIGD_CONFIG", "/etc/migd.toml"),
                        "simulate": None, "sim_state": None, "verbose": False, "quiet": False})
    sub = p.add_subparsers(dest="verb", metavar="VERB", prog="migd",  # prog: no terminal-size probe at start
                           parser_class=_Parser)
    sub.required = True
    s = sub.add_parser("status", help="GPUs, MIG mode, instances with placements and UUIDs")
    s.add_argument("--json", action="store_true", help="stable JSON (see README)")
    s = sub.add_parser("profiles", help="MIG profiles and placements per GPU (nvidia-smi mig -lgip + -lgipp)")
    s.add_argument("--json", action="store_true")
    s.add_argument("profile", nargs="*", metavar="PROFILE", help="only these profiles (e.g. 3g.40gb, 1g, 19)")
    s = sub.add_parser("validate", help="check the config; with --simulate or GPUs, which entry each GPU gets")
    s.add_argument("--host", metavar="NAME", type=_host_name,
                   help="check a fleet file as host NAME sees it ([[gpu]] hosts = ...; default: this host)")
    s = sub.add_parser("plan", help="the actions apply would take; changes nothing")
    s.add_argument("--host", metavar="NAME", type=_host_name, help="plan as host NAME (a fleet file's hosts = ...)")
    s = sub.add_parser("apply", help="make the GPUs match the config")
    s.add_argument("--dry-run", action="store_true", help="same as plan")
    s.add_argument("--stop-clients", action="store_true",
                   help="if a GPU is held, stop the [daemon] stop_clients units holding it, apply, restart them")
    sub.add_parser("boot", help="what migd.service runs: wait for the driver, then apply")
    sub.add_parser("watch", help="what migd-watch.service runs: log drift (systemd watchdog)")
    s = sub.add_parser("check", help="exit 0 if the live layout matches the config, 3 on drift, 4 if pending")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("export", help="the live layout as a migd.toml, or as Slurm GRES (--format slurm)")
    s.add_argument("--format", choices=("toml", "slurm"), default="toml",
                   help="toml (default): a migd.toml; slurm: the node's Gres= for slurm.conf and gres.conf lines")
    s.add_argument("--declared", action="store_true",
                   help="with --format slurm: the layout the config declares for this host's GPUs, not the live one")
    s = sub.add_parser("init", help="print (or write with -o, never over a file) a commented migd.toml for these GPUs")
    s.add_argument("-o", "--output", metavar="FILE", help="write FILE (refused if it exists) instead of stdout")
    s = sub.add_parser("import", help="print a migd.toml made from another tool's config (mig-parted's config.yaml)")
    s.add_argument("--from", dest="source", choices=("mig-parted",), required=True, help="the config's tool")
    s.add_argument("file", metavar="FILE", help="mig-parted config.yaml")
    s.add_argument("--name", metavar="CONFIG", help="which named config (needed when the file has several)")
    # hidden (no help): `migd completion bash|zsh|fish` writes the shell's completion script, from this parser;
    # `completion profiles` lists the --simulate model's profile names for those scripts
    s = sub.add_parser("completion", description="shell completion, generated from this parser")
    s.add_argument("shell", choices=("bash", "zsh", "fish", "profiles"))
    for verb_parser in sub.choices.values():
        # after the verb too (`migd apply -v`); SUPPRESS: an option given before the verb is not reset to its default
        _global_options(verb_parser, None)
    return p


def _global_options(p: argparse.ArgumentParser, defaults: Optional[Dict[str, object]]) -> None:
    """-c, --simulate, --sim-state, -v, -q: on the main parser with their defaults, on each verb's without any."""
    def default(dest: str) -> object:
        return argparse.SUPPRESS if defaults is None else defaults[dest]

    p.add_argument("-c", "--config", default=default("config"),
                   help="layout file (default /etc/migd.toml; env MIGD_CONFIG)")
    p.add_argument("--simulate", metavar="SPEC", default=default("simulate"), help=site_mod.simulate_help())
    p.add_argument("--sim-state", metavar="PATH", default=default("sim_state"),
                   help="share simulated GPUs between processes through this state file, created from --simulate "
                        "when absent (env MIGD_SIM_STATE)")
    p.add_argument("-v", "--verbose", action="store_true", default=default("verbose"),
                   help="debug logging; plan lists the driver calls, apply the MIG UUIDs")
    p.add_argument("-q", "--quiet", action="store_true", default=default("quiet"),
                   help="log warnings and errors only")


def _host_name(text: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", text):
        raise argparse.ArgumentTypeError(f"not a host name: {text!r}")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .log import setup

    read_verb = args.verb in READ_VERBS or (args.verb == "apply" and args.dry_run)
    # read verbs and apply at a terminal print their result; their log lines (each driver call) only with -v
    terse = read_verb or args.verb == "apply"
    level = "debug" if args.verbose else ("warning" if args.quiet or terse else "info")
    # Journal entries carry the identity of the unit that runs the verb (`journalctl -t migd-watch`).
    setup(level=level, identifier=SERVICE_IDENTIFIERS.get(args.verb, "migd"))
    service_verb = args.verb in ("boot", "watch")
    try:
        return VERBS[args.verb](args)
    except (MigdError, OSError, KeyboardInterrupt) as e:
        from .engine import exit_for

        code, event = exit_for(e)
        if isinstance(e, BrokenPipeError):  # nothing more can be written
            sys.stderr.close()
        if not event:
            return code
        # a config error's STATUS= is said here; any other error's by boot.run itself
        return _fail(service_verb, event, _error_text(e, service_verb), code,
                     status=args.verb == "boot" and isinstance(e, ConfigError))


def _error_text(e: BaseException, service_verb: bool) -> str:
    if isinstance(e, ConfigError):
        lead = "invalid configuration, no GPU touched:"
        # Under systemd each problem is one journal line that says what happened and names file:line.
        return "\n".join(f"{lead} {' '.join(str(p).split())}" for p in e.problems) if service_verb else f"{lead}\n{e}"
    if isinstance(e, OSError):
        where = f"{E.printable(str(e.filename))}: " if e.filename else ""
        return f"{where}{E.printable(e.strerror or str(e))}"
    return str(e)


def _fail(service_verb: bool, event: str, text: str, code: int, status: bool = False) -> int:
    """Under systemd, errors are journal events (one per line, with fields); at a terminal, plain stderr.
    status: also the unit's STATUS= line (migd.service: what the exit code means, notify.exit_status)."""
    if status:
        from . import notify

        notify.Notifier()(f"STATUS={notify.exit_status(code, text.splitlines()[0] if text else '')}", barrier=True)
    if service_verb:
        from .log import get_logger

        for line in text.splitlines():
            if line.strip():
                get_logger().error(event, msg=line.strip(), exit=code)
    else:
        print(f"migd: {text}", file=sys.stderr)
    return code


# --- shared steps ---------------------------------------------------------------------------------------------


def _site(args: argparse.Namespace) -> Site:
    """The run's wiring (migd.site), built once per process; its notices (a simulation chosen by the environment,
    test hooks ignored) are said first: on stderr at a terminal, as journal warnings under systemd."""
    built: Optional[Site] = getattr(args, "site", None)
    if built is None:
        built = site_mod.build(args.simulate, args.sim_state)
        args.site = built
        if built.notices and args.verb in ("boot", "watch"):  # one journal event, first
            from .log import get_logger

            get_logger().warning("simulated" if built.simulated else "environment_ignored",
                                 msg="; ".join(built.notices))
        elif built.notices:
            for notice in built.notices:
                print(f"migd: {notice}", file=sys.stderr)
    return built


def _backend(args: argparse.Namespace, read_only: bool) -> Backend:
    backend = _site(args).open_backend(read_only=read_only, cache_write=not read_only)
    backend.open()
    return backend


def _engine(args: argparse.Namespace, backend: Backend, cfg: Optional[Config],
            host: Optional[str] = None) -> Engine:
    return _site(args).engine(backend, cfg, host=host)


def _live_view(args: argparse.Namespace, backend: Backend) -> Tuple[Engine, StatusView, Optional[str]]:
    """The live layout, with instance names and "matches/drift" where a valid config selects the GPU: status and
    export work without a (valid) config, they only lose the names; the third value says why they are lost."""
    why: Optional[str] = None
    try:
        cfg: Optional[Config] = _load_config(args)
    except ConfigError as e:
        cfg, why = None, " ".join(str(e.problems[0]).split()) if e.problems else str(e)
    engine = _engine(args, backend, cfg)
    desired = None
    if cfg is not None:
        try:
            desired = engine.desired()
        except ConfigError as e:
            why = ' '.join(str(e.problems[0]).split()) if e.problems else str(e)
    return engine, engine.status(desired), why


def _load_config(args: argparse.Namespace, privileged: bool = False, checking: bool = False) -> Config:
    """The config, as trusted as the verb needs (config.load_for_verb)."""
    from . import config

    def warn(e: Exception) -> None:
        print(f"migd: warning: apply and boot (as root) would refuse this config:\n{e}", file=sys.stderr)

    return config.load_for_verb(args.config, privileged=privileged, checking=checking, warn=warn)


# --- verbs --------------------------------------------------------------------------------------------------------


def _style() -> Style:
    """How pictures are drawn on this stdout: box characters when it is UTF-8, colour on a terminal only."""
    from .picture import style_for

    return style_for(getattr(sys.stdout, "encoding", None), sys.stdout.isatty(), os.environ)


def cmd_status(args: argparse.Namespace) -> int:
    from . import picture, schema

    backend = _backend(args, True)
    try:
        engine, view, _ = _live_view(args, backend)
        if args.json:
            print(schema.dumps(engine.status_doc(view, backend.description)))
        else:
            print(picture.status(view.gpus, view.names, view.managed, _style()))
            for note in _site(args).env.notes():  # a simulated host's systemctl calls, stopped units
                print(note)
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_profiles(args: argparse.Namespace) -> int:
    from . import picture, report, schema
    from .profiles import only_profiles

    backend = _backend(args, True)
    try:
        infos = only_profiles(backend.gpus(), args.profile)
        style = _style()
        print(schema.dumps(schema.profiles(infos, backend.simulated)) if args.json else
              report.profiles_text(infos, after=lambda info: picture.placements(info, style)))
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_completion(args: argparse.Namespace) -> int:
    from . import completion

    if args.shell == "profiles":
        print("\n".join(completion.profile_names(args.simulate)))
    else:
        print(completion.script(build_parser(), args.shell), end="")
    return E.EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from . import layout, preview

    cfg = _load_config(args, checking=True)
    n = len(cfg.entries)
    dropins = f", with drop-ins {', '.join(map(E.printable, cfg.files[1:]))}" if len(cfg.files) > 1 else ""
    print(f"{E.printable(cfg.path)}: syntax and keys OK ({n} GPU entr{'y' if n == 1 else 'ies'}{dropins})")
    if cfg.daemon.gpu_clients:
        _validate_gpu_clients(args, cfg)
    this = None if args.host else _site(args).env.hostname()  # the static name: what boot matches on
    host: str = args.host if this is None else this.name
    if args.host or any(e.hosts for e in cfg.entries):
        mine = layout.for_host(cfg, host)
        said = "" if this is None else f" (this host: {this.source}; --host NAME for another)"
        print(f"as host {E.printable(host)}{said}: "
              f"{len(mine)} of {n} GPU entr{'y' if n == 1 else 'ies'} apply"
              + "".join(f"\n  {e.label} ({e.where})" for e in mine))
    print("\n".join(preview.daemon_lines(cfg)))
    if not (_site(args).simulated or os.path.exists("/dev/nvidiactl")):
        layout.desired_for(cfg, [], host=host)  # a model glob that matches no GPU model migd knows: an error
        print("no GPUs to check against (no driver; use --simulate SPEC to check a model)")
        return E.EXIT_OK

    backend = _backend(args, True)
    try:
        engine = _engine(args, backend, cfg, host)
        infos = engine.infos()
        print("\n".join(preview.gpu_lines(cfg, infos, host)))
        for line in layout.unmatched_entries(cfg, infos, host):
            print(line)
        engine.desired()
        print("layout fits every selected GPU")
        return E.EXIT_OK
    finally:
        backend.close()


def _validate_gpu_clients(args: argparse.Namespace, cfg: Config) -> None:
    """Which clients migd-generator orders after migd.service, and what the host's systemd says of them."""
    from . import gpuclients

    names = ", ".join(p.describe() for p in gpuclients.patterns(cfg.daemon.gpu_clients))
    print(f"gpu_clients: {names} start after migd.service (migd-generator, at boot and daemon-reload)")
    for warning in gpuclients.check_units(cfg.daemon.gpu_clients, _site(args).env.unit_property):
        print(f"warning: {warning}")


def cmd_plan(args: argparse.Namespace) -> int:
    """Per GPU with something to do, its grid now and after (identical GPUs drawn once) and a one-line summary;
    with -v, the driver calls apply would make."""
    from . import picture

    cfg = _load_config(args, checking=True)
    backend = _backend(args, True)
    try:
        engine = _engine(args, backend, cfg, getattr(args, "host", None))
        desired = engine.desired()
        plans = engine.plans(desired)
        _print_unmatched(engine)
        code = E.EXIT_OK
        pictures, calls = [], []
        style = _style()
        for info in engine.infos():
            plan = plans.get(info.index)
            if plan is None:
                print(f"GPU {info.index}: not managed")
            elif plan.refusal:
                print(plan.refusal)
                code = E.EXIT_FAILURE
            elif plan.noop:
                print(f"GPU {info.index}: nothing to do")
            else:
                d = desired[info.index]
                pictures.append((info.index, picture.plan_picture(info, backend.state(info.index), plan, d.mig,
                                                                  f"{d.entry.label} ({d.entry.where})", style)))
                calls += [str(action) for action in plan.actions]
        for line in picture.plans(pictures):
            print(line)
        if args.verbose and calls:
            print("driver calls:")
            for call in calls:
                print(f"  {call}")
        elif calls:
            print("(`migd -v plan` lists the driver calls)")
        return code
    finally:
        backend.close()


def cmd_check(args: argparse.Namespace) -> int:
    from . import schema

    cfg = _load_config(args)
    backend = _backend(args, True)
    try:
        engine = _engine(args, backend, cfg)
        result = engine.check()
        if args.json:
            rows = [{"index": r.gpu, "status": r.status.value, "expected": r.expected, "found": r.found,
                     "diff": r.diff} for r in result.gpus]
            print(schema.dumps(schema.check(result.status.value, rows, backend.simulated)))
        else:
            from . import picture

            style = _style()
            infos = {info.index: info for info in engine.infos()}
            for r in result.gpus:
                # what differs, not two whole layouts (`--json` has both); then drawn on the grid
                print(f"GPU {r.gpu}: {r.status.value}: {r.diff or r.found}")
                if r.comparison is not None:
                    for line in picture.drift_picture(infos[r.gpu], r.comparison, style):
                        print(line)
        return result.exit_code
    finally:
        backend.close()


def cmd_export(args: argparse.Namespace) -> int:
    from . import report

    if args.declared and args.format != "slurm":
        return _fail(False, "usage", "export --declared needs --format slurm", E.EXIT_USAGE)
    cfg = _load_config(args) if args.declared else None
    backend = _backend(args, True)
    try:
        if args.format == "slurm":
            from . import slurm

            desired = _engine(args, backend, cfg).desired() if cfg is not None else None
            minors = None if args.declared else _site(args).env.mig_minors()  # a simulated host's own file
            print(slurm.export(backend, desired, cfg.path if cfg is not None else None, mig_minors=minors), end="")
            return E.EXIT_OK
        _, view, why = _live_view(args, backend)
        if why:  # never silent: the names come from the config
            print(f"migd: instance names left out (no usable config): {why}", file=sys.stderr)
        print(report.export_toml(view.gpus, view.names), end="")
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_apply(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_plan(args)
    from .progress import Progress

    cfg = _load_config(args, privileged=True)  # invalid config: exit 2 before the driver is even opened
    backend = _backend(args, False)
    # each GPU's result as soon as it is final; on a TTY, a driver call that takes over a second is named on stderr
    progress = Progress(sys.stdout, sys.stderr if sys.stderr.isatty() else None)
    try:
        engine = _engine(args, progress.watch(backend), cfg)
        desired = engine.desired()
        progress.expect(sorted(desired))
        _audit_start(args, cfg, _site(args).simulated)
        result = engine.apply(desired, stop_clients=bool(args.stop_clients), on_gpu_done=progress.gpu_done)
        progress.close()
        _audit_end(args, result)
        _print_unmatched(engine)
        _print_apply(engine, result, desired, args.verbose)
        return result.exit_code
    finally:
        progress.close()
        backend.close()


def _audit_start(args: argparse.Namespace, cfg: Config, simulated: bool) -> None:
    """`migd apply` from a shell: from here on its events also go to the journal with who ran it (the audit trail),
    however terse the terminal is; the first says who runs which apply of which config (the changes follow, under
    the names boot logs them with). A simulated run's trail is marked so, and not missed where there is no
    journal."""
    from . import audit
    from .log import get_logger, start_audit

    args.actor = audit.actor()
    start_audit(args.actor, required=not simulated)
    what = "migd apply" + (" --stop-clients" if args.stop_clients else "")
    sim = " (simulated GPUs)" if simulated else ""
    get_logger().info("apply_started", msg=f"{what} by {audit.describe(args.actor)}: {cfg.path}{sim}",
                      config=cfg.path, stop_clients=bool(args.stop_clients), simulated=simulated)


def _audit_end(args: argparse.Namespace, result: ApplyResult) -> None:
    """The audit trail's last line: the outcome (what each GPU got, the exit code)."""
    from . import audit
    from .log import get_logger

    code = result.exit_code
    summary = "; ".join([r.message for r in result.gpus.values()] + ([result.record_error] if result.record_error else []))
    # info: each failure is its own event at its own priority already; this one must not repeat it on the terminal
    get_logger().info("apply_finished", msg=f"migd apply by {audit.describe(args.actor)}: exit {code}: {summary}",
                      exit=code, outcomes={str(i): r.outcome.value for i, r in result.gpus.items()})


def cmd_boot(args: argparse.Namespace) -> int:
    """migd.service (boot.run): wait for the driver, then apply. Failures fail the unit (exit != 0), never the boot."""
    from . import boot, notify

    cfg = _load_config(args, privileged=True)
    site = _site(args)
    notifier = notify.Notifier()
    return boot.run(cfg, lambda: site.open_backend(cache_write=True), site.env,
                    lambda backend: _engine(args, backend, cfg),
                    status=lambda text: notifier(f"STATUS={text}", barrier=True))


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch import Watcher

    return Watcher(args.config, _site(args)).run()


def cmd_init(args: argparse.Namespace) -> int:
    from . import starter
    from .model import Gpu

    backend = _backend(args, True)
    try:
        infos = backend.gpus()
        gpus = [Gpu(info, backend.state(info.index)) for info in infos if not info.unknown]
    finally:
        backend.close()
    for info in infos:  # never silently: a GPU migd cannot read gets no entry, and the admin is told
        if info.unknown:
            why = "lost (fell off the bus)" if info.lost else f"unreadable: {info.unreadable}"
            print(f"migd: GPU {info.index} left out of the starter file: {E.printable(why)}", file=sys.stderr)
    text = starter.starter_toml(gpus, _site(args).env.hostname().name)
    if not args.output:
        print(text, end="")
        return E.EXIT_OK
    try:  # O_EXCL: an admin's existing file is never replaced
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return _fail(False, "usage", f"{args.output}: exists; migd init never overwrites a file (remove it or give "
                                     "another -o FILE)", E.EXIT_USAGE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}: check it with `migd -c {args.output} validate` and `migd -c {args.output} plan`")
    return E.EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from . import migparted

    print(migparted.convert(migparted.read(args.file), args.file, args.name), end="")
    return E.EXIT_OK


def _print_unmatched(engine: Engine) -> None:
    """An entry that selects no GPU here is legal in a fleet file, and said (never a silent no-op)."""
    from . import layout

    if engine.config is not None:
        for line in layout.unmatched_entries(engine.config, engine.infos(), engine.host):
            print(line)


def _print_apply(engine: Engine, result: ApplyResult, desired: Dict[int, DesiredGpu],
                 verbose: bool = False) -> None:
    """After the lines per GPU (printed as each was done), the applied GPUs' slot grids (identical GPUs drawn once),
    with -v as `status` shows them, compute instance UUIDs included (a GPU lost meanwhile is left out)."""
    from . import picture

    if not desired:
        print("nothing to apply: no entry selects a GPU on this host")
        return
    if result.record_error:
        print(f"migd: {result.record_error}", file=sys.stderr)
    engine.current_infos()
    view = engine.status(desired, only=sorted(desired))
    print(picture.status(view.gpus, view.names, view.managed, _style(), details=verbose))


VERBS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status, "profiles": cmd_profiles, "validate": cmd_validate, "plan": cmd_plan, "apply": cmd_apply,
    "check": cmd_check, "export": cmd_export, "boot": cmd_boot, "watch": cmd_watch,
    "import": cmd_import, "init": cmd_init, "completion": cmd_completion}


def run() -> None:
    """The process entry point (the `migd` console script, /usr/bin/migd, `python -m migd.cli`): main(), then exit
    without tearing the interpreter down. By then migd has written and closed everything it writes (state files
    are renamed into place, the lock is released, journal lines are sent), so teardown only frees memory the kernel
    frees anyway: on an H200 (R580) it was ~17 ms of a cold 150 ms `migd status`. An exception escaping main()
    still exits the ordinary way, with its traceback."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        # `migd profiles | head`: the reader is gone (or main closed it)
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
