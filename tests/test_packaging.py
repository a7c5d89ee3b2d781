"""The .deb and .rpm (packaging/): built by packaging/build.sh, linted, inspected, installed and run.

Layers, each skipping cleanly when this machine lacks what it needs:
- static: man pages, bash completion, vendor pins, changelog and lint filters agree with the code (no tools);
- built: lintian, rpmlint, systemd-analyze verify, package contents and maintainer scripts, the rpm installed into
  an empty root and run by every python3 >= 3.9 here (needs debhelper, dh-python, python3-docutils, rpm);
- boot: install / upgrade / purge of the .deb in clean Debian roots booted with systemd-nspawn, one per suite, is
  tests/boot/test_packages_boot.py (root, systemd-container, mmdebstrap).

Builds are cached by content (tests/boot/packages.py), so this file and the boot tests share them.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from boot import packages as pkgs

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "packaging"
SYSTEM_PATH = pkgs.SYSTEM_PATH
UNITS = ("migd.service", "migd-watch.service")
VERSION = pkgs.upstream_version()
UPGRADE_VERSION = VERSION + "+test1"  # sorts after VERSION for dpkg and rpm


def run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", **kw.pop("env", {})}
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, **kw)


def tool(name: str) -> Optional[str]:
    return shutil.which(name, path=SYSTEM_PATH)


def need(*tools: str) -> None:
    missing = [t for t in tools if tool(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")


# --- static: the docs, completion and pins agree with the code ----------------------------------------------------


def _parser():
    from migd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, sub.choices


def _options(parser) -> List[str]:
    return [o for a in parser._actions for o in a.option_strings]


def _rst(name: str) -> str:
    return (PKG / "man" / name).read_text()


def test_man_page_documents_every_verb_option_exit_code_and_variable():
    page = _rst("migd.8.rst")
    parser, verbs = _parser()
    missing = [o for o in _options(parser) if f"**{o}**" not in page]
    for verb, sub in verbs.items():
        if f"**{verb}**" not in page:
            missing.append(verb)
        missing += [f"{verb} {o}" for o in _options(sub) if f"**{o}**" not in page]
    from migd import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    exit_section = page.split("EXIT STATUS", 1)[1].split("ENVIRONMENT", 1)[0]
    missing += [f"exit {c}" for c in sorted(codes) if f"**{c}**" not in exit_section]
    env = set()
    for path in (REPO / "src/migd").rglob("*.py"):
        env.update(re.findall(r'environ(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"', path.read_text()))
    missing += [f"${v}" for v in sorted(env) if f"**{v}**" not in page]
    assert not missing, f"packaging/man/migd.8.rst does not document: {missing}"


def test_config_man_page_documents_every_key_and_default():
    page = _rst("migd.toml.5.rst")
    from migd import config
    from migd.model import DaemonSettings

    keys = set(config._GPU_KEYS) | set(config._INSTANCE_KEYS) | set(config._DAEMON_KEYS)
    missing = [k for k in sorted(keys) if f"**{k}**" not in page]
    daemon = page.split("DAEMON SETTINGS", 1)[1].split("ERRORS", 1)[0]
    for key, value in vars(DaemonSettings()).items():
        shown = {True: "true", False: "false"}.get(value) if isinstance(value, bool) else None
        if value is None:  # decided at run time: metrics_file is the textfile directory's file where it exists
            from migd.metrics import DEFAULT_FILE

            shown = {"metrics_file": DEFAULT_FILE}[key]
        if shown is None:
            shown = json.dumps(list(value)) if isinstance(value, tuple) else (
                f'"{value}"' if isinstance(value, str) else f"{value:g}")
        block = daemon.split(f"**{key}**", 1)[1].split("\n\n**", 1)[0]
        if f"Default: **{shown}**" not in block:
            missing.append(f"{key} default {shown}")
    assert not missing, f"packaging/man/migd.toml.5.rst does not document: {missing}"


# the completion scripts: tests/test_completion.py (generated from the parser, driven in bash, zsh and fish)


def _pins() -> Dict[str, str]:
    pins = {}
    for line in (PKG / "vendor.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}", line)
            assert m, f"vendor.txt: {line!r} is not NAME==VERSION --hash=sha256:HEX"
            pins[m.group(1)] = m.group(2)
    return pins


def test_vendored_pins_match_dependencies_copyright_and_spec():
    pins = _pins()
    pyproject = (REPO / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    for name, low in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)', deps):
        assert name in pins, f"pyproject dependency {name} is not vendored in packaging/vendor.txt"
        have = tuple(int(x) for x in re.findall(r"\d+", pins[name])[:3])
        assert have >= tuple(int(x) for x in low.split(".")), (name, pins[name], low)
    copyright = (PKG / "debian/copyright").read_text()
    spec = (PKG / "rpm/migd.spec.in").read_text()
    for name, version in pins.items():
        assert f"{name} {version}," in copyright, f"debian/copyright: no Comment for {name} {version}"
        assert f"@V_{name}@" in spec, f"migd.spec.in: no bundled() Provides for {name}"


def _unit_values(unit: str, key: str) -> List[str]:
    """Every value of `key=` in a shipped unit (repeated keys add up, as systemd reads them)."""
    text = (PKG / "systemd" / unit).read_text()
    return [v for line in text.splitlines() if line.startswith(key + "=") for v in line.split("=", 1)[1].split()]


# Every GPU client an admin may run (README "Ordering"): each must start after the layout exists.
GPU_CLIENTS = ("nvidia-gpu-reset.target", "nvidia-dcgm.service", "dcgm.service", "nvsm.service",
               "dcgm-exporter.service", "gdm.service", "gdm3.service", "display-manager.service", "lightdm.service",
               "sddm.service", "docker.service", "containerd.service", "crio.service", "kubelet.service",
               "k3s.service", "k3s-agent.service", "rke2-server.service", "rke2-agent.service", "slurmd.service",
               "nvidia-cdi-refresh.service", "migd-watch.service")


def test_migd_service_orders_before_every_gpu_client():
    before = _unit_values("migd.service", "Before")
    assert [c for c in GPU_CLIENTS if c not in before] == []
    assert not set(before) & set(_unit_values("migd.service", "After"))


def test_readme_ordering_names_exactly_the_units_migd_service_is_before():
    readme = (REPO / "README.md").read_text()
    para = readme.split("**Ordering.** Before every GPU client an admin may run:", 1)[1].split(". After", 1)[0]
    named = {n if "." in n else n + ".service" for n in re.findall(r"`([a-z0-9-]+(?:\.target)?)`", para)}
    named |= {"migd-watch.service"}  # not a GPU client, but ordered before too
    assert named == set(_unit_values("migd.service", "Before"))


def test_units_and_packages_conflict_with_nvidia_mig_manager():
    for unit in UNITS:
        assert _unit_values(unit, "Conflicts") == ["nvidia-mig-manager.service"], unit
    control = (PKG / "debian/control").read_text().split("\nPackage: migd\n", 1)[1]
    assert re.search(r"^Conflicts: nvidia-mig-manager$", control, re.M), control
    assert re.search(r"^Conflicts: +nvidia-mig-manager$", (PKG / "rpm/migd.spec.in").read_text(), re.M)


def test_shipped_config_manages_no_gpu():
    from migd import config

    assert config.parse((REPO / "etc/migd.toml").read_text(), "etc/migd.toml").entries == ()


def _families(text: str) -> List[str]:
    """The GPU families a description lists: the parenthesis after "NVIDIA ... GPUs"/"NVIDIA MIG GPUs"."""
    m = re.search(r"NVIDIA (?:GPUs with MIG|MIG GPUs) \((.*?)(?:,? …|, and the others)", " ".join(text.split()))
    assert m, text[:400]
    return [f.strip() for f in m.group(1).split(",")]


def test_package_descriptions_and_man_page_list_the_families_the_readme_does():
    """Issue 16.11: they said A100/A30/H100/H200 while migd supports Blackwell and RTX PRO too."""
    readme = _families((REPO / "README.md").read_text().split("\n\n", 2)[1])
    assert {"A100", "H100", "B200", "RTX PRO 6000"} <= set(readme), readme
    table = (REPO / "README.md").read_text().split("## Supported GPUs", 1)[1].split("\n## ", 1)[0]
    assert all(f in table for f in readme), readme
    control = (PKG / "debian/control").read_text().split("\nPackage: migd\n", 1)[1]
    spec = (PKG / "rpm/migd.spec.in").read_text().split("%description", 1)[1].split("\n%", 1)[0]
    for name, text in (("debian/control", control), ("migd.spec.in", spec), ("migd.8.rst", _rst("migd.8.rst"))):
        assert _families(text.replace("\n ", "\n")) == readme, name


def test_changelog_is_at_the_package_version():
    head = (PKG / "debian/changelog").read_text().splitlines()[0]
    assert head.startswith(f"migd ({VERSION}) "), f"debian/changelog starts {head!r}, __version__ is {VERSION}"


def _words(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def _debian_changelog() -> List[tuple]:
    """[(version, "YYYY-MM-DD", [entry text, ...]), ...] from packaging/debian/changelog, newest first."""
    import email.utils

    out = []
    for block in re.split(r"\n(?=\S)", (PKG / "debian/changelog").read_text().strip()):
        lines = block.splitlines()
        version = re.match(r"migd \(([^)]+)\) \S+; urgency=\w+$", lines[0]).group(1)
        [trailer] = [line for line in lines if line.startswith(" -- ")]
        when = email.utils.parsedate_to_datetime(trailer.split("  ", 1)[1])
        items = re.split(r"\n  \* ", "\n" + "\n".join(line for line in lines[1:] if line.startswith("  ")))[1:]
        out.append((version, when.strftime("%Y-%m-%d"), [_words(i) for i in items]))
    return out


def test_releases_are_in_step_in_debian_changelog_and_the_readme():
    """Issue 16.10: every release has the same version, date and entries in debian/changelog and README "Changes"
    (the rpm's %changelog is made from debian/changelog: test_rpm_changelog_is_the_debian_one)."""
    debian = _debian_changelog()
    readme = (REPO / "README.md").read_text().split("\n## Changes\n", 1)[1].split("\n## ", 1)[0]
    sections = re.findall(r"^### (\S+) \((\d{4}-\d\d-\d\d)\)\n\n(.*?)(?=^### |\Z)", readme, re.M | re.S)
    ours = [(v, d, [_words(i) for i in re.split(r"^- ", body.strip(), flags=re.M)[1:]]) for v, d, body in sections]
    assert [(v, d) for v, d, _ in ours] == [(v, d) for v, d, _ in debian]
    for (version, _, mine), (_, _, theirs) in zip(ours, debian):
        assert mine == theirs, f"{version}: README Changes and debian/changelog differ"
    versions = [tuple(int(x) for x in v.split(".")) for v, _, _ in debian]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert [d for _, d, _ in debian] == sorted((d for _, d, _ in debian), reverse=True)
    assert debian[0][0] == VERSION and {"0.1.0", "0.2.0", "0.3.0"} <= {v for v, _, _ in debian}


def test_readme_installs_the_current_version():
    readme = (REPO / "README.md").read_text()
    assert f"sudo apt install ./migd_{VERSION}_all.deb" in readme
    assert f"sudo dnf install ./migd-{VERSION}-1.noarch.rpm" in readme


@pytest.mark.parametrize("path, rule", [("rpm/migd.rpmlintrc", r"^addFilter\(")])
def test_every_lint_override_has_a_reason(path, rule):
    lines = (PKG / path).read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(rule, line)]
    assert rules
    for i in rules:
        assert i > 0 and lines[i - 1].startswith("# ") and len(lines[i - 1]) > 20, \
            f"{path}:{i + 1}: {lines[i]!r} has no reason on the line above"
    others = [line for line in lines if line.strip() and not line.startswith("#") and not re.match(rule, line)]
    assert not others, others


