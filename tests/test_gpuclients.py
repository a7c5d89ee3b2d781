"""[daemon] gpu_clients and migd-generator (issue 23): which names are accepted and what drop-ins they give; the
generator's rules (never fails, one line when it cannot read the config, quiet and light); validate's warnings.
The generator under a real systemd is in tests/boot/test_gpu_clients_boot.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from migd import cli, config, generator, gpuclients
from migd.errors import ConfigError
from migd.gpuclients import ClientKind

REPO = Path(__file__).resolve().parent.parent


def _daemon(items: str) -> str:
    return f"[daemon]\ngpu_clients = {items}\n"


@pytest.mark.parametrize("name, kind, dropin", [
    ("ollama.service", ClientKind.UNIT, "ollama.service.d"),
    ("vllm@*.service", ClientKind.TEMPLATE, "vllm@.service.d"),
    ("vllm@.service", ClientKind.TEMPLATE, "vllm@.service.d"),
    ("vllm@gpu0.service", ClientKind.UNIT, "vllm@gpu0.service.d"),
    ("triton-*.service", ClientKind.PREFIX, "triton-.service.d"),
    ("jupyter-hub-*.service", ClientKind.PREFIX, "jupyter-hub-.service.d"),
])
def test_accepted_names_and_the_drop_in_directory_each_gives(name, kind, dropin):
    pattern, why = gpuclients.parse(name)
    assert why == "" and pattern is not None
    assert (pattern.kind, pattern.dropin_dir) == (kind, dropin)
    assert config.parse(_daemon(f'["{name}"]')).daemon.gpu_clients == (name,)


@pytest.mark.parametrize("name, says", [
    ("a*b.service", "a glob here is either NAME@*.service"),
    ("triton*.service", "a glob here is either NAME@*.service"),
    ("vllm@gpu*.service", "a glob here is either NAME@*.service"),
    ("*.service", "a glob here is either NAME@*.service"),
    ("ollama", "not a service unit name"),
    ("docker.socket", "not a service unit name"),
    ("x y.service", "not a service unit name"),
    ("../etc.service", "not a service unit name"),
    ("migd.service", "ordering cycle"),
    ("nvidia-persistenced.service", "ordering cycle"),
    ("nvidia-*.service", "covers nvidia-persistenced.service"),
    ("systemd-*.service", "covers systemd-modules-load.service"),
])
def test_refused_names_say_why_at_their_line(name, says):
    text = _daemon(f'[\n  "ok.service",\n  "{name}",\n]')
    with pytest.raises(ConfigError) as e:
        config.parse(text, "/etc/migd.toml")
    [problem] = e.value.problems
    assert (problem.line, problem.key) == (4, "daemon.gpu_clients #2"), problem
    assert says in problem.message, problem.message


@pytest.mark.parametrize("value", ['"ollama.service"', "[1]", "{ a = 1 }"])
def test_not_a_list_of_strings_is_refused_with_an_example(value):
    with pytest.raises(ConfigError) as e:
        config.parse(_daemon(value), "/etc/migd.toml")
    assert 'e.g. ["ollama.service", "vllm@*.service"]' in str(e.value)


def test_the_units_migd_service_starts_after_are_the_ones_refused():
    """gpuclients.MIGD_RUNS_AFTER is what the shipped migd.service says (its After= services, and itself)."""
    unit = (REPO / "packaging/systemd/migd.service").read_text()
    after = [v for line in unit.splitlines() if line.startswith("After=") for v in line[6:].split()]
    assert set(gpuclients.MIGD_RUNS_AFTER) == {u for u in after if u.endswith(".service")} | {"migd.service"}


def test_matches_covers_what_systemd_reads_the_drop_in_for():
    def m(name: str, unit: str) -> bool:
        p, _ = gpuclients.parse(name)
        assert p is not None
        return p.matches(unit)

    assert m("vllm@*.service", "vllm@gpu0.service") and not m("vllm@*.service", "vllm.service")
    assert m("triton-*.service", "triton-a.service") and m("triton-*.service", "triton-a-b@x.service")
    assert not m("triton-*.service", "triton.service") and not m("triton-*.service", "tritonx.service")
    assert m("ollama.service", "ollama.service") and not m("ollama.service", "ollama2.service")


def test_config_line_appends_to_what_is_there():
    assert gpuclients.config_line([], ["myjob.service"]) == 'gpu_clients = ["myjob.service"]'
    assert gpuclients.config_line(["a.service"], ["myjob.service", "a.service"]) == \
        'gpu_clients = ["a.service", "myjob.service"]'


# --- the generator ------------------------------------------------------------------------------------------------


def _generate(tmp_path: Path, text: Optional[str], dropins: Optional[Dict[str, str]] = None):
    conf = tmp_path / "migd.toml"
    if text is not None:
        conf.write_text(text)
    for name, body in (dropins or {}).items():
        (tmp_path / "migd.d").mkdir(exist_ok=True)
        (tmp_path / "migd.d" / name).write_text(body)
    out, kmsg = tmp_path / "normal", tmp_path / "kmsg"
    kmsg.write_text("")
    code = generator.main(["migd-generator", str(out), str(tmp_path / "early"), str(tmp_path / "late")],
                          config_path=str(conf), kmsg=str(kmsg))
    files = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    return code, files, kmsg.read_text()


def test_generator_orders_each_client_after_migd_service(tmp_path):
    code, files, log = _generate(tmp_path, _daemon('["ollama.service", "vllm@*.service", "vllm@.service"]'),
                                 {"50-site.toml": _daemon('["triton-*.service", "ollama.service"]')})
    assert code == 0 and log == ""
    # a drop-in's [daemon] key overrides the main file's, key by key (as for every [daemon] key)
    assert sorted(files) == ["ollama.service.d/50-migd.conf", "triton-.service.d/50-migd.conf"]
    text = files["ollama.service.d/50-migd.conf"]
    assert "[Unit]\nAfter=migd.service\n" in text and str(tmp_path / "migd.d/50-site.toml") in text
    (tmp_path / "main-only").mkdir()
    code, files, log = _generate(tmp_path / "main-only",
                                 _daemon('["ollama.service", "vllm@*.service", "vllm@.service"]'))
    assert (code, log) == (0, "")
    assert sorted(files) == ["ollama.service.d/50-migd.conf", "vllm@.service.d/50-migd.conf"]


def test_generator_without_gpu_clients_writes_nothing_and_says_nothing(tmp_path):
    assert _generate(tmp_path, (REPO / "etc/migd.toml").read_text()) == (0, {}, "")


@pytest.mark.parametrize("text, says", [
    (None, "migd.toml: file not found"),
    (_daemon('["a*b.service"]'), "migd.toml:2: daemon.gpu_clients #1: 'a*b.service': a glob here"),
    ('[[gpu]]\nselect = "all"\nmig = "yes"\n' + _daemon('["ollama.service"]'), "migd.toml:3: [[gpu]] #1 mig"),
    ('[daemon]\ngpu_clients = ["ollama.service"\n', "TOML syntax"),
])
def test_generator_that_cannot_use_the_config_writes_nothing_logs_one_line_and_exits_0(tmp_path, text, says):
    code, files, log = _generate(tmp_path, text)
    assert code == 0 and files == {}
    [line] = log.splitlines()
    assert line.startswith(f"<3>migd-generator[{os.getpid()}]: no GPU client ordered after migd.service: "), line
    assert says in line, line


def test_generator_logs_to_journald_where_there_is_no_kmsg(tmp_path):
    """A container has no /dev/kmsg: from the first daemon-reload on, journald's syslog socket takes the line."""
    import socket

    path = str(tmp_path / "dev-log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        code = generator.main(["migd-generator", str(tmp_path / "n"), "e", "l"], config_path=str(tmp_path / "none"),
                              kmsg=str(tmp_path / "no-kmsg"), devlog=path)
        assert code == 0
        sock.settimeout(5)
        got = sock.recv(2000).decode()
    assert got.startswith(f"<3>migd-generator[{os.getpid()}]: no GPU client ordered after migd.service: "), got
    assert got.endswith("none: file not found (create it, or pass --config PATH)"), got


