"""Build, cache and stamp out minimal Debian root filesystems for boot tests.

Stdlib only, Python >= 3.9.  Needs root and ``mmdebstrap`` (first build only;
later calls just extract the cached tarball).

Typical use::

    from rootfs import new_rootfs, install_tree, install_file, enable_units, remove_rootfs

    root = new_rootfs()                      # fresh copy of the cached base image
    install_file(root, "/etc/systemd/system/a.service", UNIT_TEXT)
    install_tree(root, "/path/to/overlay")   # copies overlay/etc/... to root/etc/...
    enable_units(root, "a.service")          # systemctl --root=ROOT enable a.service
    ...                                      # boot it (see nspawn.py), boot it again
    remove_rootfs(root)

Cache layout (override the top with $MIGD_BOOT_CACHE)::

    /var/tmp/migd-boot/images/<suite>-<key>.tar   base image, key = sha256 of
                                                  suite/variant/packages/mirrors
    /var/tmp/migd-boot/images/<suite>-<key>.json  manifest (what, how long)
    /var/tmp/migd-boot/roots/<name>-XXXX/         per-test extracted copies

CLI (e.g. to pre-warm a CI cache)::

    python3 tests/boot/rootfs.py build      # prints the tarball path
    python3 tests/boot/rootfs.py new        # prints a fresh rootfs dir
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Union

# Bump when the build recipe changes in a way the key would not notice.
RECIPE_VERSION = "1"

SUITE = "bookworm"
VARIANT = "essential"
# systemd: PID 1, systemctl, journalctl, journald.  systemd-sysv: /sbin/init.
# dbus: a real system bus like production.  python3: system python (3.11 on
# bookworm) for the collector and for the product. prometheus-node-exporter: Debian's node_exporter, whose textfile
# collector serves migd's metrics file (tests/boot/test_ecosys_boot.py scrapes it).
DEFAULT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "prometheus-node-exporter")
DEFAULT_MIRRORS = (
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian {suite}-updates main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
)
HOSTNAME = "migd-test"

# Debian tools must not pick up pyenv/venv pythons etc.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

PathLike = Union[str, "os.PathLike[str]"]


class BaseImage(NamedTuple):
    path: Path          # the cached tarball
    key: str            # cache key (hex)
    built: bool         # True if this call built it
    seconds: float      # build time if built now, else the recorded build time


def cache_dir() -> Path:
    return Path(os.environ.get("MIGD_BOOT_CACHE", "/var/tmp/migd-boot"))


def system_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = SYSTEM_PATH
    for var in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYENV_VERSION"):
        env.pop(var, None)
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def which(tool: str) -> Optional[str]:
    return shutil.which(tool, path=SYSTEM_PATH)


def image_path(packages: Iterable[str] = DEFAULT_PACKAGES, suite: str = SUITE,
               variant: str = VARIANT, mirrors: Optional[Sequence[str]] = None) -> Path:
    """Where the base tarball for this spec is (or would be) cached."""
    key = image_key(packages, suite, variant, mirrors)
    return cache_dir() / "images" / (f"{suite}-{key}.tar")


def missing_prerequisites(need_mmdebstrap: Optional[bool] = None) -> Optional[str]:
    """A reason string if boot tests cannot run here, else None.

    ``need_mmdebstrap=None``: only if the default base image is not cached yet.
    """
    if need_mmdebstrap is None:
        need_mmdebstrap = not image_path().exists()
    if os.geteuid() != 0:
        return "boot tests need root (systemd-nspawn, mmdebstrap --mode=root)"
    tools = ["systemd-nspawn", "systemctl", "tar"]
    if need_mmdebstrap:
        tools.append("mmdebstrap")
    missing = [t for t in tools if which(t) is None]
    if missing:
        return "missing tools: {} (apt-get install systemd-container mmdebstrap)".format(", ".join(missing))
    return None


def _mirrors(suite: str, mirrors: Optional[Sequence[str]]) -> List[str]:
    if mirrors is None:
        env = os.environ.get("MIGD_BOOT_MIRRORS")
        mirrors = env.split("|") if env else DEFAULT_MIRRORS
    return [m.format(suite=suite) for m in mirrors]


def image_key(packages: Iterable[str] = DEFAULT_PACKAGES, suite: str = SUITE,
              variant: str = VARIANT, mirrors: Optional[Sequence[str]] = None) -> str:
    spec = {
        "recipe": RECIPE_VERSION,
        "suite": suite,
        "variant": variant,
        "packages": sorted(set(packages)),
        "mirrors": _mirrors(suite, mirrors),
    }
    blob = json.dumps(spec, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_base(packages: Iterable[str] = DEFAULT_PACKAGES, suite: str = SUITE,
               variant: str = VARIANT, mirrors: Optional[Sequence[str]] = None,
               log=None) -> BaseImage:
    """Return the cached base tarball, building it with mmdebstrap if needed.

    Safe against concurrent callers (flock) and interrupted builds (atomic
    rename).  ``log``: optional file object for mmdebstrap's output (default:
    a ``.log`` file next to the image).
    """
    packages = sorted(set(packages))
    key = image_key(packages, suite, variant, mirrors)
    tarball = image_path(packages, suite, variant, mirrors)
    images = tarball.parent
    images.mkdir(parents=True, exist_ok=True)
    manifest = images / (f"{suite}-{key}.json")

    with open(images / (f".lock-{key}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            recorded = 0.0
            with contextlib.suppress(Exception):
                recorded = float(json.loads(manifest.read_text())["build_seconds"])
            return BaseImage(tarball, key, False, recorded)

        reason = missing_prerequisites(need_mmdebstrap=True)
        if reason:
            raise RuntimeError(reason)
        partial = images / (f"{suite}-{key}.partial.tar")  # ".tar": mmdebstrap picks format by suffix
        tmp = cache_dir() / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mmdebstrap", "--mode=root", f"--variant={variant}",
            "--include={}".format(",".join(packages)),
            # identity of the test machine; machine-id is set per copy
            f"--customize-hook=echo {HOSTNAME} > \"$1/etc/hostname\"",
            "--customize-hook=rm -f \"$1/etc/resolv.conf\"",
            suite, str(partial),
        ] + _mirrors(suite, mirrors)
        logpath = images / (f"{suite}-{key}.log")
        t0 = time.monotonic()
        own_log = log is None
        with open(logpath, "w") if own_log else contextlib.nullcontext(log) as out:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT,
                                  env=system_env({"TMPDIR": str(tmp)}))
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            tail = logpath.read_text(errors="replace")[-3000:] if own_log else ""
            raise RuntimeError(f"mmdebstrap failed (rc={proc.returncode}), log {logpath}:\n{tail}")
        manifest.write_text(json.dumps({
            "suite": suite, "variant": variant, "packages": packages,
            "mirrors": _mirrors(suite, mirrors), "recipe": RECIPE_VERSION,
            "build_seconds": round(seconds, 2), "built_at": time.time(),
            "command": cmd,
        }, indent=2))
        os.replace(partial, tarball)
        return BaseImage(tarball, key, True, seconds)


def new_rootfs(dest: Optional[PathLike] = None, *, name: str = "rootfs",
               packages: Iterable[str] = DEFAULT_PACKAGES, suite: str = SUITE,
               variant: str = VARIANT, mirrors: Optional[Sequence[str]] = None,
               machine_id: Optional[str] = None) -> Path:
    """Extract a fresh, writable copy of the base image and return its path.

    ``dest`` must not exist or be an empty directory; default is a new
    directory under ``<cache>/roots/``.  Each copy gets its own
    /etc/machine-id (stable across boots of that copy, so it is not a
    "first boot" and ``journalctl -b`` behaves like on a real machine).
    """
    base = build_base(packages, suite, variant, mirrors)
    if dest is None:
        roots = cache_dir() / "roots"
        roots.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=name + "-", dir=str(roots)))
    else:
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise FileExistsError(f"{root} is not empty")
    os.chmod(root, 0o755)  # mkdtemp makes 0700; "/" in the container must be 0755
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    "-xpf", str(base.path), "-C", str(root)],
                   check=True, env=system_env())
    mid = machine_id or uuid.uuid4().hex
    install_file(root, "/etc/machine-id", mid + "\n", mode=0o444)
    return root


def remove_rootfs(root: PathLike) -> None:
    """rm -rf the copy, never crossing into other file systems."""
    root = Path(root)
    if not root.exists():
        return
    if root.resolve() == Path("/"):
        raise ValueError("refusing to remove /")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(root)],
                   check=True, env=system_env())


# --- putting things into a rootfs -----------------------------------------

def resolve_in_root(root: PathLike, path: str, *, follow_last: bool = True) -> Path:
    """Map an absolute path *inside* the rootfs to a host path.

    Symlinks are followed as the container would see them (absolute targets
    are relative to ``root``), so a link like /etc/resolv.conf ->
    /run/... can never make us write to the host.  Missing components are
    fine (the result is where they would be created).
    """
    root = Path(root).resolve()
    parts = [p for p in Path("/", path).parts[1:] if p not in ("", ".")]
    cur = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = root
            parts = [p for p in Path(target).parts if p not in ("", ".", "/")] + parts
            continue
        cur = nxt
    return cur


def install_file(root: PathLike, path: str, content: Union[str, bytes], *,
                 mode: int = 0o644, uid: int = 0, gid: int = 0) -> Path:
    """Write ``content`` to ``path`` (absolute, inside the rootfs)."""
    dest = resolve_in_root(root, path, follow_last=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(str(dest))
        dest.unlink()
    data = content.encode() if isinstance(content, str) else content
    with open(dest, "wb") as f:
        f.write(data)
    os.chown(dest, uid, gid)
    os.chmod(dest, mode)
    return dest


def install_tree(root: PathLike, src: PathLike) -> List[str]:
    """Copy the tree ``src`` over the rootfs (src/etc/x -> ROOT/etc/x).

    Preserves modes and symlinks (copied as links, not followed), follows the
    rootfs' own symlinks (merged /usr: src/lib/... lands in usr/lib/...).
    Files are owned by root.  Returns the container paths installed.
    """
    src = Path(src)
    installed = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for d in list(dirnames):
            s = Path(dirpath) / d
            if s.is_symlink():  # os.walk lists dir symlinks as dirs
                dirnames.remove(d)
                filenames.append(d)
                continue
            dest = resolve_in_root(root, "/" + str(rel / d))
            dest.mkdir(parents=True, exist_ok=True)
            os.chmod(dest, s.stat().st_mode & 0o7777)
        for f in filenames:
            s = Path(dirpath) / f
            cpath = "/" + str(rel / f)
            dest = resolve_in_root(root, cpath, follow_last=False)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            if s.is_symlink():
                os.symlink(os.readlink(s), dest)
                os.lchown(dest, 0, 0)
            else:
                shutil.copy2(s, dest)
                os.chown(dest, 0, 0)
            installed.append(cpath)
    return installed


def systemctl_root(root: PathLike, *args: str) -> "subprocess.CompletedProcess[str]":
    """Run ``systemctl --root=ROOT ARGS`` on the host (offline unit ops)."""
    return subprocess.run(["systemctl", f"--root={root}", "--no-reload"] + list(args),
                          check=True, env=system_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def enable_units(root: PathLike, *units: str) -> None:
    """``systemctl --root=ROOT enable UNITS`` (creates the [Install] symlinks)."""
    if units:
        systemctl_root(root, "enable", *units)


def mask_units(root: PathLike, *units: str) -> None:
    if units:
        systemctl_root(root, "mask", *units)


def _main(argv: List[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["build", "new", "key"])
    ap.add_argument("--package", "-p", action="append", default=[],
                    help="extra package (repeatable)")
    ap.add_argument("--suite", default=SUITE)
    a = ap.parse_args(argv)
    pkgs = list(DEFAULT_PACKAGES) + a.package
    if a.action == "key":
        print(image_key(pkgs, a.suite))
    elif a.action == "build":
        img = build_base(pkgs, a.suite)
        print("{} ({} in {:.1f}s)".format(img.path, "built" if img.built else "cached", img.seconds))
    else:
        print(new_rootfs(packages=pkgs, suite=a.suite))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