# --- built: lint, contents, scripts, systemd-analyze, the rpm in an empty root ------------------------------------


@pytest.fixture(scope="module")
def built() -> Dict[str, Path]:
    reason = pkgs.missing_build_tools()
    if reason:
        pytest.skip(reason)
    return pkgs.build_packages(log=print)


def test_build_names_packages_like_the_distros(built):
    assert built["deb"].name == f"migd_{VERSION}_all.deb"
    assert built["rpm"].name == f"migd-{VERSION}-1.noarch.rpm"


def test_lintian_passes(built):
    need("lintian")
    r = run(["lintian", "--fail-on", "error,warning", str(built["deb"])])
    assert r.returncode == 0, r.stdout + r.stderr
    assert not re.search(r"^[EW]: ", r.stdout, re.M), r.stdout


def test_rpmlint_passes(built):
    need("rpmlint")
    r = run(["rpmlint", "-r", str(PKG / "rpm/migd.rpmlintrc"), str(built["rpm"])])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 errors, 0 warnings" in r.stdout, r.stdout


def _deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def _deb_files(deb: Path) -> Dict[str, str]:
    """path -> mode string (dpkg-deb -c)."""
    out = {}
    for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines():
        parts = line.split(None, 5)
        out[parts[5].split(" -> ")[0].lstrip(".")] = parts[0]
    return out


