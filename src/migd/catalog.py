"""Per-model MIG tables for simulated GPUs.

Values come from ../shared/reference/nvml-mig.md §2 and mig-models-2026.md (H100 80GB and H200 measured; those rows
are checked field for field against h100-80gb-hbm3.json and h200-141gb.json by a test). Each GPU-instance profile
is keyed by its NVML *profile index*, as the driver is; the profile *ID* is a field, like `info.id`.
"""

from __future__ import annotations

from ._record import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ARCH_AMPERE = 7  # NVML_DEVICE_ARCH_AMPERE
ARCH_HOPPER = 9  # NVML_DEVICE_ARCH_HOPPER
ARCH_BLACKWELL = 10  # NVML_DEVICE_ARCH_BLACKWELL

# The driver answers profile-info calls for indices below this (NOT_SUPPORTED where the GPU lacks the profile)
# and INVALID_ARGUMENT from here on: measured on R580.
PROFILE_INDEX_END = 17
CI_PROFILE_INDEX_END = 9

GPU_INSTANCE_PROFILE_CAPS_GFX = 0x2  # nvml.h: capabilities bit of nvmlGpuInstanceProfileInfo_v3_t

# (index, id, name, instances, memory MB, SMs, CE, DEC, ENC, JPG, OFA, placement starts, placement size)
_Row = Tuple[int, int, str, int, int, int, int, int, int, int, int, Tuple[int, ...], int]


@dataclass(frozen=True)
class SimModel:
    key: str
    name: str  # as nvmlDeviceGetName spells it
    architecture: int
    pci_device_id: int
    memory_total_bytes: int
    compute_slices: int
    memory_slots: int
    sm_per_compute_slice: int  # SMs of a 1-slice compute instance inside a bigger GI (A100: documented)
    gi_profiles: Dict[int, Dict[str, Any]]  # profile index -> info fields, as c_nvmlGpuInstanceProfileInfo_v3_t plus placements
    source: str = ""  # where the identity (name, PCI ID) and the table come from
    notes: Dict[int, str] = field(default_factory=dict)  # profile ID -> source of that row, and what is assumed

    @property
    def resetless_mig(self) -> bool:
        """Hopper and newer switch MIG mode without a GPU reset, and lose it at reboot (reference §4)."""
        return self.architecture >= ARCH_HOPPER

    @property
    def media_engines(self) -> Tuple[int, int, int]:
        """(decoders, encoders, JPEG engines) of the whole GPU: what its full-size profile gets (reference §2.1)."""
        full = max(self.gi_profiles.values(), key=lambda p: (p["sliceCount"], p["decoderCount"]))
        return full["decoderCount"], full["encoderCount"], full["jpegCount"]


def _profiles(rows: List[_Row]) -> Dict[int, Dict[str, Any]]:
    table = {}
    for idx, pid, name, inst, mem, sm, ce, dec, enc, jpg, ofa, starts, size in rows:
        table[idx] = {
            "id": pid, "isP2pSupported": 0, "sliceCount": _slices(name), "instanceCount": inst,
            "multiprocessorCount": sm, "copyEngineCount": ce, "decoderCount": dec, "encoderCount": enc,
            "jpegCount": jpg, "ofaCount": ofa, "memorySizeMB": mem, "name": "MIG " + name,
            # "+gfx" profiles are the graphics-capable ones (MIG user guide, RTX PRO 6000 table)
            "capabilities": GPU_INSTANCE_PROFILE_CAPS_GFX if "+gfx" in name else 0,
            "placements": [(s, size) for s in starts],
        }
    return table


def _slices(name: str) -> int:
    return int(name.split("g.", 1)[0])


_SEVEN = (0, 1, 2, 3, 4, 5, 6)

