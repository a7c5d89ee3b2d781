"""`migd boot` on hosts without a driver and with a MIG mode change left pending; nvmlInit failures explained.

Through the CLI (`cli.main`), on simulated hosts shared through a state file, as migd.service runs it.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from migd import cli, driverfiles, rebootonce, sim
from migd.driverfiles import DriverFiles
from migd.sim.host import SimHost, load_state

ALL = textwrap.dedent("""
    [[gpu]]
    select = "all"
    mig = true
    instances = ["3g", "2g", "1g"]

    [[gpu]]
    select = "*H100*"
    mig = true
    instances = ["4g", "3g"]

    [daemon]
    driver_wait_timeout = 3
""")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGD_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "lib"))
    for var in ("MIGD_SIMULATE", "MIGD_SIM_STATE", "MIGD_CONFIG", "MIGD_READ_ONLY", "MIGD_SIM_FAULTS",
                "STATE_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    yield
    sim.uninstall()


def _host(tmp_path, spec: str, driver: str = "loaded", config: str = ALL, **gpu_fields) -> dict:
    state = tmp_path / "sim" / "state.json"
    state.parent.mkdir(exist_ok=True)
    host = SimHost.create(spec, str(state))
    host.state["driver"] = driver
    for g in host.gpus:
        g.update(gpu_fields)
    host.save()
    conf = tmp_path / "migd.toml"
    conf.write_text(config)
    return {"state": str(state), "config": str(conf), "spec": spec}


def run(capsys, h, *args):
    code = cli.main(["--sim-state", h["state"], "--config", h["config"], *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- 6. no driver installed vs. installed but not loaded -------------------------------------------------------


def test_boot_without_any_driver_and_only_all_or_glob_selectors_is_nothing_to_do(capsys, tmp_path):
    h = _host(tmp_path, "a100-40gb", driver="no-library")
    code, out, err = run(capsys, h, "boot")
    assert code == 0, err
    assert "no NVIDIA driver installed on this host" in err and "nothing to do" in err, err
    assert "libnvidia-ml.so.1 not found and no nvidia kernel module installed" in err, err
    assert "waiting" not in err  # never waited: driver_wait_timeout would have run out (exit 1)


def test_boot_without_any_driver_fails_when_the_config_names_a_gpu(capsys, tmp_path):
    config = ALL + '\n[[gpu]]\nselect = "00000000:07:00.0"\nmig = false\n'
    h = _host(tmp_path, "a100-40gb", driver="no-library", config=config)
    code, out, err = run(capsys, h, "boot")
    assert code == 1, err
    assert "no NVIDIA driver installed on this host" in err, err
    assert f"[[gpu]] #3 ({h['config']}:15) selects GPU 00000000:07:00.0" in err, err


def test_boot_with_the_driver_installed_but_not_loaded_waits_then_says_so(capsys, tmp_path):
    h = _host(tmp_path, "a100-40gb", driver="not-loaded", config=ALL.replace("= 3", "= 1"))
    code, out, err = run(capsys, h, "boot")
    assert code == 1, err
    waits = [line for line in err.splitlines() if "waiting up to 1 s for the NVIDIA driver" in line]
    assert len(waits) == 1, err  # once; each retry only at debug
    assert "nvidia kernel module installed but not loaded after 1 s (driver_wait_timeout)" in err, err


def test_boot_waits_for_a_driver_that_loads_meanwhile(capsys, tmp_path):
    import time

    h = _host(tmp_path, "a100-40gb", driver="loaded")
    state = load_state(h["state"])
    state["driver_ready_at"] = time.time() + 0.6
    with open(h["state"], "w") as f:
        json.dump(state, f)
    code, out, err = run(capsys, h, "boot")
    assert code == 0, err
    assert "NVIDIA driver ready after" in err, err


def test_driver_files_library_and_module_from_fake_trees(tmp_path):
    libdir, mods, sysmod = tmp_path / "lib64", tmp_path / "modules", tmp_path / "sys-module"
    for d in (libdir, mods, sysmod):
        d.mkdir()

    def files() -> DriverFiles:
        return driverfiles.detect(
            library=lambda: driverfiles.find_library(dirs=[str(libdir)], conf_dirs=lambda: [], env={}),
            module=lambda: driverfiles.find_module(modules=[str(mods)], release="6.1.0-test"),
            loaded=lambda: driverfiles.module_loaded(str(sysmod)))

    assert not files().installed
    ko = mods / "6.1.0-test/updates/dkms/nvidia.ko.zst"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"")
    found = files()
    assert found.installed and found.module == str(ko) and not found.module_loaded
    assert "nvidia kernel module installed" in found.describe() and "but not loaded" in found.describe()
    (libdir / "libnvidia-ml.so.1").write_bytes(b"")
    (sysmod / "nvidia").mkdir()
    found = files()
    assert found.library == str(libdir / "libnvidia-ml.so.1") and found.module_loaded
    # a directory ld.so.conf.d names (NVIDIA's .run installer, vendor paths)
    vendor = tmp_path / "opt-nvidia"
    vendor.mkdir()
    (vendor / "libnvidia-ml.so.1").write_bytes(b"")
    (tmp_path / "ld.so.conf.d").mkdir()
    (tmp_path / "ld.so.conf.d" / "nvidia.conf").write_text(f"# NVIDIA\n{vendor}\n")
    (tmp_path / "ld.so.conf").write_text("include ld.so.conf.d/*.conf\n")
    assert driverfiles.ld_so_conf_dirs(str(tmp_path / "ld.so.conf")) == [str(vendor)]
    assert driverfiles.find_library(dirs=[], conf_dirs=lambda: driverfiles.ld_so_conf_dirs(
        str(tmp_path / "ld.so.conf")), env={}) == str(vendor / "libnvidia-ml.so.1")
    assert driverfiles.find_module(modules=[str(mods)], release="other") is None


# --- 9. nvmlInit failures say what they mean ---------------------------------------------------------------------


@pytest.mark.parametrize("verb", [["status"], ["plan"], ["check"], ["export"]])
def test_read_verbs_without_a_driver_say_what_it_means_and_mention_simulate(capsys, tmp_path, verb):
    h = _host(tmp_path, "a100-40gb", driver="no-library")
    code, out, err = run(capsys, h, *verb)
    assert code == 1
    assert "no NVIDIA driver found (libnvidia-ml.so.1 not found): is the NVIDIA driver installed?" in err, err
    assert "migd --simulate dgx-a100 status" in err, err


def test_driver_not_loaded_and_no_permission_are_explained(capsys, tmp_path, monkeypatch):
    h = _host(tmp_path, "a100-40gb", driver="not-loaded")
    code, _, err = run(capsys, h, "status")
    assert code == 1 and "kernel module is not loaded" in err and "modprobe nvidia" in err, err
    h = _host(tmp_path, "a100-40gb")
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlInitWithFlags=NO_PERMISSION")
    code, _, err = run(capsys, h, "status")
    assert code == 1 and "not allowed to open the NVIDIA devices" in err and "run migd as root" in err, err


# --- 7. on_pending = "reboot-once" -----------------------------------------------------------------------------


def test_on_pending_is_validated_with_file_and_line(capsys, tmp_path):
    h = _host(tmp_path, "a100-40gb", config=ALL + 'on_pending = "reboot"\n')
    code, _, err = run(capsys, h, "validate")
    assert code == 2
    assert f'{h["config"]}:14: daemon.on_pending: must be "fail" or "reboot-once", got \'reboot\'' in err, err


class Reboots:
    """The simulated host's reboots. migd's reboot (HostEnv.reboot of the simulated host) reboots it at once: its
    GPUs power-cycle (Ampere commits a pending mode), its run directory empties, its boot id changes. The host is
    booting (systemd "starting") each time migd.service runs here."""

    def __init__(self, monkeypatch, tmp_path, h):
        self.h, self.run = h, tmp_path / "run"
        self.by_hand = self.seen = 0
        self._booting()

    def _host(self) -> SimHost:
        return SimHost(load_state(self.h["state"]), self.h["state"])

    def _booting(self) -> None:
        host = self._host()
        host.state["system"] = "starting"
        host.save()

    @property
    def requested(self) -> int:
        """Reboots migd asked for."""
        return self._host().state["boot"] - 1 - self.by_hand

    def reboot(self, h):
        """The next boot: the one migd's reboot started, else the admin reboots the machine."""
        if self.requested > self.seen:
            self.seen = self.requested
        else:
            self.by_hand += 1
            stamp = self.run / rebootonce.STAMP  # /run is empty after a reboot
            if stamp.exists():
                stamp.unlink()
            host = self._host()
            host.reboot()
            host.save()
        self._booting()