def _common_layout(files: Dict[str, str], unitdir: str, zsh_dir: str) -> None:
    expect = ["/usr/bin/migd", "/etc/migd.toml", f"{unitdir}/migd.service", f"{unitdir}/migd-watch.service",
              "/usr/lib/migd/migd/__init__.py", "/usr/lib/migd/migd/cli.py", "/usr/lib/migd/migd/sim/tool.py",
              "/usr/lib/migd/pynvml.py", "/usr/lib/migd/structlog/__init__.py", "/usr/lib/migd/sdnotify/__init__.py",
              "/usr/lib/migd/tomli/__init__.py", "/usr/lib/migd/typing_extensions.py",
              "/usr/share/bash-completion/completions/migd", f"{zsh_dir}/_migd",
              "/usr/share/fish/vendor_completions.d/migd.fish",
              "/usr/share/doc/migd/examples/dgx-a100-mixed.toml", "/usr/lib/systemd/system-generators/migd-generator"]
    missing = [p for p in expect if p not in files]
    assert not missing, missing
    assert any(re.fullmatch(r"/usr/share/man/man8/migd\.8\.gz", p) for p in files)
    assert any(re.fullmatch(r"/usr/share/man/man5/migd\.toml\.5\.gz", p) for p in files)
    junk = [p for p in files if re.search(r"__pycache__|\.pyc$|\.dist-info|py\.typed$|/example\.py$", p)]
    assert not junk, junk
    sources = {str(p.relative_to(REPO / "src")) for p in (REPO / "src/migd").rglob("*.py")
               if "__pycache__" not in p.parts}
    shipped = {p[len("/usr/lib/migd/"):] for p in files if p.startswith("/usr/lib/migd/migd/") and p.endswith(".py")}
    assert shipped == sources


