"""/etc/migd.toml -> a validated Config. Pure: reads one file, touches no GPU.

Every problem names file, line and key path and says what is accepted; all problems are reported at once.
TOML parsers give no positions for valid documents, so `_Locator` finds a key's line by scanning table headers
and `key =` lines: exact for the flat shape migd.toml has, and a syntax error gets the parser's own position.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, Problem
from .model import Config, DaemonSettings, GpuEntry, GpuSelector, InstanceSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10 (RHEL 9, Ubuntu 22.04)
    import tomli as tomllib

DEFAULT_PATH = "/etc/migd.toml"
MAX_BYTES = 1 << 20  # a layout file is a few KB; refuse to parse anything absurd
MAX_INSTANCES = 64

_GPU_KEYS = {"select", "mig", "instances"}
_INSTANCE_KEYS = {"profile", "name", "compute"}
_DAEMON_KEYS = {"watch_interval", "drift_policy", "driver_wait_timeout", "persistence_mode", "stop_clients",
                "lock_timeout"}
_PROFILE_RE = re.compile(r"^(mig )?([1-8]g(\.\d{1,4}gb)?([+-][a-z.]{1,8})*|\d{1,3})$", re.I)
_COMPUTE_RE = re.compile(r"^(mig )?([1-8]c(\.[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*)?|[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*|\d{1,2})$",
                         re.I)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_UUID_RE = re.compile(r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,255}\.(service|socket|target|scope)$")


def load(path: str = DEFAULT_PATH) -> Config:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError.one("file not found (create it, or pass --config PATH)", path) from None
    except OSError as e:
        raise ConfigError.one(f"cannot read: {e.strerror}", path) from None
    if len(data) > MAX_BYTES:
        raise ConfigError.one(f"larger than {MAX_BYTES // 1024} KiB: not a migd layout file", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError.one(f"not UTF-8 text (byte {e.start})", path, line) from None
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    if "\x00" in text:
        raise ConfigError.one("binary data (NUL byte): not a TOML file", path, text[:text.index("\x00")].count("\n") + 1)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError.one(f"TOML syntax: {_strip_position(str(e))}", path, getattr(e, "lineno", None)
                              or _line_from_message(str(e))) from None
    except RecursionError:
        raise ConfigError.one("nesting too deep: not a migd layout file", path) from None
    p = _Parser(path, text)
    config = p.config(doc)
    if p.problems:
        raise ConfigError(p.problems)
    return config


def _strip_position(msg: str) -> str:
    return re.sub(r"\s*\(at line \d+, column \d+\)$", "", msg)


def _line_from_message(msg: str) -> Optional[int]:
    m = re.search(r"at line (\d+)", msg)
    return int(m.group(1)) if m else None


class _Locator:
    """Line numbers for key paths like ("gpu", 1, "instances"), by scanning headers and `key =` lines."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\"'-]+)\s*=")

    def __init__(self, text: str):
        self.sections: List[Tuple[str, int, int]] = []  # (table name, array ordinal or -1, header line)
        self.keys: List[Tuple[int, str, int]] = []  # (section number, key, line)
        counts: Dict[str, int] = {}
        section = -1
        for n, line in enumerate(text.splitlines(), 1):
            m = self._HEADER.match(line)
            if m:
                name = m.group(2).strip().strip("\"'")
                ordinal = -1
                if m.group(1) == "[[":
                    ordinal = counts.get(name, 0)
                    counts[name] = ordinal + 1
                self.sections.append((name, ordinal, n))
                section = len(self.sections) - 1
                continue
            k = self._KEY.match(line)
            if k:
                self.keys.append((section, k.group(1).strip("\"'"), n))

    def line(self, path: Sequence[Any]) -> Optional[int]:
        if not path:
            return None
        head, rest = path[0], list(path[1:])
        section = None
        if rest and isinstance(rest[0], int):
            ordinal = rest.pop(0)
            for i, (name, o, _) in enumerate(self.sections):
                if name == head and o == ordinal:
                    section = i
        else:
            for i, (name, o, _) in enumerate(self.sections):
                if name == head:
                    section = i
        if section is None:
            for s, key, n in self.keys:  # a top-level key
                if s == -1 and key == head:
                    return n
            return None
        keys = [k for k in rest if isinstance(k, str)]
        if keys:
            for s, key, n in self.keys:
                if s == section and key == keys[0]:
                    return n
        return self.sections[section][2]


