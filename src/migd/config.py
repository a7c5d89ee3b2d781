"""/etc/migd.toml (and its drop-ins, /etc/migd.d/*.toml) -> a validated Config. Reads files, touches no GPU.

Every problem names file, line and key path and says what is accepted; all problems are reported at once.
TOML parsers give no positions for valid documents, so `_Locator` finds a key's line with a small scanner over
the text (headers, keys, array elements); a syntax error gets the parser's own position.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import stat
import sys
from enum import Enum
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Type

from . import hostnames
from .errors import ConfigError, Problem, printable
from .model import (CdiRefresh, Config, DaemonSettings, DriftPolicy, GpuEntry, GpuSelector, InstanceSpec, Location,
                    OnPending, SelectorKind, entry_label, name_variable)
from .profiles import strip_mig
from .suggest import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10 (RHEL 9, Ubuntu 22.04)
    import tomli as tomllib

DEFAULT_PATH = "/etc/migd.toml"
MAX_BYTES = 1 << 20  # a layout file is a few KB; refuse to parse anything absurd
MAX_INSTANCES = 64

_GPU_KEYS = {"select", "hosts", "mig", "instances"}
_INSTANCE_KEYS = {"profile", "name", "compute"}
_DAEMON_KEYS = {"watch_interval", "drift_policy", "driver_wait_timeout", "persistence_mode", "stop_clients",
                "lock_timeout", "on_pending", "cdi_refresh", "metrics_file", "gpu_clients"}
_PROFILE_RE = re.compile(r"^(mig )?([1-8]g(\.\d{1,4}gb)?([+-][a-z.]{1,8})*|\d{1,3})\Z", re.I)
_COMPUTE_RE = re.compile(
    r"^(mig )?([1-8]c(\.[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*)?|[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*|\d{1,2})\Z", re.I)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}\Z")
_UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)
_PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])\Z")
_RESERVED_VAR_RE = re.compile(r"GPU[0-9]+(_.*)?|.*_CI[0-9]+")
# A PCI device ID as NVML and mig-parted pack it (device << 16 | vendor), optionally with the subsystem ID
_DEVICE_ID_RE = re.compile(r"^0x([0-9a-fA-F]{8})(?::0x([0-9a-fA-F]{8}))?\Z")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,255}\.(service|socket|target|scope)\Z")


def trusted_owner() -> Optional[int]:
    """The owner a config must have before migd acts on it: root when migd runs as root, else no check (an
    unprivileged migd cannot change a GPU, so a file it reads cannot make it do anything the user could not)."""
    return 0 if os.geteuid() == 0 else None


def load(path: str = DEFAULT_PATH, owner: Optional[int] = None) -> Config:
    """Read and parse a config file and its drop-ins (see dropin_paths). With `owner` (see trusted_owner), refuse
    a file that anyone but root or `owner` could have written, like sshd's StrictModes: migd running as root must
    not act on a layout (or run the stop_clients units) an unprivileged user can change. That holds for every
    drop-in and the drop-in directory too (each drop-in's check covers the directories above it)."""
    files = [(path, _read(path, owner))]
    if owner is not None:  # the directory itself: whoever can write it can remove or hide root's drop-ins
        _check_dropin_dir(os.path.join(os.path.dirname(path), DROPIN_DIR), owner)
    files += [(p, _read(p, owner, dropin=True)) for p in dropin_paths(path)]
    names: Dict[str, Tuple[str, str]] = {}  # one devices.env namespace for the main file and every drop-in
    return _merge([_parse_file(text, p, names) for p, text in files])


DROPIN_DIR = "migd.d"


class UntrustedConfig(ConfigError):
    """A config (file, drop-in or drop-in directory) that someone other than root (or `owner`) could change."""


def _check_dropin_dir(d: str, owner: int) -> None:
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
    problem = _untrusted_path(d, st, {0, owner})
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


def _read(path: str, owner: Optional[int], dropin: bool = False) -> str:
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
            problem = _untrusted(path, st, owner)
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


def _untrusted(path: str, st: os.stat_result, owner: int) -> Optional[str]:
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
    return _untrusted_path(path, st, owners)


_MAX_LINKS = 40  # like the kernel's ELOOP limit


def _untrusted_path(path: str, st: os.stat_result, owners: Set[int]) -> Optional[str]:
    """Every component of `path`, from / down, without following anything before it is checked (like OpenSSH's
    safe_path): each directory owned by root (or `owner`) and writable by nobody else unless sticky (then others
    cannot replace root's entries; the entries are checked one by one); each symlink owned by root (or `owner`)
    and sitting in such directories, and its target checked the same way; the path must end at the very file that
    was opened (`st`). So no one but root can swap the file, a directory above it, or a link on the way."""
    # No normpath: "link/.." is not what lexical ".." removal makes of it; ".." is resolved on checked real paths.
    todo = [c for c in os.path.join(os.getcwd(), path).split("/") if c]
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
        if not stat.S_ISDIR(dst.st_mode):
            return f"cannot check {done}: not a directory"
        if dst.st_uid not in owners:
            return (f"directory {done} is owned by uid {dst.st_uid}, not root: that user can replace the file or a "
                    f"link on its path; fix: chown root:root {shlex.quote(done)}, or move the file")
        if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
            return (f"directory {done} is writable by group/others (mode {stat.S_IMODE(dst.st_mode):04o}): they can "
                    f"replace the file; fix: chmod go-w {shlex.quote(done)}, or move the file")
        name = todo.pop(0)
        if name == "..":
            done = os.path.dirname(done)
        elif name != ".":
            done = os.path.join(done, name)


def _device_id(text: str) -> str:
    """ "0x233010de" -> "0x233010DE" (and ":0x…" subsystem ID), the form GpuSelector keeps; "" if not one."""
    m = _DEVICE_ID_RE.match(text.strip())
    if not m:
        return ""
    return f"0x{m.group(1).upper()}" + (f":0x{m.group(2).upper()}" if m.group(2) else "")


def parse(text: str, path: str = "<config>") -> Config:
    return _merge([_parse_file(text, path)])


def _parse_file(text: str, path: str, names: Optional[Dict[str, Tuple[str, str]]] = None) -> "_Parser":
    """One file parsed; its problems are collected (in p.problems), so every file's can be reported at once.
    `names`: the devices.env variables earlier files' instance names took (shared, so a drop-in cannot reuse one)."""
    p = _Parser(path, text if "\x00" not in text else "", names)
    if "\x00" in text:
        p.problems.append(Problem("binary data (NUL byte): not a TOML file", path,
                                  text[:text.index("\x00")].count("\n") + 1))
        return p
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        p.problems.append(Problem(f"TOML syntax: {_strip_position(str(e))}", path,
                                  getattr(e, "lineno", None) or _line_from_message(str(e), text)))
        return p
    except RecursionError:
        p.problems.append(Problem("nesting too deep: not a migd layout file", path))
        return p
    except ValueError as e:  # Python 3.11+: an integer literal longer than int() converts
        p.problems.append(Problem(f"unreadable value: {e}", path))
        return p
    p.config(doc)
    return p


def _merge(files: Sequence["_Parser"]) -> Config:
    """The main file then its drop-ins, as one Config: entries appended in that order (so a drop-in's entry
    overrides the main file's by "the last matching entry wins"); [daemon] keys set later override earlier ones
    key by key (a drop-in setting watch_interval keeps the main file's drift_policy)."""
    problems = [p for f in files for p in in_line_order(f.problems)]
    if problems:
        raise ConfigError(problems)
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}  # [daemon] key -> "file:line" of the setting that holds (validate shows it)
    for f in files:
        values.update(f.daemon_values)
        sources.update({key: f.where(["daemon", key]) for key in f.daemon_values})
    return Config(path=files[0].path, entries=tuple(e for f in files for e in f.entries),
                  daemon=DaemonSettings(**{**DaemonSettings().__dict__, **values}),
                  files=tuple(f.path for f in files), daemon_sources=tuple(sorted(sources.items())))


