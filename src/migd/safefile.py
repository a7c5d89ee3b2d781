"""Files root writes into directories other users may reach: the metrics file in node_exporter's textfile directory.

Debian's prometheus package makes /var/lib/prometheus owned by the `prometheus` user, who can therefore rename
`node-exporter/` away and put a symlink (root's write lands in any directory) or a directory of its own with a FIFO
named migd.prom (root's open blocks for ever) in its place. So the path is walked one component at a time from /,
each directory opened by file descriptor relative to the one before (`dir_fd=`, O_NOFOLLOW), and:

- a symlink is followed only when it sits in a *trusted* directory (owned by root or by us, writable by nobody
  else): only root could have put it there (/var/run -> /run, merged /usr). Anywhere else it is refused;
- the directory the file lives in must itself be trusted; directories above it may belong to someone else (Debian's
  /var/lib/prometheus): whatever that user moves around, the last directory is checked after it has been opened, by
  its descriptor, so migd only ever writes into a root-owned directory nobody else can write;
- the file is opened with O_NOFOLLOW | O_NONBLOCK (a FIFO never blocks the open) and must be a regular file with one
  link; a write goes to a fresh temp file (O_EXCL) in that directory and is renamed over the name, both relative to
  the directory's descriptor.

Refusals are `UnsafePath` (an OSError, so callers that handle unwritable files handle these too), saying why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator, List, Optional

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # like the kernel's limit on symlinks in one lookup


class UnsafePath(OSError):
    """The path to a file migd writes as root goes through something another user controls."""

    def __init__(self, message: str):
        super().__init__(message)
        self.strerror = message  # what callers print (`e.strerror or e`)

    def __str__(self) -> str:
        return str(self.strerror)


def trusted(st: os.stat_result) -> bool:
    """Owned by root or by us, and writable by nobody else."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def _why_untrusted(where: str, st: os.stat_result) -> str:
    if st.st_uid not in (0, os.geteuid()):
        return f"{where} is owned by uid {st.st_uid}, not root"
    return f"{where} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o})"


@contextlib.contextmanager
def open_dir(path: str) -> Iterator[int]:
    """A descriptor of directory `path` (absolute), walked as the module says; UnsafePath or OSError otherwise."""
    fd = _walk(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _walk(path: str) -> int:
    if not os.path.isabs(path):
        raise UnsafePath(f"{path}: not an absolute path")
    todo: List[str] = [c for c in path.split("/") if c]
    todo.reverse()  # a stack: the next component last
    fd = os.open("/", _DIR_FLAGS)
    where, links = "/", 0
    try:
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":  # lexically, like the walk itself: never back out of a checked directory by a link
                raise UnsafePath(f"{path}: '..' in the path")
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            here = os.path.join(where, name)
            if stat.S_ISLNK(st.st_mode):
                parent = os.fstat(fd)
                if not trusted(parent):
                    raise UnsafePath(f"{here} is a symbolic link in a directory another user can change "
                                     f"({_why_untrusted(where, parent)}): not followed")
                links += 1
                if links > _MAX_LINKS:
                    raise UnsafePath(f"{path}: too many symbolic links")
                target = os.readlink(name, dir_fd=fd)
                parts = [c for c in target.split("/") if c]
                todo.extend(reversed(parts))
                if target.startswith("/"):
                    os.close(fd)
                    fd, where = -1, "/"
                    fd = os.open("/", _DIR_FLAGS)
                continue
            try:
                new = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                e.filename = here
                raise
            os.close(fd)
            fd, where = new, here
        st = os.fstat(fd)
        if not trusted(st):
            raise UnsafePath(f"{where}: refusing to write there as root: {_why_untrusted(where, st)}")
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def read_text(dir_fd: int, name: str, where: str, limit: int = 1 << 20) -> Optional[str]:
    """The regular file `name` in the directory, at most `limit` bytes, or None when there is none. Never blocks
    on the open (O_NONBLOCK) and never follows a link; anything else there (FIFO, device, directory, a file with
    other names too) is UnsafePath."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
            raise UnsafePath(f"{where} is a symbolic link: not followed (remove it; migd writes a new file)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{where} is {_kind(st.st_mode)}, not a regular file: not read (remove it; migd writes "
                             "a new file)")
        if st.st_nlink != 1:
            raise UnsafePath(f"{where} has {st.st_nlink} hard links: not read (remove it; migd writes a new file)")
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, limit - len(data))
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "something else"


def write_text(dir_fd: int, name: str, text: str, mode: int) -> None:
    """Replace `name` in the directory atomically: a fresh temp file (O_EXCL | O_NOFOLLOW), written, fsync'ed,
    chmod'ed whatever the umask, renamed over the name; readers see the old content or the new, never a mix."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