REBOOT_ONCE = ALL + 'on_pending = "reboot-once"\n'


def test_reboot_once_lets_a_pending_ampere_mode_change_take_effect(capsys, tmp_path, monkeypatch):
    # A100 in a pass-through VM: the driver cannot reset it, so enabling MIG stays pending until a reboot.
    h = _host(tmp_path, "a100-40gb", config=REBOOT_ONCE, reset_supported=False)
    machine = Reboots(monkeypatch, tmp_path, h)
    code, out, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 1, err
    assert "GPU 0: MIG mode change pending: rebooting once to let MIG mode take effect" in err, err
    marker = json.loads((tmp_path / "lib" / "reboot-once.json").read_text())
    assert marker["boot_id"] == "sim-boot-1" and list(marker["gpus"]) == ["0"]

    machine.reboot(h)
    code, out, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 1, err
    assert "rebooted once for pending MIG mode on GPU 0; applied" in err, err
    assert not (tmp_path / "lib" / "reboot-once.json").exists()

    machine.reboot(h)  # a third boot: nothing pending, no marker, nothing said about reboots
    code, out, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 1 and "rebooted once" not in err and "rebooting" not in err, err


def test_reboot_once_never_reboots_twice_for_a_change_that_stays_pending(capsys, tmp_path, monkeypatch):
    h = _host(tmp_path, "h100-80gb", config=REBOOT_ONCE)
    machine = Reboots(monkeypatch, tmp_path, h)

    def client_starts_early():  # holds the GPU before migd runs, at every boot
        host = SimHost(load_state(h["state"]), h["state"])
        host.gpus[0]["clients"] = [os.getpid()]
        host.save()

    client_starts_early()
    code, _, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 1, err
    for _ in range(2):
        machine.reboot(h)
        client_starts_early()
        code, _, err = run(capsys, h, "boot")
        assert code == 4 and machine.requested == 1, err
        assert "GPU 0: MIG mode change still pending after the reboot; not rebooting again" in err, err