def _key_path(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Parser:
    def __init__(self, path: str, text: str):
        self.path = path
        self.locate = _Locator(text)
        self.problems: List[Problem] = []

    def problem(self, key: Sequence[Any], message: str) -> None:
        self.problems.append(Problem(message, self.path, self.locate.line(key), _key_path(key)))

    def where(self, key: Sequence[Any]) -> str:
        line = self.locate.line(key)
        return f"{self.path}:{line}" if line else self.path

    def config(self, doc: Dict[str, Any]) -> Config:
        for key in doc:
            if key not in ("gpu", "daemon"):
                self.problem([key], "unknown key; a migd config has [[gpu]] tables and one [daemon] table")
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
        return Config(path=self.path, entries=tuple(entries), daemon=daemon)

    # --- [daemon] --------------------------------------------------------------------------------------------

    def daemon(self, d: Any) -> DaemonSettings:
        if not isinstance(d, dict):
            self.problem(["daemon"], "must be a table: [daemon]")
            return DaemonSettings()
        for key in d:
            if key not in _DAEMON_KEYS:
                self.problem(["daemon", key], f"unknown key; [daemon] accepts {', '.join(sorted(_DAEMON_KEYS))}")
        defaults = DaemonSettings()
        values: Dict[str, Any] = {}
        for key, lo, hi in (("watch_interval", 1, 86400), ("driver_wait_timeout", 0, 3600), ("lock_timeout", 0, 3600)):
            if key in d:
                v = d[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                    self.problem(["daemon", key], f"must be a number of seconds from {lo} to {hi}, got {v!r}")
                else:
                    values[key] = float(v)
        if "drift_policy" in d:
            if d["drift_policy"] not in ("log", "reapply"):
                self.problem(["daemon", "drift_policy"], f'must be "log" or "reapply", got {d["drift_policy"]!r}')
            else:
                values["drift_policy"] = d["drift_policy"]
        if "persistence_mode" in d:
            if not isinstance(d["persistence_mode"], bool):
                self.problem(["daemon", "persistence_mode"], f"must be true or false, got {d['persistence_mode']!r}")
            else:
                values["persistence_mode"] = d["persistence_mode"]
        if "stop_clients" in d:
            units = d["stop_clients"]
            if not isinstance(units, list) or not all(isinstance(u, str) and _UNIT_RE.match(u) for u in units):
                self.problem(["daemon", "stop_clients"],
                             'must be a list of systemd unit names, e.g. ["nvidia-dcgm.service", "nvsm.service"]')
            else:
                values["stop_clients"] = tuple(units)
        return DaemonSettings(**{**defaults.__dict__, **values})

    # --- [[gpu]] ---------------------------------------------------------------------------------------------

    def gpu(self, i: int, g: Dict[str, Any]) -> Optional[GpuEntry]:
        base: List[Any] = ["gpu", i]
        before = len(self.problems)
        for key in g:
            if key not in _GPU_KEYS:
                self.problem(base + [key], f"unknown key; a [[gpu]] entry accepts {', '.join(sorted(_GPU_KEYS))}")
        if "select" not in g:
            self.problem(base, 'missing "select": which GPUs this entry is for ("all", 0, [0, 1], "GPU-…", '
                               '"00000000:07:00.0" or a model glob like "*H100*")')
        selector = self.selector(base + ["select"], g.get("select"))
        mig = g.get("mig")
        if not isinstance(mig, bool):
            self.problem(base + ["mig"], "missing or not true/false: say mig = true (with instances) or mig = false")
            mig = False
        instances: Tuple[InstanceSpec, ...] = ()
        if "instances" in g:
            if not mig:
                self.problem(base + ["instances"], "instances need mig = true (with mig = false, drop instances)")
            else:
                instances = self.instances(base + ["instances"], g["instances"])
        if len(self.problems) > before or selector is None:
            return None
        return GpuEntry(number=i + 1, selector=selector, mig=mig, instances=instances, where=self.where(base))

    def selector(self, key: List[Any], v: Any) -> Optional[GpuSelector]:
        accepted = ('"all", a GPU index (0), a list of indices ([0, 1]), a GPU UUID ("GPU-…"), a PCI bus id '
                    '("00000000:07:00.0") or a model-name glob ("*H100*")')
        if v is None:
            return None
        if isinstance(v, bool):
            self.problem(key, f"must be {accepted}, got {v!r}")
            return None
        if isinstance(v, int):
            if not 0 <= v < 64:
                self.problem(key, f"GPU index {v} is out of range (0 to 63)")
                return None
            return GpuSelector("index", (v,))
        if isinstance(v, list):
            if not v or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 64 for x in v):
                self.problem(key, "a list of GPU indices must hold integers from 0 to 63, e.g. [0, 1]")
                return None
            if len(set(v)) != len(v):
                self.problem(key, f"GPU index listed twice in {v}")
                return None
            return GpuSelector("index", tuple(v))
        if isinstance(v, str):
            s = v.strip()
            if s == "all":
                return GpuSelector("all")
            if _UUID_RE.match(s):
                return GpuSelector("uuid", (s.upper().replace("GPU-", "GPU-", 1).lower().replace("gpu-", "GPU-", 1),))
            m = _PCI_RE.match(s)
            if m:
                domain, bus, dev, fn = m.groups()
                return GpuSelector("pci", (f"{int(domain or '0', 16):08X}:{bus.upper()}:{dev.upper()}.{fn}",))
            if s.lower().startswith("gpu-"):
                self.problem(key, f"{v!r} is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
                return None
            if s and len(s) <= 128 and s.isprintable():
                return GpuSelector("glob", (s,))
        self.problem(key, f"must be {accepted}, got {v!r}")
        return None

    def instances(self, key: List[Any], v: Any) -> Tuple[InstanceSpec, ...]:
        out: List[InstanceSpec] = []
        if isinstance(v, dict):  # { "1g.10gb" = 7 }: counts, in the order written
            for profile, count in v.items():
                k = key + [profile]
                if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INSTANCES:
                    self.problem(k, f"must be an instance count from 0 to {MAX_INSTANCES}, got {count!r}")
                    continue
                if self.profile_ok(k, profile):
                    out += [InstanceSpec(profile=profile, where=self.where(k))] * count
        elif isinstance(v, list):
            for n, item in enumerate(v):
                spec = self.instance(key + [n], item)
                if spec:
                    out.append(spec)
        else:
            self.problem(key, 'must be a list (["3g.40gb", "1g.10gb"]) or a count table ({ "1g.10gb" = 7 })')
        if len(out) > MAX_INSTANCES:
            self.problem(key, f"{len(out)} instances: no GPU has more than {MAX_INSTANCES // 8} slots per slice")
            return ()
        names = [s.name for s in out if s.name]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problem(key, f"instance name {name!r} is used twice in one entry")
        return tuple(out)

    def instance(self, key: List[Any], item: Any) -> Optional[InstanceSpec]:
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            return InstanceSpec(profile=str(item), where=self.where(key)) if self.profile_ok(key, item) else None
        if not isinstance(item, dict):
            self.problem(key, 'must be a profile ("1g.10gb", 19, "3g") or a table { profile = …, name = …, '
                              'compute = [...] }')
            return None
        ok = True
        for k in item:
            if k not in _INSTANCE_KEYS:
                self.problem(key + [k], f"unknown key; an instance accepts {', '.join(sorted(_INSTANCE_KEYS))}")
                ok = False
        profile = item.get("profile")
        if profile is None:
            self.problem(key, 'missing "profile"')
            return None
        ok = self.profile_ok(key + ["profile"], profile) and ok
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            self.problem(key + ["name"], "must start with a letter and hold up to 32 letters, digits, _ or -, "
                                         f"got {name!r}")
            ok = False
        compute = item.get("compute", [])
        if not isinstance(compute, list) or not compute and "compute" in item:
            self.problem(key + ["compute"], 'must be a non-empty list of compute profiles, e.g. ["2c.4g.40gb", "2c"]')
            ok = False
            compute = []
        for n, c in enumerate(compute):
            if isinstance(c, bool) or not isinstance(c, (str, int)) or not _COMPUTE_RE.match(str(c).strip()):
                self.problem(key + ["compute", n], f'not a compute profile: {c!r} (e.g. "1c.3g.40gb", "2c", '
                                                   '"3g.40gb" for the whole instance)')
                ok = False
        if not ok:
            return None
        return InstanceSpec(profile=str(profile), name=name, compute=tuple(str(c).strip() for c in compute),
                            where=self.where(key))

    def profile_ok(self, key: List[Any], profile: Any) -> bool:
        if isinstance(profile, bool) or not isinstance(profile, (str, int)) or not _PROFILE_RE.match(str(profile).strip()):
            self.problem(key, f'not a GPU instance profile: {profile!r} (e.g. "1g.10gb", "MIG 1g.10gb", '
                              '"1g.10gb+me", 19, or "1g"…"7g")')
            return False
        return True
