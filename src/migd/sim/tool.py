"""Poke a simulated host's state file from tests: what an admin or the hardware would do behind migd's back.

    python3 -m migd.sim.tool --state PATH show
    python3 -m migd.sim.tool --state PATH destroy-gi GPU GI_ID       # by hand, like nvidia-smi mig -dci/-dgi
    python3 -m migd.sim.tool --state PATH create-gi GPU PROFILE_ID START SIZE
    python3 -m migd.sim.tool --state PATH destroy-ci GPU GI_ID CI_ID             # nvidia-smi mig -dci
    python3 -m migd.sim.tool --state PATH create-ci GPU GI_ID PROFILE_ID START SIZE
    python3 -m migd.sim.tool --state PATH add-process GPU PID [GI CI]
    python3 -m migd.sim.tool --state PATH clear-processes GPU
    python3 -m migd.sim.tool --state PATH fault 'nvmlDeviceGetMigMode=hang' | --clear
    python3 -m migd.sim.tool --state PATH driver loaded|not-loaded|no-module|no-library
    python3 -m migd.sim.tool --state PATH reboot
    python3 -m migd.sim.tool --state PATH system starting|running   # is the simulated system still booting?
    python3 -m migd.sim.tool --state PATH lose GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .fakelib import parse_faults
from .host import SimError, SimHost, load_state


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m migd.sim.tool")
    ap.add_argument("--state", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show")
    s = sub.add_parser("destroy-gi")
    s.add_argument("gpu", type=int)
    s.add_argument("gi", type=int)
    s = sub.add_parser("create-gi")
    for name in ("gpu", "profile_id", "start", "size"):
        s.add_argument(name, type=int)
    s = sub.add_parser("destroy-ci")
    for name in ("gpu", "gi", "ci"):
        s.add_argument(name, type=int)
    s = sub.add_parser("create-ci")
    for name in ("gpu", "gi", "profile_id", "start", "size"):
        s.add_argument(name, type=int)
    s = sub.add_parser("add-process")
    for name in ("gpu", "pid"):
        s.add_argument(name, type=int)
    s.add_argument("gi", type=int, nargs="?")
    s.add_argument("ci", type=int, nargs="?")
    s = sub.add_parser("clear-processes")
    s.add_argument("gpu", type=int)
    s = sub.add_parser("fault")
    s.add_argument("spec", nargs="?")
    s.add_argument("--clear", action="store_true")
    s = sub.add_parser("driver")
    s.add_argument("driver", choices=["loaded", "not-loaded", "no-module", "no-library"])  # not "state": that is --state
    sub.add_parser("reboot")
    s = sub.add_parser("system")
    s.add_argument("system", choices=["starting", "running"])
    s = sub.add_parser("lose")
    s.add_argument("gpu", type=int)
    args = ap.parse_args(argv)

    try:
        host = SimHost(load_state(args.state), args.state)
    except ValueError as e:
        print(f"sim: {e}", file=sys.stderr)
        return 2
    with host.locked():  # read-modify-write under the state file's lock, like the fake driver's own changes
        host.reload()
        try:
            if args.cmd == "show":
                print(json.dumps(host.state, indent=1))
                return 0
            _poke(host, args)
        except SimError as e:
            print(f"sim: {e}", file=sys.stderr)
            return 1
        host.save()
    return 0


def _poke(host: SimHost, args: argparse.Namespace) -> None:
    if args.cmd == "destroy-gi":
        gi = host.find_gi(args.gpu, args.gi)
        gi["cis"] = []  # nvidia-smi mig -dci then -dgi
        host.destroy_gi(args.gpu, args.gi)
    elif args.cmd == "create-gi":
        host.create_gi(args.gpu, args.profile_id, (args.start, args.size))
    elif args.cmd == "destroy-ci":
        host.destroy_ci(args.gpu, args.gi, args.ci)
    elif args.cmd == "create-ci":
        host.create_ci(args.gpu, args.gi, args.profile_id, (args.start, args.size))
    elif args.cmd == "add-process":
        host.add_process(args.gpu, args.pid, args.gi, args.ci)
    elif args.cmd == "clear-processes":
        host.gpus[args.gpu]["processes"] = []
    elif args.cmd == "fault":
        host.state["faults"] = [] if args.clear else host.state.get("faults", []) + parse_faults(args.spec or "")
    elif args.cmd == "driver":
        host.state["driver"] = args.driver
    elif args.cmd == "reboot":
        host.reboot()
        host.state["system"] = "starting"
    elif args.cmd == "system":
        host.state["system"] = args.system
    elif args.cmd == "lose":
        host.gpus[args.gpu]["lost"] = True

if __name__ == "__main__":
    sys.exit(main())
