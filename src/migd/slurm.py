"""Slurm GRES for the MIG layout: the node's `Gres=` for slurm.conf and its `gres.conf` lines (`migd export
--format slurm`), with the type names and device files slurmd's `AutoDetect=nvml` derives, so a node configured
from this output is not drained for a GRES mismatch.

What Slurm does (SchedMD/slurm at 284c3b95f08a, src/plugins/gpu/nvml/gpu_nvml.c, gpu_p_get_system_gpu_list()
and _handle_mig(); doc/html/gres.shtml "MIG Management"; doc/man/man5/gres.conf.5):
- Names go through gpu_common_underscorify_tolower() (src/plugins/gpu/common/gpu_common.c): lower case, " " -> "_".
- A MIG device's type: the parent GPU's name cut at its first "-", then the MIG device's own name (NVML:
  "<GPU name> MIG <profile>", reference nvml-mig.md §2.3) from its first "mig_", without the "mig":
  "NVIDIA A100-SXM4-40GB" + "MIG 3g.20gb" -> "nvidia_a100_3g.20gb" (gres.shtml's example type). The profile is the
  compute instance's ("1c.3g.20gb" when it does not span its GPU instance).
- Its files: /dev/nvidia<GPU minor>, then /dev/nvidia-caps/nvidia-cap<N> for the GPU instance and for the compute
  instance, N from /proc/driver/nvidia-caps/mig-minors: "gpu<minor>/gi<GI id>/access N" and
  "gpu<minor>/gi<GI id>/ci<CI id>/access N" (_nvml_get_mig_minor_numbers()). Several files of one device are
  `MultipleFiles=` in gres.conf.
- A GPU without MIG devices (MIG off, or on with no compute instance: Slurm logs an error and falls back) is one
  GPU typed by its whole name ("nvidia_a100-sxm4-40gb"), File=/dev/nvidia<minor>.

Everything here but read_mig_minors() is pure: model types in, text out.
"""

from __future__ import annotations

from ._record import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import MigdError
from .layout import DesiredGpu
from .model import GpuInfo, GpuState
from .plan import GpuPlan

MIG_MINORS = "/proc/driver/nvidia-caps/mig-minors"


@dataclass(frozen=True)
class GresDevice:
    """One `Name=gpu` GRES as slurmd would detect it."""

    gpu: int
    type: str
    files: Tuple[str, ...] = ()  # empty: not knowable yet (a declared MIG device: its GI id is the driver's)
    note: str = ""  # a comment for the admin, printed above the line


def underscorify(name: str) -> str:
    """gpu_common_underscorify_tolower()."""
    return name.lower().replace(" ", "_")


def gpu_type(gpu_name: str) -> str:
    """The type of a whole GPU: "NVIDIA A100-SXM4-40GB" -> "nvidia_a100-sxm4-40gb"."""
    return underscorify(gpu_name)


def mig_type(gpu_name: str, profile: str) -> str:
    """The type of a MIG device of `profile` (a compute-instance profile name, without "MIG ")."""
    parent = underscorify(gpu_name).split("-", 1)[0]
    device = underscorify(f"{gpu_name} MIG {profile}")  # nvmlDeviceGetName() on the MIG device handle
    return parent + device[device.find("mig_") + len("mig"):]


# --- /proc/driver/nvidia-caps/mig-minors ----------------------------------------------------------------------


