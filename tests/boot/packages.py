"""migd's .deb and .rpm for tests: built with packaging/build.sh, cached by the content of what goes into them.

    from boot.packages import build_packages, missing_build_tools

    pkgs = build_packages()                           # {"deb": Path, "rpm": Path}, current version
    newer = build_packages(version="0.1.0+test1", kinds=("deb",))

A build is reused while src/migd, packaging/ and etc/ are unchanged (key: sha256 of their files and the version),
so the packaging tests and the boot test share one build per change. Cache: $MIGD_PKG_CACHE/builds
(default /var/tmp/migd-pkg/builds). Stdlib only, Python >= 3.9.
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "packaging" / "build.sh"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = {"deb": ("dpkg-buildpackage", "dh", "dh_python3", "rst2man"), "rpm": ("rpmbuild", "rst2man")}
APT_PACKAGES = "debhelper dh-python python3-docutils rpm"
INPUTS = ("src/migd", "packaging", "etc")

_memo: Dict[Tuple[Any, ...], Dict[str, Path]] = {}


def cache_dir() -> Path:
    default = "/var/tmp/migd-pkg" if os.geteuid() == 0 else f"/var/tmp/migd-pkg-{os.geteuid()}"  # not root's cache
    return Path(os.environ.get("MIGD_PKG_CACHE", default))


def upstream_version() -> str:
    text = (REPO / "src/migd/__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    assert m, "no __version__ in src/migd/__init__.py"
    return m.group(1)


def missing_build_tools(kinds: Iterable[str] = ("deb", "rpm")) -> Optional[str]:
    """A reason string when this machine cannot build the given package kinds, else None."""
    missing = sorted({t for k in kinds for t in TOOLS[k] if shutil.which(t, path=SYSTEM_PATH) is None})
    if missing:
        return "missing {} (apt-get install {})".format(", ".join(missing), APT_PACKAGES)
    return None


def source_key(version: str) -> str:
    h = hashlib.sha256(version.encode() + b"\0")
    for top in INPUTS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(REPO)).encode() + b"\0")
                h.update(b"%o\0" % (path.stat().st_mode & 0o111))
                h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_names(version: str) -> Dict[str, str]:
    return {"deb": f"migd_{version}_all.deb", "rpm": f"migd-{version}-1.noarch.rpm"}


def build_packages(version: Optional[str] = None, kinds: Sequence[str] = ("deb", "rpm"),
                   log=None) -> Dict[str, Path]:
    """Paths of the built packages (built now, or taken from the cache). Raises RuntimeError on failure."""
    version = version or upstream_version()
    kinds = tuple(sorted(kinds))
    key = source_key(version)
    memo = _memo.get((key, kinds))
    if memo and all(p.exists() for p in memo.values()):
        return memo
    names = file_names(version)
    out = cache_dir() / "builds" / key
    wanted = {k: out / names[k] for k in kinds}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / (".lock-" + key), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.exists() for p in wanted.values()):
            reason = missing_build_tools(kinds)
            if reason:
                raise RuntimeError(reason)
            work = Path(tempfile.mkdtemp(prefix=f"work-{key}-", dir=str(out.parent)))
            try:
                args = [str(BUILD_SH), "--no-lint", "--outdir", str(work / "dist"), "--version", version]
                if kinds == ("deb",):
                    args.append("--deb-only")
                elif kinds == ("rpm",):
                    args.append("--rpm-only")
                env = {k: v for k, v in os.environ.items()
                       if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION")}
                env.update(PATH=SYSTEM_PATH, MIGD_BUILD_DIR=str(work / "build"))
                t0 = time.monotonic()
                proc = subprocess.run(args, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"packaging/build.sh failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")
                out.mkdir(exist_ok=True)
                for k in kinds:
                    os.replace(work / "dist" / names[k], wanted[k])
                (out / ("build-{}.log".format("-".join(kinds)))).write_text(
                    proc.stdout + "\n[%.1fs]\n" % (time.monotonic() - t0))
                if log:
                    log("built {} in {:.1f}s".format(", ".join(p.name for p in wanted.values()), time.monotonic() - t0))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    _memo[(key, kinds)] = wanted
    return wanted


# The previous release: its commit (not a tag, which a fresh clone may lack) and the version it was released as.
PREVIOUS_RELEASE = ("35f8423", "0.2.0")


def build_release(commit: str, version: str, log=None) -> Path:
    """The .deb of an earlier release, built from `commit` with that commit's own packaging/build.sh (`git archive`
    into a temporary directory) as `version`; cached by commit and version. Raises RuntimeError when this clone lacks
    the commit (a shallow clone) or the build fails."""
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", commit + "^{commit}"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"commit {commit} is not in this clone (shallow?): git fetch --unshallow")
    full = proc.stdout.strip()
    name = file_names(version)["deb"]
    out = cache_dir() / "builds" / (f"release-{full[:12]}-{version}")
    deb = out / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / (".lock-release-" + full[:12]), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if deb.exists():
            return deb
        reason = missing_build_tools(["deb"])
        if reason:
            raise RuntimeError(reason)
        work = Path(tempfile.mkdtemp(prefix=f"release-{full[:12]}-", dir=str(out.parent)))
        try:
            tree = work / "src"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", full],
                                     stdout=subprocess.PIPE, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION")}
            env.update(PATH=SYSTEM_PATH, MIGD_BUILD_DIR=str(work / "build"))
            t0 = time.monotonic()
            proc = subprocess.run([str(tree / "packaging/build.sh"), "--no-lint", "--deb-only", "--outdir",
                                   str(work / "dist"), "--version", version], cwd=str(tree), env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"build.sh of {commit} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")
            out.mkdir(exist_ok=True)
            os.replace(work / "dist" / name, deb)
            if log:
                log(f"built {name} from {commit} in {time.monotonic() - t0:.1f}s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return deb


def install_deb(root: Path, deb: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    """`dpkg -i` the .deb inside a rootfs, with the rootfs' own dpkg and maintainer scripts (chroot, no systemd
    running there: units get enabled, nothing is started). Raises RuntimeError with dpkg's output on failure."""
    dest = Path(root) / "tmp" / deb.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(deb, dest)
    try:
        proc = subprocess.run(["chroot", str(root), "dpkg", *args, "-i", "/tmp/" + deb.name],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"})
    finally:
        dest.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg -i {deb.name} in {root} failed (rc={proc.returncode}):\n{proc.stdout}")
    return proc
