"""migd runs as root at boot: it must not be a way in.

- Config trust (sshd's StrictModes): as root, `apply`, `boot` and `watch` refuse a config file not owned by root or
  writable by group/others, or under a directory someone else can write (no sticky bit), saying how to fix it.
  Read verbs (validate, plan, check, status, export) cannot change a GPU and read any file.
- /run/migd: created 0755 (or refused when someone else owns it, it is group/world-writable, or not a directory),
  files replaced atomically with exact modes whatever the umask (state.json and devices.env 0644, the lock 0600,
  since an open lock file is all `flock` needs: a lock others could open is a lock others could hold), no symlink
  followed, no temp file left behind, nothing world-writable.
- Nothing is executed because of the config except `systemctl stop|start -- UNIT...` for the admin's
  [daemon] stop_clients units, with `apply --stop-clients`, as an argv (no shell), and only units holding the GPU.
- Both units are sandboxed; `systemd-analyze security` exposure is measured offline here and inside a booted
  container (boot test, below), target <= 2.5.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import reliability as R
from migd import site
from migd import config as config_mod
from migd import clients, engine, runstate
from migd.errors import ConfigError, LockBusy
from migd.sim.host import SimHost, load_state

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
NOBODY = 65534
UNITS = R.ROOT / "packaging" / "systemd"
TARGET = 2.5


@pytest.fixture
def host(tmp_path):
    state = str(tmp_path / "sim" / "state.json")
    (tmp_path / "sim").mkdir()
    SimHost.create("h100-80gb", state)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    conf = R.write_config(etc / "migd.toml", R.LAYOUT_A)
    return {"state": state, "config": conf, "etc": etc, "run": str(tmp_path / "run"), "tmp": tmp_path}


def _migd(host, *verb, config=None):
    return R.run_cli(["--sim-state", host["state"], "--config", config or host["config"], *verb],
                     {"MIGD_RUN_DIR": host["run"]})


# --- config ownership and mode ------------------------------------------------------------------------------------

@ROOT_ONLY
@pytest.mark.parametrize("verb", [["apply"], ["boot"]])
def test_config_owned_by_another_user_is_refused_with_the_fix(host, verb):
    os.chown(host["config"], NOBODY, NOBODY)
    before = Path(host["state"]).read_bytes()
    r = _migd(host, *verb)
    assert not r.traceback and r.code == 2, r.err
    text = r.err + " ".join(f.get("msg", "") for _, _, f in r.events)
    assert f"owned by uid {NOBODY}, not root" in text and f"chown root:root {host['config']}" in text, text
    assert Path(host["state"]).read_bytes() == before, "an untrusted config touched a GPU"


@ROOT_ONLY
@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_config_writable_by_group_or_others_is_refused_with_the_fix(host, mode):
    os.chmod(host["config"], mode)
    before = Path(host["state"]).read_bytes()
    r = _migd(host, "apply")
    assert not r.traceback and r.code == 2, r.err
    assert f"{host['config']}: writable by group/others (mode {mode:04o})" in r.err, r.err
    assert f"chmod go-w {host['config']}" in r.err, r.err
    assert Path(host["state"]).read_bytes() == before


@ROOT_ONLY
def test_config_under_a_directory_others_can_write_is_refused(host):
    os.chmod(host["etc"], 0o777)
    r = _migd(host, "apply")
    assert r.code == 2 and f"directory {host['etc']} is writable by group/others (mode 0777)" in r.err, r.err
    assert f"chmod go-w {host['etc']}" in r.err
    os.chmod(host["etc"], 0o1777)  # sticky, like /tmp: others cannot replace root's file
    assert _migd(host, "apply").code == 0
    os.chmod(host["etc"], 0o755)
    os.chown(host["etc"], NOBODY, NOBODY)
    r = _migd(host, "apply")
    assert r.code == 2 and f"directory {host['etc']} is owned by uid {NOBODY}" in r.err, r.err


@ROOT_ONLY
def test_symlinked_config_is_checked_where_it_points(host):
    link = host["tmp"] / "link.toml"
    link.symlink_to(host["config"])
    assert _migd(host, "apply", config=str(link)).code == 0
    evil = host["tmp"] / "evil"
    evil.mkdir(mode=0o755)
    os.chown(evil, NOBODY, NOBODY)
    target = evil / "migd.toml"
    shutil.copy(host["config"], target)
    link.unlink()
    link.symlink_to(target)
    r = _migd(host, "apply", config=str(link))
    assert r.code == 2 and "owned by uid 65534" in r.err, r.err


@ROOT_ONLY
def test_read_verbs_read_any_config_but_change_nothing(host):
    """check and status read any config; validate and plan (apply --dry-run) say what apply would say: as root
    that is apply's refusal (a CI validate passing while the boot fails was issue 17's point 3)."""
    os.chown(host["config"], NOBODY, NOBODY)
    os.chmod(host["config"], 0o666)
    for verb in (["check"], ["status"]):
        r = _migd(host, *verb)
        assert not r.traceback and r.code in (0, 3), (verb, r.code, r.err)
    for verb in (["validate"], ["plan"], ["apply", "--dry-run"]):
        r = _migd(host, *verb)
        assert not r.traceback and r.code == 2 and f"owned by uid {NOBODY}, not root" in r.err, (verb, r.err)


@ROOT_ONLY
def test_watch_refuses_an_untrusted_config_and_keeps_the_trusted_one_on_reload(host, monkeypatch):
    from migd.watch import Watcher

    monkeypatch.setenv("MIGD_RUN_DIR", host["run"])
    w = Watcher(host["config"], site.build(None, host["state"]))
    os.chmod(host["config"], 0o666)
    with pytest.raises(ConfigError, match="writable by group/others"):
        Watcher(host["config"], site.build(None, host["state"]))
    w._reload()  # SIGHUP with a file someone else could have written: the previous config stays
    assert w.cfg.entries and w.cfg.path == host["config"]
    r = _migd(host, "watch")
    assert r.code == 2 and r.named("config_invalid"), r.events


def test_trust_check_as_a_function_for_any_owner(tmp_path):
    """The check itself, testable without root: `owner` is the uid that may own the file besides root."""
    me = os.geteuid()
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    f = d / "migd.toml"
    f.write_text(R.MIG_OFF)
    os.chmod(f, 0o644)
    assert config_mod.load(str(f), owner=me).entries
    os.chmod(f, 0o664)
    with pytest.raises(ConfigError) as e:
        config_mod.load(str(f), owner=me)
    (p,) = e.value.problems
    assert p.path == str(f) and "writable by group/others (mode 0664)" in p.message and "chmod go-w" in p.message
    assert config_mod.load(str(f)).entries  # no owner: no check (an unprivileged migd)
    os.chmod(f, 0o644)
    # A file someone else owns (faked stat: no chown without root); root and `owner` are fine.
    st = os.stat(f)
    for uid, bad in ((12345, True), (0, False), (me, False)):
        fake = os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, uid, st.st_gid, st.st_size,
                               int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))
        problem = config_mod._untrusted(str(f), fake, me)
        assert bool(problem) == bad and (not bad or "owned by uid 12345, not root" in problem), (uid, problem)
    assert config_mod.trusted_owner() == (0 if me == 0 else None)


# --- /run/migd ----------------------------------------------------------------------------------------------------

def _modes(run: Path):
    return {p.name: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid, stat.S_ISREG(p.lstat().st_mode))
            for p in run.iterdir()}


def test_run_dir_files_have_exact_modes_whatever_the_umask(host):
    old = os.umask(0)  # the worst umask: nothing masked
    try:
        r = _migd(host, "apply")
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    run = Path(host["run"])
    assert stat.S_IMODE(run.stat().st_mode) == 0o755 and run.stat().st_uid == os.geteuid()
    me = os.geteuid()
    assert _modes(run) == {"state.json": (0o644, me, True), "devices.env": (0o644, me, True), "lock": (0o600, me, True),
                           "profiles.json": (0o644, me, True)}  # the per-boot profile cache
    for p in [run, *run.iterdir()]:
        assert not p.lstat().st_mode & 0o002, f"{p} is world-writable"


def test_old_lock_file_mode_is_fixed_and_the_lock_cannot_be_opened_by_others(host):
    run = Path(host["run"])
    run.mkdir(mode=0o755)
    (run / "lock").write_text("pid 1\n")
    os.chmod(run / "lock", 0o666)
    assert _migd(host, "apply").code == 0
    assert stat.S_IMODE((run / "lock").stat().st_mode) == 0o600
    if os.geteuid() == 0:  # another user cannot open it, so cannot flock it (a lock DoS against boot apply)
        pid = os.fork()
        if pid == 0:  # the child becomes nobody and tries
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.open(str(run / "lock"), os.O_RDONLY)
                os._exit(0)
            except PermissionError:
                os._exit(13)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 13


def test_no_symlink_in_run_dir_is_followed(host):
    run = Path(host["run"])
    run.mkdir(mode=0o755)
    victim = host["tmp"] / "victim"
    victim.write_text("precious\n")
    (run / "state.json").symlink_to(victim)
    (run / "devices.env").symlink_to(victim)
    assert _migd(host, "apply").code == 0
    assert victim.read_text() == "precious\n"
    assert not (run / "state.json").is_symlink() and json.loads((run / "state.json").read_text())["gpus"]
    (run / "lock").unlink()
    (run / "lock").symlink_to(victim)
    r = _migd(host, "apply")
    assert r.code == 1 and not r.traceback and victim.read_text() == "precious\n", r.err


@pytest.mark.parametrize("problem", ["others-writable", "not-a-directory", "symlink", "foreign-owner"])
def test_untrustworthy_run_dir_is_refused_before_any_gpu_is_touched(host, problem):
    run = Path(host["run"])
    if problem == "others-writable":
        run.mkdir()
        os.chmod(run, 0o777)
        expected = "writable by group/others (mode 0777): chmod go-w"
    elif problem == "not-a-directory":
        run.write_text("x")
        expected = "is not a directory"
    elif problem == "symlink":
        real = host["tmp"] / "elsewhere"
        real.mkdir(mode=0o755)
        run.symlink_to(real)
        expected = "is not a directory"
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root (chown)")
        run.mkdir(mode=0o755)
        os.chown(run, NOBODY, NOBODY)
        expected = f"is owned by uid {NOBODY}"
    before = Path(host["state"]).read_bytes()
    r = _migd(host, "apply")
    assert not r.traceback and r.code == 1 and expected in r.err, r.err
    assert Path(host["state"]).read_bytes() == before


def test_atomic_write_leaves_old_content_or_new_never_a_mix_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    runstate.atomic_write(str(target), "old\n")

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        runstate.atomic_write(str(target), "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    # a planted temp-looking file is never reused or followed (fresh random name, O_EXCL|O_NOFOLLOW)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for n in range(5):
        (tmp_path / f".state.json.{os.getpid()}.{n}.tmp").symlink_to(victim)
    runstate.atomic_write(str(target), "new\n")
    assert target.read_text() == "new\n" and victim.read_text() == "precious\n"


def test_lock_busy_names_the_holder_from_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    holder = subprocess.Popen([R.sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        from migd import runstate
        with runstate.locked(1, directory=os.environ["MIGD_RUN_DIR"]):
            print("held", flush=True)
            time.sleep(30)
        """)], env=R.child_env(str(tmp_path / "run")), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(LockBusy) as e, runstate.locked(0.2, directory=str(tmp_path / "run")):
            pass
        assert f"pid {holder.pid}" in str(e.value) and "gave up after 0.2 s" in str(e.value)
    finally:
        holder.kill()
        holder.wait()