def test_generator_logs_to_stderr_where_nothing_else_takes_it(tmp_path, capsys):
    code = generator.main(["migd-generator", str(tmp_path / "n"), "e", "l"], config_path=str(tmp_path / "none"),
                          kmsg=str(tmp_path / "no-kmsg"), devlog=str(tmp_path / "no-socket"))
    assert code == 0
    assert capsys.readouterr().err.startswith("migd-generator: no GPU client ordered after migd.service: ")


def test_generator_survives_an_unexpected_failure(tmp_path):
    out = tmp_path / "normal"
    out.write_text("a file where the generator's directory should be")
    (tmp_path / "migd.toml").write_text(_daemon('["ollama.service"]'))
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    assert generator.main(["g", str(out), "e", "l"], config_path=str(tmp_path / "migd.toml"), kmsg=str(kmsg)) == 0
    assert "no GPU client ordered after migd.service: " in kmsg.read_text()


def _tomli_dir() -> List[str]:
    """Where tomli is, on Python < 3.11 (`-I -S` leaves out site-packages; the packages vendor it beside migd)."""
    if sys.version_info >= (3, 11):
        return []
    import tomli

    return [os.path.dirname(os.path.dirname(tomli.__file__))]


def test_installed_generator_imports_the_config_parser_only_when_gpu_clients_may_be_set(tmp_path):
    """A generator delays every boot: the packaged script runs with -IS; a config without gpu_clients (the common
    boot) loads no more than the generator itself (not even typing); one with it, the config parser and nothing of
    NVML, logging or the CLI."""
    script = (REPO / "packaging/generator/migd-generator").read_text()
    assert script.startswith("#!/usr/bin/python3 -IS\n")
    probe = textwrap.dedent("""
        import sys
        sys.path[:0] = [sys.argv[1]] + sys.argv[4:]  # and tomli where Python < 3.11 needs it (the package vendors it)
        from migd import generator
        generator.main(["migd-generator", sys.argv[3]], config_path=sys.argv[2], kmsg="/nonexistent", devlog="/")
        print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in
              ("migd", "typing", "pynvml", "structlog", "sdnotify", "argparse", "subprocess", "logging"))))
        """)
    conf = tmp_path / "migd.toml"

    def modules(text: str):
        conf.write_text(text)
        r = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(REPO / "src"), str(conf),
                            str(tmp_path / "out"), *_tomli_dir()], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return r.stdout.split()

    assert modules((REPO / "etc/migd.toml").read_text()) == ["migd", "migd.generator"]
    assert [m for m in modules(_daemon('["ollama.service"]')) if not m.startswith("typing")] == [
        "migd", "migd._record", "migd.config", "migd.errors", "migd.generator", "migd.gpuclients", "migd.hostnames",
        "migd.model", "migd.profiles", "migd.suggest", "migd.tomlpos", "migd.trust"]
    assert (tmp_path / "out/ollama.service.d/50-migd.conf").is_file()