# Hardware units per 7-slice profile ID: (SM, CE, DEC, ENC, JPG, OFA). IDs, indices, counts and the 8-slot grid are
# the same on every 7-slice GPU (reference §2.1, §2.2).
_Units = Dict[int, Tuple[int, int, int, int, int, int]]
_A100_UNITS: _Units = {  # documented (guide -lgip, A100-40GB); A100-80GB the same
    19: (14, 1, 0, 0, 0, 0), 20: (14, 1, 1, 0, 1, 1), 15: (14, 1, 1, 0, 0, 0), 14: (28, 2, 1, 0, 0, 0),
    9: (42, 3, 2, 0, 0, 0), 5: (56, 4, 2, 0, 0, 0), 0: (98, 7, 5, 0, 1, 1)}
_HOPPER_UNITS: _Units = {  # measured (H100 80GB, H200)
    19: (16, 1, 1, 0, 1, 0), 20: (16, 1, 1, 0, 1, 1), 15: (26, 1, 1, 0, 1, 0), 14: (32, 2, 2, 0, 2, 0),
    9: (60, 3, 3, 0, 3, 0), 5: (64, 4, 4, 0, 4, 0), 0: (132, 8, 7, 0, 7, 1)}
# B200: 1g/+me/1g double memory/2g reported (-lgip in NVIDIA/mig-parted#187); CE of 3g/4g/7g documented (guide: 6, 8,
# 16). ASSUMED: 3g/4g/7g SMs (18 per slice; 7g = B200's 148 SMs) and their DEC/JPG (one per slice, as on Hopper).
_B200_UNITS: _Units = {
    19: (18, 2, 1, 0, 1, 0), 20: (18, 2, 1, 0, 1, 1), 15: (30, 2, 1, 0, 1, 0), 14: (36, 4, 2, 0, 2, 0),
    9: (54, 6, 3, 0, 3, 0), 5: (72, 8, 4, 0, 4, 0), 0: (148, 16, 7, 0, 7, 1)}
# GB200: 1g/+me/1g double memory/2g reported (-lgip in NVIDIA/mig-parted#227, NVIDIA/gpu-operator#1303): 18, 32 and
# 38 SMs. ASSUMED: 3g/4g/7g as B200's.
_GB200_UNITS: _Units = {
    19: (18, 2, 1, 0, 1, 0), 20: (18, 2, 1, 0, 1, 1), 15: (32, 2, 1, 0, 1, 0), 14: (38, 4, 2, 0, 2, 0),
    9: (54, 6, 3, 0, 3, 0), 5: (72, 8, 4, 0, 4, 0), 0: (148, 16, 7, 0, 7, 1)}


def _seven_slice(mem: Tuple[int, int, int, int], gb: Tuple[str, str, str, str], units: _Units) -> Dict[int, Dict[str, Any]]:
    """A 7-slice GPU: memory MB and name figures for (1g, 2g/1g double memory, 3g/4g, 7g), hardware units per ID."""
    m1, m2, m3, m7 = mem
    g1, g2, g3, g7 = gb

    def row(idx: int, pid: int, name: str, inst: int, mb: int, starts: Tuple[int, ...], size: int) -> _Row:
        return (idx, pid, name, inst, mb) + units[pid] + (starts, size)

    return _profiles([
        row(0, 19, f"1g.{g1}gb", 7, m1, _SEVEN, 1),
        row(1, 14, f"2g.{g2}gb", 3, m2, (0, 2, 4), 2),
        row(2, 9, f"3g.{g3}gb", 2, m3, (0, 4), 4),
        row(3, 5, f"4g.{g3}gb", 1, m3, (0,), 4),
        row(4, 0, f"7g.{g7}gb", 1, m7, (0,), 8),
        row(7, 20, f"1g.{g1}gb+me", 1, m1, _SEVEN, 1),
        row(9, 15, f"1g.{g2}gb", 4, m2, (0, 2, 4, 6), 2),
    ])


def _named_mb(gb: int) -> int:
    """ASSUMED memory where no -lgip is published: the name's decimal GB in MiB, rounded down to the 128 MiB grid
    every A100/Hopper/Blackwell value sits on (reference §2.2). Never a measured figure."""
    return gb * 10 ** 9 // 2 ** 20 // 128 * 128


