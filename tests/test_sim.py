"""The simulated NVML, exercised through the real pynvml API, against the reference (nvml-mig.md, h100-80gb-hbm3.json).

Expected values come from the reference, transcribed here independently of migd.catalog: a test that compared
the simulator with its own tables could not fail.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import textwrap
import time
import uuid as uuidlib
from typing import Dict

import pynvml as N
import pytest

import migd.sim
from migd.sim import SimHost, parse_faults
from migd.catalog import HOSTS, MODELS, parse_host_spec

from conftest import MEASURED_JSON, PYTHON, load_reference, python_env, sim_model_for

GPU_UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIG_UUID_RE = re.compile(r"^MIG-[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

INFO_FIELDS = ("id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount", "copyEngineCount",
               "decoderCount", "encoderCount", "jpegCount", "ofaCount", "memorySizeMB")


# --- helpers ---------------------------------------------------------------------------------------------------

def handle(i: int = 0):
    return N.nvmlDeviceGetHandleByIndex(i)


def placements_of(h, profile_id: int):
    """The reference §5 dance: NULL array to get the count, then an array of exactly that size."""
    count = ctypes.c_uint(0)
    assert N.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, None, ctypes.byref(count)) == 0
    array = (N.c_nvmlGpuInstancePlacement_t * count.value)()
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, array, ctypes.byref(count))
    return [(p.start, p.size) for p in array[:count.value]]


def create_gi(h, profile_id: int, start: int, size: int, by_ref: bool = True):
    p = N.c_nvmlGpuInstancePlacement_t()
    p.start, p.size = start, size
    return N.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile_id, ctypes.byref(p) if by_ref else p)


def gi_info(gi):
    info = N.nvmlGpuInstanceGetInfo(gi)
    return info.id, info.profileId, (info.placement.start, info.placement.size)


def ci_profile(gi, index: int):
    return N.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, N.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)


def full_ci(gi):
    """Create the compute instance spanning the whole GI (what `nvidia-smi mig -C` does)."""
    widest = None
    for index in range(9):
        try:
            cp = ci_profile(gi, index)
        except (N.NVMLError_NotSupported, N.NVMLError_InvalidArgument):
            continue
        if widest is None or cp.sliceCount > widest.sliceCount:
            widest = cp
    return N.nvmlGpuInstanceCreateComputeInstance(gi, widest.id)


def addr(h) -> int:
    return ctypes.cast(h, ctypes.c_void_p).value


def enable_mig(h):
    assert N.nvmlDeviceSetMigMode(h, N.NVML_DEVICE_MIG_ENABLE) == 0
    assert N.nvmlDeviceGetMigMode(h) == [1, 1]


# --- the measured profile tables (H100, H200) vs their simulated twins ------------------------------------------

@pytest.mark.parametrize("path", MEASURED_JSON, ids=lambda p: p.stem)
def test_profile_table_equals_measurement(sim_backend, path):
    ref = load_reference(path)
    dev = ref["devices"][0]
    model = sim_model_for(dev["pci_device_id"])
    assert model is not None, f"no simulated model with PCI device ID {dev['pci_device_id']} ({dev['name']})"
    sim_backend(model.key)
    h = handle()
    rows = dev["gpu_instance_profiles"]
    assert [r["index"] for r in rows] == list(range(dev["profile_index_end"]))
    for row in rows:
        idx = row["index"]
        if "error" in row:
            cls = getattr(N, row["error"])
            for version in (1, 2):
                with pytest.raises(cls) as exc:
                    N.nvmlDeviceGetGpuInstanceProfileInfo(h, idx, version)
                assert exc.value.value == row["code"]
            continue
        v2 = N.nvmlDeviceGetGpuInstanceProfileInfo(h, idx)
        v1 = N.nvmlDeviceGetGpuInstanceProfileInfo(h, idx, 1)
        for f in INFO_FIELDS:
            assert getattr(v2, f) == row[f], (idx, f)
            assert getattr(v1, f) == row[f], (idx, f, "v1")
        assert v2.name == row["name"] and isinstance(v2.name, str)
        assert v2.version == 0  # measured: the driver zeroes it after a successful V call
        assert not hasattr(v1, "name")
        assert placements_of(h, v2.id) == [tuple(p) for p in row["placements"]], idx
        # MIG off: remaining capacity is instanceCount (measured)
        assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, v2.id) == row["remaining_capacity"]
    # past the driver's last index: INVALID_ARGUMENT (17 and 18 measured)
    for idx in (dev["profile_index_end"], dev["profile_index_end"] + 1):
        with pytest.raises(N.NVMLError_InvalidArgument) as exc:
            N.nvmlDeviceGetGpuInstanceProfileInfo(h, idx)
        assert exc.value.value == 2


@pytest.mark.parametrize("path", MEASURED_JSON, ids=lambda p: p.stem)
def test_identity_equals_measurement(sim_backend, path):
    ref = load_reference(path)
    dev = ref["devices"][0]
    sim_backend(sim_model_for(dev["pci_device_id"]).key)
    h = handle()
    assert N.nvmlDeviceGetName(h) == dev["name"]
    assert GPU_UUID_RE.match(N.nvmlDeviceGetUUID(h))
    assert N.nvmlDeviceGetArchitecture(h) == dev["architecture"]
    assert N.nvmlDeviceGetMigMode(h) == dev["mig_mode"]
    assert N.nvmlDeviceGetMaxMigDeviceCount(h) == dev["max_mig_device_count"]
    assert N.nvmlDeviceGetPciInfo(h).pciDeviceId == int(dev["pci_device_id"], 16)
    assert N.nvmlSystemGetDriverVersion() == ref["driver_version"]
    is_mig = N.nvmlDeviceIsMigDeviceHandle(h)
    assert isinstance(is_mig, ctypes.c_uint) and is_mig.value == 0  # measured c_uint(0)


def test_both_measured_gpus_are_recorded():
    """The generic tests above must not silently lose a recording."""
    assert {p.name for p in MEASURED_JSON} >= {"h100-80gb-hbm3.json", "h200-141gb.json"}


def test_queries_with_mig_off_as_measured(sim_backend):
    """Reference §3.1 (H100, R580, MIG off)."""
    sim_backend("h100-80gb")
    h = handle()
    gis = (N.c_nvmlGpuInstance_t * 7)()
    count = ctypes.c_uint(7)
    N.nvmlDeviceGetGpuInstances(h, 19, gis, ctypes.byref(count))
    assert count.value == 0
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetGpuInstanceById(h, 1)
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    # the count argument is output-only: a NULL query with a junk count still returns the real one
    count = ctypes.c_uint(99)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, 15, None, ctypes.byref(count))
    assert count.value == 4
    # unknown profile IDs
    for bad in (7, 99):
        with pytest.raises(N.NVMLError_InvalidArgument):
            N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, bad)
        with pytest.raises(N.NVMLError_InvalidArgument):
            N.nvmlDeviceGetGpuInstancePossiblePlacements(h, bad, None, ctypes.byref(count))
    # MIG-handle calls on a full GPU handle
    for call in (N.nvmlDeviceGetGpuInstanceId, N.nvmlDeviceGetComputeInstanceId):
        with pytest.raises(N.NVMLError_InvalidArgument):
            call(h)


# --- strictness: the driver's rules, with the driver's codes ---------------------------------------------------

def test_create_with_mig_off_is_not_supported(sim_backend):
    sim_backend("h100-80gb")
    h = handle()
    with pytest.raises(N.NVMLError_NotSupported) as exc:
        create_gi(h, 19, 0, 1)
    assert exc.value.value == 3
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceCreateGpuInstance(h, 19)


@pytest.mark.parametrize("setup, attempt", [
    ([(9, 0, 4)], (14, 2, 2)),  # 2g inside a 3g: overlap
    ([(19, 3, 1)], (9, 0, 4)),  # 3g over a 1g
    ([(0, 0, 8)], (19, 7, 1)),  # anything after 7g
    ([(19, 0, 1)], (19, 0, 1)),  # the same slot twice
    ([], (14, 1, 2)),  # 2g at an odd start: not a listed placement
    ([], (19, 7, 1)),  # slot 7 never hosts a 1g
    ([], (9, 2, 4)),  # 3g only at 0:4 or 4:4
    ([], (19, 0, 2)),  # listed start, wrong size
    ([(20, 0, 1)], (20, 3, 1)),  # second 1g.10gb+me: instanceCount 1
    ([(15, 0, 2), (15, 2, 2), (15, 4, 2), (15, 6, 2)], (15, 6, 2)),  # fifth 1g.20gb
    ([(9, 0, 4)], (5, 0, 4)),  # 4g after a 3g at 0:4
    ([(9, 4, 4), (9, 0, 4)], (19, 0, 1)),  # 2 × 3g leave no 1g (slot 7 is not a 1g slot)
    ([(20, 6, 1)], (0, 0, 8)),  # 7g after +me
])
def test_create_refused_with_insufficient_resources(sim_backend, setup, attempt):
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    for pid, start, size in setup:
        create_gi(h, pid, start, size)
    before = N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, attempt[0])
    with pytest.raises(N.NVMLError_InsufficientResources) as exc:
        create_gi(h, *attempt)
    assert exc.value.value == 23
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, attempt[0]) == before


def test_the_valid_4g_plus_3g_combination(sim_backend):
    """4g + 3g only as 4g at 0:4 + 3g at 4:4 (reference §2.4)."""
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 5) == 1
    gi3 = create_gi(h, 9, 4, 4)
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 5) == 1
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 9) == 1
    gi4 = create_gi(h, 5, 0, 4, by_ref=False)  # a bare struct works too (reference §1.6)
    assert gi_info(gi3)[1:] == (9, (4, 4))
    assert gi_info(gi4)[1:] == (5, (0, 4))
    for pid in (19, 20, 15, 14, 9, 5, 0):
        assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, pid) == 0


def test_remaining_capacity_depends_on_position(sim_backend):
    """A 3g at 0:4 leaves three 1g slots, a 3g at 4:4 leaves four (reference §2.1)."""
    sim_backend("h100-80gb:2")
    h0, h1 = handle(0), handle(1)
    enable_mig(h0)
    enable_mig(h1)
    create_gi(h0, 9, 0, 4)
    create_gi(h1, 9, 4, 4)
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h0, 19) == 3
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h1, 19) == 4
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h0, 20) == 1
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h0, 5) == 0
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h1, 5) == 1


def test_single_ofa_on_a30(sim_backend):
    """+me profiles carry the GPU's single OFA: two of them cannot coexist even without overlap."""
    sim_backend("a30")
    h = handle()
    enable_mig(h)
    create_gi(h, 21, 0, 1)  # 1g.6gb+me
    with pytest.raises(N.NVMLError_InsufficientResources):
        create_gi(h, 6, 2, 2)  # 2g.12gb+me
    create_gi(h, 5, 2, 2)  # plain 2g.12gb fits there


