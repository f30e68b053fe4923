"""What the GPU sensors (NVML and amdsmi) share: the thread their vendor calls run on, so a call
that hangs holds up neither the daemon's loop nor its exit, and this boot's id, part of a real
energy counter's epoch (a counter counts from driver load; a reboot changes the boot id).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
"""Changes at every boot: part of a real energy counter's epoch."""


class CallReader:
    """One daemon thread that makes a sensor's vendor calls, so that a call that hangs (a stuck
    driver) holds up neither the daemon's loop nor its exit. A reader that hangs is abandoned
    (:meth:`retire`): it ends once its call returns, and a fresh one takes over."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the reader's thread; its result (or exception) arrives in the future."""
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future

    def retire(self) -> None:
        """End the thread after the job it is on."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(e)


def boot_id() -> str | None:
    """This boot's id (Linux), or None when it cannot be read."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None