def _seven_named(gb: Tuple[int, int, int, int], units: _Units,
                 known: Optional[Dict[int, int]] = None) -> Dict[int, Dict[str, Any]]:
    """A 7-slice table from its profile names only; `known` gives reported memory (MB) by size (1, 2, 3, 7)."""
    known = known or {}
    mem = tuple(known.get(k, _named_mb(g)) for k, g in zip((1, 2, 3, 7), gb))
    return _seven_slice(mem, tuple(str(g) for g in gb), units)  # type: ignore[arg-type]


_A30 = _profiles([
    (0, 14, "1g.6gb", 4, 5952, 14, 1, 0, 0, 0, 0, (0, 1, 2, 3), 1),
    (1, 5, "2g.12gb", 2, 11968, 28, 2, 2, 0, 0, 0, (0, 2), 2),
    (3, 0, "4g.24gb", 1, 24000, 56, 4, 4, 0, 1, 1, (0,), 4),
    (7, 21, "1g.6gb+me", 1, 5952, 14, 1, 1, 0, 1, 1, (0, 1, 2, 3), 1),
    (8, 6, "2g.12gb+me", 1, 11968, 28, 2, 2, 0, 1, 1, (0, 2), 2),
])

# RTX PRO 6000 Blackwell (Universal MIG): IDs, names, instance counts, 1g/2g/4g memory and SMs from the MIG user
# guide's RTX PRO 6000 table and the -lgip in GoogleCloudPlatform/container-engine-accelerators#564 (23.62 / 47.38 /
# 95.00 GiB; 46 / 94 / 188 SM); 1g engines from that -lgip and bigstack-oss/cubecos#312 (1g: 1 DEC 1 ENC 1 JPG,
# +me adds the OFA, +me.all has 4 DEC 4 ENC 4 JPG + OFA, -me none). Indices are NVML's enum names for each kind
# (_GFX 0xA-0xC, _NO_ME 0xD-0xE, _ALL_ME 0xF-0x10). ASSUMED: 2g/4g engines (one DEC/ENC/JPG per slice, like 1g;
# 2g+me.all and 4g get all 4 and the OFA), CE one per slice, and the 4-slot grid ({0..3}:1, {0,2}:2, {0}:4: A30's).
_RTX_PRO_6000 = _profiles([
    (0, 14, "1g.24gb", 4, 24192, 46, 1, 1, 1, 1, 0, (0, 1, 2, 3), 1),
    (7, 21, "1g.24gb+me", 1, 24192, 46, 1, 1, 1, 1, 1, (0, 1, 2, 3), 1),
    (0xA, 47, "1g.24gb+gfx", 4, 24192, 46, 1, 1, 1, 1, 0, (0, 1, 2, 3), 1),
    (0xF, 65, "1g.24gb+me.all", 1, 24192, 46, 1, 4, 4, 4, 1, (0, 1, 2, 3), 1),
    (0xD, 67, "1g.24gb-me", 4, 24192, 46, 1, 0, 0, 0, 0, (0, 1, 2, 3), 1),
    (1, 5, "2g.48gb", 2, 48512, 94, 2, 2, 2, 2, 0, (0, 2), 2),
    (0xB, 35, "2g.48gb+gfx", 2, 48512, 94, 2, 2, 2, 2, 0, (0, 2), 2),
    (0x10, 64, "2g.48gb+me.all", 1, 48512, 94, 2, 4, 4, 4, 1, (0, 2), 2),
    (0xE, 66, "2g.48gb-me", 2, 48512, 94, 2, 0, 0, 0, 0, (0, 2), 2),
    (3, 0, "4g.96gb", 1, 97280, 188, 4, 4, 4, 4, 1, (0,), 4),
    (0xC, 32, "4g.96gb+gfx", 1, 97280, 188, 4, 4, 4, 4, 1, (0,), 4),
])

GIB = 1024 ** 3
_MEASURED = "measured on real hardware (tests/data/{})"
_GUIDE = "NVIDIA MIG user guide"


def _notes(table: Dict[int, Dict[str, Any]], text: str, **per_id: str) -> Dict[int, str]:
    """Profile ID -> the row's source; `per_id` ("id19"=...) overrides for single rows."""
    out = {p["id"]: text for p in table.values()}
    for key, value in per_id.items():
        out[int(key[2:])] = value
    return out


