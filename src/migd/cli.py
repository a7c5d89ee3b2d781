"""migd's command line: `migd [--config PATH] [--simulate SPEC] VERB`.

Read verbs (status, profiles, validate, plan, check, export) always run behind the read-only guard. Every verb that
takes a config validates all of it, against every GPU it selects, before touching any GPU.
"""

from __future__ import annotations

import argparse
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
    from .site import Site

READ_VERBS = ("status", "profiles", "validate", "plan", "check", "export")
SERVICE_IDENTIFIERS = {"watch": "migd-watch"}  # verb -> SyslogIdentifier= of its unit (migd.service's is "migd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="migd", description="Put NVIDIA GPUs into the MIG layout declared in /etc/migd.toml.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad config or usage, 3 drift (check), 4 MIG mode change pending "
               "(needs idle GPU + reset, or reboot), 5 busy (lock held). `systemctl status` names 3, 4 and 5 by "
               "systemd's table (NOTIMPLEMENTED, NOPERMISSION, NOTINSTALLED); migd.service's status line says what "
               "the exit means.")
    p.add_argument("--version", action="version", version=f"migd {__version__}")
    p.add_argument("-c", "--config", default=os.environ.get("MIGD_CONFIG", "/etc/migd.toml"),
                   help="layout file (default /etc/migd.toml; env MIGD_CONFIG)")
    p.add_argument("--simulate", metavar="SPEC", default=None, help=site_mod.simulate_help())
    p.add_argument("--sim-state", metavar="PATH", default=None,
                   help="share simulated GPUs between processes through this state file, created from --simulate "
                        "when absent (env MIGD_SIM_STATE)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(dest="verb", metavar="VERB", prog="migd")  # prog: no terminal-size probe at start
    sub.required = True
    s = sub.add_parser("status", help="GPUs, MIG mode, instances with placements and UUIDs")
    s.add_argument("--json", action="store_true", help="stable JSON (see README)")
    s = sub.add_parser("profiles", help="MIG profiles and placements per GPU (nvidia-smi mig -lgip + -lgipp)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("validate", help="check the config; with --simulate or GPUs, which entry each GPU gets")
    s.add_argument("--host", metavar="NAME", type=_host_name,
                   help="check a fleet file as host NAME sees it ([[gpu]] hosts = ...; default: this host)")
    sub.add_parser("plan", help="the actions apply would take; changes nothing")
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
    return p


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
        return VERBS[args.verb](args, read_verb)
    except ConfigError as e:
        lead = "invalid configuration, no GPU touched:"
        # Under systemd each problem is one journal line that says what happened and names file:line.
        text = "\n".join(f"{lead} {' '.join(str(p).split())}" for p in e.problems) if service_verb else f"{lead}\n{e}"
        return _fail(service_verb, "config_invalid", text, E.EXIT_USAGE, status=args.verb == "boot")
    except MigdError as e:
        return _fail(service_verb, "failed", str(e), e.exit_code)  # boot.run set STATUS= itself
    except ValueError as e:  # bad --simulate spec or state file
        return _fail(service_verb, "usage", str(e), E.EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `migd plan | head`
        sys.stderr.close()
        return E.EXIT_OK
    except OSError as e:  # (after its subclass BrokenPipeError) a file or directory migd needs is unusable
        where = f"{e.filename}: " if e.filename else ""
        return _fail(service_verb, "failed", f"{where}{e.strerror or e}", E.EXIT_FAILURE)


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


def _site(args: argparse.Namespace) -> "Site":
    """The run's wiring (migd.site), built once per process; its notices (a simulation chosen by the environment,
    test hooks ignored) are said first: on stderr at a terminal, as journal warnings under systemd."""
    built: Optional[Site] = getattr(args, "site", None)
    if built is None:
        built = site_mod.build(args.simulate, args.sim_state)
        args.site = built
        for notice in built.notices:
            if args.verb in ("boot", "watch"):
                from .log import get_logger

                get_logger().warning("simulated" if built.simulated else "environment_ignored", msg=notice)
            else:
                print(f"migd: {notice}", file=sys.stderr)
    return built


def _backend(args: argparse.Namespace, read_only: bool) -> "Backend":
    backend = _site(args).open_backend(read_only=read_only, cache_write=not read_only)
    backend.open()
    return backend


def _engine(args: argparse.Namespace, backend: "Backend", cfg: "Optional[Config]",
            host: Optional[str] = None) -> "Engine":
    from .engine import Engine

    return Engine(backend, cfg, _site(args).env, host=host)


def _live_view(args: argparse.Namespace, backend: "Backend") -> "Tuple[Engine, StatusView]":
    """The live layout, with instance names and "matches/drift" where a valid config selects the GPU: status and
    export work without a (valid) config, they only lose the names."""
    try:
        cfg: Optional[Config] = _load_config(args)
    except ConfigError:
        cfg = None
    engine = _engine(args, backend, cfg)
    desired = None
    if cfg is not None:
        try:
            desired = engine.desired()
        except ConfigError:
            pass
    return engine, engine.status(desired)


def _load_config(args: argparse.Namespace, privileged: bool = False) -> "Config":
    """privileged: the verb may change GPUs, so as root the file must be one only root can change (sshd-style)."""
    from . import config

    return config.load(args.config, owner=config.trusted_owner() if privileged else None)


# --- verbs --------------------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, read_only: bool) -> int:
    from . import report, schema

    backend = _backend(args, True)
    try:
        engine, view = _live_view(args, backend)
        if args.json:
            print(schema.dumps(engine.status_doc(view, backend.description)))
        else:
            print(report.status_text(view.gpus, view.names, view.managed))
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_profiles(args: argparse.Namespace, read_only: bool) -> int:
    from . import report, schema

    backend = _backend(args, True)
    try:
        infos = backend.gpus()
        print(schema.dumps(schema.profiles(infos, backend.simulated)) if args.json else report.profiles_text(infos))
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_validate(args: argparse.Namespace, read_only: bool) -> int:
    from . import hostnames, layout

    cfg = _load_config(args)
    n = len(cfg.entries)
    dropins = f", with drop-ins {', '.join(cfg.files[1:])}" if len(cfg.files) > 1 else ""
    print(f"{cfg.path}: syntax and keys OK ({n} GPU entr{'y' if n == 1 else 'ies'}{dropins})")
    host = args.host or hostnames.this_host()
    if args.host or any(e.hosts for e in cfg.entries):
        mine = layout.for_host(cfg, host)
        print(f"as host {host}{'' if args.host else ' (this host; --host NAME for another)'}: "
              f"{len(mine)} of {n} GPU entr{'y' if n == 1 else 'ies'} apply"
              + "".join(f"\n  {e.label} ({e.where})" for e in mine))
    if not (_site(args).simulated or os.path.exists("/dev/nvidiactl")):
        print("no GPUs to check against (no driver; use --simulate SPEC to check a model)")
        return E.EXIT_OK

    backend = _backend(args, True)
    try:
        engine = _engine(args, backend, cfg, host)
        infos = engine.infos()
        chosen, _ = layout.select(cfg, infos, host)
        for info in infos:
            entry = chosen.get(info.index)
            hosts = f", hosts = {', '.join(entry.hosts)}" if entry and entry.hosts else ""
            what = "not managed (no entry matches)" if entry is None else \
                f"{entry.label} ({entry.where}, select = {entry.selector}{hosts})"
            print(f"GPU {info.index} {info.name}: {what}")
        engine.desired()
        print("layout fits every selected GPU")
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_plan(args: argparse.Namespace, read_only: bool) -> int:
    cfg = _load_config(args)
    backend = _backend(args, True)
    try:
        engine = _engine(args, backend, cfg)
        plans = engine.plans(engine.desired())
        code = E.EXIT_OK
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
                for action in plan.actions:
                    print(action)
        return code
    finally:
        backend.close()


def cmd_check(args: argparse.Namespace, read_only: bool) -> int:
    from . import schema

    cfg = _load_config(args)
    backend = _backend(args, True)
    try:
        result = _engine(args, backend, cfg).check()
        if args.json:
            rows = [{"index": r.gpu, "status": r.status.value, "expected": r.expected, "found": r.found,
                     "diff": r.diff} for r in result.gpus]
            print(schema.dumps(schema.check(result.status.value, rows, backend.simulated)))
        else:
            for r in result.gpus:
                # what differs, not two whole layouts (`--json` has both)
                print(f"GPU {r.gpu}: {r.status.value}: {r.diff or r.found}")
        return result.exit_code
    finally:
        backend.close()


def cmd_export(args: argparse.Namespace, read_only: bool) -> int:
    from . import report

    if args.declared and args.format != "slurm":
        return _fail(False, "usage", "export --declared needs --format slurm", E.EXIT_USAGE)
    cfg = _load_config(args) if args.declared else None
    backend = _backend(args, True)
    try:
        if args.format == "slurm":
            from . import slurm

            desired = _engine(args, backend, cfg).desired() if cfg is not None else None
            print(slurm.export(backend, desired, cfg.path if cfg is not None else None), end="")
            return E.EXIT_OK
        _, view = _live_view(args, backend)
        print(report.export_toml(view.gpus, view.names), end="")
        return E.EXIT_OK
    finally:
        backend.close()


def cmd_apply(args: argparse.Namespace, read_only: bool) -> int:
    if args.dry_run:
        return cmd_plan(args, True)
    cfg = _load_config(args, privileged=True)  # invalid config: exit 2 before the driver is even opened
    backend = _backend(args, False)
    try:
        engine = _engine(args, backend, cfg)
        desired = engine.desired()
        _audit_start(args, cfg, _site(args).simulated)
        result = engine.apply(desired, stop_clients=bool(args.stop_clients))
        _audit_end(args, result)
        _print_apply(engine, result, desired, args.verbose)
        return result.exit_code
    finally:
        backend.close()


def _audit_start(args: argparse.Namespace, cfg: "Config", simulated: bool) -> None:
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


def _audit_end(args: argparse.Namespace, result: "ApplyResult") -> None:
    """The audit trail's last line: the outcome (what each GPU got, the exit code)."""
    from . import audit
    from .log import get_logger

    code = result.exit_code
    summary = "; ".join(result.messages + ([result.record_error] if result.record_error else []))
    # info: each failure is its own event at its own priority already; this one must not repeat it on the terminal
    get_logger().info("apply_finished", msg=f"migd apply by {audit.describe(args.actor)}: exit {code}: {summary}",
                      exit=code, outcomes={str(i): r.outcome.value for i, r in result.gpus.items()})


def cmd_boot(args: argparse.Namespace, read_only: bool) -> int:
    """migd.service (boot.run): wait for the driver, then apply. Failures fail the unit (exit != 0), never the boot."""
    from . import boot, notify

    cfg = _load_config(args, privileged=True)
    site = _site(args)
    notifier = notify.Notifier()
    return boot.run(cfg, lambda: site.open_backend(cache_write=True), site.env,
                    lambda backend: _engine(args, backend, cfg),
                    status=lambda text: notifier(f"STATUS={text}", barrier=True))


def cmd_watch(args: argparse.Namespace, read_only: bool) -> int:
    from .watch import Watcher

    return Watcher(args.config, _site(args)).run()


def _print_apply(engine: "Engine", result: "ApplyResult", desired: "Dict[int, DesiredGpu]",
                 verbose: bool = False) -> None:
    """One line per GPU saying what apply did, then the applied GPUs' layout: a compact table (identical GPUs on
    one row), or with -v as `status` shows them (a GPU lost meanwhile is left out)."""
    from . import report

    for r in result.gpus.values():
        print(r.message)
    if result.record_error:
        print(f"migd: {result.record_error}", file=sys.stderr)
    engine.current_infos()
    view = engine.status(desired, only=sorted(desired))
    if verbose:
        print(report.status_text(view.gpus, view.names, view.managed))
    else:
        print(report.layout_table(view.gpus, view.names, view.managed))


VERBS: Dict[str, Callable[[argparse.Namespace, bool], int]] = {
    "status": cmd_status, "profiles": cmd_profiles, "validate": cmd_validate, "plan": cmd_plan, "apply": cmd_apply,
    "check": cmd_check, "export": cmd_export, "boot": cmd_boot, "watch": cmd_watch}


def run() -> None:
    """The process entry point (the `migd` console script, /usr/bin/migd, `python -m migd.cli`): main(), then exit
    without tearing the interpreter down. By then migd has written and closed everything it writes (state files
    are renamed into place, the lock is released, journal lines are sent), so teardown only frees memory the kernel
    frees anyway: on an H200 (R580) it was ~17 ms of a cold 150 ms `migd status`. An exception escaping main()
    still exits the ordinary way, with its traceback."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # `migd profiles | head`: the reader is gone (or main closed it)
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