def test_on_pending_fail_is_the_default_and_never_reboots(capsys, tmp_path, monkeypatch):
    h = _host(tmp_path, "a100-40gb", reset_supported=False)
    machine = Reboots(monkeypatch, tmp_path, h)
    code, _, err = run(capsys, h, "boot")
    assert code == 4 and machine.requested == 0, err
    assert not (tmp_path / "lib" / rebootonce.MARKER).exists()  # (the lasting profile cache is there now)


def test_reboot_once_without_a_writable_marker_does_not_reboot(capsys, tmp_path, monkeypatch):
    h = _host(tmp_path, "a100-40gb", config=REBOOT_ONCE, reset_supported=False)
    (tmp_path / "lib").write_text("not a directory")
    machine = Reboots(monkeypatch, tmp_path, h)
    code, _, err = run(capsys, h, "boot")
    assert code == 4 and machine.requested == 0, err
    assert "not rebooting, a reboot loop could not be ruled out" in err, err


# --- reboot-once only while booting, and only where its marker survives (issues 16.3, 17.11) ---------------------


def test_reboot_once_on_a_running_system_says_a_reboot_would_apply_and_does_not_reboot(capsys, tmp_path):
    """`systemctl restart migd` or `migd boot` by hand on a system that is up (the simulated host's default):
    exit 4, pending, one line saying a reboot would apply the change; no marker, no reboot."""
    h = _host(tmp_path, "a100-40gb", config=REBOOT_ONCE, reset_supported=False)
    code, _, err = run(capsys, h, "boot")
    assert code == 4, err
    said = [line for line in err.splitlines() if "a reboot would apply the change" in line]
    assert len(said) == 1 and "GPU 0: MIG mode change pending; the system is already up" in said[0], err
    assert load_state(h["state"])["boot"] == 1 and not (tmp_path / "lib" / "reboot-once.json").exists()
    assert "rebooting once" not in err