def _model(key: str, name: str, arch: int, pci: int, total: int, slices: int, slots: int, sm1: int,
           table: Dict[int, Dict[str, Any]], source: str, **per_id: str) -> SimModel:
    return SimModel(key, name, arch, pci, total, slices, slots, sm1, table, source, _notes(table, source, **per_id))


_H100 = _seven_slice((9984, 20096, 40448, 81152), ("10", "20", "40", "80"), _HOPPER_UNITS)
_H200 = _seven_slice((16384, 33280, 71424, 143360), ("18", "35", "71", "141"), _HOPPER_UNITS)
_A100_40 = _seven_slice((4864, 9856, 19968, 40192), ("5", "10", "20", "40"), _A100_UNITS)
_A100_80 = _seven_slice((9728, 19968, 40192, 80384), ("10", "20", "40", "80"), _A100_UNITS)
_ASSUMED_GRID = " ASSUMED: 8-slot placements (the A100/Hopper grid; same profile-ID set)."

MODELS: Dict[str, SimModel] = {
    m.key: m
    for m in (
        _model("a100-40gb", "NVIDIA A100-SXM4-40GB", ARCH_AMPERE, 0x20B010DE, 40 * GIB, 7, 8, 14, _A100_40,
               "documented: MIG user guide -lgip/-lgipp (A100-40GB)"),
        _model("a100-80gb", "NVIDIA A100-SXM4-80GB", ARCH_AMPERE, 0x20B210DE, 80 * GIB, 7, 8, 14, _A100_80,
               "documented: guide (units as A100-40GB); memory reported (mig-parted#97, nvitop#8)",
               id0="ASSUMED: 7g memory 80384 MB (not observed on current drivers)"),
        _model("a30", "NVIDIA A30", ARCH_AMPERE, 0x20B710DE, 24 * GIB, 4, 4, 14, _A30,
               "documented: guide plus a public R535 transcript (reference §2.2); MB derived ±32"),
        _model("h100-80gb", "NVIDIA H100 80GB HBM3", ARCH_HOPPER, 0x233010DE, 85520809984, 7, 8, 16, _H100,
               _MEASURED.format("h100-80gb-hbm3.json")),
        _model("h100-94gb", "NVIDIA H100 NVL", ARCH_HOPPER, 0x232110DE, 100485038080, 7, 8, 16,
               _seven_slice((11008, 22144, 47488, 95360), ("12", "24", "47", "94"), _HOPPER_UNITS),
               "reported: -lgip/-lgipp, driver 560.35.03 (NVIDIA/gpu-operator#900, #903)"),
        _model("h200", "NVIDIA H200", ARCH_HOPPER, 0x233510DE, 150754820096, 7, 8, 16, _H200,
               _MEASURED.format("h200-141gb.json")),
        _model("h200-nvl", "NVIDIA H200 NVL", ARCH_HOPPER, 0x233B10DE, 150754820096, 7, 8, 16, _H200,
               "documented: same profiles as H200 SXM (guide, Supported GPUs). ASSUMED: every figure equal to the "
               "measured H200 SXM; device name from NVIDIA's product name"),
        _model("h800", "NVIDIA H800", ARCH_HOPPER, 0x232410DE, 85520809984, 7, 8, 16, _H100,
               "mig-parted config-default: as H100 80GB. ASSUMED: every figure equal to the measured H100; device "
               "name from NVIDIA's product name"),
        _model("h20", "NVIDIA H20", ARCH_HOPPER, 0x232910DE, 96 * GIB, 7, 8, 16,
               _seven_named((12, 24, 48, 96), _HOPPER_UNITS),
               "mig-parted config-default: names and counts as GH200 96GB. ASSUMED: IDs, memory (from the names), "
               "SMs and engines as H100 (H20 has fewer SMs; per-profile counts unpublished), placements"),
        _model("gh200-96gb", "NVIDIA GH200 480GB", ARCH_HOPPER, 0x234210DE, 96 * GIB, 7, 8, 16,
               _seven_named((12, 24, 48, 96), _HOPPER_UNITS),
               "documented: names and counts (mig-parted config-default). ASSUMED: IDs, memory (from the names), "
               "units as H100, placements; device name from NVIDIA's product name"),
        _model("gh200-144gb", "NVIDIA GH200 144G HBM3e", ARCH_HOPPER, 0x234810DE, 144 * GIB, 7, 8, 16,
               _seven_named((18, 36, 72, 144), _HOPPER_UNITS, {1: 17920, 2: 36096}),
               "ASSUMED: 3g/4g/7g IDs, memory (from the names), units and placements; names from mig-parted's "
               "config" + _ASSUMED_GRID,
               id19="reported: -lgip (NVIDIA/mig-parted#139): 17.50 GiB, 16 SM",
               id20="reported: -lgip (NVIDIA/mig-parted#139)",
               id15="reported: -lgip (NVIDIA/mig-parted#139): 35.25 GiB, 26 SM",
               id14="reported: -lgip (NVIDIA/mig-parted#139): 35.25 GiB, 32 SM"),
        _model("b200", "NVIDIA B200", ARCH_BLACKWELL, 0x290110DE, 180 * GIB, 7, 8, 18,
               _seven_named((23, 45, 90, 180), _B200_UNITS, {1: 20992, 2: 45312}),
               "documented: guide B200 table (names, counts, CE); ASSUMED: 3g/4g/7g IDs (Hopper pattern), memory "
               "(from the names), SMs and DEC/JPG" + _ASSUMED_GRID,
               id19="reported: -lgip (NVIDIA/mig-parted#187, R570): 20.50 GiB (22.00 on older drivers, #166), 18 SM",
               id20="reported: -lgip (NVIDIA/mig-parted#187)",
               id15="reported: -lgip (NVIDIA/mig-parted#187): 44.25 GiB, 30 SM",
               id14="reported: -lgip (NVIDIA/mig-parted#187): 44.25 GiB, 36 SM, 4 CE"),
        _model("gb200", "NVIDIA GB200", ARCH_BLACKWELL, 0x294110DE, 186 * GIB, 7, 8, 18,
               _seven_named((23, 47, 93, 186), _GB200_UNITS, {1: 22528, 2: 46592}),
               "mig-parted v0.12.3 names; ASSUMED: 3g/4g/7g IDs, memory (from the names), units" + _ASSUMED_GRID,
               id19="reported: -lgip (NVIDIA/mig-parted#227): 22.00 GiB, 18 SM (pre-production: 1g.24gb)",
               id20="reported: -lgip (NVIDIA/mig-parted#227)",
               id15="reported: -lgip (NVIDIA/mig-parted#227): 45.50 GiB, 32 SM",
               id14="reported: -lgip (NVIDIA/mig-parted#227): 45.50 GiB, 38 SM, 4 CE"),
        _model("b300", "NVIDIA B300", ARCH_BLACKWELL, 0x318210DE, 269 * GIB, 7, 8, 18,
               _seven_named((34, 67, 135, 269), _B200_UNITS),
               "mig-parted v0.13: names and counts only. ASSUMED: IDs (Hopper pattern), memory (from the names), "
               "units as B200, device name" + _ASSUMED_GRID),
        _model("gb300", "NVIDIA GB300", ARCH_BLACKWELL, 0x31C210DE, 278 * GIB, 7, 8, 18,
               _seven_named((35, 70, 139, 278), _B200_UNITS),
               "mig-parted v0.13: names and counts only. ASSUMED: IDs (Hopper pattern), memory (from the names), "
               "units as B200, device name" + _ASSUMED_GRID),
        _model("a800-80gb", "NVIDIA A800-SXM4-80GB", ARCH_AMPERE, 0x20F310DE, 80 * GIB, 7, 8, 14, _A100_80,
               "mig-parted config-default: as A100 80GB. ASSUMED: every figure equal to A100-SXM4-80GB; device name "
               "by analogy with the A100's"),
        _model("a800-40gb", "NVIDIA A800-PCIE-40GB", ARCH_AMPERE, 0x20F610DE, 40 * GIB, 7, 8, 14, _A100_40,
               "mig-parted config-default: as A100 40GB. ASSUMED: every figure equal to A100-SXM4-40GB; device name "
               "by analogy with the A100's"),
        _model("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell Server Edition", ARCH_BLACKWELL, 0x2BB510DE,
               96 * GIB, 4, 4, 46, _RTX_PRO_6000,
               "documented: guide RTX PRO 6000 table; reported -lgip (GoogleCloudPlatform/container-engine-"
               "accelerators#564, bigstack-oss/cubecos#312). ASSUMED: 2g/4g engines, CE, 4-slot placements"),
    )
}