# --- nothing executed from config but systemctl stop/start of stop_clients units ---------------------------------

def _calls_in(path: Path):
    """Call sites of process-spawning functions in one source file."""
    spawners = {"system", "popen", "Popen", "run", "call", "check_call", "check_output", "spawnv", "spawnvp",
                "execv", "execvp", "execve", "execl", "execlp", "posix_spawn", "posix_spawnp", "startfile",
                "getoutput", "getstatusoutput"}
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in spawners:
            base = node.func.value
            if isinstance(base, ast.Name) and base.id in ("os", "subprocess", "pty", "commands"):
                out.append((path.name, node.lineno, f"{base.id}.{node.func.attr}"))
    return out


def test_the_only_process_migd_starts_is_systemctl():
    """Static: in all of src/migd (but the simulator), the call sites that start a process are clients.systemctl,
    clients.unit_property (systemctl show of one unit's property: LoadState for the CDI refresh, After/Before for
    gpu_clients) and clients.system_state
    (systemctl is-system-running, for reboot-once), reached through the host environment (hostenv.real())."""
    src = R.ROOT / "src" / "migd"
    sites = [c for p in sorted(src.rglob("*.py")) if "sim" not in p.relative_to(src).parts for c in _calls_in(p)]
    assert [(f, call) for f, _, call in sites] == [("clients.py", "subprocess.run")] * 3, sites
    text = (src / "clients.py").read_text()
    # an argv, never a shell; units after --
    assert 'subprocess.run(["systemctl", *(["--no-block"] if no_block else []), verb, "--", *units]' in text
    assert 'subprocess.run(["systemctl", "show", f"--property={name}", "--value", "--", unit]' in text
    cdi = (src / "cdi.py").read_text()
    assert 'env.systemctl("restart", [unit], no_block=True, quiet=True)' in cdi
    assert 'subprocess.run(["systemctl", "is-system-running"]' in text
    assert 'UNIT = "nvidia-cdi-refresh.service"' in cdi
    assert "shell=True" not in "".join(p.read_text() for p in src.rglob("*.py"))
    calls = re.findall(r'\brun\("(\w+)"', text) + re.findall(r'systemctl\("(\w+)"', (src / "engine.py").read_text())
    assert set(calls) == {"stop", "start"}, calls
    # and a reboot, only for on_pending = "reboot-once", queued (never waited for from inside migd.service)
    assert "env.reboot()" in (src / "rebootonce.py").read_text()
    assert re.findall(r'systemctl\("(\w+)"[^)]*\)', (src / "hostenv.py").read_text()) == ["reboot"]
    assert '_systemctl("reboot", (), no_block=True)' in (src / "hostenv.py").read_text()


