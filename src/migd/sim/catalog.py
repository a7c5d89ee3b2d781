"""Per-model MIG tables for simulated GPUs.

Values come from ../shared/reference/nvml-mig.md §2 and mig-models-2026.md (H100 80GB and H200 measured; those rows
are checked field for field against h100-80gb-hbm3.json and h200-141gb.json by a test). Each GPU-instance profile is keyed by its NVML *profile index*, as the
driver is; the profile *ID* is a field, like `info.id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

ARCH_AMPERE = 7  # NVML_DEVICE_ARCH_AMPERE
ARCH_HOPPER = 9  # NVML_DEVICE_ARCH_HOPPER

# The driver answers profile-info calls for indices below this (NOT_SUPPORTED where the GPU lacks the profile)
# and INVALID_ARGUMENT from here on: measured on R580.
PROFILE_INDEX_END = 17
CI_PROFILE_INDEX_END = 9

# (index, id, name, instances, memory MB, SMs, CE, DEC, ENC, JPG, OFA, placement starts, placement size)
_Row = Tuple[int, int, str, int, int, int, int, int, int, int, int, Tuple[int, ...], int]


@dataclass(frozen=True)
class SimModel:
    key: str
    name: str
    architecture: int
    pci_device_id: int
    memory_total_bytes: int
    compute_slices: int
    memory_slots: int
    sm_per_compute_slice: int  # for compute-instance SM counts (not observed on Hopper: assumed)
    gi_profiles: Dict[int, dict]  # profile index -> info fields, as c_nvmlGpuInstanceProfileInfo_v2_t plus placements

    @property
    def resetless_mig(self) -> bool:
        """Hopper and newer switch MIG mode without a GPU reset, and lose it at reboot (reference §4)."""
        return self.architecture >= ARCH_HOPPER


def _profiles(rows: List[_Row]) -> Dict[int, dict]:
    table = {}
    for idx, pid, name, inst, mem, sm, ce, dec, enc, jpg, ofa, starts, size in rows:
        table[idx] = {
            "id": pid, "isP2pSupported": 0, "sliceCount": _slices(name), "instanceCount": inst,
            "multiprocessorCount": sm, "copyEngineCount": ce, "decoderCount": dec, "encoderCount": enc,
            "jpegCount": jpg, "ofaCount": ofa, "memorySizeMB": mem, "name": "MIG " + name,
            "placements": [(s, size) for s in starts],
        }
    return table


def _slices(name: str) -> int:
    return int(name.split("g.", 1)[0])


_SEVEN = (0, 1, 2, 3, 4, 5, 6)


def _hopper(mem1: int, mem2: int, mem3: int, mem7: int, gb: Tuple[int, int, int, int]) -> Dict[int, dict]:
    """Hopper hardware units are the same on every model; names and memory differ (reference §2.2)."""
    g1, g2, g3, g7 = gb
    return _profiles([
        (0, 19, f"1g.{g1}gb", 7, mem1, 16, 1, 1, 0, 1, 0, _SEVEN, 1),
        (1, 14, f"2g.{g2}gb", 3, mem2, 32, 2, 2, 0, 2, 0, (0, 2, 4), 2),
        (2, 9, f"3g.{g3}gb", 2, mem3, 60, 3, 3, 0, 3, 0, (0, 4), 4),
        (3, 5, f"4g.{g3}gb", 1, mem3, 64, 4, 4, 0, 4, 0, (0,), 4),
        (4, 0, f"7g.{g7}gb", 1, mem7, 132, 8, 7, 0, 7, 1, (0,), 8),
        (7, 20, f"1g.{g1}gb+me", 1, mem1, 16, 1, 1, 0, 1, 1, _SEVEN, 1),
        (9, 15, f"1g.{g2}gb", 4, mem2, 26, 1, 1, 0, 1, 0, (0, 2, 4, 6), 2),
    ])


def _a100(mem1: int, mem2: int, mem3: int, mem7: int, gb: Tuple[int, int, int, int]) -> Dict[int, dict]:
    g1, g2, g3, g7 = gb
    return _profiles([
        (0, 19, f"1g.{g1}gb", 7, mem1, 14, 1, 0, 0, 0, 0, _SEVEN, 1),
        (1, 14, f"2g.{g2}gb", 3, mem2, 28, 2, 1, 0, 0, 0, (0, 2, 4), 2),
        (2, 9, f"3g.{g3}gb", 2, mem3, 42, 3, 2, 0, 0, 0, (0, 4), 4),
        (3, 5, f"4g.{g3}gb", 1, mem3, 56, 4, 2, 0, 0, 0, (0,), 4),
        (4, 0, f"7g.{g7}gb", 1, mem7, 98, 7, 5, 0, 1, 1, (0,), 8),
        (7, 20, f"1g.{g1}gb+me", 1, mem1, 14, 1, 1, 0, 1, 1, _SEVEN, 1),
        (9, 15, f"1g.{g2}gb", 4, mem2, 14, 1, 1, 0, 0, 0, (0, 2, 4, 6), 2),
    ])


_A30 = _profiles([
    (0, 14, "1g.6gb", 4, 5952, 14, 1, 0, 0, 0, 0, (0, 1, 2, 3), 1),
    (1, 5, "2g.12gb", 2, 11968, 28, 2, 2, 0, 0, 0, (0, 2), 2),
    (3, 0, "4g.24gb", 1, 24000, 56, 4, 4, 0, 1, 1, (0,), 4),
    (7, 21, "1g.6gb+me", 1, 5952, 14, 1, 1, 0, 1, 1, (0, 1, 2, 3), 1),
    (8, 6, "2g.12gb+me", 1, 11968, 28, 2, 2, 0, 1, 1, (0, 2), 2),
])

GIB = 1024 ** 3

MODELS: Dict[str, SimModel] = {
    m.key: m
    for m in (
        SimModel("a100-40gb", "NVIDIA A100-SXM4-40GB", ARCH_AMPERE, 0x20B010DE, 40 * GIB, 7, 8, 14,
                 _a100(4864, 9856, 19968, 40192, (5, 10, 20, 40))),
        SimModel("a100-80gb", "NVIDIA A100-SXM4-80GB", ARCH_AMPERE, 0x20B210DE, 80 * GIB, 7, 8, 14,
                 _a100(9728, 19968, 40192, 80384, (10, 20, 40, 80))),
        SimModel("a30", "NVIDIA A30", ARCH_AMPERE, 0x20B710DE, 24 * GIB, 4, 4, 14, _A30),
        SimModel("h100-80gb", "NVIDIA H100 80GB HBM3", ARCH_HOPPER, 0x233010DE, 85520809984, 7, 8, 16,
                 _hopper(9984, 20096, 40448, 81152, (10, 20, 40, 80))),
        SimModel("h100-94gb", "NVIDIA H100 NVL", ARCH_HOPPER, 0x232110DE, 100485038080, 7, 8, 16,
                 _hopper(11008, 22144, 47488, 95360, (12, 24, 47, 94))),
        SimModel("h200", "NVIDIA H200", ARCH_HOPPER, 0x233510DE, 150754820096, 7, 8, 16,
                 _hopper(16384, 33280, 71424, 143360, (18, 35, 71, 141))),
    )
}

HOSTS: Dict[str, str] = {
    "dgx-a100": "a100-40gb:8",
    "dgx-h100": "h100-80gb:8",
}

def compute_profiles(model: SimModel, gi_info: dict) -> Dict[int, dict]:
    """CI profiles a GI of this profile offers, keyed by CI index, as the driver's info structs (reference §2.3)."""
    from ..model import GpuProfile
    from ..profiles import derive_compute_profiles

    gi = GpuProfile(index=-1, id=gi_info["id"], name=gi_info["name"][len("MIG "):], slices=gi_info["sliceCount"],
                    instance_count=1, memory_mb=0, multiprocessors=gi_info["multiprocessorCount"], copy_engines=0,
                    decoders=0, encoders=0, jpegs=0, ofas=0, placements=())
    return {
        cp.index: {
            "id": cp.id, "sliceCount": cp.slices, "instanceCount": cp.instance_count,
            "multiprocessorCount": cp.multiprocessors, "sharedCopyEngineCount": gi_info["copyEngineCount"],
            "sharedDecoderCount": gi_info["decoderCount"], "sharedEncoderCount": gi_info["encoderCount"],
            "sharedJpegCount": gi_info["jpegCount"], "sharedOfaCount": gi_info["ofaCount"], "name": "MIG " + cp.name,
            "placements": [(p.start, p.size) for p in cp.placements],  # end to end, as NVIDIA's mocks (assumed)
        }
        for cp in derive_compute_profiles(gi, model.sm_per_compute_slice)
    }


def parse_host_spec(spec: str) -> List[SimModel]:
    """`dgx-a100`, `h100-80gb:2,a30`, ... -> one model per GPU, in index order. Raises ValueError."""
    spec = HOSTS.get(spec.strip(), spec)
    models: List[SimModel] = []
    for part in spec.split(","):
        part = part.strip()
        key, _, count = part.partition(":")
        if key not in MODELS:
            raise ValueError(
                f"unknown simulated GPU model {key!r}; known: {', '.join(MODELS)}; hosts: {', '.join(HOSTS)}")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"bad GPU count in {part!r}: expected MODEL:COUNT, e.g. h100-80gb:2") from None
        if not 1 <= n <= 64:
            raise ValueError(f"bad GPU count in {part!r}: 1 to 64")
        models.extend([MODELS[key]] * n)
    if len(models) > 64:
        raise ValueError(f"{len(models)} GPUs in {spec!r}: a simulated host has 1 to 64")
    return models
