"""`migd boot` (migd.service): wait for the NVIDIA driver, then apply through the engine."""

from __future__ import annotations

import time
from typing import Callable

from . import errors as E
from .backend import Backend
from .errors import DriverError
from .log import get_logger

log = get_logger()

_DRIVER_ABSENT = (E.DRIVER_NOT_LOADED, E.LIBRARY_NOT_FOUND)


def wait_for_driver(make: Callable[[], Backend], timeout: float) -> Backend:
    """Open a backend, retrying with backoff while the NVIDIA driver is not (yet) there."""
    deadline = time.monotonic() + timeout
    delay, attempt = 0.25, 0
    while True:
        attempt += 1
        backend = make()
        try:
            backend.open()
            if attempt > 1:
                log.info("driver_ready", msg=f"NVIDIA driver ready after {attempt} attempts", attempts=attempt)
            return backend
        except DriverError as e:
            if e.code not in _DRIVER_ABSENT:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError(e.code, "nvmlInit", None,
                                  f"no NVIDIA driver after {timeout:g} s (driver_wait_timeout): is the nvidia kernel "
                                  "module installed and loaded? (`lsmod | grep nvidia`, `nvidia-smi`)") from None
            log.info("driver_wait", msg=f"waiting for the NVIDIA driver ({E.code_name(e.code)}), retry in "
                                        f"{min(delay, left):.1f} s", attempt=attempt, code=E.code_name(e.code))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
