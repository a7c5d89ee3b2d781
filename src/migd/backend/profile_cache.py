"""Caches of the GPUs' profile tables: per boot in <run dir>/profiles.json, across boots in <state dir>/profiles.json.

A GPU's profile table (GI profiles with their placements, the CI profiles derived from them) is ~25 NVML reads per
GPU and fixed for one driver version and one GPU model - but on drivers before R550 it is empty while MIG is off.
So an entry is used only when all of these match what was just read live: the boot (kernel boot_id; for simulated
GPUs the simulated host's boot), the driver version, the GPU's UUID, its PCI device ID, and the MIG mode (a table
read with MIG on answers for MIG on only; a non-empty one read with MIG off for both: drivers that list profiles
with MIG off list the same ones with MIG on).
Anything else - another boot, driver, GPU or mode, a file that does not parse or does not validate field by field,
a file or directory that someone other than root (or, for a non-root reader, that user) owns or can write - is a
miss: the table is read from the driver. A cache can make a run faster, never its answer different.

Written (atomically, 0644, under the run directory's own checks) by the verbs that run as the service or change
GPUs - `apply`, `boot`, `watch` - so that the first one of a boot (migd.service) leaves it for every later run.
Read verbs only read it: they leave the run directory as they found it.

The same file format, checks and code serve the cache that survives reboots (/var/lib/migd/profiles.json, the
state directory; `boot_id` None): the first boot after an install or a driver update reads the tables live and
leaves them there, every later boot's apply reads them from it. Without the boot to vouch for the hardware, its
entries are also keyed by the board (`board`: PCI subsystem ID and VBIOS version, read live each time - the VBIOS
is one NVML read, asked only where an entry could match): driver version, PCI device and subsystem IDs, VBIOS, UUID
and MIG mode are everything a profile table depends on. The per-boot cache is asked first; a table found in the
lasting one is copied into it, so later runs of the boot need not read the VBIOS either.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, List, Optional, Tuple

from ..model import ComputeProfile, GpuProfile, Placement

FILE = "profiles.json"
VERSION = 1
_MAX_BYTES = 4 << 20  # a table is ~10 KiB per GPU: anything this big is not ours


class ProfileCache:
    def __init__(self, directory: str, boot_id: Optional[str], write: bool = False):
        self.directory = directory
        self.boot_id = boot_id
        self.write = write
        self._doc: Optional[Dict[str, Any]] = None  # the file's GPU entries, read once per process
        self._dirty: Dict[str, Dict[str, Any]] = {}  # entries to write: uuid -> entry
        self._driver = ""

    @property
    def path(self) -> str:
        return os.path.join(self.directory, FILE)

    def candidate(self, driver: str, uuid: str, pci_device_id: int, mig_current: bool) -> bool:
        """Is there an entry for this driver, GPU, PCI device ID and mode (before reading what else keys it)?"""
        entry = self._entries(driver).get(uuid)
        return isinstance(entry, dict) and entry.get("pci_device_id") == pci_device_id \
            and type(entry.get("modes")) is list and mig_current in entry["modes"] \
            and all(type(m) is bool for m in entry["modes"])

    def get(self, driver: str, uuid: str, pci_device_id: int, mig_current: bool,
            board: Optional[Dict[str, Any]] = None) -> Optional[Tuple[GpuProfile, ...]]:
        """The table of an entry that matches all of the key (`board`: what else keys a lasting entry), or None."""
        if not self.candidate(driver, uuid, pci_device_id, mig_current):
            return None
        entry = self._entries(driver)[uuid]
        if entry.get("board") != board:
            return None
        try:
            return tuple(_profile(p) for p in _list(entry.get("profiles")))
        except (TypeError, ValueError, KeyError):
            return None

    def put(self, driver: str, uuid: str, pci_device_id: int, mig_current: bool,
            profiles: Tuple[GpuProfile, ...], board: Optional[Dict[str, Any]] = None) -> None:
        if self.write and profiles and uuid:
            self._driver = driver
            # Read with MIG off, a table is the driver's answer for both modes (R550+: the same table, as
            # nvml.set_mig_mode relies on too); read with MIG on, only for MIG on (older drivers list nothing
            # with MIG off).
            modes = [True] if mig_current else [False, True]
            entry: Dict[str, Any] = {"pci_device_id": pci_device_id, "modes": modes,
                                     "profiles": [_profile_doc(p) for p in profiles]}
            if board is not None:
                entry["board"] = board
            self._dirty[uuid] = entry

    def flush(self) -> None:
        """Write what was read live (with the entries still valid for this boot and driver). Best effort: a run
        that cannot write the run directory (not root, a read-only /run) works as before, only without a cache."""
        if not self._dirty:
            return
        from .. import runstate  # only writers need it

        entries = dict(self._entries(self._driver))
        entries.update(self._dirty)
        doc = {"version": VERSION, "boot_id": self.boot_id, "driver": self._driver, "gpus": entries}
        try:
            runstate.ensure_run_dir(self.directory)
            runstate.atomic_write(self.path, json.dumps(doc, separators=(",", ":")) + "\n")
        except (OSError, runstate.RunDirError):
            return
        self._doc = {"driver": self._driver, "gpus": entries}
        self._dirty = {}

    # --- reading ---------------------------------------------------------------------------------------------

    def _entries(self, driver: str) -> Dict[str, Any]:
        if self._doc is None:
            self._doc = _load(self.path, self.directory, self.boot_id) or {}
        if self._doc.get("driver") != driver:
            return {}
        gpus = self._doc.get("gpus")
        return gpus if isinstance(gpus, dict) else {}


def _trusted_uids() -> Tuple[int, ...]:
    euid = os.geteuid()
    return (0,) if euid == 0 else (0, euid)


def untrusted(st: os.stat_result, what: str) -> Optional[str]:
    """Why a cache file or its directory cannot be trusted, or None."""
    if st.st_uid not in _trusted_uids():
        return f"{what} owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"{what} writable by group/others"
    return None


def _load(path: str, directory: str, boot_id: Optional[str]) -> Optional[Dict[str, Any]]:
    try:
        dst = os.lstat(directory)
        if not stat.S_ISDIR(dst.st_mode) or untrusted(dst, "directory"):
            return None
        # O_NONBLOCK: a FIFO planted here must not hang a verb on open (it is then refused as not a regular file)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > _MAX_BYTES or untrusted(st, "file"):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            doc = json.loads(f.read(_MAX_BYTES + 1))
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[...": deeper than the parser's stack
        return None
    finally:
        os.close(fd)
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("boot_id") != boot_id \
            or not isinstance(doc.get("driver"), str):
        return None
    return doc


# --- (de)serialization, strict: a field of the wrong type is a miss -------------------------------------------

def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(v)
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise ValueError(v)
    return v


def _list(v: Any) -> List[Any]:
    if type(v) is not list:
        raise ValueError(v)
    return v


def _placements(v: Any) -> Tuple[Placement, ...]:
    return tuple(Placement(_int(start), _int(size)) for start, size in (_list(p) for p in _list(v)))


def _profile(d: Any) -> GpuProfile:
    if type(d) is not dict:
        raise ValueError(d)
    graphics = d["graphics"]
    if type(graphics) is not bool:
        raise ValueError(graphics)
    compute = tuple(ComputeProfile(
        index=_int(c["index"]), id=_int(c["id"]), name=_str(c["name"]), slices=_int(c["slices"]),
        instance_count=_int(c["instance_count"]), multiprocessors=_int(c["multiprocessors"]),
        placements=_placements(c["placements"])) for c in _list(d["compute_profiles"]))
    return GpuProfile(
        index=_int(d["index"]), id=_int(d["id"]), name=_str(d["name"]), slices=_int(d["slices"]),
        instance_count=_int(d["instance_count"]), memory_mb=_int(d["memory_mb"]),
        multiprocessors=_int(d["multiprocessors"]), copy_engines=_int(d["copy_engines"]),
        decoders=_int(d["decoders"]), encoders=_int(d["encoders"]), jpegs=_int(d["jpegs"]), ofas=_int(d["ofas"]),
        placements=_placements(d["placements"]), compute_profiles=compute, graphics=graphics)


def _profile_doc(p: GpuProfile) -> Dict[str, Any]:
    return {"index": p.index, "id": p.id, "name": p.name, "slices": p.slices, "instance_count": p.instance_count,
            "memory_mb": p.memory_mb, "multiprocessors": p.multiprocessors, "copy_engines": p.copy_engines,
            "decoders": p.decoders, "encoders": p.encoders, "jpegs": p.jpegs, "ofas": p.ofas,
            "placements": [[x.start, x.size] for x in p.placements], "graphics": p.graphics,
            "compute_profiles": [{"index": c.index, "id": c.id, "name": c.name, "slices": c.slices,
                                  "instance_count": c.instance_count, "multiprocessors": c.multiprocessors,
                                  "placements": [[x.start, x.size] for x in c.placements]}
                                 for c in p.compute_profiles]}


def boot_id() -> Optional[str]:
    """This boot's identity (the kernel's random boot_id), or None: no cache without one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