def test_generator_parses_whenever_a_file_may_set_gpu_clients(tmp_path):
    """The quick look for the key's name must never skip a config that sets it: in a drop-in, or in a quoted key
    spelt with a TOML escape."""
    assert generator.DEFAULT_CONFIG == config.DEFAULT_PATH and config.DROPIN_DIR == "migd.d"
    conf = tmp_path / "migd.toml"
    conf.write_text((REPO / "etc/migd.toml").read_text())
    assert not generator.may_set_gpu_clients(str(conf))
    (tmp_path / "migd.d").mkdir()
    (tmp_path / "migd.d" / "10-a.toml").write_text('[daemon]\n"gpu\\u005fclients" = ["ollama.service"]\n')
    assert config.load(str(conf)).daemon.gpu_clients == ("ollama.service",)
    assert generator.may_set_gpu_clients(str(conf))
    code, files, log = _generate(tmp_path, None)
    assert (code, sorted(files), log) == (0, ["ollama.service.d/50-migd.conf"], "")
    (tmp_path / "migd.d" / "10-a.toml").write_text(_daemon('["x.service"]'))
    assert generator.may_set_gpu_clients(str(conf))
    (tmp_path / "migd.d" / "10-a.toml").chmod(0)
    if os.geteuid() != 0:
        assert generator.may_set_gpu_clients(str(conf))  # unreadable: parse, and let the parser say why


# --- validate ---------------------------------------------------------------------------------------------------


def test_check_units_warns_about_missing_and_ordered_before_units():
    props = {("migd.service", "After"): "sysinit.target nvidia-persistenced.service early.service",
             ("gone.service", "LoadState"): "not-found",
             ("early.service", "LoadState"): "loaded", ("early.service", "Before"): "",
             ("before.service", "LoadState"): "loaded", ("before.service", "Before"): "migd.service docker.service",
             ("sysinit.service", "LoadState"): "loaded", ("sysinit.service", "Before"): "sysinit.target",
             ("fine.service", "LoadState"): "loaded", ("fine.service", "Before"): "multi-user.target"}
    warnings = gpuclients.check_units(
        ["gone.service", "early.service", "before.service", "sysinit.service", "fine.service", "vllm@*.service"],
        lambda unit, prop: props.get((unit, prop), ""))
    assert warnings == [
        "gpu_clients: gone.service is not-found here: no such unit is loaded (a typo, or not installed on this host)",
        *(f"gpu_clients: {u} is ordered before migd.service: the drop-in's After=migd.service makes an ordering "
          "cycle, which systemd breaks by dropping a job" for u in ("early.service", "before.service",
                                                                    "sysinit.service"))]


