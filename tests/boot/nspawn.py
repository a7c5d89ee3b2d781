"""Boot a rootfs under a real systemd with ``systemd-nspawn -b`` and collect results.

Stdlib only, Python >= 3.9, needs root.  Independent of rootfs.py (either can
be used alone).

    from nspawn import boot

    res = boot(root, units=["a.service"], commands={"ls": ["ls", "/etc"]})
    res.check()                                  # raises BootError with console/journal tail
    res.unit("a.service")["ActiveState"]         # systemctl show, as a dict
    res.journal(_SYSTEMD_UNIT="a.service")       # journalctl -b -o json, filtered
    res.command("ls")["stdout"]

How it works
------------
``boot()`` installs a collector into the rootfs (idempotent; it stays there,
harmlessly, between boots): ``migd-boot-collect.service`` (Type=simple,
DefaultDependencies=no, pulled in by sysinit.target so it never delays the
boot) runs ``/usr/local/lib/migd-boot/collect.py``.  That script waits until
``systemctl is-system-running`` says running/degraded (the boot job queue is
empty) or a settle deadline passes, then writes into the bind-mounted results
dir (/run/migd-boot in the container):

    state.json          system state, settled?, failed units, pending jobs, boot id
    units/<unit>.json   ``systemctl show <unit>`` (all properties) for each requested unit
    units.txt           ``systemctl list-units --all``
    cmd/<name>.json     {argv, rc, stdout, stderr} for each requested command
    journal.jsonl       ``journalctl -b -o json`` (after ``journalctl --sync``)
    done                written last

and exits; the unit's SuccessAction=/FailureAction=poweroff stops the
container, so systemd-nspawn exits.  The host side writes request.json there
before the boot; the container console (--console=read-only: a pty as
/dev/console, copied to nspawn's stdout) goes to console.log.

Cgroups: with --keep-unit --register=no nspawn uses the cgroup it was started
in and creates ``payload/`` (the container, incl. its init.scope, system.slice,
...) and ``supervisor/`` sub-cgroups there; it never removes them.  Started
from a process in the root cgroup that means /sys/fs/cgroup/{unified,systemd}/
{payload,supervisor} on a hybrid host, shared by all containers.  So boot()
starts nspawn inside a fresh cgroup ``migd-boot-<machine>`` below our own in
every hierarchy nspawn uses (cgroup2 + v1 name=systemd), and afterwards kills
whatever is still in that subtree (timeouts) and rmdirs it bottom-up.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
RESULTS_IN_CONTAINER = "/run/migd-boot"
COLLECT_UNIT = "migd-boot-collect.service"
COLLECT_SCRIPT = "/usr/local/lib/migd-boot/collect.py"

PathLike = Union[str, "os.PathLike[str]"]
Bind = Union[str, Tuple[PathLike, str], Tuple[PathLike, str, str]]

COLLECT_UNIT_TEXT = f"""\
[Unit]
Description=migd boot-test result collector
DefaultDependencies=no
After=systemd-journald.service local-fs.target
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists={RESULTS_IN_CONTAINER}/request.json
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=simple
ExecStart=/usr/bin/python3 {COLLECT_SCRIPT}
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=sysinit.target
"""

# Runs inside the container with the system python3 (3.11 on bookworm).
COLLECT_SCRIPT_TEXT = r'''#!/usr/bin/python3
"""migd boot-test collector (installed by tests/boot/nspawn.py)."""
import json, os, subprocess, sys, time

OUT = "/run/migd-boot"
req = json.load(open(os.path.join(OUT, "request.json")))
errors = []


def run(argv, timeout=30):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    except Exception as e:  # noqa
        errors.append("%r: %s" % (argv, e))
        return -1, "", str(e)


def write(rel, data):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path + ".tmp", mode) as f:
        f.write(data)
    os.replace(path + ".tmp", path)


t0 = time.monotonic()
deadline = t0 + float(req.get("settle_timeout", 30))
state = "unknown"
settled = False
while True:
    state = run(["systemctl", "is-system-running"])[1].strip()
    if state in ("running", "degraded"):
        settled = True
        break
    if state in ("maintenance", "stopping", "offline") or time.monotonic() > deadline:
        break
    time.sleep(0.05)
settle_seconds = time.monotonic() - t0
extra = float(req.get("extra_wait", 0))
if extra:
    time.sleep(extra)

for name, argv in sorted(req.get("commands", {}).items()):
    rc, out, err = run(argv, timeout=float(req.get("command_timeout", 30)))
    write("cmd/%s.json" % name, json.dumps({"argv": argv, "rc": rc, "stdout": out, "stderr": err}))

for unit in req.get("units", []):
    rc, out, err = run(["systemctl", "show", "--no-pager", unit])
    props = {}
    for line in out.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            props[k] = v
    if rc != 0:
        errors.append("systemctl show %s: rc=%d %s" % (unit, rc, err.strip()))
    write("units/%s.json" % unit, json.dumps(props, indent=1, sort_keys=True))

write("units.txt", run(["systemctl", "list-units", "--all", "--no-pager", "--plain"])[1])
failed = run(["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"])[1]
jobs = run(["systemctl", "list-jobs", "--no-legend", "--no-pager"])[1]

run(["journalctl", "--sync"])
rc, journal, err = run(["journalctl", "-b", "-o", "json", "--no-pager"], timeout=60)
if rc != 0:
    errors.append("journalctl rc=%d %s" % (rc, err.strip()))
write("journal.jsonl", journal)

write("state.json", json.dumps({
    "system_state": state,
    "settled": settled,
    "settle_seconds": round(settle_seconds, 3),
    "failed_units": [l.split()[0] for l in failed.splitlines() if l.strip()],
    "pending_jobs": [l for l in jobs.splitlines() if l.strip()],
    "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(),
    "machine_id": open("/etc/machine-id").read().strip(),
    "errors": errors,
}, indent=1))
write("done", "")
print("migd-boot-collect: state=%s settled=%s in %.2fs" % (state, settled, settle_seconds), flush=True)
'''


class BootError(RuntimeError):
    def __init__(self, msg: str, result: "BootResult"):
        super().__init__(msg)
        self.result = result


class BootResult:
    """What one ``boot()`` left behind.  Files live in ``results_dir``."""

    def __init__(self, *, machine: str, rootfs: Path, results_dir: Path, returncode: Optional[int],
                 timed_out: bool, seconds: float, cgroups_removed: List[str],
                 leftovers: List[str]):
        self.machine = machine
        self.rootfs = rootfs
        self.results_dir = results_dir
        self.returncode = returncode
        self.timed_out = timed_out
        self.seconds = seconds
        self.cgroups_removed = cgroups_removed
        self.leftovers = leftovers  # cgroup dirs we failed to remove (should be empty)
        self._journal = None  # type: Optional[List[Dict[str, Any]]]

    # -- raw files
    @property
    def collected(self) -> bool:
        return (self.results_dir / "done").exists()

    @property
    def console(self) -> str:
        p = self.results_dir / "console.log"
        return p.read_text(errors="replace").replace("\r\n", "\n") if p.exists() else ""

    @property
    def state(self) -> Dict[str, Any]:
        state: Dict[str, Any] = json.loads((self.results_dir / "state.json").read_text())
        return state

    def unit(self, name: str) -> Dict[str, str]:
        """All ``systemctl show`` properties of a unit listed in ``units=``."""
        unit: Dict[str, str] = json.loads((self.results_dir / "units" / (name + ".json")).read_text())
        return unit

    def command(self, name: str) -> Dict[str, Any]:
        command: Dict[str, Any] = json.loads((self.results_dir / "cmd" / (name + ".json")).read_text())
        return command

    # -- journal
    def journal(self, **match: str) -> List[Dict[str, Any]]:
        """Entries of ``journalctl -b -o json`` whose fields equal ``match``.

        Binary/invalid-UTF-8 fields (JSON arrays of bytes) are decoded to str.
        """
        if self._journal is None:
            entries = []
            p = self.results_dir / "journal.jsonl"
            for line in (p.read_text(errors="replace").splitlines() if p.exists() else []):
                if not line.strip():
                    continue
                e = json.loads(line)
                for k, v in list(e.items()):
                    if isinstance(v, list) and all(isinstance(x, int) for x in v):
                        e[k] = bytes(v).decode(errors="replace")
                entries.append(e)
            self._journal = entries
        return [e for e in self._journal if all(e.get(k) == v for k, v in match.items())]

    def messages(self, unit: Optional[str] = None) -> List[str]:
        """MESSAGE fields, optionally only those attributed to ``unit``."""
        m = {"_SYSTEMD_UNIT": unit} if unit else {}
        return [str(e.get("MESSAGE", "")) for e in self.journal(**m)]

    def describe(self, lines: int = 60) -> str:
        parts = [f"machine={self.machine} rc={self.returncode} timed_out={self.timed_out} collected={self.collected} "
                 f"{self.seconds:.1f}s results={self.results_dir}"]
        if (self.results_dir / "state.json").exists():
            parts.append(f"state: {json.dumps(self.state)}")
        parts.append("--- console (tail) ---")
        parts.extend(self.console.splitlines()[-lines:])
        if self.leftovers:
            parts.append(f"cgroup leftovers: {self.leftovers}")
        return "\n".join(parts)

    def check(self) -> "BootResult":
        """Raise BootError unless the boot finished cleanly and collected."""
        problems = []
        if self.timed_out:
            problems.append("timed out")
        if not self.collected:
            problems.append("collector did not finish")
        if self.returncode not in (0,):
            problems.append(f"systemd-nspawn rc={self.returncode}")
        if self.collected and not self.state.get("settled"):
            problems.append("boot did not settle (state={})".format(self.state.get("system_state")))
        if problems:
            raise BootError("boot failed: {}\n{}".format(", ".join(problems), self.describe()), self)
        return self


# --- cgroups -----------------------------------------------------------------

def _cgroup_hierarchies() -> List[Path]:
    """Our own cgroup directory in each hierarchy systemd-nspawn manages.

    Unified host: the cgroup2 mount.  Hybrid host: cgroup2 (/sys/fs/cgroup/
    unified) and v1 name=systemd.  Legacy: name=systemd.
    """
    own = {}  # hierarchy id ("0" or "name=systemd") -> path
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and ctrls == "":
                own["0"] = path
            elif "name=systemd" in ctrls.split(","):
                own["name=systemd"] = path
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.rstrip("\n").partition(" - ")
            fields = pre.split()
            mroot, mpoint = fields[3], fields[4]
            fstype, _src, opts = (post.split() + ["", "", ""])[:3]
            if fstype == "cgroup2":
                hid = "0"
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                hid = "name=systemd"
            else:
                continue
            if hid not in own:
                continue
            path = own[hid]
            if mroot != "/" and (path + "/").startswith(mroot.rstrip("/") + "/"):
                path = path[len(mroot.rstrip("/")):] or "/"
            d = Path(mpoint.replace("\\040", " ")) / path.lstrip("/")
            if d.is_dir() and d not in result:
                result.append(d)
    return result


def _cgroup_walk_bottom_up(top: Path) -> List[Path]:
    dirs = []
    for dirpath, _dirnames, _ in os.walk(top):
        dirs.append(Path(dirpath))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(top: Path) -> List[int]:
    pids = []
    for d in _cgroup_walk_bottom_up(top):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(x) for x in (d / "cgroup.procs").read_text().split()]
    return pids


def _cgroup_kill_and_remove(tops: Sequence[Path], timeout: float = 10.0) -> Tuple[List[str], List[str]]:
    """SIGKILL everything under ``tops`` and rmdir them.  -> (removed, leftovers)."""
    deadline = time.monotonic() + timeout
    removed = []  # type: List[str]
    while True:
        live = False
        for top in tops:
            if not top.exists():
                continue
            kill_file = top / "cgroup.kill"  # cgroup2, kernel >= 5.14
            pids = _cgroup_pids(top)
            if pids:
                live = True
                if kill_file.exists():
                    with contextlib.suppress(OSError):
                        kill_file.write_text("1")
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    leftovers = []
    for top in tops:
        if not top.exists():
            continue
        for d in _cgroup_walk_bottom_up(top):
            for _ in range(100):
                try:
                    d.rmdir()
                    removed.append(str(d))
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY right after the last task exits
                    time.sleep(0.02)
            else:
                leftovers.append(str(d))
    return removed, leftovers


# --- boot --------------------------------------------------------------------

def _norm_bind(b: Bind) -> Tuple[str, str, bool]:
    if isinstance(b, str):
        host, _, rest = b.partition(":")
        cont, _, mode = rest.partition(":")
        cont = cont or host
    else:
        host, cont = str(b[0]), b[1]
        mode = b[2] if len(b) > 2 else ""
    if mode not in ("", "ro", "rw"):
        raise ValueError(f"bind mode must be ro/rw: {b!r}")
    if not os.path.exists(host):
        raise FileNotFoundError(f"bind source {host} does not exist")
    if not cont.startswith("/"):
        raise ValueError(f"container path must be absolute: {b!r}")
    return os.path.abspath(host), cont, mode == "ro"


def _remove_stale_locks(root: Path) -> List[str]:
    """Remove nspawn's image lock files if nobody holds them (left after SIGKILL).

    nspawn locks the tree with ``<parent>/.#<name>.lck`` and
    ``/run/systemd/nspawn/locks/inode-<dev>:<ino>`` (OFD record locks; stale
    files are harmless, but litter).  A POSIX lockf() conflicts with OFD locks,
    so we only delete files no live nspawn holds.
    """
    import fcntl
    removed = []  # type: List[str]
    try:
        st = root.stat()
        candidates = [root.parent / (f".#{root.name}.lck"),
                      Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}")]
    except OSError:
        return removed
    for c in candidates:
        try:
            fd = os.open(str(c), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            c.unlink()
            removed.append(str(c))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def install_collector(rootfs: PathLike) -> None:
    """Put the collector unit + script into the rootfs and enable it (idempotent)."""
    root = Path(rootfs)
    script = root / COLLECT_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(COLLECT_SCRIPT_TEXT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system" / COLLECT_UNIT
    unit.write_text(COLLECT_UNIT_TEXT)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / COLLECT_UNIT
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/" + COLLECT_UNIT)


def boot(rootfs_dir: PathLike, *, bind: Sequence[Bind] = (),
         units: Sequence[str] = (), commands: Optional[Mapping[str, Sequence[str]]] = None,
         timeout: float = 60.0, settle_timeout: Optional[float] = None,
         extra_wait: float = 0.0, results_dir: Optional[PathLike] = None,
         env: Optional[Mapping[str, str]] = None, init_args: Sequence[str] = (),
         nspawn_args: Sequence[str] = (), machine: Optional[str] = None,
         kill_grace: float = 10.0, check: bool = False) -> BootResult:
    """Boot ``rootfs_dir`` with systemd-nspawn -b, collect, power off, clean up.

    bind:           [(host_path, container_path[, "ro"]), ...] or "host:cont[:ro]"
    units:          units to dump with ``systemctl show`` (all properties)
    commands:       {name: argv} run in the container after the boot settled
    timeout:        hard wall-clock limit for the whole container run; after it
                    nspawn gets SIGTERM (-> SIGRTMIN+3 to the container's
                    PID 1 = orderly poweroff), ``kill_grace`` s later
                    everything in the container's cgroups gets SIGKILL
    settle_timeout: how long the collector waits for the boot to finish
                    (``is-system-running`` = running/degraded) before
                    collecting anyway; default timeout - 15 s (min 5 s)
    extra_wait:     seconds to sleep after settling before collecting
    results_dir:    where results go (must be empty/nonexistent); default a
                    new dir under /var/tmp/migd-boot/runs/
    env:            extra --setenv NAME=VALUE for the container's PID 1 only
                    (services do NOT inherit it; for that use
                    init_args=["systemd.setenv=NAME=VALUE"] or a unit drop-in)
    init_args:      extra arguments for systemd (e.g. "systemd.log_level=debug")
    nspawn_args:    extra systemd-nspawn options
    kill_grace:     seconds between SIGTERM and SIGKILL on timeout
    check:          call ``result.check()`` before returning

    The rootfs keeps all changes, so calling boot() again on the same
    directory is a reboot of the same machine (same machine-id, new boot id).
    """
    root = Path(rootfs_dir).resolve()
    if not (root / "usr/lib/os-release").exists() and not (root / "etc/os-release").exists():
        raise FileNotFoundError(f"{root} does not look like an OS tree")
    machine = machine or "migd-" + uuid.uuid4().hex[:10]
    base = Path(os.environ.get("MIGD_BOOT_CACHE", "/var/tmp/migd-boot"))
    if results_dir is None:
        (base / "runs").mkdir(parents=True, exist_ok=True)
        res = Path(tempfile.mkdtemp(prefix=machine + "-", dir=str(base / "runs")))
    else:
        res = Path(results_dir)
        res.mkdir(parents=True, exist_ok=True)
        if any(res.iterdir()):
            raise FileExistsError(f"results dir {res} is not empty")
    os.chmod(res, 0o755)
    if settle_timeout is None:
        settle_timeout = max(5.0, timeout - 15.0)
    (res / "request.json").write_text(json.dumps({
        "units": list(units), "commands": {k: list(v) for k, v in (commands or {}).items()},
        "settle_timeout": settle_timeout, "extra_wait": extra_wait,
    }, indent=1))
    install_collector(root)

    cmd = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={root}",
        f"--machine={machine}",
        "--keep-unit", "--register=no",
        "--private-network",
        # a pty as /dev/console, output copied to our stdout (console.log).
        # Works without a tty.  (--console=pipe also boots, but then systemd
        # has no /dev/console and the log shows nothing.)
        "--console=read-only",
        "--link-journal=no",       # keep the journal inside the rootfs only
        "--resolv-conf=off", "--timezone=off",
        "--settings=no",           # ignore any .nspawn files on the host
        f"--bind={res}:{RESULTS_IN_CONTAINER}",
    ]
    for b in bind:
        host, cont, ro = _norm_bind(b)
        cmd.append("--{}={}:{}".format("bind-ro" if ro else "bind", host, cont))
    for k, v in (env or {}).items():
        cmd.append(f"--setenv={k}={v}")
    cmd += list(nspawn_args)
    cmd += ["--boot", "--"] + list(init_args)

    t0 = time.monotonic()
    timed_out = False
    rc = None  # type: Optional[int]
    removed = []  # type: List[str]
    leftovers = []  # type: List[str]
    cgroups = []  # type: List[Path]
    proc = None  # type: Optional[subprocess.Popen[bytes]]
    with open(res / "console.log", "wb") as console:
        try:
            # A private cgroup (per hierarchy) for nspawn and everything it spawns.
            for h in _cgroup_hierarchies():
                d = h / ("migd-boot-" + machine)
                try:
                    d.mkdir()
                    cgroups.append(d)
                except OSError as e:  # read-only cgroupfs etc.: boot anyway, no isolation
                    console.write((f"*** migd-boot: cannot create cgroup {d}: {e}\n").encode())
            wrapper = ["/bin/sh", "-c",
                       'for p in $MIGD_CG_PROCS; do echo $$ > "$p" || exit 97; done; exec "$@"', "sh"]
            penv = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8",
                    "MIGD_CG_PROCS": " ".join(str(d / "cgroup.procs") for d in cgroups)}
            console.write(("+ {}\n".format(" ".join(cmd))).encode())
            console.flush()
            proc = subprocess.Popen(wrapper + cmd, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, env=penv, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                console.write(b"\n*** migd-boot: timeout after %.0fs, SIGTERM to nspawn\n" % timeout)
                console.flush()
                proc.send_signal(signal.SIGTERM)  # nspawn -> SIGRTMIN+3 -> orderly poweroff
                try:
                    rc = proc.wait(timeout=kill_grace)
                except subprocess.TimeoutExpired:
                    console.write(b"*** migd-boot: still alive, SIGKILL\n")
                    console.flush()
        finally:
            # kills leftovers (incl. nspawn itself if it is still there), rmdirs
            removed, leftovers = _cgroup_kill_and_remove(cgroups)
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                r = proc.wait()
                if rc is None:
                    rc = r
            # nspawn's per-machine propagation dir (it refuses to rm -rf it when
            # /run is not tmpfs: "Attempted to remove disk file system ...")
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{machine}", ignore_errors=True)
            _remove_stale_locks(root)
    result = BootResult(machine=machine, rootfs=root, results_dir=res, returncode=rc,
                        timed_out=timed_out, seconds=time.monotonic() - t0,
                        cgroups_removed=removed, leftovers=leftovers)
    if check:
        result.check()
    return result