def test_destroy_rules(sim_backend):
    backend = sim_backend("h100-80gb")
    host = backend._sim_host
    h = handle()
    enable_mig(h)
    gi = create_gi(h, 14, 0, 2)
    gi_id = gi_info(gi)[0]
    ci = full_ci(gi)
    with pytest.raises(N.NVMLError_InUse) as exc:
        N.nvmlGpuInstanceDestroy(gi)  # a GI with compute instances
    assert exc.value.value == 19
    ci_id = N.nvmlComputeInstanceGetInfo(ci).id
    host.add_process(0, 4242, gi=gi_id, ci=ci_id)
    with pytest.raises(N.NVMLError_InUse):
        N.nvmlComputeInstanceDestroy(ci)  # a CI with a process
    with pytest.raises(N.NVMLError_InUse):
        N.nvmlGpuInstanceDestroy(gi)
    host.gpus[0]["processes"].clear()
    N.nvmlComputeInstanceDestroy(ci)
    N.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetGpuInstanceById(h, gi_id)
    # with no instances left, MIG mode goes off at once
    assert N.nvmlDeviceSetMigMode(h, 0) == 0
    assert N.nvmlDeviceGetMigMode(h) == [0, 0]


def test_compute_instance_profiles_of_a_3g(sim_backend):
    """`-lcip` on a 3g GI (reference §2.3): 1c (3), 2c (1), 3c (1); CI IDs equal the index; names as nvidia-smi."""
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    gi = create_gi(h, 9, 0, 4)
    got = {}
    for index in range(9):
        try:
            cp = ci_profile(gi, index)
        except N.NVMLError_NotSupported:
            continue
        got[index] = (cp.id, cp.sliceCount, cp.instanceCount, cp.name)
    with pytest.raises(N.NVMLError_InvalidArgument):
        ci_profile(gi, 9)
    assert got == {0: (0, 1, 3, "MIG 1c.3g.40gb"), 1: (1, 2, 1, "MIG 2c.3g.40gb"), 2: (2, 3, 1, "MIG 3g.40gb")}