def test_deb_contents_and_relations(built):
    need("dpkg-deb")
    deb = built["deb"]
    assert _deb_field(deb, "Architecture") == "all"
    assert _deb_field(deb, "Version") == VERSION
    depends = [d.strip() for d in _deb_field(deb, "Depends").split(",")]
    assert "python3 (>= 3.9)" in depends
    assert all(re.match(r"python3(:any)?( |$)", d) for d in depends), depends  # python3 and nothing else
    assert _deb_field(deb, "Suggests") == "libnvidia-ml1"
    assert _deb_field(deb, "Conflicts") == "nvidia-mig-manager"
    assert not _deb_field(deb, "Recommends")
    files = _deb_files(deb)
    _common_layout(files, "/usr/lib/systemd/system", "/usr/share/zsh/vendor-completions")
    assert files["/usr/bin/migd"].startswith("-rwxr-xr-x")
    assert files["/usr/lib/systemd/system-generators/migd-generator"].startswith("-rwxr-xr-x")
    assert "/usr/share/doc/migd/copyright" in files and "/usr/share/doc/migd/changelog.gz" in files
    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert conffiles == ["/etc/migd.toml"]


def _deb_script(deb: Path, name: str) -> str:
    r = run(["dpkg-deb", "--info", str(deb), name])
    return r.stdout if r.returncode == 0 else ""