def test_stop_clients_runs_systemctl_only_for_configured_units_holding_the_gpu(host, monkeypatch):
    """Dynamic: with --stop-clients and a pending mode change, the only commands run are systemctl stop/start of
    the configured unit that holds the GPU; a holder in an unlisted unit is named and left alone; nothing at all
    runs without --stop-clients."""
    import subprocess as sp

    ran = []
    real_run = sp.run

    def spy(argv, *a, **kw):
        ran.append(list(argv))
        return sp.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(sp, "run", spy)
    monkeypatch.setenv("MIGD_SIM_HOST", "real")  # this machine's systemctl (spied on), simulated GPUs
    for name in ("system", "popen", "execv", "execvp", "execve", "posix_spawn"):
        monkeypatch.setattr(os, name, lambda *a, **k: ran.append(["os", *map(str, a)]), raising=False)
    monkeypatch.setattr(sp, "Popen", lambda argv, *a, **k: ran.append(["Popen", *argv]))
    # Two "clients" hold GPU 0 (a Hopper: MIG enable stays pending while held): one in a listed unit, one not.
    holder_pids = [4101, 4102]
    monkeypatch.setattr(clients, "pids_holding", lambda nodes: list(holder_pids))
    monkeypatch.setattr(engine, "pids_holding", lambda nodes: list(holder_pids))
    monkeypatch.setattr(clients, "unit_of", lambda pid: {4101: "nvidia-dcgm.service", 4102: "gdm.service"}[pid])
    monkeypatch.setattr(engine, "describe", lambda pids: [])
    sim_host = SimHost(load_state(host["state"]), host["state"])
    sim_host.gpus[0]["clients"] = [os.getpid()]  # keeps the change pending (the sim checks liveness)
    sim_host.save()
    conf = R.write_config(host["etc"] / "stop.toml",
                          R.LAYOUT_A + '\n[daemon]\nstop_clients = ["nvidia-dcgm.service"]\n')

    r = _migd(host, "apply", config=conf)
    assert r.code == 4 and ran == [], (r.code, ran)  # pending, and nothing run without --stop-clients

    r = _migd(host, "apply", "--stop-clients", config=conf)
    assert ran == [["systemctl", "stop", "--", "nvidia-dcgm.service"],
                   ["systemctl", "start", "--", "nvidia-dcgm.service"]], ran  # still pending: no CDI refresh
    assert r.named("clients_not_stopped") and "gdm.service" in r.named("clients_not_stopped")[0]["msg"]
    monkeypatch.setattr(sp, "run", real_run)