HOSTS: Dict[str, str] = {
    "dgx-a100": "a100-40gb:8",
    "dgx-h100": "h100-80gb:8",
    "dgx-h200": "h200:8",
    "dgx-b200": "b200:8",
    "hgx-b300": "b300:8",
    "gb200-tray": "gb200:4",  # one compute tray of a GB200 NVL72: 2 Grace CPUs, 4 B200-class GPUs
    "rtx-pro-server": "rtx-pro-6000:8",
}

# Compute-instance profiles per GI size: NVIDIA's documented `nvidia-smi mig -lcip` sets (reference §2.3, MIG user
# guide; go-nvml/k8s-test-infra mocks agree), transcribed, not computed. (CI index = CI profile ID, CI slices,
# instances, placement starts); placements end to end as the mocks lay them (ASSUMED: no NVIDIA table).
_CiRow = Tuple[int, int, int, Tuple[int, ...]]
CI_TABLES: Dict[int, Tuple[_CiRow, ...]] = {
    1: ((0, 1, 1, (0,)),),
    2: ((0, 1, 2, (0, 1)), (1, 2, 1, (0,))),
    3: ((0, 1, 3, (0, 1, 2)), (1, 2, 1, (0,)), (2, 3, 1, (0,))),
    4: ((0, 1, 4, (0, 1, 2, 3)), (1, 2, 2, (0, 2)), (3, 4, 1, (0,))),  # no 3c in a 4g (A30 4g: the same)
    7: ((0, 1, 7, _SEVEN), (1, 2, 3, (0, 2, 4)), (2, 3, 2, (0, 3)), (3, 4, 1, (0,)), (4, 7, 1, (0,))),
}