def test_reboot_once_is_refused_where_its_marker_cannot_survive_a_reboot(capsys, tmp_path, monkeypatch):
    """The state directory inside the (simulated) host's /run, which its reboot empties, like /var/lib on tmpfs:
    no reboot, said once, with why."""
    monkeypatch.setenv("MIGD_STATE_DIR", str(tmp_path / "run" / "lib"))
    h = _host(tmp_path, "a100-40gb", config=REBOOT_ONCE, reset_supported=False)
    machine = Reboots(monkeypatch, tmp_path, h)
    code, _, err = run(capsys, h, "boot")
    assert code == 4 and machine.requested == 0, err
    assert err.count("the reboot-once marker would not survive the reboot") == 1, err
    assert f"{tmp_path / 'run' / 'lib'} is on tmpfs" in err, err


def test_volatile_state_dir_is_told_by_statfs_magic(tmp_path):
    from migd import hostenv

    if hostenv.volatile_fs("/dev/shm") is None:
        pytest.skip("/dev/shm is not a tmpfs here")
    assert hostenv.volatile_fs("/dev/shm") == "tmpfs"
    assert hostenv.volatile_fs("/dev/shm/migd-does-not-exist/lib") == "tmpfs"  # its nearest existing parent
    assert hostenv.volatile_fs("/proc") is None  # not a tmpfs: survives (and is not ours to judge)


def test_a_dropin_regenerated_with_a_new_timestamp_does_not_reboot_again(capsys, tmp_path, monkeypatch):
    """The marker names the parsed layout, not the files' bytes: a drop-in rewritten at every boot with a new
    comment (and so new line numbers) is the same layout: the pending change after the reboot is not a reason to
    reboot again. A changed layout is."""
    h = _host(tmp_path, "h100-80gb", config="[daemon]\non_pending = \"reboot-once\"\n")
    dropins = tmp_path / "migd.d"
    dropins.mkdir()
    layout = '[[gpu]]\nselect = "all"\nmig = true\ninstances = ["3g", "2g", "1g"]\n'

    def regenerate(stamp: str, extra: str = "") -> None:
        (dropins / "50-generated.toml").write_text(f"# generated {stamp}\n{extra}{layout}")

    machine = Reboots(monkeypatch, tmp_path, h)

    def client_starts_early():
        host = SimHost(load_state(h["state"]), h["state"])
        host.gpus[0]["clients"] = [os.getpid()]
        host.save()

    regenerate("2026-12-05T10:00:00")
    client_starts_early()
    code, _, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 1, err
    machine.reboot(h)
    regenerate("2026-12-05T10:05:00", extra="# and a second comment line\n")
    client_starts_early()
    code, _, err = run(capsys, h, "boot")
    assert code == 4 and machine.requested == 1, err
    assert "still pending after the reboot; not rebooting again" in err, err
    # a different layout is a different config: it may reboot once for itself
    machine.reboot(h)
    (dropins / "50-generated.toml").write_text(layout.replace('"2g", "1g"', '"1g", "1g", "1g"'))
    client_starts_early()
    code, _, err = run(capsys, h, "boot")
    assert code == 0 and machine.requested == 2, err
