"""Structural pins for the read path and the boot path (counts, not times: timing belongs in bench/).

- a fresh boot apply of 7 × 1g on a simulated DGX A100 reads at most READS_PER_GPU NVML functions per GPU;
- shortcuts in the state read (occupied slots end the per-profile instance walk, the MIG-device walk stops once
  every compute instance is found) never hide an instance.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

import migd.sim
import migd.sim.fakelib
from migd import site
from migd.cli import main
from migd.model import Placement

MUTATING = re.compile(r"Create|Destroy|Set")
# What a fresh boot apply of 7 × 1g must read per GPU, and the pin (bench section 3 prints both).
READS_PER_GPU = 121  # v2 for the profile fields + v3 for their capability bits: see nvml._profile_info

SEVEN_1G = """
[[gpu]]
select = "all"
mig = true
instances = { "1g.5gb" = 7 }
"""


def _apply_counting(monkeypatch, tmp_path, argv, run_dir=None):
    libs = []
    real_install = migd.sim.fakelib.install

    def install(*a, **k):
        lib = real_install(*a, **k)
        libs.append(lib)
        return lib

    monkeypatch.setattr(migd.sim.fakelib, "install", install)
    monkeypatch.setenv("MIGD_RUN_DIR", str(run_dir or tmp_path / "run"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    calls = {}
    for lib in libs:
        for name, n in lib.calls.items():
            calls[name] = calls.get(name, 0) + n
    return rc, calls, out.getvalue()


def test_fresh_boot_apply_reads_per_gpu_are_pinned(monkeypatch, tmp_path):
    cfg = tmp_path / "migd.toml"
    cfg.write_text(SEVEN_1G)
    rc, calls, out = _apply_counting(monkeypatch, tmp_path,
                                     ["--simulate", "dgx-a100", "--config", str(cfg), "-q", "apply"])
    assert rc == 0, out
    assert out.count("applied 16 changes") == 8  # MIG mode, persistence, 7 GIs, 7 CIs on each GPU
    mutating = sum(n for name, n in calls.items() if MUTATING.search(name))
    reads = sum(calls.values()) - mutating
    assert mutating == 8 * 16
    assert reads <= 8 * READS_PER_GPU, sorted(calls.items(), key=lambda kv: -kv[1])
    # the verification still re-reads the live layout: every GI and CI read back after its create and again
    assert calls["nvmlGpuInstanceGetInfo"] == 8 * 7 * 2
    assert calls["nvmlComputeInstanceGetInfo"] == 8 * 7 * 2
    assert calls["nvmlDeviceGetUUID"] >= 8 * 7  # every MIG device's UUID
    # processes are read before anything changes (MIG off: the whole GPU), and on every MIG device after
    assert calls["nvmlDeviceGetComputeRunningProcesses"] == 8 + 8 * 7


def test_instance_walk_shortcuts_never_hide_an_instance(sim_backend):
    """Taken slots end the per-profile walk only for profiles that cannot fit: a 1g.10gb (a later profile) in the
    slots six 1g.5gb left free is found, and so are GIs without compute instances."""
    backend = sim_backend("a100-40gb")
    backend.set_mig_mode(0, True)
    gis = [backend.create_gpu_instance(0, 19, Placement(s, 1)) for s in range(5)]
    for gi in gis[:4]:
        backend.create_compute_instance(0, gi, 0, Placement(0, 1))
    big = backend.create_gpu_instance(0, 15, Placement(6, 2))  # 1g.10gb
    backend.create_compute_instance(0, big, 0, Placement(0, 1))
    state = backend.state(0, fresh=True)
    assert [(g.profile_id, str(g.placement), len(g.compute)) for g in state.instances] == [
        (19, "0:1", 1), (19, "1:1", 1), (19, "2:1", 1), (19, "3:1", 1), (19, "4:1", 0), (15, "6:2", 1)]
    assert all(ci.uuid for g in state.instances for ci in g.compute)


@pytest.mark.parametrize("v3", [True, False])
def test_profile_table_is_the_same_through_v3_or_v2(sim_backend, v3):
    backend = sim_backend("h100-80gb")
    backend._sim_host.state["profile_info_v3"] = v3
    backend._infos = None
    profiles = backend.gpus()[0].profiles
    assert [p.id for p in profiles] and all(p.placements for p in profiles)
    graphics = [p.name for p in profiles if p.graphics]
    assert graphics == [p.name for p in profiles if p.name.endswith("+gfx")]


# --- records: migd's dataclass stand-in keeps what dataclasses gave ---------------------------------------------

def test_records_behave_like_frozen_dataclasses():
    from migd import _record
    from migd.model import Config, GpuEntry, GpuProfile, GpuSelector, Placement

    a, b = Placement(0, 1), Placement(start=0, size=1)
    assert a == b and hash(a) == hash(b) and a != Placement(1, 1) and {a, b} == {a}
    assert a != (0, 1) and repr(a) == "Placement(start=0, size=1)" and str(a) == "0:1"  # own __str__ kept
    with pytest.raises(AttributeError):
        a.start = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Placement(0)  # type: ignore[call-arg]
    c1, c2 = Config("x"), Config("x")
    assert c1.daemon == c2.daemon and c1.entries == () and c1 == c2  # default_factory: equal, fresh objects
    e = GpuEntry(number=1, selector=GpuSelector("all"), mig=True)
    assert _record.replace(e, mig=False).mig is False and e.mig is True
    with pytest.raises(TypeError):
        _record.replace(e, nope=1)
    p = GpuProfile(index=0, id=19, name="1g.5gb", slices=1, instance_count=7, memory_mb=4864, multiprocessors=14,
                   copy_engines=1, decoders=0, encoders=0, jpegs=0, ofas=0, placements=(a,))
    assert _record.asdict(p)["placements"] == ({"start": 0, "size": 1},)


def test_mutable_records_are_unhashable_and_compare_by_fields():
    from migd.engine import GpuResult, Outcome

    r1, r2 = GpuResult(0, Outcome.APPLIED), GpuResult(0, Outcome.APPLIED)
    assert r1 == r2 and r1.done is not r2.done  # a fresh list each
    r1.message = "changed"
    assert r1 != r2
    with pytest.raises(TypeError):
        hash(r1)


# --- imports: read verbs load only what they run ----------------------------------------------------------------

_MODULES_AT_EXIT = """
import contextlib, io, json, sys
from migd.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""
# Apply, service and logging-backend paths a read verb never runs, and stdlib modules only they (or dataclasses)
# would bring in.
NOT_FOR_READ_VERBS = ("structlog", "sdnotify", "migd.clients", "migd.watch", "migd.boot", "migd.slurm",
                      "dataclasses", "inspect")


