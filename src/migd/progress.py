"""Progress of an apply at a terminal: each GPU's result as soon as it is final, and on a TTY a status line on stderr
for a driver call that takes over a second ("GPU 2: creating a GPU instance… 3 s"), cleared once the call returns.

Nothing here logs: the journal gets the engine's events, once; this is only what a person at a terminal sees.
Thread-safe: GPUs may be applied in parallel threads, so printing and the table of calls in flight share one lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple, cast

from .backend import Backend

SHOW_AFTER = 1.0  # seconds a call runs before the status line names it
TICK = 0.25
FRAMES = "|/-\\"

# backend method -> what a person is waiting for (the rest are reads)
_WAITING_FOR = {
    "set_mig_mode": "changing MIG mode", "set_persistence": "setting persistence mode",
    "create_gpu_instance": "creating a GPU instance", "create_compute_instance": "creating a compute instance",
    "destroy_gpu_instance": "destroying a GPU instance", "destroy_compute_instance": "destroying a compute instance",
}


class Progress:
    """`gpu_done(result)` prints a line to `out` at once; `watch(backend)` wraps a backend so that its slow calls show
    on `status` (a TTY; None: no status line)."""

    def __init__(self, out: TextIO, status: Optional[TextIO], clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.status = status
        self.clock = clock
        self._order: List[int] = []  # GPUs whose lines come in index order (expect())
        self._held: Dict[int, str] = {}  # finished before a lower-numbered GPU: printed when that one is
        self._lock = threading.Lock()
        self._calls: Dict[int, Tuple[str, float]] = {}  # thread id -> (what, started)
        self._shown = False  # a status line is on the screen
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None

    # --- results ----------------------------------------------------------------------------------------------

    def expect(self, gpus: Sequence[int]) -> None:
        """These GPUs' lines come in index order (they are applied side by side, on threads): each as soon as it
        and every lower-numbered one is final, so the output reads the same whichever thread ends first."""
        with self._lock:
            self._order = sorted(gpus)

    def gpu_done(self, result: Any) -> None:
        with self._lock:
            self._clear()
            if result.gpu in self._order:
                self._held[result.gpu] = result.message
                self._flush_in_order()
            else:
                self.out.write(f"{result.message}\n")
            self.out.flush()

    def _flush_in_order(self, everything: bool = False) -> None:
        while self._order and (everything or self._order[0] in self._held):
            message = self._held.pop(self._order.pop(0), None)
            if message is not None:
                self.out.write(f"{message}\n")

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(f"{text}\n")
            self.out.flush()

    # --- calls in flight --------------------------------------------------------------------------------------

    def watch(self, backend: Backend) -> Backend:
        return backend if self.status is None else cast(Backend, _Watched(backend, self))

    def started(self, what: str) -> None:
        with self._lock:
            self._calls[threading.get_ident()] = (what, self.clock())
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="migd-progress", daemon=True)
                self._ticker.start()

    def finished(self) -> None:
        with self._lock:
            self._calls.pop(threading.get_ident(), None)
            if not self._calls:
                self._clear()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._clear()
            self._flush_in_order(everything=True)  # a GPU that never got a result holds nobody back
            self.out.flush()

    def _tick(self) -> None:
        frame = 0
        while not self._stop.wait(TICK):
            with self._lock:
                now = self.clock()
                slow = sorted((started, what) for what, started in self._calls.values() if now - started >= SHOW_AFTER)
                if slow and self.status is not None:
                    started, what = slow[0]
                    more = f" (+{len(slow) - 1} more)" if len(slow) > 1 else ""
                    self.status.write(f"\r\x1b[K{FRAMES[frame % len(FRAMES)]} {what}... {now - started:.0f} s{more}")
                    self.status.flush()
                    self._shown = True
                    frame += 1

    def _clear(self) -> None:
        """Erase the status line (the caller holds the lock)."""
        if self._shown and self.status is not None:
            self.status.write("\r\x1b[K")
            self.status.flush()
            self._shown = False


class _Watched:
    """A backend whose changing calls tell `progress` when they start and end; everything else passes through."""

    def __init__(self, inner: Backend, progress: Progress):
        self._inner = inner
        self._progress = progress

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        what = _WAITING_FOR.get(name)
        if what is None or not callable(target):
            return target

        def call(gpu: int, *args: Any, **kwargs: Any) -> Any:
            self._progress.started(f"GPU {gpu}: {what}")
            try:
                return target(gpu, *args, **kwargs)
            finally:
                self._progress.finished()

        return call