def read_mig_minors(path: str = MIG_MINORS) -> Dict[str, int]:
    """The nvidia-caps driver's table of capability minors ("gpu0/gi1/ci0/access 13" -> {...: 13}).

    Absent or unreadable: an error, never an empty table (the minors are the driver's, never guessed)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MigdError(f"{path}: cannot read the MIG capability minors ({reason}): without them the device "
                        "files of MIG devices are unknown. Load the NVIDIA driver, use AutoDetect=nvml in "
                        "gres.conf, or `migd export --format slurm --declared` for the Gres= line") from None
    return parse_mig_minors(text, path)


def parse_mig_minors(text: str, path: str = MIG_MINORS) -> Dict[str, int]:
    table: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise MigdError(f"{path}:{number}: expected '<capability> <minor>', found {line.strip()!r}")
        table[parts[0]] = int(parts[1])
    return table


# --- devices --------------------------------------------------------------------------------------------------


def whole_gpu(info: GpuInfo, gpu_minor: int, note: str = "") -> GresDevice:
    return GresDevice(info.index, gpu_type(info.name), (f"/dev/nvidia{gpu_minor}",), note)


_NO_MIG_DEVICE = ("MIG is on but there is no MIG device (no compute instance): slurmd lists the whole GPU, "
                  "which no CUDA job can use")


def live_devices(info: GpuInfo, state: GpuState, gpu_minor: int,
                 minors: Optional[Dict[str, int]]) -> List[GresDevice]:
    """What slurmd's AutoDetect=nvml finds on this GPU now (one device per compute instance). `minors` None: the
    types only (a GPU migd does not manage, in a declared export)."""
    if not state.mig_current:
        return [whole_gpu(info, gpu_minor)]
    out = []
    for gi in state.instances:
        profile = info.profile_by_id(gi.profile_id)
        for ci in gi.compute:
            cp = next((c for c in profile.compute_profiles if c.id == ci.profile_id), None) if profile else None
            if cp is None:
                raise MigdError(f"GPU {info.index}: GPU instance {gi.id} has compute instance {ci.id} of unknown "
                                f"profile {gi.profile_id}/{ci.profile_id}: its Slurm type is unknown")
            if minors is None:
                out.append(GresDevice(info.index, mig_type(info.name, cp.name)))
                continue
            files = [f"/dev/nvidia{gpu_minor}"]
            for cap in (f"gpu{gpu_minor}/gi{gi.id}/access", f"gpu{gpu_minor}/gi{gi.id}/ci{ci.id}/access"):
                if cap not in minors:
                    raise MigdError(f"GPU {info.index}: {MIG_MINORS} has no line for {cap}: refusing to guess the "
                                    f"device file of MIG device {gi.id}/{ci.id}")
                files.append(f"/dev/nvidia-caps/nvidia-cap{minors[cap]}")
            out.append(GresDevice(info.index, mig_type(info.name, cp.name), tuple(files)))
    return out or [whole_gpu(info, gpu_minor, _NO_MIG_DEVICE)]


def declared_devices(info: GpuInfo, mig: bool, plan: GpuPlan, gpu_minor: int) -> List[GresDevice]:
    """What slurmd will find once `plan` (planned on an empty GPU) is applied: types, and files where they do not
    depend on the GPU instance IDs the driver will choose."""
    if not mig:
        return [whole_gpu(info, gpu_minor)]
    out = [GresDevice(info.index, mig_type(info.name, cp.name))
           for a in sorted(plan.assignments, key=lambda a: a.placement.start) for cp in a.instance.compute]
    return out or [whole_gpu(info, gpu_minor, _NO_MIG_DEVICE)]


# --- text -----------------------------------------------------------------------------------------------------


def gres_counts(devices: Sequence[GresDevice]) -> str:
    """slurm.conf's Gres= value: "gpu:nvidia_a100_3g.20gb:2,gpu:nvidia_a100_1g.5gb:3" (first-seen order)."""
    counts: Dict[str, int] = {}
    for d in devices:
        counts[d.type] = counts.get(d.type, 0) + 1
    return ",".join(f"gpu:{t}:{n}" for t, n in counts.items())


def render(node: str, devices: Sequence[GresDevice], declared: bool, config: Optional[str] = None) -> str:
    what = f"the layout {config} declares" if declared else "the live MIG layout"
    out = [f"# Slurm GRES of {node} for {what} (`migd export --format slurm`); types as AutoDetect=nvml names them.",
           "# slurm.conf (GresTypes=gpu; keep the node's other settings):",
           f"NodeName={node} Gres={gres_counts(devices)}"]
    if declared and any(not d.files for d in devices):
        out += ["# gres.conf: a MIG device's files depend on the GPU instance IDs the driver assigns when it creates",
                "# it, so they are known only once the layout exists: let slurmd detect them (it starts after",
                "# migd.service), or run `migd export --format slurm` then.",
                f"NodeName={node} AutoDetect=nvml"]
        return "\n".join(out) + "\n"
    out.append("# gres.conf: either `AutoDetect=nvml` alone (slurmd finds these devices itself), or these lines:")
    for d in devices:
        if d.note:
            out.append(f"# GPU {d.gpu}: {d.note}")
        files = f"MultipleFiles={','.join(d.files)}" if len(d.files) > 1 else f"File={d.files[0]}"
        out.append(f"NodeName={node} AutoDetect=off Name=gpu Type={d.type} {files}")
    return "\n".join(out) + "\n"


# --- from a backend (the one call `migd export --format slurm` makes) ---------------------------------------------


def export(backend: Any, desired: Optional[Dict[int, DesiredGpu]] = None, source: Optional[str] = None,
           node: Optional[str] = None, mig_minors: Optional[str] = None) -> str:
    """The text for this host: live layout, or with `desired` (from config `source`) the layout it declares
    (planned on empty GPUs; GPUs no entry selects keep their live layout). Reads the capability minors only for the
    live layout, from `mig_minors` (HostEnv.mig_minors: the driver's file, or a simulated host's own), else the
    driver's."""
    import socket

    from .plan import plan_gpu

    node = node or socket.gethostname().split(".", 1)[0]  # slurmd's default NodeName: the short host name
    infos = backend.gpus()
    unknown = [i.index for i in infos if i.unknown]
    if unknown:
        raise MigdError(f"GPU {', '.join(map(str, unknown))} lost (fell off the bus) or unreadable: the node's GRES "
                        "cannot be listed")
    declared = desired is not None
    desired = desired or {}
    minors = None if declared else read_mig_minors(mig_minors or MIG_MINORS)
    devices: List[GresDevice] = []
    for info in infos:
        gpu_minor = backend.minor_number(info.index)
        d = desired.get(info.index)
        if d is not None and d.unmanaged:
            raise MigdError(f"GPU {info.index}: instances = \"unmanaged\" ({d.entry.where}): its MIG devices are "
                            "another tool's, so the config declares none; export the live layout instead")
        if d is not None:
            empty = GpuState(mig_current=True, mig_pending=True, persistence=None)
            devices += declared_devices(info, d.mig, plan_gpu(info, d, empty), gpu_minor)
        else:
            devices += live_devices(info, backend.state(info.index), gpu_minor, minors)
    return render(node, devices, declared, source)