def _modules_after(args, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import python_env

    env = python_env()
    env["MIGD_RUN_DIR"] = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "-c", _MODULES_AT_EXIT, *args], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--simulate", "dgx-a100", "status", "--json"],
    ["--simulate", "dgx-a100", "status"],
    ["--simulate", "h100-80gb", "profiles"],
    ["status", "--json"],  # the real path: no driver here, it stops at nvmlInit after every import it makes
])
def test_read_verbs_do_not_import_apply_service_or_logging_paths(args, tmp_path):
    out = _modules_after(args, tmp_path)
    loaded = set(out["modules"])
    heavy = sorted(m for m in loaded if m in NOT_FOR_READ_VERBS or m.split(".")[0] in ("structlog", "sdnotify"))
    assert heavy == [], f"{' '.join(args)} imported {heavy}"
    assert "migd.model" in loaded and "pynvml" in loaded  # the verb did run (not an early exit)
    if "--simulate" not in args:
        assert not any(m.startswith("migd.sim") for m in loaded)  # the help text reads migd.catalog only


def test_check_imports_no_service_or_apply_paths(tmp_path):
    cfg = tmp_path / "migd.toml"
    cfg.write_text(SEVEN_1G)
    out = _modules_after(["--simulate", "dgx-a100", "--config", str(cfg), "check"], tmp_path)
    assert out["rc"] == 3  # drift: fresh GPUs
    assert not set(out["modules"]) & {"migd.clients", "migd.watch", "migd.boot", "sdnotify", "dataclasses"}


