"""Which config files migd may act on, and reading them: sshd-style trust (owner and mode of the file, the drop-in
directory and every directory and symlink on the way), the drop-ins' names, a cheap fingerprint for migd-watch,
and a bounded, FIFO-proof read that returns text. Parses nothing (config.py does).
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Any, List, Optional, Set, Tuple

from .errors import ConfigError

MAX_BYTES = 1 << 20  # a layout file is a few KB; refuse to parse anything absurd


def trusted_owner() -> Optional[int]:
    """The owner a config must have before migd acts on it: root when migd runs as root, else no check (an
    unprivileged migd cannot change a GPU, so a file it reads cannot make it do anything the user could not)."""
    return 0 if os.geteuid() == 0 else None



DROPIN_DIR = "migd.d"


class UntrustedConfig(ConfigError):
    """A config (file, drop-in or drop-in directory) that someone other than root (or `owner`) could change."""


def check_dropin_dir(d: str, owner: int) -> None:
    """The drop-in directory, checked itself and not only through the files in it (there may be none left): owned
    by root (or `owner`), writable by nobody else unless sticky (then others cannot remove or rename root's
    drop-ins, and a drop-in they add is refused by its own check), and every directory and link above it too."""
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return  # no directory, no drop-ins (a dangling link too: dropin_paths says the same)
    except OSError as e:
        raise UntrustedConfig.one(f"cannot check the drop-in directory: {e.strerror}", d) from None
    if not stat.S_ISDIR(st.st_mode):
        return  # dropin_paths reports it
    shown = shlex.quote(d)
    if st.st_uid not in (0, owner):
        raise UntrustedConfig.one(f"drop-in directory owned by uid {st.st_uid}, not root: that user can remove or "
                                  f"hide root's drop-ins; fix: chown root:root {shown}", d)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UntrustedConfig.one(f"drop-in directory writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}):"
                                  f" they can remove or hide root's drop-ins; fix: chmod go-w {shown}", d)
    problem = untrusted_path(d, st, {0, owner})
    if problem:
        raise UntrustedConfig.one(problem, d)


def dropin_paths(path: str) -> List[str]:
    """The drop-ins of config `path`: `migd.d/*.toml` next to it (/etc/migd.d/ for /etc/migd.toml), in lexical
    order. Other names (`*.dpkg-old`, `*.toml~`, hidden files such as editors' and Ansible's temporary files) are
    not drop-ins. No directory: no drop-ins. A directory that cannot be read is an error, never "none there"."""
    d = os.path.join(os.path.dirname(path), DROPIN_DIR)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError.one("not a directory: drop-ins go in a directory of *.toml files", d) from None
    except OSError as e:
        raise ConfigError.one(f"cannot read the drop-in directory: {e.strerror}", d) from None
    return [os.path.join(d, n) for n in sorted(n for n in names if n.endswith(".toml") and not n.startswith("."))]


def fingerprint(path: str) -> Tuple[Any, ...]:
    """What the config is on disk now, cheaply: each file's and the drop-in directory's identity (device, inode,
    size, mtime, ctime) and the drop-ins' names. Another value than at load time means it was edited or replaced
    (an editor, `install`, Ansible's rename): migd-watch then knows the config it holds is no longer the declared
    one. Reads no file."""
    d = os.path.join(os.path.dirname(path), DROPIN_DIR)
    out: List[Any] = []
    try:
        names = sorted(os.listdir(d))
    except OSError as e:
        names = [f"({e.errno})"]
    for p in [path, d] + [os.path.join(d, n) for n in names]:
        try:
            st = os.stat(p)
            out.append((p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError as e:
            out.append((p, e.errno))
    return tuple(out)


def read_file(path: str, owner: Optional[int], dropin: bool = False) -> str:
    """One file's text. A drop-in is opened without following a symlink: it must be a regular file in the
    (checked) drop-in directory, so nothing outside that directory decides what migd applies."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | (os.O_NOFOLLOW if dropin else 0)
    try:
        # O_NONBLOCK: a FIFO without a writer must not hang migd at boot; then back to blocking reads.
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError.one("file not found (create it, or pass --config PATH)", path) from None
    except OSError as e:
        if dropin and os.path.islink(path):
            raise ConfigError.one("a symbolic link: a drop-in must be a regular file in the drop-in directory",
                                  path) from None
        raise ConfigError.one(f"cannot read: {e.strerror}", path) from None
    try:
        os.set_blocking(fd, True)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a directory, device or FIFO is no layout, whoever reads it
            raise ConfigError.one("not a regular file: give the path of a migd.toml", path)
        if owner is not None:
            problem = untrusted(path, st, owner)
            if problem:
                raise UntrustedConfig.one(problem, path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError.one(f"cannot read: {e.strerror}", path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ConfigError.one(f"larger than {MAX_BYTES // 1024} KiB: not a migd layout file", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError.one(f"not UTF-8 text (byte {e.start})", path, line) from None


def untrusted(path: str, st: os.stat_result, owner: int) -> Optional[str]:
    """Why a config opened as `st` cannot be trusted by a privileged migd, with the command that fixes it; or None."""
    owners = {0, owner}
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file: migd running as root reads its layout only from a regular file"
    if st.st_uid not in owners:
        return (f"owned by uid {st.st_uid}, not root: migd runs as root and will not act on a layout another user "
                f"can change; fix: chown root:root {shlex.quote(path)}")
    if st.st_mode & 0o022:
        return (f"writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}): migd runs as root and will not act "
                f"on a layout another user can change; fix: chmod go-w {shlex.quote(path)}")
    return untrusted_path(path, st, owners)


_MAX_LINKS = 40  # like the kernel's ELOOP limit


def untrusted_path(path: str, st: os.stat_result, owners: Set[int]) -> Optional[str]:
    """Every component of `path`, from / down, without following anything before it is checked (like OpenSSH's
    safe_path): each directory owned by root (or `owner`) and writable by nobody else unless sticky (then others
    cannot replace root's entries; the entries are checked one by one); each symlink owned by root (or `owner`)
    and sitting in such directories, and its target checked the same way; the path must end at the very file that
    was opened (`st`). So no one but root can swap the file, a directory above it, or a link on the way."""
    # No normpath: "link/.." is not what lexical ".." removal makes of it; ".." is resolved on checked real paths.
    todo = [c for c in os.path.join(os.getcwd(), path).split("/") if c]  # noqa: PTH109 - str components, split here
    done = "/"
    links = 0
    while True:
        try:
            dst = os.lstat(done)
        except OSError as e:
            return f"cannot check {done}: {e.strerror}"
        if stat.S_ISLNK(dst.st_mode):
            if dst.st_uid not in owners:
                return (f"symlink {done} is owned by uid {dst.st_uid}, not root: that user can point it elsewhere; "
                        f"fix: give the real path, or replace the link as root")
            links += 1
            if links > _MAX_LINKS:
                return f"too many symlinks resolving {path}"
            target = os.readlink(done)
            parent = os.path.dirname(done)
            todo = [c for c in os.path.join(parent, target).split("/") if c] + todo
            done = "/"
            continue
        if not todo:  # the file itself
            if (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino):
                return f"{done} was replaced while migd read it: try again"
            return None
        problem = _untrusted_dir(done, dst, owners)
        if problem:
            return problem
        name = todo.pop(0)
        if name == "..":
            done = os.path.dirname(done)
        elif name != ".":
            done = os.path.join(done, name)


def _untrusted_dir(done: str, dst: os.stat_result, owners: Set[int]) -> Optional[str]:
    """Why directory `done` (lstat `dst`) on a config's path lets someone but root replace what is below it."""
    if not stat.S_ISDIR(dst.st_mode):
        return f"cannot check {done}: not a directory"
    if dst.st_uid not in owners:
        return (f"directory {done} is owned by uid {dst.st_uid}, not root: that user can replace the file or a "
                f"link on its path; fix: chown root:root {shlex.quote(done)}, or move the file")
    if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
        return (f"directory {done} is writable by group/others (mode {stat.S_IMODE(dst.st_mode):04o}): they can "
                f"replace the file; fix: chmod go-w {shlex.quote(done)}, or move the file")
    return None