@pytest.mark.parametrize("gi_profile, expected", [
    (5, {0: (1, 4), 1: (2, 2), 3: (4, 1)}),
    (0, {0: (1, 7), 1: (2, 3), 2: (3, 2), 3: (4, 1), 4: (7, 1)}),
    (14, {0: (1, 2), 1: (2, 1)}),
    (19, {0: (1, 1)}),
])
def test_compute_profile_sets(sim_backend, gi_profile, expected):
    sim_backend("a100-40gb")
    h = handle()
    enable_mig(h)
    start, size = placements_of(h, gi_profile)[0]
    gi = create_gi(h, gi_profile, start, size)
    got = {}
    for index in range(9):
        try:
            cp = ci_profile(gi, index)
        except N.NVMLError_NotSupported:
            continue
        got[index] = (cp.sliceCount, cp.instanceCount)
    assert got == expected


# --- MIG mode: pending, clients, reboot -----------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["h100-80gb", "a100-40gb"])
def test_set_mig_mode_returns_in_use_while_a_client_holds_the_gpu(sim_backend, spec):
    backend = sim_backend(spec)
    host = backend._sim_host
    h = handle()
    host.gpus[0]["clients"].append(os.getpid())
    status = N.nvmlDeviceSetMigMode(h, 1)  # returned, not raised
    assert status == N.NVML_ERROR_IN_USE == 19
    assert N.nvmlDeviceGetMigMode(h) == [0, 1]
    with pytest.raises(N.NVMLError_NotSupported):  # still MIG off
        create_gi(h, 19, 0, 1)
    host.gpus[0]["clients"].clear()
    assert N.nvmlDeviceSetMigMode(h, 1) == 0
    assert N.nvmlDeviceGetMigMode(h) == [1, 1]


def test_dead_client_pid_does_not_block(sim_backend):
    backend = sim_backend("h100-80gb")
    child = subprocess.Popen([PYTHON, "-c", "pass"])
    child.wait()
    backend._sim_host.gpus[0]["clients"].append(child.pid)
    assert N.nvmlDeviceSetMigMode(handle(), 1) == 0


def test_ampere_pass_through_needs_reset(sim_backend):
    """Ampere in a pass-through VM: status RESET_REQUIRED, the change stays pending until reboot (reference §4.2)."""
    backend = sim_backend("a100-40gb")
    host = backend._sim_host
    host.gpus[0]["reset_supported"] = False
    assert N.nvmlDeviceSetMigMode(handle(), 1) == N.NVML_ERROR_RESET_REQUIRED == 16
    assert N.nvmlDeviceGetMigMode(handle()) == [0, 1]
    host.reboot()
    assert N.nvmlDeviceGetMigMode(handle()) == [1, 1]