def in_line_order(problems: Sequence[Problem]) -> List[Problem]:
    """Problems as an admin reads the file: top to bottom (whole-file problems first), stable for one line."""
    return sorted(problems, key=lambda p: p.line or 0)


def _show(value: Any, limit: int = 60) -> str:
    """A value as the admin wrote it, for messages: repr(), shortened (a 1 MiB string must not make the message)."""
    try:
        text = repr(value)
    except ValueError:  # Python 3.11+: an integer with too many digits to print
        return "a number too long to print"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _strip_position(msg: str) -> str:
    return re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", msg)


def _line_from_message(msg: str, text: str) -> Optional[int]:
    m = re.search(r"at line (\d+)", msg)
    if m:
        return int(m.group(1))
    if "at end of document" in msg:  # Python 3.11's tomllib gives no lineno for this one
        return text.count("\n") + 1
    return None


class _Locator:
    """Line numbers for key paths like ("gpu", 1, "instances", 2), from a scan of the (already valid) TOML text.

    Follows table headers ([t], [[t]], dotted and quoted names, arrays of tables such as [[gpu.instances]]), dotted
    keys, and values: each array element and inline-table key gets the line it starts on, so a problem inside a
    multi-line `instances = [...]` points at its element. A path not found falls back to its nearest parent.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str):
        self.lines: Dict[Tuple[Any, ...], int] = {}
        self._text, self._i, self._line = text, 0, 1
        self._arrays: Dict[Tuple[Any, ...], int] = {}  # array-of-tables path -> tables so far
        try:
            self._document()
        except (ValueError, IndexError, RecursionError):
            pass  # locating a line must never hide the problem being reported
        del self._text

    def line(self, path: Sequence[Any]) -> Optional[int]:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    # --- scanning ---------------------------------------------------------------------------------------------

    def _record(self, path: Tuple[Any, ...], line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def _peek(self, s: str) -> bool:
        return self._text.startswith(s, self._i)

    def _expect(self, s: str) -> None:
        if not self._peek(s):
            raise ValueError(s)
        self._i += len(s)

    def _blank(self, newlines: bool) -> None:
        """Skip spaces and tabs; with newlines=True also line breaks and comments."""
        t = self._text
        while self._i < len(t):
            c = t[self._i]
            if c in " \t\r":
                self._i += 1
            elif newlines and c == "\n":
                self._i += 1
                self._line += 1
            elif newlines and c == "#":
                while self._i < len(t) and t[self._i] != "\n":
                    self._i += 1
            else:
                return

    def _document(self) -> None:
        t = self._text
        table: Tuple[Any, ...] = ()
        while True:
            self._blank(newlines=True)
            if self._i >= len(t):
                return
            line = self._line
            if self._peek("[["):
                self._i += 2
                keys = self._key()
                self._blank(newlines=False)
                self._expect("]]")
                parent = self._resolve(keys[:-1])
                array = parent + (keys[-1],)
                n = self._arrays.get(array, 0)
                self._arrays[array] = n + 1
                table = array + (n,)
                self._record(table, line)
            elif self._peek("["):
                self._i += 1
                keys = self._key()
                self._blank(newlines=False)
                self._expect("]")
                table = self._resolve(keys)
                self._record(table, line)
            else:
                path = table + tuple(self._key())
                self._blank(newlines=False)
                self._expect("=")
                self._blank(newlines=False)
                self._record(path, line)
                self._value(path)

    def _resolve(self, keys: Sequence[str]) -> Tuple[Any, ...]:
        """A header's path, with the current index of every array of tables on the way ([gpu.instances] -> gpu, N)."""
        path: Tuple[Any, ...] = ()
        for k in keys:
            path += (k,)
            if path in self._arrays:
                path += (self._arrays[path] - 1,)
        return path

    def _key(self) -> List[str]:
        parts = []
        while True:
            self._blank(newlines=False)
            c = self._text[self._i]
            if c in "\"'":
                parts.append(self._string())
            else:
                m = self._BARE.match(self._text, self._i)
                if not m:
                    raise ValueError("key")
                parts.append(m.group())
                self._i = m.end()
            self._blank(newlines=False)
            if not self._peek("."):
                return parts
            self._i += 1

    def _string(self) -> str:
        t = self._text
        for quote in ('"""', "'''", '"', "'"):
            if self._peek(quote):
                break
        self._i += len(quote)
        start = self._i
        while True:
            c = t[self._i]  # IndexError at the end: an unterminated string (cannot happen in valid TOML)
            if c == "\\" and quote[0] == '"':
                if t[self._i + 1] == "\n":  # a line-ending backslash in a multi-line string
                    self._line += 1
                self._i += 2
                continue
            if t.startswith(quote, self._i):
                raw = t[start:self._i]
                self._i += len(quote)
                while len(quote) == 3 and self._i < len(t) and t[self._i] == quote[0]:  # """a"""" ends in a quote
                    raw += quote[0]
                    self._i += 1
                break
            if c == "\n":
                self._line += 1
            self._i += 1
        if quote[0] == '"' and "\\" in raw:
            try:
                return str(json.loads('"' + raw + '"'))
            except ValueError:
                return raw
        return raw

    def _value(self, path: Tuple[Any, ...]) -> None:
        t = self._text
        c = t[self._i]
        if c == "[":
            self._i += 1
            n = 0
            while True:
                self._blank(newlines=True)
                if self._peek("]"):
                    self._i += 1
                    return
                self._record(path + (n,), self._line)
                self._value(path + (n,))
                self._blank(newlines=True)
                if self._peek(","):
                    self._i += 1
                    n += 1
                    continue
                self._expect("]")
                return
        if c == "{":
            self._i += 1
            while True:
                self._blank(newlines=True)
                if self._peek("}"):
                    self._i += 1
                    return
                line = self._line
                key = path + tuple(self._key())
                self._blank(newlines=False)
                self._expect("=")
                self._blank(newlines=False)
                self._record(key, line)
                self._value(key)
                self._blank(newlines=True)
                if self._peek(","):
                    self._i += 1
        elif c in "\"'":
            self._string()
        else:  # number, bool, date: up to the next delimiter
            while self._i < len(t) and t[self._i] not in ",]}\n#":
                self._i += 1