# --- the units ----------------------------------------------------------------------------------------------------

def _directives(unit: Path):
    out = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        k, _, v = line.partition("=")
        out.setdefault((section, k), []).append(v)
    return out


HARDENING = {  # directive -> value, in both units
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateMounts": "yes",
    "PrivateNetwork": "yes", "IPAddressDeny": "any", "RestrictAddressFamilies": "AF_UNIX", "NoNewPrivileges": "yes",
    "DevicePolicy": "closed", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "SystemCallArchitectures": "native", "RuntimeDirectory": "migd", "RuntimeDirectoryMode": "0755",
    "RuntimeDirectoryPreserve": "yes", "UMask": "0077", "SystemCallErrorNumber": "EPERM",
}
CAPS = {"migd.service": {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_MKNOD"},
        "migd-watch.service": {"CAP_SYS_ADMIN", "CAP_MKNOD"}}


@pytest.mark.parametrize("name", sorted(CAPS))
def test_unit_is_hardened(name):
    d = _directives(UNITS / name)
    for key, value in HARDENING.items():
        assert d.get(("[Service]", key)) == [value], (name, key, d.get(("[Service]", key)))
    assert set(d[("[Service]", "CapabilityBoundingSet")][0].split()) == CAPS[name]
    assert d[("[Service]", "SystemCallFilter")] == ["@system-service", "~@resources"]
    assert sorted(d[("[Service]", "DeviceAllow")]) == sorted(
        f"char-{n} rwm" for n in ("nvidia", "nvidia-frontend", "nvidiactl", "nvidia-caps"))
    # migd writes only its RuntimeDirectory and the metrics file in node_exporter's textfile directory
    assert d.get(("[Service]", "ReadWritePaths")) == ["-/var/lib/prometheus/node-exporter"]
    assert ("[Service]", "User") not in d  # root: see README "Hardening"


def _offline_security(unit: Path) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    if not m:
        pytest.skip(f"systemd-analyze security --offline unavailable: {r.stderr.strip()[:200]}")
    return float(m.group(1))


def test_exposure_offline(summary_line):
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    scores = {name: _offline_security(UNITS / name) for name in sorted(CAPS)}
    summary_line("systemd-analyze security --offline=true: " + ", ".join(f"{n} {s}" for n, s in scores.items())
                 + f" (target <= {TARGET})")
    for name, score in scores.items():
        assert score <= TARGET, (name, score)