# --- simulated latency (MIGD_SIM_LATENCY) ------------------------------------------------------------------------

def test_sim_latency_spec_parses_and_refuses_bad_items():
    from migd.sim.fakelib import parse_latency

    assert parse_latency("reads=0.5ms, first_handle=7ms,create=2s,mode=0,init=500us") == {
        "reads": 0.0005, "first_handle": 0.007, "create": 2.0, "mode": 0.0, "init": 0.0005}
    for bad in ("reads", "reads=x", "writes=1ms", "reads=-1ms", "reads=1h"):
        with pytest.raises(ValueError, match="MIGD_SIM_LATENCY"):
            parse_latency(bad)


def test_sim_latency_is_spent_per_call_kind(monkeypatch, sim_backend):
    monkeypatch.setenv("MIGD_SIM_LATENCY", "reads=0.2ms,first_handle=3ms,create=1ms")
    backend = sim_backend("a100-40gb")
    import pynvml

    lib = pynvml.nvmlLib
    backend.gpus()
    reads = sum(lib.calls.values()) - 1  # but nvmlInit (no latency given for it)
    assert lib.latency_spent >= 0.003 + (reads - 1) * 0.0002 and lib.mutating_spent == 0
    backend.set_mig_mode(0, True)
    backend.create_gpu_instance(0, 19, Placement(0, 1))
    assert lib.mutating_spent >= 0.001


def test_bad_sim_latency_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("MIGD_SIM_LATENCY", "reads=fast")
    assert main(["--simulate", "a100-40gb", "status"]) == 2
    assert "MIGD_SIM_LATENCY: bad item 'reads=fast'" in capsys.readouterr().err


# --- the per-boot profile cache ----------------------------------------------------------------------------------

def _host_args(tmp_path):
    """A simulated 2-GPU H100 host in a state file (a cache needs a host that outlives one process)."""
    cfg = tmp_path / "migd.toml"
    cfg.write_text('[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g.40gb", "2g.20gb", "1g.10gb"]\n')
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir()
    return ["--simulate", "h100-80gb:2", "--sim-state", str(state), "--config", str(cfg)], tmp_path / "sim" / "state.json.run"


def _profile_reads(calls):
    """The GPU-instance profile table's reads (what the cache holds)."""
    return sum(n for name, n in calls.items() if name.startswith(("nvmlDeviceGetGpuInstanceProfileInfo",
                                                                   "nvmlDeviceGetGpuInstancePossiblePlacements")))


def _status(monkeypatch, tmp_path, args, run_dir=None):
    rc, calls, out = _apply_counting(monkeypatch, tmp_path, [*args, "status", "--json"], run_dir)
    assert rc == 0
    return calls, out


