"""/etc/migd.toml (and its drop-ins, /etc/migd.d/*.toml) -> a validated Config. Reads files, touches no GPU.

Every problem names file, line and key path and says what is accepted; all problems are reported at once.
Which files may be read and how is trust.py's job; a key's line comes from tomlpos.py (TOML parsers give no
positions for valid documents). This module validates: every key, type and value, [daemon] from a table.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from . import hostnames, trust
from .errors import ConfigError, Problem, printable
from .model import (CdiRefresh, Config, DaemonSettings, DriftPolicy, GpuEntry, GpuSelector, InstanceSpec, Location,
                    OnPending, SelectorKind, entry_label, name_variable)
from .profiles import strip_mig
from .suggest import did_you_mean
from .tomlpos import BARE_KEY, Locator, line_from_message, strip_position
from .trust import DROPIN_DIR as DROPIN_DIR  # config's API, from the module that owns each
from .trust import MAX_BYTES as MAX_BYTES
from .trust import UntrustedConfig as UntrustedConfig
from .trust import dropin_paths as dropin_paths
from .trust import fingerprint as fingerprint
from .trust import trusted_owner as trusted_owner
from .trust import untrusted as _untrusted  # noqa: F401 (tests check the trust rules through config)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10 (RHEL 9, Ubuntu 22.04)
    import tomli as tomllib

DEFAULT_PATH = "/etc/migd.toml"
MAX_INSTANCES = 64

_GPU_KEYS = {"select", "hosts", "mig", "instances"}
_INSTANCE_KEYS = {"profile", "name", "compute"}
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


def load(path: str = DEFAULT_PATH, owner: Optional[int] = None) -> Config:
    """Read and parse a config file and its drop-ins (see dropin_paths). With `owner` (see trusted_owner), refuse
    a file that anyone but root or `owner` could have written, like sshd's StrictModes: migd running as root must
    not act on a layout (or run the stop_clients units) an unprivileged user can change. That holds for every
    drop-in and the drop-in directory too (each drop-in's check covers the directories above it)."""
    files = [(path, trust.read_file(path, owner))]
    if owner is not None:  # the directory itself: whoever can write it can remove or hide root's drop-ins
        trust.check_dropin_dir(os.path.join(os.path.dirname(path), DROPIN_DIR), owner)
    files += [(p, trust.read_file(p, owner, dropin=True)) for p in dropin_paths(path)]
    names: Dict[str, Tuple[str, str]] = {}  # one devices.env namespace for the main file and every drop-in
    return _merge([_parse_file(text, p, names) for p, text in files])


def load_for_verb(path: str, privileged: bool = False, checking: bool = False,
                  warn: Callable[[UntrustedConfig], None] = lambda _: None) -> Config:
    """The config as a verb needs it trusted. privileged: the verb may change GPUs, so as root the file must be one
    only root can change (sshd-style). checking (validate, plan): say what apply would say. As root that is apply's
    own check, an error; as another user the same check, trusting that user too (a file in a checkout is the
    user's), as `warn`: the file is deployed elsewhere and the owner changes, but a group-writable file or drop-in
    directory would still be refused at boot. Otherwise (a read verb) no check."""
    owner = trusted_owner()
    if privileged or (checking and owner is not None):
        return load(path, owner=owner)
    if checking:
        try:
            return load(path, owner=os.geteuid())
        except UntrustedConfig as e:
            warn(e)
    return load(path)


def _device_id(text: str) -> str:
    """ "0x233010de" -> "0x233010DE" (and ":0x…" subsystem ID), the form GpuSelector keeps; "" if not one."""
    m = _DEVICE_ID_RE.match(text.strip())
    if not m:
        return ""
    return f"0x{m.group(1).upper()}" + (f":0x{m.group(2).upper()}" if m.group(2) else "")


def parse(text: str, path: str = "<config>") -> Config:
    return _merge([_parse_file(text, path)])


def _parse_file(text: str, path: str, names: Optional[Dict[str, Tuple[str, str]]] = None) -> _Parser:
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
        p.problems.append(Problem(f"TOML syntax: {strip_position(str(e))}", path,
                                  getattr(e, "lineno", None) or line_from_message(str(e), text)))
        return p
    except RecursionError:
        p.problems.append(Problem("nesting too deep: not a migd layout file", path))
        return p
    except ValueError as e:  # Python 3.11+: an integer literal longer than int() converts
        p.problems.append(Problem(f"unreadable value: {e}", path))
        return p
    p.config(doc)
    return p


def _merge(files: Sequence[_Parser]) -> Config:
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
        name = str(part) if BARE_KEY.fullmatch(str(part)) else json.dumps(str(part), ensure_ascii=False)
        if len(name) > 60:
            name = name[:59] + "…"
        out += (" " if after_index else ".") + name if out else name
        after_index = False
    return out


# --- [daemon]: one checker per key. Each returns the value to keep, or the problems (sub-key, message). -------

_Problems = List[Tuple[Tuple[Any, ...], str]]
_Checked = Tuple[Any, _Problems]


def _bad(message: str) -> _Checked:
    return None, [((), message)]


def _seconds(lo: int, hi: int) -> Callable[[Any], _Checked]:
    def check(v: Any) -> _Checked:
        # the range test first: math.isfinite() cannot take an integer too large for a float
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or not math.isfinite(v):
            return _bad(f"must be a number of seconds from {lo} to {hi}, got {_show(v)}")
        return float(v), []
    return check


def _policy(policy: Type[Enum]) -> Callable[[Any], _Checked]:
    def check(v: Any) -> _Checked:
        if v not in _words(policy):
            return _bad(_one_of(_words(policy), v))
        return policy(v), []
    return check


def _flag(v: Any) -> _Checked:
    if not isinstance(v, bool):
        return _bad(f"must be true or false, got {_show(v)}")
    return v, []


def _units(v: Any) -> _Checked:
    if not isinstance(v, list) or not all(isinstance(u, str) and _UNIT_RE.match(u) for u in v):
        return _bad('must be a list of systemd unit names, e.g. ["nvidia-dcgm.service", "nvsm.service"]')
    return tuple(v), []


def _metrics_file(v: Any) -> _Checked:
    # node_exporter's textfile collector reads only *.prom: any other name would never be scraped
    absolute_prom = isinstance(v, str) and v.startswith("/") and v.endswith(".prom")
    if not isinstance(v, str) or (v and not (absolute_prom and "\n" not in v and "\0" not in v)):
        return _bad('must be an absolute path ending in ".prom" (node_exporter\'s textfile collector reads only '
                    f'*.prom), or "" for no metrics, got {_show(v)}')
    return v, []


def _gpu_clients(v: Any) -> _Checked:
    from . import gpuclients  # only for a config that sets it (the generator's import budget)

    if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
        return _bad(f"must be a list of service names or globs, e.g. {gpuclients.EXAMPLE}, got {_show(v)}")
    problems: _Problems = []
    for i, name in enumerate(v):
        _, why = gpuclients.parse(name)
        if why:
            problems.append(((i,), why))
    return tuple(dict.fromkeys(v)), problems


_DAEMON: Dict[str, Callable[[Any], _Checked]] = {
    "watch_interval": _seconds(1, 86400),
    "driver_wait_timeout": _seconds(0, 3600),
    "lock_timeout": _seconds(0, 3600),
    "drift_policy": _policy(DriftPolicy),
    "on_pending": _policy(OnPending),
    "persistence_mode": _flag,
    "stop_clients": _units,
    "cdi_refresh": _policy(CdiRefresh),
    "metrics_file": _metrics_file,
    "gpu_clients": _gpu_clients,
}
_DAEMON_KEYS = set(_DAEMON)

_SELECT_ACCEPTED = ('"all", a GPU index (0), a list of indices ([0, 1]), a GPU UUID ("GPU-…"), a PCI bus id '
                    '("00000000:07:00.0"), PCI device IDs ("0x233010DE", ["0x233010DE", "0x233110DE"]) or a '
                    'model-name glob ("*H100*")')


class _Parser:
    def __init__(self, path: str, text: str, name_vars: Optional[Dict[str, Tuple[str, str]]] = None):
        self.path = path
        self.locate = Locator(text)
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
        values: Dict[str, Any] = {}
        for key, check in _DAEMON.items():  # in the table's order: problems on one line keep it
            if key in d:
                value, problems = check(d[key])
                for sub, message in problems:
                    self.problem(["daemon", key, *sub], message)
                if not problems:
                    values[key] = value
        self.daemon_values = values
        return DaemonSettings(**{**DaemonSettings().__dict__, **values})

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
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v < 64:
                self.problem(key, f"GPU index {_show(v)} is out of range (0 to 63)")
                return None
            return GpuSelector(SelectorKind.INDEX, (v,))
        if isinstance(v, list):
            return self.list_selector(key, v)
        if isinstance(v, str):
            return self.string_selector(key, v)
        self.problem(key, f"must be {_SELECT_ACCEPTED}, got {_show(v)}")
        return None

    def list_selector(self, key: List[Any], v: List[Any]) -> Optional[GpuSelector]:
        if v and all(isinstance(x, str) for x in v):  # PCI device IDs
            ids = [_device_id(x) for x in v]
            if not all(ids):
                self.problem(key, 'a list of PCI device IDs holds strings like "0x233010DE" (device and vendor, as '
                                  f'NVML packs them) or "0x233010DE:0x16C110DE" (with the subsystem ID), got {_show(v)}')
                return None
            return GpuSelector(SelectorKind.DEVICE, tuple(ids))
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 64 for x in v):
            self.problem(key, "a list of GPU indices must hold integers from 0 to 63, e.g. [0, 1]")
            return None
        if len(set(v)) != len(v):
            self.problem(key, f"GPU index listed twice in {v}")
            return None
        return GpuSelector(SelectorKind.INDEX, tuple(v))

    def string_selector(self, key: List[Any], v: str) -> Optional[GpuSelector]:
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
        self.problem(key, f"must be {_SELECT_ACCEPTED}, got {_show(v)}")
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
            out = self.counted(key, v)
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

    def counted(self, key: List[Any], v: Dict[str, Any]) -> List[InstanceSpec]:
        out: List[InstanceSpec] = []
        for profile, count in v.items():
            k = key + [profile]
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INSTANCES:
                self.problem(k, f"must be an instance count from 0 to {MAX_INSTANCES}, got {_show(count)}")
                continue
            if self.profile_ok(k, profile):
                out += [InstanceSpec(profile=profile, at=self.at(k))] * count
        return out

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
        ok = (name is None or self.name_ok(key + ["name"], name)) and ok
        compute = item.get("compute", [])
        ok = self.compute_ok(key + ["compute"], compute) and ok
        if not ok:
            return None
        return InstanceSpec(profile=str(profile), name=name,
                            compute=tuple(str(c).strip() for c in compute) if "compute" in item else None,
                            at=self.at(key))

    def name_ok(self, key: List[Any], name: Any) -> bool:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            self.problem(key, f"must start with a letter and hold up to 32 letters, digits, _ or -, got {_show(name)}")
            return False
        return self.name_variable_ok(key, name)

    def compute_ok(self, key: List[Any], compute: Any) -> bool:
        if not isinstance(compute, list):  # [] is allowed: a GPU instance with no compute instance (yet)
            self.problem(key, 'must be a list of compute profiles, e.g. ["2c.4g.40gb", "2c"]')
            return False
        ok = True
        for n, c in enumerate(compute):
            if isinstance(c, bool) or not isinstance(c, (str, int)) or not _COMPUTE_RE.match(str(c).strip()):
                self.problem(key + [n], f'not a compute profile: {_show(c)} (e.g. "1c.3g.40gb", "2c", '
                                        '"3g.40gb" for the whole instance)')
                ok = False
        return ok

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