def test_deb_scripts_enable_and_never_start_or_restart_migd_service(built):
    need("dpkg-deb")
    deb = built["deb"]
    postinst, prerm, preinst, postrm = (_deb_script(deb, s) for s in ("postinst", "prerm", "preinst", "postrm"))
    for unit in UNITS:
        assert f"deb-systemd-helper enable '{unit}'" in postinst, unit
        assert f"deb-systemd-helper purge '{unit}'" in postrm, unit
    # Nothing is started on installation; only a running migd-watch is restarted after an upgrade.
    assert not re.search(r"deb-systemd-invoke (start|restart)\b", postinst), postinst
    assert re.findall(r"deb-systemd-invoke try-restart (.*?) >", postinst) == ["'migd-watch.service'"]
    assert "migd.service" not in preinst  # no stop before an upgrade
    assert re.search(r'"\$1" = remove .*\n\s*deb-systemd-invoke stop .*migd-watch', prerm), prerm
    assert "py3compile -p migd /usr/lib/migd" in postinst and "py3clean -p migd" in prerm


def _rpm(*args: str) -> str:
    r = run(["rpm", *args])
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_rpm_files_and_relations(built):
    need("rpm")
    rpm = str(built["rpm"])
    files = dict.fromkeys(_rpm("-qlp", rpm).split(), "")
    _common_layout(files, "/usr/lib/systemd/system", "/usr/share/zsh/site-functions")
    assert "/usr/lib/systemd/system-preset/50-migd.preset" in files
    flags = dict(line.rsplit(" ", 1) for line in _rpm("-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]",
                                                       rpm).splitlines())
    assert flags["/etc/migd.toml"] == "cn", "config(noreplace)"
    assert [p for p, f in flags.items() if "c" in f] == ["/etc/migd.toml"]
    assert "l" in flags["/usr/share/licenses/migd/LICENSE"] and "l" in flags["/usr/share/licenses/migd/copyright"]
    modes = dict(line.split() for line in _rpm("-qp", "--qf", "[%{FILENAMES} %{FILEMODES:perms}\n]", rpm).splitlines())
    assert modes["/usr/bin/migd"] == "-rwxr-xr-x"
    assert modes["/usr/lib/systemd/system-generators/migd-generator"] == "-rwxr-xr-x"
    requires = {r.strip() for r in _rpm("-qpR", rpm).splitlines() if not r.startswith("rpmlib(")}
    assert requires == {"python3 >= 3.9", "/usr/bin/python3", "/bin/sh", f"config(migd) = {VERSION}-1"}, requires
    assert _rpm("-qp", "--suggests", rpm).split() == ["libnvidia-ml.so.1()(64bit)"]
    assert _rpm("-qp", "--conflicts", rpm).split() == ["nvidia-mig-manager"]
    assert _rpm("-qp", "--qf", "[%{ORDERNAME}\n]", rpm).split() == ["systemd"] * 3  # %systemd_ordering
    assert _rpm("-qp", "--qf", "%{ARCH} %{LICENSE}", rpm) == "noarch Apache-2.0 AND MIT AND BSD-3-Clause AND PSF-2.0"


def _scriptlets(rpm: str) -> Dict[str, str]:
    out, name = {}, None
    for line in _rpm("-qp", "--scripts", rpm).splitlines():
        m = re.match(r"(\w+) scriptlet \(using /bin/sh\):$", line)
        if m:
            name = m.group(1)
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def test_rpm_changelog_is_the_debian_one(built):
    """Same releases, dates and entries as debian/changelog (build.sh makes one from the other)."""
    need("rpm")
    text = _rpm("-qp", "--changelog", str(built["rpm"]))
    heads = re.findall(r"^\* (\w{3} \w{3} \d\d \d{4}) .*? - (\S+)-1$", text, re.M)
    import datetime

    got = [(v, datetime.datetime.strptime(d, "%a %b %d %Y").strftime("%Y-%m-%d")) for d, v in heads]
    debian = _debian_changelog()
    assert got == [(v, d) for v, d, _ in debian]
    items = [_words(i) for i in re.split(r"^- ", text, flags=re.M)[1:]]
    items = [re.sub(r" \* \w{3} \w{3} \d\d \d{4} .*$", "", i) for i in items]  # up to the next release's line
    assert items == [i for _, _, entries in debian for i in entries]