_HOLD_NODE = textwrap.dedent("""
    import sys, time
    f = open(sys.argv[1], "rb")
    print("open", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("spec", ["h100-80gb", "a100-40gb"])
def test_process_holding_the_device_node_blocks_mode_change(sim_backend, state_path, spec):
    backend = sim_backend(spec, sim_state=state_path)
    host = backend._sim_host
    node = host.device_node(0)
    assert node and os.path.dirname(node) == os.path.join(os.path.dirname(state_path), "dev")
    assert os.path.exists(node), "the simulated host should provide its device node files"
    child = subprocess.Popen([PYTHON, "-c", _HOLD_NODE, node], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        assert child.pid in host.holders(0)
        assert N.nvmlDeviceSetMigMode(handle(), 1) == 19
        assert N.nvmlDeviceGetMigMode(handle()) == [0, 1]
        # a holder of GPU 0's node does not hold other GPUs: no second GPU here, so check the holder list only
        assert backend.device_nodes(0) == [node]
    finally:
        child.kill()
        child.wait()
    assert child.pid not in host.holders(0)
    assert N.nvmlDeviceSetMigMode(handle(), 1) == 0
    assert N.nvmlDeviceGetMigMode(handle()) == [1, 1]


def test_reboot_ampere_keeps_mode_hopper_loses_it(sim_backend):
    backend = sim_backend("a100-40gb,h100-80gb")
    host = backend._sim_host
    for i in (0, 1):
        h = handle(i)
        enable_mig(h)
        gi = create_gi(h, 9, 0, 4)
        full_ci(gi)
        N.nvmlDeviceSetPersistenceMode(h, 1)
    host.reboot()
    assert N.nvmlDeviceGetMigMode(handle(0)) == [1, 1]  # Ampere: InfoROM bit
    assert N.nvmlDeviceGetMigMode(handle(1)) == [0, 0]  # Hopper: only while the driver is loaded
    for i in (0, 1):
        count = ctypes.c_uint(2)
        N.nvmlDeviceGetGpuInstances(handle(i), 9, (N.c_nvmlGpuInstance_t * 2)(), ctypes.byref(count))
        assert count.value == 0  # instances never survive a reboot
        assert N.nvmlDeviceGetPersistenceMode(handle(i)) == 0  # persistence mode resets at boot


def test_pending_ampere_change_commits_at_reboot(sim_backend):
    backend = sim_backend("a100-40gb,h100-80gb")
    host = backend._sim_host
    for i in (0, 1):
        host.gpus[i]["clients"].append(os.getpid())
        assert N.nvmlDeviceSetMigMode(handle(i), 1) == 19
        assert N.nvmlDeviceGetMigMode(handle(i)) == [0, 1]
    host.reboot()
    assert N.nvmlDeviceGetMigMode(handle(0)) == [1, 1]
    assert N.nvmlDeviceGetMigMode(handle(1)) == [0, 0]
    assert host.gpus[0]["clients"] == []


# --- driver-chosen placement ------------------------------------------------------------------------------------

def cgi(h, ids):
    """`nvidia-smi mig -cgi a,b,c`: driver-chosen placements, in order; returns placements or raises."""
    return [gi_info(N.nvmlDeviceCreateGpuInstance(h, pid))[2] for pid in ids]


def test_driver_chosen_placement_reproduces_the_guides_failure(sim_backend):
    sim_backend("a100-40gb")
    h = handle()
    enable_mig(h)
    with pytest.raises(N.NVMLError_InsufficientResources):
        cgi(h, [19, 19, 14, 9])
    count = ctypes.c_uint(2)
    N.nvmlDeviceGetGpuInstances(h, 9, (N.c_nvmlGpuInstance_t * 2)(), ctypes.byref(count))
    assert count.value == 0  # the 3g is the one that failed
    count = ctypes.c_uint(7)
    N.nvmlDeviceGetGpuInstances(h, 19, (N.c_nvmlGpuInstance_t * 7)(), ctypes.byref(count))
    assert count.value == 2


def test_driver_chosen_placement_3g_first_succeeds_as_in_the_guide(sim_backend):
    """`-cgi 9,19,14,19`: 3g -> 4:4, 1g -> 0:1, 2g -> 2:2, 1g -> 1:1 (guide, reference §2.4)."""
    sim_backend("a100-40gb")
    h = handle()
    enable_mig(h)
    assert cgi(h, [9, 19, 14, 19]) == [(4, 4), (0, 1), (2, 2), (1, 1)]


def test_driver_chosen_placement_other_guide_transcripts(sim_backend):
    """`-cgi 19,14,5` on A100: 6:1, 4:2, 0:4. On A30, 1g, 1g, 2g: 0:1, 1:1, 2:2 with GI IDs 3, 4, 2."""
    sim_backend("a100-40gb,a30")
    h = handle(0)
    enable_mig(h)
    assert cgi(h, [19, 14, 5]) == [(6, 1), (4, 2), (0, 4)]
    a30 = handle(1)
    enable_mig(a30)
    created = [gi_info(N.nvmlDeviceCreateGpuInstance(a30, pid)) for pid in (14, 14, 5)]
    assert [(gid, pl) for gid, _, pl in created] == [(3, (0, 1)), (4, (1, 1)), (2, (2, 2))]


# --- IDs, UUIDs, handles -------------------------------------------------------------------------------------

def test_gi_ids_as_observed_on_8_slot_gpus(sim_backend):
    """Observed: 1g 7-14, 2g 3-6, 3g/4g 1-2 (reference §2.4); unique per device."""
    sim_backend("h100-80gb:3")
    h0, h1, h2 = handle(0), handle(1), handle(2)
    for h in (h0, h1, h2):
        enable_mig(h)
    ones = [gi_info(create_gi(h0, 19, s, 1))[0] for s in range(7)]
    assert all(7 <= i <= 14 for i in ones) and len(set(ones)) == 7
    twos = [gi_info(create_gi(h1, 14, s, 2))[0] for s in (0, 2, 4)]
    assert all(3 <= i <= 6 for i in twos) and len(set(twos)) == 3
    threes = [gi_info(create_gi(h2, 9, s, 4))[0] for s in (0, 4)]
    assert sorted(threes) == [1, 2]
    # IDs stay valid until destroyed: the other 3g keeps its ID when its neighbour is replaced by a 4g
    at0 = [gid for gid, start in zip(threes, (0, 4)) if start == 0][0]
    at4 = [gid for gid, start in zip(threes, (0, 4)) if start == 4][0]
    N.nvmlGpuInstanceDestroy(N.nvmlDeviceGetGpuInstanceById(h2, at0))
    assert gi_info(create_gi(h2, 5, 0, 4))[0] in (1, 2)
    assert gi_info(N.nvmlDeviceGetGpuInstanceById(h2, at4)) == (at4, 9, (4, 4))


def test_ci_ids_start_at_zero_in_each_gi_and_mig_devices(sim_backend):
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    gi_a = create_gi(h, 9, 0, 4)
    gi_b = create_gi(h, 14, 4, 2)
    ids_a = [N.nvmlComputeInstanceGetInfo(N.nvmlGpuInstanceCreateComputeInstance(gi_a, 0)).id for _ in range(3)]
    ids_b = [N.nvmlComputeInstanceGetInfo(N.nvmlGpuInstanceCreateComputeInstance(gi_b, 1)).id]
    assert ids_a == [0, 1, 2] and ids_b == [0]
    n = N.nvmlDeviceGetMaxMigDeviceCount(h)
    assert n == 7
    found = []
    for i in range(n):
        try:
            mig = N.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        except N.NVMLError_NotFound:
            assert i >= 4  # past the existing 4 MIG devices
            continue
        assert N.nvmlDeviceIsMigDeviceHandle(mig).value == 1
        found.append((N.nvmlDeviceGetGpuInstanceId(mig), N.nvmlDeviceGetComputeInstanceId(mig)))
        assert addr(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == addr(h)
    gid_a, gid_b = gi_info(gi_a)[0], gi_info(gi_b)[0]
    assert sorted(found) == sorted([(gid_a, 0), (gid_a, 1), (gid_a, 2), (gid_b, 0)])


def test_mig_uuids(sim_backend):
    """MIG-<uuid v5>; unique; resolvable; CI 0 keeps its UUID when its CI is replaced (guide, reference §4.4)."""
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    gi = create_gi(h, 9, 0, 4)
    ci = full_ci(gi)
    mig = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    first = N.nvmlDeviceGetUUID(mig)
    assert MIG_UUID_RE.match(first), first
    assert uuidlib.UUID(first[4:]).version == 5
    assert N.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    again = N.nvmlDeviceGetHandleByUUID(first)
    assert N.nvmlDeviceIsMigDeviceHandle(again).value == 1
    assert (N.nvmlDeviceGetGpuInstanceId(again), N.nvmlDeviceGetComputeInstanceId(again)) == (gi_info(gi)[0], 0)
    N.nvmlComputeInstanceDestroy(ci)
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetHandleByUUID(first)  # an unknown MIG UUID: NOT_FOUND (measured)
    for _ in range(3):
        N.nvmlGpuInstanceCreateComputeInstance(gi, 0)  # 1c.3g.40gb
    uuids = {}
    for i in range(3):
        m = N.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        uuids[N.nvmlDeviceGetComputeInstanceId(m)] = N.nvmlDeviceGetUUID(m)
        assert N.nvmlDeviceGetName(m) == "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb"
    assert uuids[0] == first
    assert len(set(uuids.values())) == 3 and all(MIG_UUID_RE.match(u) for u in uuids.values())


def test_handles_are_real_pointers(sim_backend):
    sim_backend("h100-80gb:2")
    a, b = handle(0), handle(0)
    assert isinstance(a, ctypes._Pointer)
    assert a != b  # never compare handles with == (reference §1.6)
    assert addr(a) == addr(b) and addr(a) != 0
    assert addr(handle(1)) != addr(a)
    assert addr(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(a))) == addr(a)
    with pytest.raises(N.NVMLError_InvalidArgument):
        handle(2)
    # a GI handle is not a device handle
    enable_mig(a)
    gi = create_gi(a, 19, 0, 1)
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlDeviceGetMigMode(gi)
    # a destroyed GI's handle goes stale
    N.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(N.NVMLError):
        N.nvmlGpuInstanceGetInfo(gi)


def test_uninitialized_calls(sim_backend):
    backend = sim_backend("h100-80gb")
    backend.close()
    with pytest.raises(N.NVMLError_Uninitialized):
        N.nvmlDeviceGetCount()


# --- fault injection -----------------------------------------------------------------------------------------

def test_parse_faults():
    assert parse_faults("nvmlGpuInstanceDestroy=IN_USE@2/gpu1, nvmlDeviceGetMigMode=hang,nvmlX=23") == [
        {"call": "nvmlGpuInstanceDestroy", "at": 2, "gpu": 1, "code": 19},
        {"call": "nvmlDeviceGetMigMode", "at": None, "gpu": None, "hang": True},
        {"call": "nvmlX", "at": None, "gpu": None, "code": 23},
    ]
    assert parse_faults("") == []
    for bad in ("nvmlX", "foo=IN_USE", "nvmlX=BOGUS", "nvmlX=IN_USE@x", "nvmlX=IN_USE/gpux", "=3"):
        with pytest.raises(ValueError, match="fault"):
            parse_faults(bad)


def test_fault_from_env_fails_only_the_nth_call(sim_backend, monkeypatch):
    sim_backend("h100-80gb")
    h = handle()
    enable_mig(h)
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=INSUFFICIENT_RESOURCES@2")
    create_gi(h, 19, 0, 1)
    with pytest.raises(N.NVMLError_InsufficientResources):
        create_gi(h, 19, 1, 1)
    create_gi(h, 19, 1, 1)  # the 3rd call is fine: the slot was never taken
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceGetMigMode=NO_PERMISSION")
    for _ in range(2):
        with pytest.raises(N.NVMLError_NoPermission):
            N.nvmlDeviceGetMigMode(h)


def test_fault_on_one_gpu_counts_that_gpus_calls(sim_backend, monkeypatch):
    """`CALL=CODE@N/gpuK`: the N-th call of CALL on GPU K, whatever other GPUs did meanwhile."""
    sim_backend("h100-80gb:2")
    h0, h1 = handle(0), handle(1)
    enable_mig(h0)
    enable_mig(h1)
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement=IN_USE@2/gpu1")
    create_gi(h0, 19, 0, 1)
    create_gi(h0, 19, 1, 1)
    create_gi(h1, 19, 0, 1)  # GPU 1's first
    create_gi(h0, 19, 2, 1)
    with pytest.raises(N.NVMLError_InUse):
        create_gi(h1, 19, 1, 1)  # GPU 1's second
    create_gi(h1, 19, 1, 1)


def test_gpu_is_lost_sticks(sim_backend, monkeypatch):
    backend = sim_backend("h100-80gb:2")
    host = backend._sim_host
    h0, h1 = handle(0), handle(1)
    monkeypatch.setenv("MIGD_SIM_FAULTS", "nvmlDeviceGetMigMode=GPU_IS_LOST@1/gpu1")
    assert N.nvmlDeviceGetMigMode(h0) == [0, 0]
    with pytest.raises(N.NVMLError_GpuIsLost) as exc:
        N.nvmlDeviceGetMigMode(h1)
    assert exc.value.value == 15
    monkeypatch.delenv("MIGD_SIM_FAULTS")
    assert host.gpus[1]["lost"] is True
    for call in (N.nvmlDeviceGetName, N.nvmlDeviceGetMigMode, N.nvmlDeviceGetUUID):
        with pytest.raises(N.NVMLError_GpuIsLost):
            call(h1)
    assert N.nvmlDeviceGetName(h0) == "NVIDIA H100 80GB HBM3"
    assert N.nvmlDeviceSetMigMode(h0, 1) == 0


def test_faults_in_host_state_and_install_argument(file_host):
    host = file_host("h100-80gb")
    host.state["faults"] = parse_faults("nvmlDeviceGetName=NOT_SUPPORTED")
    host.save()
    lib = migd.sim.install(SimHost.create("h100-80gb", host.path), faults=parse_faults("nvmlDeviceGetUUID=UNKNOWN"))
    try:
        N.nvmlInit()
        h = handle()
        with pytest.raises(N.NVMLError_NotSupported):
            N.nvmlDeviceGetName(h)
        with pytest.raises(N.NVMLError_Unknown):
            N.nvmlDeviceGetUUID(h)
        assert lib.calls["nvmlDeviceGetName"] == 1
        N.nvmlShutdown()
    finally:
        migd.sim.uninstall()


# --- driver states -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("driver, cls, code", [
    ("no-library", "NVMLError_LibraryNotFound", 12),
    ("not-loaded", "NVMLError_DriverNotLoaded", 9),
])
def test_driver_states_at_init(driver, cls, code):
    host = SimHost.create("h100-80gb")
    host.state["driver"] = driver
    migd.sim.install(host)
    try:
        with pytest.raises(getattr(N, cls)) as exc:
            N.nvmlInit()
        assert exc.value.value == code
        host.state["driver"] = "loaded"
        N.nvmlInit()
        assert N.nvmlDeviceGetCount() == 1
        N.nvmlShutdown()
    finally:
        migd.sim.uninstall()


def test_driver_comes_up_later():
    host = SimHost.create("a30")
    host.state["driver_ready_at"] = time.time() + 0.3
    migd.sim.install(host)
    try:
        with pytest.raises(N.NVMLError_DriverNotLoaded):
            N.nvmlInit()
        time.sleep(0.35)
        N.nvmlInit()
        N.nvmlShutdown()
    finally:
        migd.sim.uninstall()


# --- state files ---------------------------------------------------------------------------------------------

def test_state_file_shared_by_two_hosts(sim_backend, state_path):
    backend = sim_backend("a100-40gb:2", sim_state=state_path)
    h = handle(1)
    enable_mig(h)
    gi = create_gi(h, 14, 2, 2)
    other = SimHost.create("h100-80gb", state_path)  # exists: the spec is ignored, the file wins
    assert other.state["spec"] == "a100-40gb:2"
    assert other.gpus[1]["mig"] == [1, 1]
    assert [(g["profile_id"], g["start"], g["size"]) for g in other.gpus[1]["gis"]] == [(14, 2, 2)]
    # a change made through the other host is seen by the live library (the driver is not a snapshot)
    other.gpus[1]["gis"].clear()
    other.save()
    count = ctypes.c_uint(3)
    N.nvmlDeviceGetGpuInstances(h, 14, (N.c_nvmlGpuInstance_t * 3)(), ctypes.byref(count))
    assert count.value == 0
    del gi, backend


_CHILD_CREATE = textwrap.dedent("""
    import ctypes, sys
    import pynvml as N
    from migd.sim import make_backend
    from migd.model import Placement
    b = make_backend(sim_state=sys.argv[1])
    b.open()
    b.set_mig_mode(0, True)
    gi = b.create_gpu_instance(0, 9, Placement(4, 4))
    b.create_compute_instance(0, gi, 2, Placement(0, 3))
    print(gi)
""")


def test_state_file_shared_by_two_processes(sim_backend, state_path):
    backend = sim_backend("h100-80gb", sim_state=state_path)
    assert backend.state(0).instances == ()
    out = subprocess.run([PYTHON, "-c", _CHILD_CREATE, state_path], env=python_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gi_id = int(out.stdout.split()[-1])
    state = backend.state(0, fresh=True)  # state() is cached until this backend mutates
    assert state.mig_current
    assert [(g.id, g.profile_id, str(g.placement), [c.profile_id for c in g.compute]) for g in state.instances] == [
        (gi_id, 9, "4:4", [2])]


_CHILD_TOGGLE = textwrap.dedent("""
    import sys
    from migd.sim import make_backend
    from migd.model import Placement
    b = make_backend(sim_state=sys.argv[1])
    b.open()
    slots = [int(s) for s in sys.argv[2].split(",")]
    for _ in range(int(sys.argv[3])):
        for s in slots:
            gi = b.create_gpu_instance(0, 19, Placement(s, 1))
            b.destroy_gpu_instance(0, gi)
    for s in slots:
        b.create_gpu_instance(0, 19, Placement(s, 1))
""")


def test_concurrent_processes_never_lose_each_others_changes(sim_backend, state_path):
    backend = sim_backend("h100-80gb", sim_state=state_path)
    backend.set_mig_mode(0, True)
    children = [subprocess.Popen([PYTHON, "-c", _CHILD_TOGGLE, state_path, slots, "40"], env=python_env(),
                                 stderr=subprocess.PIPE, text=True)
                for slots in ("0,1,2", "3,4,5")]
    errors = [c.communicate(timeout=120)[1] for c in children]
    assert [c.returncode for c in children] == [0, 0], errors
    assert sorted(g.placement.start for g in backend.state(0).instances) == [0, 1, 2, 3, 4, 5]


def test_bad_state_files(tmp_path):
    p = tmp_path / "state.json"
    for text in ("not json", '{"version": 99, "gpus": []}', '{"version": 1, "gpus": [{"model": "v100"}]}', "[]"):
        p.write_text(text)
        with pytest.raises(ValueError, match="state file|unknown simulated GPU model"):
            SimHost.create("h100-80gb", str(p))


# --- catalog -------------------------------------------------------------------------------------------------

# Reference §2.2, transcribed: ID -> (index, name, instances, memory MB, SM, CE, DEC, JPG, OFA, starts, size).
_A100_UNITS = {  # A100 IDs, indices, counts, SMs and placements (same on 40GB and 80GB)
    19: (0, 7, 14, 1, 0, 0, 0, (0, 1, 2, 3, 4, 5, 6), 1),
    20: (7, 1, 14, 1, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), 1),
    15: (9, 4, 14, 1, 1, 0, 0, (0, 2, 4, 6), 2),
    14: (1, 3, 28, 2, 1, 0, 0, (0, 2, 4), 2),
    9: (2, 2, 42, 3, 2, 0, 0, (0, 4), 4),
    5: (3, 1, 56, 4, 2, 0, 0, (0,), 4),
    0: (4, 1, 98, 7, 5, 1, 1, (0,), 8),
}
_HOPPER_UNITS = {
    19: (0, 7, 16, 1, 1, 1, 0, (0, 1, 2, 3, 4, 5, 6), 1),
    20: (7, 1, 16, 1, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), 1),
    15: (9, 4, 26, 1, 1, 1, 0, (0, 2, 4, 6), 2),
    14: (1, 3, 32, 2, 2, 2, 0, (0, 2, 4), 2),
    9: (2, 2, 60, 3, 3, 3, 0, (0, 4), 4),
    5: (3, 1, 64, 4, 4, 4, 0, (0,), 4),
    0: (4, 1, 132, 8, 7, 7, 1, (0,), 8),
}
_A30_UNITS = {
    14: (0, 4, 14, 1, 0, 0, 0, (0, 1, 2, 3), 1),
    21: (7, 1, 14, 1, 1, 1, 1, (0, 1, 2, 3), 1),
    5: (1, 2, 28, 2, 2, 0, 0, (0, 2), 2),
    6: (8, 1, 28, 2, 2, 1, 1, (0, 2), 2),
    0: (3, 1, 56, 4, 4, 1, 1, (0,), 4),
}
# ID -> (name, memory MB); None where the reference gives no figure
_NAMES = {
    "a100-40gb": (_A100_UNITS, {19: ("1g.5gb", 4864), 20: ("1g.5gb+me", 4864), 15: ("1g.10gb", 9856),
                                14: ("2g.10gb", 9856), 9: ("3g.20gb", 19968), 5: ("4g.20gb", 19968),
                                0: ("7g.40gb", 40192)}),
    "a100-80gb": (_A100_UNITS, {19: ("1g.10gb", 9728), 20: ("1g.10gb+me", 9728), 15: ("1g.20gb", None),
                                14: ("2g.20gb", None), 9: ("3g.40gb", 40192), 5: ("4g.40gb", 40192),
                                0: ("7g.80gb", 80384)}),
    "h100-80gb": (_HOPPER_UNITS, {19: ("1g.10gb", 9984), 20: ("1g.10gb+me", 9984), 15: ("1g.20gb", 20096),
                                  14: ("2g.20gb", 20096), 9: ("3g.40gb", 40448), 5: ("4g.40gb", 40448),
                                  0: ("7g.80gb", 81152)}),
    "h100-94gb": (_HOPPER_UNITS, {19: ("1g.12gb", 11008), 20: ("1g.12gb+me", 11008), 15: ("1g.24gb", 22144),
                                  14: ("2g.24gb", 22144), 9: ("3g.47gb", 47488), 5: ("4g.47gb", 47488),
                                  0: ("7g.94gb", 95360)}),
    "h200": (_HOPPER_UNITS, {19: ("1g.18gb", 16384), 20: ("1g.18gb+me", 16384), 15: ("1g.35gb", 33280),
                             14: ("2g.35gb", 33280), 9: ("3g.71gb", 71424), 5: ("4g.71gb", 71424),
                             0: ("7g.141gb", 143360)}),  # measured (h200-141gb.json)
    "a30": (_A30_UNITS, {14: ("1g.6gb", 5952), 21: ("1g.6gb+me", 5952), 5: ("2g.12gb", 11968),
                         6: ("2g.12gb+me", 11968), 0: ("4g.24gb", 24000)}),
}


def _names(g1: str, g2: str, g3: str, g7: str, mem1=None, mem2=None) -> Dict[int, tuple]:
    return {19: (f"1g.{g1}gb", mem1), 20: (f"1g.{g1}gb+me", mem1), 15: (f"1g.{g2}gb", mem2), 14: (f"2g.{g2}gb", mem2),
            9: (f"3g.{g3}gb", None), 5: (f"4g.{g3}gb", None), 0: (f"7g.{g7}gb", None)}


def _grid_only(reported: Dict[int, tuple]) -> Dict[int, tuple]:
    """Same IDs, indices, counts and grid as A100/Hopper (mig-models-2026.md); units only where reported (else None)."""
    out = {pid: (row[0], row[1], None, None, None, None, row[6] if pid in (20, 0) else None, row[7], row[8])
           for pid, row in _HOPPER_UNITS.items()}
    out.update(reported)
    return out


# mig-models-2026.md and nvml-mig.md §2.2, transcribed: reported -lgip rows where published, names everywhere
_B200_REPORTED = {19: (0, 7, 18, 2, 1, 1, 0, (0, 1, 2, 3, 4, 5, 6), 1), 20: (7, 1, 18, 2, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), 1),
                  15: (9, 4, 30, 2, 1, 1, 0, (0, 2, 4, 6), 2), 14: (1, 3, 36, 4, 2, 2, 0, (0, 2, 4), 2)}
_GB200_REPORTED = {19: (0, 7, 18, 2, 1, 1, 0, (0, 1, 2, 3, 4, 5, 6), 1), 20: (7, 1, 18, 2, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), 1),
                   15: (9, 4, 32, 2, 1, 1, 0, (0, 2, 4, 6), 2), 14: (1, 3, 38, 4, 2, 2, 0, (0, 2, 4), 2)}
_GH200_144_REPORTED = {pid: row for pid, row in _HOPPER_UNITS.items() if pid in (19, 20, 15, 14)}
_RTX_ONE = (0, 1, 2, 3)
_RTX_UNITS = {  # guide RTX PRO 6000 table + GoogleCloudPlatform/container-engine-accelerators#564 -lgip (1g rows)
    14: (0, 4, 46, 1, 1, 1, 0, _RTX_ONE, 1), 21: (7, 1, 46, 1, 1, 1, 1, _RTX_ONE, 1),
    47: (0xA, 4, 46, 1, 1, 1, 0, _RTX_ONE, 1), 65: (0xF, 1, 46, 1, 4, 4, 1, _RTX_ONE, 1),
    67: (0xD, 4, 46, None, 0, 0, 0, _RTX_ONE, 1),
    5: (1, 2, 94, None, None, None, 0, (0, 2), 2), 35: (0xB, 2, 94, None, None, None, 0, (0, 2), 2),
    64: (0x10, 1, 94, None, None, None, 1, (0, 2), 2), 66: (0xE, 2, 94, None, 0, 0, 0, (0, 2), 2),
    0: (3, 1, 188, None, None, None, None, (0,), 4), 32: (0xC, 1, 188, None, None, None, None, (0,), 4),
}
_NAMES.update({
    "h200-nvl": _NAMES["h200"],
    "h800": _NAMES["h100-80gb"],
    "a800-80gb": _NAMES["a100-80gb"],
    "a800-40gb": _NAMES["a100-40gb"],
    "h20": (_grid_only({}), _names("12", "24", "48", "96")),
    "gh200-96gb": (_grid_only({}), _names("12", "24", "48", "96")),
    "gh200-144gb": (_grid_only(_GH200_144_REPORTED), _names("18", "36", "72", "144", 17920, 36096)),
    "b200": (_grid_only(_B200_REPORTED), _names("23", "45", "90", "180", 20992, 45312)),
    "gb200": (_grid_only(_GB200_REPORTED), _names("23", "47", "93", "186", 22528, 46592)),
    "b300": (_grid_only({}), _names("34", "67", "135", "269")),
    "gb300": (_grid_only({}), _names("35", "70", "139", "278")),
    "rtx-pro-6000": (_RTX_UNITS, {14: ("1g.24gb", 24192), 21: ("1g.24gb+me", 24192), 47: ("1g.24gb+gfx", 24192),
                                  65: ("1g.24gb+me.all", 24192), 67: ("1g.24gb-me", 24192), 5: ("2g.48gb", 48512),
                                  35: ("2g.48gb+gfx", 48512), 64: ("2g.48gb+me.all", 48512),
                                  66: ("2g.48gb-me", 48512), 0: ("4g.96gb", 97280), 32: ("4g.96gb+gfx", 97280)}),
})
_PCI_IDS = {  # mig-models-2026.md
    "h200-nvl": 0x233B, "h800": 0x2324, "a800-80gb": 0x20F3, "a800-40gb": 0x20F6, "h20": 0x2329,
    "gh200-96gb": 0x2342, "gh200-144gb": 0x2348, "b200": 0x2901, "gb200": 0x2941, "b300": 0x3182,
    "gb300": 0x31C2, "rtx-pro-6000": 0x2BB5,
}
_FOUR_SLICE = ("a30", "rtx-pro-6000")


@pytest.mark.parametrize("key", sorted(_PCI_IDS))
def test_new_models_identity_and_sources(key):
    model = MODELS[key]
    assert model.pci_device_id == (_PCI_IDS[key] << 16 | 0x10DE)
    assert model.name.startswith("NVIDIA ")
    # every row names its source; whatever no source gives is marked as assumed
    assert set(model.notes) == {p["id"] for p in model.gi_profiles.values()}
    assert all(model.notes.values()) and model.source
    if key in ("b300", "gb300", "h20", "gh200-96gb"):
        assert all("ASSUMED" in n for n in model.notes.values())


def test_catalog_covers_the_expected_models():
    assert set(MODELS) == set(_NAMES)


@pytest.mark.parametrize("key", sorted(_NAMES))
def test_catalog_model_matches_reference_through_pynvml(sim_backend, key):
    sim_backend(key)
    units, names = _NAMES[key]
    h = handle()
    model = MODELS[key]
    slots = 4 if key in _FOUR_SLICE else 8
    slices = 4 if key in _FOUR_SLICE else 7
    assert (model.compute_slices, model.memory_slots) == (slices, slots)
    seen = {}
    for index in range(18):  # the driver knows indices 0..16 (R580)
        try:
            info = N.nvmlDeviceGetGpuInstanceProfileInfo(h, index)
        except N.NVMLError_NotSupported:
            assert index < 17
            continue
        except N.NVMLError_InvalidArgument:
            assert index >= 17
            continue
        seen[info.id] = info
        idx, inst, sm, ce, dec, jpg, ofa, starts, size = units[info.id]
        name, mem = names[info.id]
        assert index == idx
        got = (info.instanceCount, info.multiprocessorCount, info.copyEngineCount, info.decoderCount,
               info.jpegCount, info.ofaCount)
        want = (inst, sm, ce, dec, jpg, ofa)
        assert [g for g, w in zip(got, want) if w is not None] == [w for w in want if w is not None], (key, info.id)
        assert info.name == "MIG " + name
        assert info.sliceCount == int(name.split("g.")[0])
        if mem is not None:
            assert info.memorySizeMB == mem
        pl = placements_of(h, info.id)
        assert pl == [(s, size) for s in starts]
        assert all(s >= 0 and s + sz <= slots for s, sz in pl)
        assert inst <= len(pl)
        assert info.sliceCount <= slices
    assert set(seen) == set(units)
    full = [i for i in seen.values() if i.sliceCount == slices and "+gfx" not in i.name]
    assert len(full) == 1 and placements_of(h, full[0].id) == [(0, slots)]
    ref_arch = 7 if key.startswith(("a100", "a30", "a800")) else 10 if key.startswith(("b", "gb", "rtx")) else 9
    assert N.nvmlDeviceGetArchitecture(h) == ref_arch
    assert GPU_UUID_RE.match(N.nvmlDeviceGetUUID(h))


def test_every_catalog_model_fills_exactly_with_1g():
    """Sanity of the grid: the 1-slice profile's instanceCount equals the compute slices; +me allows one."""
    for model in MODELS.values():
        by_id = {p["id"]: p for p in model.gi_profiles.values()}
        one = model.gi_profiles[0]
        assert one["sliceCount"] == 1 and one["instanceCount"] == model.compute_slices
        me = [p for p in by_id.values() if p["name"].endswith("+me")]
        assert me and all(p["instanceCount"] == 1 and p["ofaCount"] == 1 for p in me)


def test_host_presets_and_specs():
    assert HOSTS["dgx-a100"] and [m.key for m in parse_host_spec("dgx-a100")] == ["a100-40gb"] * 8
    assert [m.key for m in parse_host_spec("dgx-h100")] == ["h100-80gb"] * 8
    assert [m.key for m in parse_host_spec("h100-80gb:2,a30")] == ["h100-80gb", "h100-80gb", "a30"]
    assert [m.key for m in parse_host_spec(" a30 , h200:1 ")] == ["a30", "h200"]


@pytest.mark.parametrize("spec, message", [
    ("v100", "unknown simulated GPU model 'v100'"),
    ("", "unknown simulated GPU model ''"),
    ("h100-80gb:", None),  # empty count means 1: fine
    ("h100-80gb:x", "bad GPU count"),
    ("h100-80gb:0", "1 to 64"),
    ("h100-80gb:65", "1 to 64"),
    ("h100-80gb:-1", "1 to 64"),
    ("h100-80gb,,a30", "unknown simulated GPU model ''"),
])
def test_bad_host_specs(spec, message):
    if message is None:
        assert len(parse_host_spec(spec)) == 1
        return
    with pytest.raises(ValueError) as exc:
        parse_host_spec(spec)
    assert message in str(exc.value)
    if "unknown" in message:
        assert "h100-80gb" in str(exc.value) and "dgx-a100" in str(exc.value)  # says what is known


def test_new_hosts_get_distinct_identities():
    host = SimHost.create("dgx-h100")
    uuids = [g["uuid"] for g in host.gpus]
    buses = [g["pci_bus_id"] for g in host.gpus]
    assert len(set(uuids)) == 8 and len(set(buses)) == 8
    assert all(GPU_UUID_RE.match(u) for u in uuids)
    assert all(re.match(r"^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]$", b) for b in buses)
