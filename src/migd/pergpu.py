"""One thread per GPU: each GPU's reads, plan and changes run on their own thread, the GPUs side by side.

Why threads: an NVML call is a C call (ctypes releases the GIL for it) and NVML is thread-safe, so GPUs' reads
overlap; migd's own Python work between them is small. Each GPU's calls stay on one thread, in their order: what one
GPU's apply does (and its rollback) is exactly what it did sequentially. A failure in one GPU's work never stops
the others: every thread runs to its end before a result (or the first GPU's exception, by GPU order) is returned.

One GPU (or none) runs on the calling thread: no thread for nothing. Threads are daemons, so a call wedged in the
driver never keeps the process from exiting once the caller gives up (systemd's timeout, SIGKILL). Each thread runs
in a copy of the caller's context (contextvars), so anything bound there is bound in every GPU's thread too.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Callable, Dict, Generic, Optional, Sequence, TypeVar

T = TypeVar("T")


class Done(Generic[T]):
    """One GPU's result: its value, or the exception its work raised."""

    __slots__ = ("value", "error")

    def __init__(self) -> None:
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def settle(fn: Callable[[int], T], gpus: Sequence[int]) -> Dict[int, Done[T]]:
    """fn(gpu) for every GPU, each on its own thread; waits for all. GPU -> Done, in the order given."""
    done: Dict[int, Done[T]] = {g: Done() for g in gpus}

    def work(g: int) -> None:
        try:
            done[g].value = fn(g)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, on the caller's thread
            done[g].error = e

    if len(gpus) <= 1:
        for g in gpus:
            work(g)
        return done
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, g), name=f"migd-gpu{g}",
                                daemon=True) for g in gpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def each(fn: Callable[[int], T], gpus: Sequence[int]) -> Dict[int, T]:
    """settle(), then the values; the first GPU's exception (in the order given) is raised once all have ended."""
    return {g: d.get() for g, d in settle(fn, gpus).items()}