def _no_lasting_cache(monkeypatch, tmp_path):
    """A simulated host's state directory that cannot exist (under a plain file): no lasting profile cache."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("MIGD_STATE_DIR", str(blocker / "lib"))


@pytest.fixture
def cached(monkeypatch, tmp_path):
    """A host after `apply` (which leaves the cache), and the status JSON that a run without a cache prints."""
    args, _ = _host_args(tmp_path)
    run = tmp_path / "run"  # the simulated host's run directory (MIGD_RUN_DIR, set by _apply_counting)
    _no_lasting_cache(monkeypatch, tmp_path)  # the per-boot cache alone (the lasting one: below)
    rc, _, out = _apply_counting(monkeypatch, tmp_path, [*args, "-q", "apply"])
    assert rc == 0, out
    cache = run / "profiles.json"
    assert cache.is_file() and stat_mode(cache) == 0o644
    calls, live = _status(monkeypatch, tmp_path, args, tmp_path / "elsewhere")
    assert _profile_reads(calls) > 0  # no cache there: read live
    return args, cache, live


def stat_mode(path):
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def test_status_reads_no_profile_table_from_a_valid_cache_and_answers_the_same(monkeypatch, tmp_path, cached):
    args, cache, live = cached
    before = cache.read_bytes()
    calls, out = _status(monkeypatch, tmp_path, args)
    assert _profile_reads(calls) == 0 and out == live
    assert cache.read_bytes() == before  # read verbs only read it
    calls, out = _apply_counting(monkeypatch, tmp_path, [*args, "profiles", "--json"])[1:]
    assert _profile_reads(calls) == 0


def _rewrite(cache, change):
    import json

    doc = json.loads(cache.read_text())
    change(doc)
    cache.write_text(json.dumps(doc))


@pytest.mark.parametrize("case", ["driver", "boot", "other gpu", "pci id", "mig mode", "bad field", "truncated",
                                  "garbage", "not json object", "version"])
def test_a_cache_that_does_not_match_or_parse_is_not_used(monkeypatch, tmp_path, cached, case):
    args, cache, live = cached

    def other_gpus(doc):  # the entries of two other GPUs (same model), their tables cut short: visible if used
        doc["gpus"] = {f"GPU-0000000{n}-0000-0000-0000-000000000000": dict(g, profiles=g["profiles"][:1])
                       for n, g in enumerate(doc["gpus"].values())}

    def cut(doc):  # a table cut short: an answer built from it would differ from the live one
        for g in doc["gpus"].values():
            g["profiles"] = g["profiles"][:1]

    edits = {
        "driver": lambda d: (d.update(driver="550.54.15"), cut(d)),
        "boot": lambda d: (d.update(boot_id="another boot"), cut(d)),
        "other gpu": other_gpus,
        "pci id": lambda d: [g.update(pci_device_id=g["pci_device_id"] + 1, profiles=g["profiles"][:1])
                             for g in d["gpus"].values()],
        "mig mode": lambda d: [g.update(modes=[False], profiles=g["profiles"][:1]) for g in d["gpus"].values()],
        "bad field": lambda d: [g["profiles"][0].update(slices="3") for g in d["gpus"].values()],
        "version": lambda d: (d.update(version=99), cut(d)),
    }
    if case in edits:
        _rewrite(cache, edits[case])
    elif case == "truncated":
        cache.write_bytes(cache.read_bytes()[:len(cache.read_bytes()) // 2])
    elif case == "garbage":
        cache.write_bytes(b"\x00\xff" * 100)
    else:
        cache.write_text("[1, 2, 3]")
    calls, out = _status(monkeypatch, tmp_path, args)
    assert out == live and _profile_reads(calls) > 0


@pytest.mark.parametrize("what", ["file writable by others", "dir writable by group", "file owned by another user",
                                  "symlink"])
def test_an_untrusted_cache_is_not_used(monkeypatch, tmp_path, cached, what):
    import os

    args, cache, live = cached
    if what == "file writable by others":
        os.chmod(cache, 0o646)
    elif what == "dir writable by group":
        os.chmod(cache.parent, 0o775)
    elif what == "symlink":
        real = tmp_path / "real.json"
        real.write_bytes(cache.read_bytes())
        cache.unlink()
        cache.symlink_to(real)
    else:  # as root: any uid but 0; as a user: any uid but root's and the user's own
        import migd.backend.profile_cache as pc

        me = os.geteuid()
        monkeypatch.setattr(pc.os, "geteuid", lambda: 4242 if me != 4242 else 4243)
        if me == 0:
            monkeypatch.setattr(pc, "_trusted_uids", lambda: (4242,))  # root's file is then someone else's
    calls, out = _status(monkeypatch, tmp_path, args)
    assert _profile_reads(calls) > 0 and out == live


def test_untrusted_owner_rules():
    import os

    from migd.backend import profile_cache as pc

    st = os.stat("/")
    def fake(uid, mode):
        return os.stat_result((mode, st.st_ino, st.st_dev, 1, uid, 0, 10, 0, 0, 0))
    me = os.geteuid()
    assert pc.untrusted(fake(0, 0o100644), "file") is None
    assert pc.untrusted(fake(0, 0o100664), "file") == "file writable by group/others"
    assert pc.untrusted(fake(54321, 0o100644), "file") == "file owned by uid 54321"
    assert (pc.untrusted(fake(me, 0o100644), "file") is None) == (me != 54321)


def test_a_read_verb_that_cannot_write_the_run_dir_still_answers(monkeypatch, tmp_path):
    args, _ = _host_args(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    # the cache lives in the run directory (HostEnv.run_dir); a read verb never needs to create it
    rc, calls, out = _apply_counting(monkeypatch, tmp_path, [*args, "status", "--json"], blocker / "run")
    assert rc == 0 and '"gpus"' in out


def test_simulated_runs_keep_the_cache_out_of_run_migd(tmp_path, monkeypatch):
    from migd import runstate

    monkeypatch.delenv("MIGD_RUN_DIR", raising=False)
    assert site.build("h100-80gb", str(tmp_path / "s.json")).env.run_dir == str(tmp_path / "s.json") + ".run"
    # real GPUs: where migd.service left it, whoever reads
    assert site.build(None, None).env.run_dir == runstate.RUN_DIR


def os_tmp():
    import tempfile

    return tempfile.gettempdir()


def test_the_watchdog_reads_the_profile_table_once(monkeypatch, tmp_path):
    import pynvml

    from migd.watch import Watcher

    args, _ = _host_args(tmp_path)
    rc, _, out = _apply_counting(monkeypatch, tmp_path, [*args, "-q", "apply"])  # MIGD_RUN_DIR=tmp_path/run
    assert rc == 0
    (tmp_path / "run" / "profiles.json").unlink()  # as if boot had not left one
    _no_lasting_cache(monkeypatch, tmp_path)  # nor the lasting cache
    w = Watcher(args[5], site.build(args[1], args[3]))
    assert set(w.check_once().values()) == {"ok"}  # reads the table live (in its reader process), writes the cache
    assert (tmp_path / "run" / "profiles.json").is_file()
    # From now on a profile-table read fails: the next rounds are fine only if they read none
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceGetGpuInstanceProfileInfo=UNKNOWN,"
                                          "nvmlDeviceGetGpuInstancePossiblePlacements=UNKNOWN")
    for _ in range(2):
        assert set(w.check_once().values()) == {"ok"}
    (tmp_path / "run" / "profiles.json").unlink()
    # the fault bites when the table is read: each GPU unreadable, an error for that GPU (issue 17.8)
    assert set(w.check_once().values()) == {"error"}
    assert pynvml.nvmlLib is None or pynvml.nvmlLib.initialized == 0  # never opened NVML in this process


# --- the profile cache that survives reboots (issue 21.2) ---------------------------------------------------------

READS_PER_GPU_LASTING = 90  # a fresh boot whose tables come from /var/lib/migd: the ~32 table reads saved, +1 VBIOS


def _fresh_boot(monkeypatch, tmp_path, n, change=None, lasting=True):
    """The n-th boot of a DGX A100 in a state file: MIG off, nothing on it, an empty /run/migd, the same
    /var/lib/migd (MIGD_STATE_DIR) every boot. Returns (reads per GPU, profile-table reads, printed status)."""
    from migd.sim.host import SimHost

    state = tmp_path / "sim.json"
    if state.exists():
        state.unlink()
    host = SimHost.create("dgx-a100", str(state))  # the same GPUs (UUIDs) every boot
    if change:
        change(host)
        host.save()
    cfg = tmp_path / "migd.toml"
    cfg.write_text(SEVEN_1G)
    if lasting:
        monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    else:
        _no_lasting_cache(monkeypatch, tmp_path)
    rc, calls, out = _apply_counting(monkeypatch, tmp_path / f"boot{n}",
                                     ["--sim-state", str(state), "--config", str(cfg), "apply"])
    assert rc == 0, out
    reads = sum(v for k, v in calls.items() if not MUTATING.search(k))
    return reads / 8, _profile_reads(calls), out


def test_a_fresh_boot_reads_the_profile_tables_from_the_lasting_cache(monkeypatch, tmp_path):
    """Boot 1 (first after an install or driver update) reads the tables live, as many reads as without any
    cache plus the VBIOS read that keys the entry it leaves in /var/lib/migd; boot 2 reads none of them."""
    first, table_reads, out1 = _fresh_boot(monkeypatch, tmp_path, 1)
    assert table_reads > 0 and first <= READS_PER_GPU + 1
    assert (tmp_path / "lib" / "profiles.json").is_file() and stat_mode(tmp_path / "lib" / "profiles.json") == 0o644
    second, table_reads, out2 = _fresh_boot(monkeypatch, tmp_path, 2)
    assert table_reads == 0 and second <= READS_PER_GPU_LASTING, second
    assert out2 == out1  # the same answer


def _lasting(monkeypatch, tmp_path):
    _, _, live = _fresh_boot(monkeypatch, tmp_path, 0, lasting=False)  # no lasting cache at all: read live
    _fresh_boot(monkeypatch, tmp_path, 1)  # leaves the lasting cache
    return tmp_path / "lib" / "profiles.json", live


@pytest.mark.parametrize("case", ["vbios", "subsystem", "driver", "other gpu", "mig mode", "per-boot entry",
                                  "garbage", "writable by others", "owned by another user"])
def test_a_lasting_cache_that_does_not_match_or_cannot_be_trusted_is_not_used(monkeypatch, tmp_path, case):
    """A board or firmware update (subsystem ID, VBIOS), another driver, another GPU or mode, a per-boot file, a
    corrupt or untrusted file: the tables are read live, and the answer is the live one."""
    import json
    import os

    cache, live = _lasting(monkeypatch, tmp_path)
    change = None

    def edit(fn):
        doc = json.loads(cache.read_text())
        fn(doc)
        cache.write_text(json.dumps(doc))

    def cut(doc):  # a table cut short: an answer built from it would differ from the live one
        for g in doc["gpus"].values():
            g["profiles"] = g["profiles"][:1]

    if case == "vbios":
        edit(cut)
        change = lambda h: [g.update(vbios="96.00.99.00.01") for g in h.gpus]  # noqa: E731
    elif case == "subsystem":
        edit(cut)
        change = lambda h: [g.update(pci_subsystem_id=0x147E10DE) for g in h.gpus]  # noqa: E731
    elif case == "driver":
        edit(lambda d: (d.update(driver="550.54.15"), cut(d)))
    elif case == "other gpu":
        edit(lambda d: d.update(gpus={k.replace("GPU-", "GPU-f"): dict(v, profiles=v["profiles"][:1])
                                      for k, v in d["gpus"].items()}))
    elif case == "mig mode":
        edit(lambda d: [g.update(modes=[True], profiles=g["profiles"][:1]) for g in d["gpus"].values()])
    elif case == "per-boot entry":
        edit(lambda d: (d.update(boot_id="sim:a boot"), cut(d)))
    elif case == "garbage":
        cache.write_bytes(b"\x00\xff" * 100)
    elif case == "writable by others":
        edit(cut)
        os.chmod(cache, 0o646)
    else:
        import migd.backend.profile_cache as pc

        edit(cut)
        monkeypatch.setattr(pc, "_trusted_uids", lambda: (4242,))  # whoever we are, the file is not theirs
    _, table_reads, out = _fresh_boot(monkeypatch, tmp_path, 2, change)
    assert table_reads > 0 and out == live


def test_read_verbs_read_the_lasting_cache_and_never_write_it(monkeypatch, tmp_path):
    """After a reboot, before migd.service ran (no per-boot cache): status reads the tables from /var/lib/migd and
    leaves it as it was; the watchdog reads it too, never writes it."""
    cache, _ = _lasting(monkeypatch, tmp_path)
    before = cache.read_bytes()
    state = str(tmp_path / "sim.json")
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    rc, calls, out = _apply_counting(monkeypatch, tmp_path / "after-reboot", ["--sim-state", state, "status", "--json"])
    assert rc == 0 and _profile_reads(calls) == 0 and cache.read_bytes() == before
    cache.unlink()
    rc, calls, out = _apply_counting(monkeypatch, tmp_path / "after-reboot-2", ["--sim-state", state, "status"])
    assert rc == 0 and _profile_reads(calls) > 0 and not cache.exists()