def test_rpm_scriptlets_use_the_systemd_macros(built):
    need("rpm")
    s = _scriptlets(str(built["rpm"]))
    helper = "/usr/lib/systemd/systemd-update-helper"
    # %systemd_post: preset-enable both on first install (50-migd.preset says enable); nothing is started.
    assert re.search(rf'\$1 -eq 1 .*\n.*\n\s*{helper} install-system-units migd.service migd-watch.service', s["postinstall"])
    # %systemd_preun: on erase only, disable and stop both.
    assert re.search(rf'\$1 -eq 0 .*\n.*\n\s*{helper} remove-system-units migd.service migd-watch.service', s["preuninstall"])
    # %systemd_postun for migd.service (no restart); %systemd_postun_with_restart for migd-watch only.
    assert re.findall(r"mark-restart-system-units (.*?) \|\|", s["postuninstall"]) == ["migd-watch.service"]
    assert not re.search(r"(restart|start)\b.*migd\.service", s["postinstall"] + s["postuninstall"])
    assert "compileall" in s["postinstall"] and "__pycache__" in s["preuninstall"]
    # The default metrics file, spelled out: %{_sharedstatedir} is /usr/com on Debian's (and some other) rpm builds.
    assert "rm -f /var/lib/prometheus/node-exporter/migd.prom" in s["preuninstall"], s["preuninstall"]
    assert "/usr/com" not in "".join(s.values())


def _verify_root(root: Path) -> str:
    """systemd-analyze verify on the package's units, with the package's files as the root. The root gets what the
    package expects from the system it lands on: systemd's own targets and slices, and /bin/sh."""
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for f in glob.glob("/lib/systemd/system/*.target") + glob.glob("/lib/systemd/system/*.slice"):
        shutil.copy(f, units)
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin/sh").exists():
        shutil.copy("/bin/sh", root / "bin/sh")
    r = run(["systemd-analyze", "verify", f"--root={root}", *UNITS], env={"MANPATH": str(root / "usr/share/man")},
            cwd=str(root))
    return (r.stdout + r.stderr).strip()


def _check_verify(root: Path) -> None:
    assert _verify_root(root) == ""
    (root / "usr/bin/migd").unlink()  # negative control: verify does look at the package's files
    assert "/usr/bin/migd" in _verify_root(root)


def _can_verify() -> None:
    need("systemd-analyze", "man")
    if not Path("/bin/sh").exists() or not glob.glob("/lib/systemd/system/sysinit.target"):
        pytest.skip("needs a systemd host")


def test_systemd_analyze_verify_prints_nothing_for_the_deb(built, tmp_path):
    _can_verify()
    need("dpkg-deb")
    root = tmp_path / "root"
    assert run(["dpkg-deb", "-x", str(built["deb"]), str(root)]).returncode == 0
    _check_verify(root)


def _pythons() -> List[str]:
    """/usr/bin/python3 and every other CPython >= 3.9 on this machine (pyenv's), oldest first."""
    found = {}
    for exe in ["/usr/bin/python3", *glob.glob("/root/.pyenv/versions/3.*/bin/python3"),
                *glob.glob("/usr/bin/python3.[0-9]*")]:
        if not re.search(r"python3(\.\d+)?$", exe) or not os.access(exe, os.X_OK):
            continue
        r = run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        if r.returncode == 0:
            ver = tuple(int(x) for x in r.stdout.split("."))
            if ver >= (3, 9):
                found.setdefault(ver, exe)
    return [found[v] for v in sorted(found)]