def compute_profiles(model: SimModel, gi_info: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    """CI profiles a GI of this profile offers, keyed by CI index, as the driver's info structs (CI_TABLES)."""
    gi_name = gi_info["name"][len("MIG "):]
    g = gi_info["sliceCount"]
    out = {}
    for index, c, count, starts in CI_TABLES[g]:
        full = c == g
        out[index] = {
            "id": index, "sliceCount": c, "instanceCount": count,
            # full width: the GI's SMs; else per compute slice (A100: 14, documented; others ASSUMED = the 1g GI's)
            "multiprocessorCount": gi_info["multiprocessorCount"] if full else c * model.sm_per_compute_slice,
            "sharedCopyEngineCount": gi_info["copyEngineCount"], "sharedDecoderCount": gi_info["decoderCount"],
            "sharedEncoderCount": gi_info["encoderCount"], "sharedJpegCount": gi_info["jpegCount"],
            "sharedOfaCount": gi_info["ofaCount"], "name": "MIG " + (gi_name if full else f"{c}c.{gi_name}"),
            "placements": [(s, c) for s in starts],
        }
    return out


def parse_host_spec(spec: str) -> List[SimModel]:
    """`dgx-a100`, `h100-80gb:2,a30`, ... -> one model per GPU, in index order. Raises ValueError."""
    spec = HOSTS.get(spec.strip(), spec)
    models: List[SimModel] = []
    for part in spec.split(","):
        part = part.strip()
        key, _, count = part.partition(":")
        if key not in MODELS:
            from .suggest import did_you_mean

            hint = did_you_mean(key, list(HOSTS) + list(MODELS))
            raise ValueError(f"unknown simulated GPU model {key!r}; " + (f"{hint} (known: " if hint else "known: ")
                             + f"{', '.join(MODELS)}; hosts: {', '.join(HOSTS)}" + (")" if hint else ""))
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