def test_check_units_says_nothing_when_systemd_cannot_answer():
    assert gpuclients.check_units(["a.service"], lambda unit, prop: None) == []


def test_validate_lists_the_clients_it_orders(tmp_path, capsys):
    conf = tmp_path / "migd.toml"
    conf.write_text(_daemon('["ollama.service", "vllm@*.service"]'))
    code = cli.main(["--config", str(conf), "validate"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "gpu_clients: ollama.service, vllm@*.service (every instance of vllm@.service) start after " \
           "migd.service (migd-generator, at boot and daemon-reload)" in out, out


# --- the pending message (issue 23.2) -----------------------------------------------------------------------------


def test_unordered_asks_systemd_first_then_falls_back_to_what_migd_orders():
    units = ["myjob.service", "docker.service", "ollama.service", "session-3.scope", "vllm@a.service"]
    assert gpuclients.unordered(units, ["ollama.service", "vllm@*.service"], lambda u, p: None) == \
        (["myjob.service"], [])
    props = {("myjob.service", "After"): "basic.target migd.service", ("docker.service", "After"): "network.target",
             ("migd.service", "After"): "sysinit.target vllm@a.service", ("ollama.service", "Before"): "migd.service"}
    # systemd's word wins (e.g. before a daemon-reload); units ordered before migd.service are told apart
    assert gpuclients.unordered(units, ["ollama.service"], lambda u, p: props.get((u, p), "")) == \
        (["docker.service"], ["ollama.service", "vllm@a.service"])


def test_pending_advice_for_units_ordered_before_migd_says_to_remove_that_ordering():
    advice = gpuclients.pending_advice(["a.service"], ["b.service", "c.service"], [], "/etc/migd.toml")
    assert advice == ('; a.service is not ordered after migd.service: to start it after the layout at boot, set in '
                      '[daemon] of /etc/migd.toml: gpu_clients = ["a.service"]; b.service, c.service are ordered '
                      "before migd.service (its Before= or migd.service's After=): remove that ordering so they can "
                      "start after the layout")
    assert gpuclients.pending_advice([], [], ["x.service"], "/etc/migd.toml") == ""


def test_the_units_migd_service_runs_before_are_known():
    unit = (REPO / "packaging/systemd/migd.service").read_text()
    before = [v for line in unit.splitlines() if line.startswith("Before=") for v in line[7:].split()]
    assert set(gpuclients.MIGD_RUNS_BEFORE) == {u for u in before if u.endswith(".service")}


def _hold_gpu_in_unit(monkeypatch, node: str, unit: str):
    """A process holding the simulated GPU's node, which migd sees as running in `unit` (its cgroup)."""
    import migd.holders

    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); print('ready', "
                               "flush=True); time.sleep(60)", node], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    real = migd.holders.unit_of
    monkeypatch.setattr(migd.holders, "unit_of", lambda pid, proc="/proc": unit if pid == holder.pid
                        else real(pid, proc))
    return holder


@pytest.mark.parametrize("clients, advice", [
    (None, 'set in [daemon] of {conf}: gpu_clients = ["myjob.service"]'),
    ('["ollama.service"]', 'set in [daemon] of {conf}: gpu_clients = ["ollama.service", "myjob.service"]'),
    ('["myjob.service"]', None),
])
def test_pending_message_names_an_unordered_holder_unit_and_the_line_to_add(tmp_path, monkeypatch, clients, advice):
    import reliability as R
    from migd.sim.host import SimHost

    state = str(tmp_path / "sim.json")
    SimHost.create("h100-80gb", state)
    conf = tmp_path / "migd.toml"
    conf.write_text('[[gpu]]\nselect = 0\nmig = true\ninstances = ["7g"]\n'
                    + (_daemon(clients) if clients else ""))
    holder = _hold_gpu_in_unit(monkeypatch, os.path.join(os.path.dirname(state), "dev", "nvidia0"), "myjob.service")
    try:
        r = R.run_cli(["--simulate", "h100-80gb", "--sim-state", state, "--config", str(conf), "apply"],
                      {"MIGD_RUN_DIR": str(tmp_path / "run")})
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 4, r.out + r.err
    [pending] = [fields["msg"] for _, event, fields in r.events if event == "mode_pending"]
    assert f"held by python3 (pid {holder.pid}, myjob.service)" in pending or \
        f"(pid {holder.pid}, myjob.service)" in pending, pending
    if advice is None:
        assert "gpu_clients" not in pending, pending
    else:
        assert pending.endswith("; myjob.service is not ordered after migd.service: to start it after the layout "
                                "at boot, " + advice.format(conf=conf)), pending
