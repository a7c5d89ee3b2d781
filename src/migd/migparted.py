"""`migd import --from mig-parted FILE [--name CONFIG]`: one named config of a mig-parted config.yaml as a migd.toml.
Pure: text in, text out; touches no GPU.

mig-parted (NVIDIA/mig-parted, api/spec/v1) walks a config's entries in order and applies every one matching a GPU
(`device-filter` on the PCI device ID, optionally with the subsystem ID; `devices` "all" or indices), so the last
matching entry decides: migd's "last matching [[gpu]] wins" gives the same result, entry for entry. `mig-devices`
are counts by profile name (mig-parted searches creation orders; migd places them exactly itself). What migd
cannot express (an index list together with a device filter, compute-instance profiles as counts) is an error
naming the YAML path and line, never a silently different layout.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from . import miniyaml
from .errors import ConfigError, Problem

MAX_BYTES = 1 << 20
_ENTRY_KEYS = ("device-filter", "devices", "mig-enabled", "mig-devices")
_DEVICE_ID = re.compile(r"0x[0-9a-fA-F]{8}(:0x[0-9a-fA-F]{8})?\Z")
_GI_PROFILE = re.compile(r"[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*\Z")
_CI_PROFILE = re.compile(r"[1-8]c\.[1-8]g\.\d{1,4}gb([+-][a-z.]{1,8})*\Z")


class _Reader:
    def __init__(self, path: str, doc: miniyaml.Document):
        self.path, self.doc = path, doc
        self.problems: List[Problem] = []

    def problem(self, key: Tuple[Any, ...], message: str) -> None:
        self.problems.append(Problem(message, self.path, self.doc.line(key), yaml_path(key)))


def yaml_path(key: Tuple[Any, ...]) -> str:
    """("mig-configs", "all-balanced", 2, "devices") -> "mig-configs.all-balanced[2].devices"."""
    out = ""
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else (("." if out else "") + str(k))
    return out


def read(path: str) -> str:
    """The YAML file's text; unreadable, huge or not UTF-8: ConfigError (exit 2)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError.one(f"cannot read: {e.strerror}", path) from None
    if len(data) > MAX_BYTES:
        raise ConfigError.one(f"larger than {MAX_BYTES // 1024} KiB: not a mig-parted config", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError.one(f"not UTF-8 text (byte {e.start})", path, data[:e.start].count(b"\n") + 1) from None


def convert(text: str, path: str, name: Optional[str] = None) -> str:
    """The migd.toml for config `name` (the only one when None). Raises ConfigError naming YAML path and line."""
    doc = _parse(text, path)
    configs = _configs(doc, path)
    if name is None:
        if len(configs) != 1:
            raise ConfigError.one(f"{len(configs)} configs: choose one with --name ({', '.join(configs)})", path)
        name = next(iter(configs))
    if name not in configs:
        close = difflib.get_close_matches(name, list(configs), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError.one(f"no config named {name!r}: {hint}the file has {', '.join(configs)}", path,
                              doc.line(("mig-configs",)), "mig-configs")
    r = _Reader(path, doc)
    entries = configs[name]
    base: Tuple[Any, ...] = ("mig-configs", name)
    if not isinstance(entries, list) or not entries:
        r.problem(base, "must be a non-empty list of entries (- devices: …, mig-enabled: …)")
        raise ConfigError(r.problems)
    blocks = [_entry(r, base + (n,), e) for n, e in enumerate(entries)]
    if r.problems:
        raise ConfigError(r.problems)
    head = [f"# migd.toml from mig-parted config {name!r} of {path} (`migd import --from mig-parted`).",
            "# mig-parted applies every entry that matches a GPU, in order; here the last matching [[gpu]] wins: the",
            "# same result. Placements are migd's own (exact, the same at every boot): see `migd plan`.",
            "# A GPU no entry selects is left alone; a profile a GPU does not offer is an error (migd validate).",
            ""]
    return "\n".join(head) + "\n" + "\n".join(blocks)


def _parse(text: str, path: str) -> miniyaml.Document:
    try:
        return miniyaml.parse(text)
    except miniyaml.YamlError as e:
        raise ConfigError.one(f"YAML: {str(e).split(': ', 1)[1]}", path, e.line) from None


def _configs(doc: miniyaml.Document, path: str) -> Dict[str, Any]:
    v = doc.value
    if not isinstance(v, dict):
        raise ConfigError.one("not a mig-parted config (expected 'version: v1' and 'mig-configs:')", path)
    problems = []
    for key in v:
        if key not in ("version", "mig-configs"):
            problems.append(Problem("unknown key; a mig-parted config has version and mig-configs", path,
                                    doc.line((key,)), key))
    if v.get("version") != "v1":
        problems.append(Problem(f"must be v1 (the only mig-parted spec version), got {v.get('version')!r}", path,
                                doc.line(("version",)), "version"))
    configs = v.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        problems.append(Problem("must map config names to entries", path, doc.line(("mig-configs",)), "mig-configs"))
    if problems:
        raise ConfigError(problems)
    assert isinstance(configs, dict)
    return configs


def _entry(r: _Reader, key: Tuple[Any, ...], e: Any) -> str:
    before = len(r.problems)
    if not isinstance(e, dict):
        r.problem(key, "must be a mapping with devices, mig-enabled and mig-devices")
        return ""
    for k in e:
        if k not in _ENTRY_KEYS:
            r.problem(key + (k,), f"unknown key; an entry accepts {', '.join(_ENTRY_KEYS)}")
    select = _select(r, key, e)
    enabled = e.get("mig-enabled")
    if not isinstance(enabled, bool):
        r.problem(key + ("mig-enabled",), "missing or not true/false")
    devices = e.get("mig-devices")
    counts: List[Tuple[str, int]] = []
    if enabled is False and devices:
        r.problem(key + ("mig-devices",), "mig-devices with mig-enabled: false (mig-parted refuses this too)")
    elif enabled is True:
        if devices is None and "mig-devices" not in e:
            r.problem(key, "mig-enabled: true needs mig-devices (use {} for MIG on without instances)")
        elif devices is not None and not isinstance(devices, dict):
            r.problem(key + ("mig-devices",), "must map profile names to counts")
        else:
            counts = _counts(r, key + ("mig-devices",), devices or {})
    if len(r.problems) > before:
        return ""
    where = f"{r.path}:{r.doc.line(key)}"
    out = [f"# {yaml_path(key)} ({where})", "[[gpu]]", f"select = {select}", f"mig = {'true' if enabled else 'false'}"]
    if counts:
        out.append("instances = { " + ", ".join(f"{json.dumps(p)} = {n}" for p, n in counts) + " }")
    return "\n".join(out) + "\n"


def _select(r: _Reader, key: Tuple[Any, ...], e: Dict[str, Any]) -> str:
    devices = e.get("devices")
    indices: Optional[List[int]] = None
    if devices == "all":
        pass
    elif isinstance(devices, list) and devices and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 64
                                                       for d in devices):
        if len(set(devices)) != len(devices):
            r.problem(key + ("devices",), f"a GPU index is listed twice in {devices}")
        indices = devices
    else:
        r.problem(key + ("devices",), f'must be "all" or a list of GPU indices from 0 to 63, got {devices!r}')
    raw = e.get("device-filter")
    if raw is None:
        return "[" + ", ".join(map(str, indices)) + "]" if indices is not None else '"all"'
    filters = raw if isinstance(raw, list) else [raw]
    bad = [f for f in filters if not isinstance(f, str) or not _DEVICE_ID.match(f.strip())]
    if not filters or bad:
        r.problem(key + ("device-filter",), "must be PCI device IDs like \"0x233010DE\" (device and vendor) or "
                                            f"\"0x233010DE:0x16C110DE\" (with the subsystem ID), got {bad or raw!r}")
        return ""
    if indices is not None:
        # migd selects a GPU one way per entry (index, or device ID); "these indices, if of this model" is not one
        r.problem(key + ("devices",), "a device-filter together with a list of GPU indices cannot be expressed in "
                                      "migd (one selector per [[gpu]]): use devices: all, or drop the filter and "
                                      "list the indices")
        return ""
    return "[" + ", ".join(json.dumps(_norm_id(f)) for f in filters) + "]"


def _norm_id(text: str) -> str:
    device, _, subsystem = text.strip().partition(":")
    return "0x" + device[2:].upper() + (":0x" + subsystem[2:].upper() if subsystem else "")


def _counts(r: _Reader, key: Tuple[Any, ...], devices: Dict[str, Any]) -> List[Tuple[str, int]]:
    out = []
    before = len(r.problems)
    for profile, count in devices.items():
        k = key + (profile,)
        name = str(profile).strip()
        if _CI_PROFILE.match(name):
            r.problem(k, f"compute-instance profile {name!r} as a count: mig-parted packs such compute instances "
                         "into GPU instances by trial; migd needs them written per GPU instance, e.g. instances = "
                         f"[{{ profile = {json.dumps(name.split('.', 1)[1])}, compute = [{json.dumps(name)}, …] }}]")
            continue
        if not _GI_PROFILE.match(name):
            r.problem(k, f"not a MIG profile name: {name!r} (e.g. \"1g.10gb\", \"1g.10gb+me\")")
            continue
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 64:
            r.problem(k, f"must be an instance count from 0 to 64, got {count!r}")
            continue
        if count:
            out.append((name, count))
    if devices and not out and len(r.problems) == before:
        r.problem(key, "every count is 0 (mig-parted refuses this): use mig-devices: {} for MIG on, no instances")
    return out