def _unknown_key(key: Any, accepted: Iterable[str], what: str) -> str:
    hint = did_you_mean(str(key), accepted)
    return f"unknown key; {hint} ({what})" if hint else f"unknown key; {what}"


def _words(policy: Type[Enum]) -> Tuple[str, ...]:
    """A [daemon] policy's allowed values, as written in the file."""
    return tuple(p.value for p in policy)


def _one_of(allowed: Sequence[str], got: Any) -> str:
    hint = did_you_mean(got, allowed) if isinstance(got, str) else ""
    return f"must be {' or '.join(json.dumps(a) for a in allowed)}, got {_show(got)}" + (f"; {hint}" if hint else "")


def _known_profile_names() -> List[str]:
    """Every profile name of every GPU model migd knows (before the GPUs are read, the model is not known yet),
    and the model-independent spellings."""
    from .catalog import MODELS  # plain tables: the recorded and documented profile names

    names = {strip_mig(p["name"]) for m in MODELS.values() for p in m.gi_profiles.values()}
    return sorted(names) + [f"{n}g" for n in (1, 2, 3, 4, 7)]


def _key_path(path: Sequence[Any]) -> str:
    """("gpu", 1, "instances", 0, "name") -> '[[gpu]] #2 instances #1 name': positions 1-based everywhere, as an
    admin counts entries and list items; keys as TOML writes them (instances."1g.10gb" for a quoted key)."""
    parts = list(path)
    out = ""
    if len(parts) >= 2 and parts[0] == "gpu" and isinstance(parts[1], int):
        out, parts = entry_label(parts[1] + 1), parts[2:]
    after_index = bool(out)
    for part in parts:
        if isinstance(part, int):
            out += f" #{part + 1}"
            after_index = True
            continue
        name = str(part) if _Locator._BARE.fullmatch(str(part)) else json.dumps(str(part), ensure_ascii=False)
        if len(name) > 60:
            name = name[:59] + "…"
        out += (" " if after_index else ".") + name if out else name
        after_index = False
    return out


