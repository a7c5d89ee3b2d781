"""Fixtures for boot tests (``pytest -m boot``).

boot_base    session: the cached base image (built once; skips if not root /
             systemd-nspawn or mmdebstrap missing)
boot_rootfs  a fresh rootfs copy (Path), removed afterwards unless
             MIGD_BOOT_KEEP=1
boot_vm      callable: boot_vm(**boot_kwargs) -> BootResult, boots boot_rootfs
             with results under tmp_path/boot-<n>; call it again to reboot
"""
import itertools
import os
import time

import pytest

from .nspawn import boot
from .rootfs import build_base, missing_prerequisites, new_rootfs, remove_rootfs


@pytest.fixture(scope="session")
def boot_base():
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    img = build_base()
    print("\n[boot] base image {}: {} ({:.1f}s)".format(img.path.name, "built now" if img.built else "cached", img.seconds))
    return img


@pytest.fixture
def boot_rootfs(boot_base):
    t0 = time.monotonic()
    root = new_rootfs()
    print(f"\n[boot] fresh rootfs {root} in {time.monotonic() - t0:.2f}s")
    yield root
    if os.environ.get("MIGD_BOOT_KEEP") == "1":
        print(f"[boot] kept {root}")
    else:
        remove_rootfs(root)


@pytest.fixture
def boot_vm(boot_rootfs, tmp_path):
    counter = itertools.count(1)

    def _boot(**kwargs):
        kwargs.setdefault("results_dir", tmp_path / f"boot-{next(counter)}")
        return boot(boot_rootfs, **kwargs)

    return _boot