@pytest.fixture(scope="module")
def rpm_root(built, tmp_path_factory) -> Path:
    need("rpm")
    if os.geteuid() != 0:
        pytest.skip("rpm --root needs root (files are owned by root)")
    root = tmp_path_factory.mktemp("rpmroot")
    _rpm("--root", str(root), "--initdb")
    # --noscripts: an empty tree has no /bin/sh for the scriptlets (their content is checked above).
    _rpm("--root", str(root), "-i", "--nodeps", "--noscripts", str(built["rpm"]))
    return root


def test_rpm_installs_into_an_empty_root(rpm_root):
    assert _rpm("--root", str(rpm_root), "-q", "migd").strip() == f"migd-{VERSION}-1.noarch"
    assert _rpm("--root", str(rpm_root), "-qc", "migd").split() == ["/etc/migd.toml"]
    r = run(["rpm", "--root", str(rpm_root), "-V", "--nodeps", "migd"])  # files as shipped; python3 is not there
    assert r.returncode == 0, r.stdout + r.stderr
    assert stat.S_IMODE((rpm_root / "usr/bin/migd").stat().st_mode) == 0o755
    assert (rpm_root / "usr/bin/migd").read_text().startswith("#!/usr/bin/python3 -IS\n")


def test_rpm_erase_leaves_nothing_of_migd_behind(built, tmp_path):
    """`rpm -e` removes every file and directory the package made (issue 13: /usr/share/doc/migd was left)."""
    need("rpm")
    if os.geteuid() != 0:
        pytest.skip("rpm --root needs root (files are owned by root)")
    root = tmp_path / "root"
    root.mkdir()
    _rpm("--root", str(root), "--initdb")
    _rpm("--root", str(root), "-i", "--nodeps", "--noscripts", str(built["rpm"]))
    assert (root / "usr/share/doc/migd/examples").is_dir()
    _rpm("--root", str(root), "-e", "--nodeps", "--noscripts", "migd")
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if "migd" in p.name)
    assert left == [], left


def test_systemd_analyze_verify_prints_nothing_for_the_rpm(rpm_root, tmp_path):
    _can_verify()
    root = tmp_path / "root"
    shutil.copytree(rpm_root, root, symlinks=True)
    _check_verify(root)


ORIGINS = textwrap.dedent("""\
    import sys
    sys.path.insert(0, sys.argv[1])
    import migd, migd.cli, migd.log, migd.watch, pynvml, sdnotify, structlog, structlog.typing
    if sys.version_info < (3, 11):
        import tomli, typing_extensions
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None) or ""
        if m.__name__.split(".")[0] in ("migd", "pynvml", "sdnotify", "structlog", "tomli", "typing_extensions"):
            assert f.startswith(sys.argv[1] + "/"), (m.__name__, f)
    print("ok", structlog.__name__)
    """)


@pytest.mark.parametrize("python", _pythons() or ["/usr/bin/python3"])
def test_rpm_root_runs_with_its_vendored_libraries(rpm_root, python, tmp_path):
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python}")
    launcher = str(rpm_root / "usr/bin/migd")
    r = run([python, "-I", launcher, "--version"])
    assert (r.returncode, r.stdout.strip()) == (0, f"migd {VERSION}"), r.stderr
    # Every vendored module loads from the root, never from the interpreter's own site-packages.
    r = run([python, "-I", "-S", "-c", ORIGINS, str(rpm_root / "usr/lib/migd")])
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    # A real run: TOML (tomli below 3.11), pynvml over simulated GPUs, structlog's logging, /run state.
    example = str(rpm_root / "usr/share/doc/migd/examples/dgx-a100-mixed.toml")
    base = [python, "-I", launcher, "--simulate", "dgx-a100", "--sim-state", str(tmp_path / "sim.json"), "-c", example]
    env = {"MIGD_RUN_DIR": str(tmp_path / "run")}
    r = run([*base, "apply"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MIGD_GPU0_MIG0=MIG-" in (tmp_path / "run/devices.env").read_text()
    r = run([*base, "check"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr


# --- boot: install / upgrade / purge of the .deb on real systemd, per suite ----------------------------------------

# Simulated GPUs for the services; their state file is the one place outside /run the sandbox must let them write.