class _Parser:
    def __init__(self, path: str, text: str, name_vars: Optional[Dict[str, Tuple[str, str]]] = None):
        self.path = path
        self.locate = _Locator(text)
        self.problems: List[Problem] = []
        # devices.env variable -> (name as written, where), across the main file and its drop-ins
        self.name_vars: Dict[str, Tuple[str, str]] = {} if name_vars is None else name_vars
        self.entries: List[GpuEntry] = []
        self.daemon_values: Dict[str, Any] = {}  # the [daemon] keys this file sets

    def problem(self, key: Sequence[Any], message: str) -> None:
        self.problems.append(Problem(message, self.path, self.locate.line(key), _key_path(key)))

    def at(self, key: Sequence[Any], with_key: bool = True) -> Location:
        """Where `key` is (and which, unless with_key=False), for problems found later, against a GPU model (layout,
        plan)."""
        return Location(self.path, self.locate.line(key), _key_path(key) if with_key else "")

    def where(self, key: Sequence[Any]) -> str:
        line = self.locate.line(key)
        return printable(f"{self.path}:{line}" if line else self.path)  # a file name is printed as it is escaped

    def config(self, doc: Dict[str, Any]) -> Config:
        for key in doc:
            if key not in ("gpu", "daemon"):
                self.problem([key], _unknown_key(key, ("gpu", "daemon"),
                                                 "a migd config has [[gpu]] tables and one [daemon] table"))
        daemon = self.daemon(doc.get("daemon", {}))
        gpus = doc.get("gpu", [])
        entries: List[GpuEntry] = []
        if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
            self.problem(["gpu"], "must be an array of tables: write each GPU entry as [[gpu]]")
        else:
            for i, g in enumerate(gpus):
                entry = self.gpu(i, g)
                if entry:
                    entries.append(entry)
        self.entries = entries
        return Config(path=self.path, entries=tuple(entries), daemon=daemon, files=(self.path,))

    # --- [daemon] --------------------------------------------------------------------------------------------

    def daemon(self, d: Any) -> DaemonSettings:
        if not isinstance(d, dict):
            self.problem(["daemon"], "must be a table: [daemon]")
            return DaemonSettings()
        for key in d:
            if key not in _DAEMON_KEYS:
                self.problem(["daemon", key], _unknown_key(key, _DAEMON_KEYS,
                                                           f"[daemon] accepts {', '.join(sorted(_DAEMON_KEYS))}"))
        defaults = DaemonSettings()
        values: Dict[str, Any] = {}
        for key, lo, hi in (("watch_interval", 1, 86400), ("driver_wait_timeout", 0, 3600), ("lock_timeout", 0, 3600)):
            if key in d:
                v = d[key]
                # the range test first: math.isfinite() cannot take an integer too large for a float
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or not math.isfinite(v):
                    self.problem(["daemon", key], f"must be a number of seconds from {lo} to {hi}, got {_show(v)}")
                else:
                    values[key] = float(v)
        if "drift_policy" in d:
            if d["drift_policy"] not in _words(DriftPolicy):
                self.problem(["daemon", "drift_policy"],
                             _one_of(_words(DriftPolicy), d["drift_policy"]))
            else:
                values["drift_policy"] = DriftPolicy(d["drift_policy"])
        if "on_pending" in d:
            if d["on_pending"] not in _words(OnPending):
                self.problem(["daemon", "on_pending"],
                             _one_of(_words(OnPending), d["on_pending"]))
            else:
                values["on_pending"] = OnPending(d["on_pending"])
        if "persistence_mode" in d:
            if not isinstance(d["persistence_mode"], bool):
                self.problem(["daemon", "persistence_mode"],
                             f"must be true or false, got {_show(d['persistence_mode'])}")
            else:
                values["persistence_mode"] = d["persistence_mode"]
        if "stop_clients" in d:
            units = d["stop_clients"]
            if not isinstance(units, list) or not all(isinstance(u, str) and _UNIT_RE.match(u) for u in units):
                self.problem(["daemon", "stop_clients"],
                             'must be a list of systemd unit names, e.g. ["nvidia-dcgm.service", "nvsm.service"]')
            else:
                values["stop_clients"] = tuple(units)
        if "cdi_refresh" in d:
            if d["cdi_refresh"] not in _words(CdiRefresh):
                self.problem(["daemon", "cdi_refresh"], _one_of(_words(CdiRefresh), d["cdi_refresh"]))
            else:
                values["cdi_refresh"] = CdiRefresh(d["cdi_refresh"])
        if "metrics_file" in d:
            v = d["metrics_file"]
            # node_exporter's textfile collector reads only *.prom: any other name would never be scraped
            absolute_prom = isinstance(v, str) and v.startswith("/") and v.endswith(".prom")
            if not isinstance(v, str) or (v and not (absolute_prom and "\n" not in v and "\0" not in v)):
                self.problem(["daemon", "metrics_file"], 'must be an absolute path ending in ".prom" (node_exporter\'s'
                             f' textfile collector reads only *.prom), or "" for no metrics, got {_show(v)}')
            else:
                values["metrics_file"] = v
        if "gpu_clients" in d:
            self.gpu_clients(d["gpu_clients"], values)
        self.daemon_values = values
        return DaemonSettings(**{**defaults.__dict__, **values})

    def gpu_clients(self, v: Any, values: Dict[str, Any]) -> None:
        from . import gpuclients

        key = ["daemon", "gpu_clients"]
        if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
            self.problem(key, f"must be a list of service names or globs, e.g. {gpuclients.EXAMPLE}, got {_show(v)}")
            return
        ok = True
        for i, name in enumerate(v):
            _, why = gpuclients.parse(name)
            if why:
                self.problem(key + [i], why)
                ok = False
        if ok:
            values["gpu_clients"] = tuple(dict.fromkeys(v))

    # --- [[gpu]] ---------------------------------------------------------------------------------------------

    def gpu(self, i: int, g: Dict[str, Any]) -> Optional[GpuEntry]:
        base: List[Any] = ["gpu", i]
        before = len(self.problems)
        for key in g:
            if key not in _GPU_KEYS:
                self.problem(base + [key], _unknown_key(key, _GPU_KEYS,
                                                        f"a [[gpu]] entry accepts {', '.join(sorted(_GPU_KEYS))}"))
        if "select" not in g:
            self.problem(base, 'missing "select": which GPUs this entry is for ("all", 0, [0, 1], "GPU-…", '
                               '"00000000:07:00.0" or a model glob like "*H100*")')
        selector = self.selector(base + ["select"], g.get("select"))
        hosts = self.hosts(base + ["hosts"], g["hosts"]) if "hosts" in g else ()
        mig = g.get("mig")
        instances: Tuple[InstanceSpec, ...] = ()
        if not isinstance(mig, bool):
            self.problem(base + ["mig"], "missing or not true/false: say mig = true (with instances) or mig = false")
            if "instances" in g:  # still check them, but "instances need mig = true" would only repeat the above
                self.instances(base + ["instances"], g["instances"])
            mig = False
        elif g.get("instances") == "unmanaged":
            if not mig:
                self.problem(base + ["instances"], 'instances = "unmanaged" needs mig = true: migd keeps MIG mode on '
                                                   "and leaves the instances to another tool")
        elif "instances" in g:
            if not mig:
                self.problem(base + ["instances"], "instances need mig = true (with mig = false, drop instances)")
            else:
                instances = self.instances(base + ["instances"], g["instances"])
        if len(self.problems) > before or selector is None:
            return None
        return GpuEntry(number=i + 1, selector=selector, mig=mig, instances=instances, hosts=hosts,
                        unmanaged=g.get("instances") == "unmanaged",
                        where=self.where(base), at=self.at(base, with_key=False), mig_at=self.at(base + ["mig"]),
                        select_at=self.at(base + ["select"]), instances_at=self.at(base + ["instances"]))

    def selector(self, key: List[Any], v: Any) -> Optional[GpuSelector]:
        accepted = ('"all", a GPU index (0), a list of indices ([0, 1]), a GPU UUID ("GPU-…"), a PCI bus id '
                    '("00000000:07:00.0"), PCI device IDs ("0x233010DE", ["0x233010DE", "0x233110DE"]) or a '
                    'model-name glob ("*H100*")')
        if v is None:
            return None
        if isinstance(v, bool):
            self.problem(key, f"must be {accepted}, got {_show(v)}")
            return None
        if isinstance(v, int):
            if not 0 <= v < 64:
                self.problem(key, f"GPU index {_show(v)} is out of range (0 to 63)")
                return None
            return GpuSelector(SelectorKind.INDEX, (v,))
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):  # PCI device IDs
            ids = [_device_id(x) for x in v]
            if not all(ids):
                self.problem(key, 'a list of PCI device IDs holds strings like "0x233010DE" (device and vendor, as '
                                  f'NVML packs them) or "0x233010DE:0x16C110DE" (with the subsystem ID), got {_show(v)}')
                return None
            return GpuSelector(SelectorKind.DEVICE, tuple(ids))
        if isinstance(v, list):
            if not v or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 64 for x in v):
                self.problem(key, "a list of GPU indices must hold integers from 0 to 63, e.g. [0, 1]")
                return None
            if len(set(v)) != len(v):
                self.problem(key, f"GPU index listed twice in {v}")
                return None
            return GpuSelector(SelectorKind.INDEX, tuple(v))
        if isinstance(v, str):
            s = v.strip()  # one rule for every string selector: surrounding spaces do not count, nor case
            if s.lower() == "all":
                return GpuSelector(SelectorKind.ALL)
            if not any(c in s for c in "*?[") and did_you_mean(s, ["all"]):  # "al": no model is named like that
                self.problem(key, f'{_show(v)} selects no GPU (a glob without wildcards is a whole model name); '
                                  f'{did_you_mean(s, ["all"])}')
                return None
            if _UUID_RE.match(s):
                return GpuSelector(SelectorKind.UUID, ("GPU-" + s[4:].lower(),))
            device = _device_id(s)
            if device:
                return GpuSelector(SelectorKind.DEVICE, (device,))
            if s.isdigit():
                self.problem(key, f"a GPU index is a number: write select = {s} without quotes")
                return None
            m = _PCI_RE.match(s)
            if m:
                domain, bus, dev, fn = m.groups()
                return GpuSelector(SelectorKind.PCI, (f"{int(domain or '0', 16):08X}:{bus.upper()}:{dev.upper()}.{fn}",))
            if s.lower().startswith("gpu-"):
                self.problem(key, f"{_show(v)} is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
                return None
            if s and len(s) <= 128 and s.isprintable():
                return GpuSelector(SelectorKind.GLOB, (s,))
        self.problem(key, f"must be {accepted}, got {_show(v)}")
        return None

    def hosts(self, key: List[Any], v: Any) -> Tuple[str, ...]:
        """hosts = ["dgx-a*", "node[01-16]"]: the entry applies only on hosts matching one (see hostnames)."""
        example = 'e.g. hosts = ["dgx-a*", "node[01-16]"]'
        if not isinstance(v, list) or not v:
            what = "an empty list matches no host" if v == [] else f"got {_show(v)}"
            self.problem(key, f"must be a list of host-name patterns, {example}; {what}")
            return ()
        if len(v) > hostnames.MAX_PATTERNS:
            self.problem(key, f"{len(v)} host-name patterns: at most {hostnames.MAX_PATTERNS} in one entry (use "
                              "ranges like node[0001-4000], or several entries)")
            return ()
        out = []
        for n, pattern in enumerate(v):
            if not isinstance(pattern, str):
                self.problem(key + [n], f"must be a host-name pattern (a string), {example}; got {_show(pattern)}")
                continue
            try:
                hostnames.compile_pattern(pattern)
            except hostnames.PatternError as e:
                self.problem(key + [n], str(e))
                continue
            out.append(pattern.strip().lower())
        return tuple(out)

    def instances(self, key: List[Any], v: Any) -> Tuple[InstanceSpec, ...]:
        out: List[InstanceSpec] = []
        if isinstance(v, dict):  # { "1g.10gb" = 7 }: counts, in the order written
            for profile, count in v.items():
                k = key + [profile]
                if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INSTANCES:
                    self.problem(k, f"must be an instance count from 0 to {MAX_INSTANCES}, got {_show(count)}")
                    continue
                if self.profile_ok(k, profile):
                    out += [InstanceSpec(profile=profile, at=self.at(k))] * count
        elif isinstance(v, list):
            for n, item in enumerate(v):
                spec = self.instance(key + [n], item)
                if spec:
                    out.append(spec)
        else:
            self.problem(key, 'must be a list (["3g.40gb", "1g.10gb"]), a count table ({ "1g.10gb" = 7 }) or '
                              '"unmanaged" (MIG mode only; another tool creates the instances)')
        if len(out) > MAX_INSTANCES:
            self.problem(key, f"{len(out)} instances: no GPU has more than {MAX_INSTANCES // 8} slots per slice")
            return ()
        names = [s.name for s in out if s.name]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problem(key, f"instance name {_show(name)} is used twice in one entry")
        return tuple(out)

    def instance(self, key: List[Any], item: Any) -> Optional[InstanceSpec]:
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            return InstanceSpec(profile=str(item), at=self.at(key)) if self.profile_ok(key, item) else None
        if not isinstance(item, dict):
            self.problem(key, 'must be a profile ("1g.10gb", 19, "3g") or a table { profile = …, name = …, '
                              'compute = [...] }')
            return None
        ok = True
        for k in item:
            if k not in _INSTANCE_KEYS:
                self.problem(key + [k], _unknown_key(k, _INSTANCE_KEYS,
                                                     f"an instance accepts {', '.join(sorted(_INSTANCE_KEYS))}"))
                ok = False
        profile = item.get("profile")
        if profile is None:
            self.problem(key, 'missing "profile"')
            return None
        ok = self.profile_ok(key + ["profile"], profile) and ok
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            self.problem(key + ["name"], "must start with a letter and hold up to 32 letters, digits, _ or -, "
                                         f"got {_show(name)}")
            ok = False
        elif name is not None:
            ok = self.name_variable_ok(key + ["name"], name) and ok
        compute = item.get("compute", [])
        if not isinstance(compute, list):  # [] is allowed: a GPU instance with no compute instance (yet)
            self.problem(key + ["compute"], 'must be a list of compute profiles, e.g. ["2c.4g.40gb", "2c"]')
            ok = False
            compute = []
        for n, c in enumerate(compute):
            if isinstance(c, bool) or not isinstance(c, (str, int)) or not _COMPUTE_RE.match(str(c).strip()):
                self.problem(key + ["compute", n], f'not a compute profile: {_show(c)} (e.g. "1c.3g.40gb", "2c", '
                                                   '"3g.40gb" for the whole instance)')
                ok = False
        if not ok:
            return None
        return InstanceSpec(profile=str(profile), name=name,
                            compute=tuple(str(c).strip() for c in compute) if "compute" in item else None,
                            at=self.at(key))

    def name_variable_ok(self, key: List[Any], name: str) -> bool:
        """A name must be a devices.env variable of its own: not one migd writes itself (MIGD_GPU<i>_…, …_CI<j>),
        and not another name's in other case or with - for _ (both would write MIGD_A_B: which one wins?)."""
        var = name_variable(name)
        if _RESERVED_VAR_RE.fullmatch(var):
            self.problem(key, f"{_show(name)} is reserved: devices.env names MIG devices MIGD_GPU<i>_… and a named "
                              "instance's compute instances MIGD_<NAME>_CI<j> itself; choose another name")
            return False
        seen = self.name_vars.setdefault(var, (name, self.where(key)))
        if seen[0] != name:
            self.problem(key, f"instance name {_show(name)} and {_show(seen[0])} ({seen[1]}) are one devices.env "
                              f"variable, MIGD_{var}: names must differ in more than case or - and _")
            return False
        return True

    def profile_ok(self, key: List[Any], profile: Any) -> bool:
        if isinstance(profile, bool) or not isinstance(profile, (str, int)) or not _PROFILE_RE.match(str(profile).strip()):
            hint = did_you_mean(strip_mig(str(profile)), _known_profile_names()) if isinstance(profile, str) else ""
            self.problem(key, f'not a GPU instance profile: {_show(profile)}' + (f"; {hint}" if hint else "")
                         + ' (e.g. "1g.10gb", "MIG 1g.10gb", "1g.10gb+me", 19, or "1g"…"7g")')
            return False
        return True
