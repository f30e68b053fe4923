"""The daemon's state lock (:class:`StateLock`): re-entrant, and fair to readers.

A plain lock is not fair in CPython: the main loop, releasing it between two pieces of work and
taking it again a few microseconds later, wins it back before a waiting thread has woken, so a
``/metrics`` scrape waits for the whole sampling pass (and a burst of messages after it) however
finely the loop splits its work. Here a reader says it waits (:meth:`StateLock.reading`) and
the loop, between two holds, gives it the lock first (:meth:`StateLock.yield_to_readers`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

YIELD_LIMIT_S = 0.01
"""The longest the loop waits for a waiting reader to take the lock (seconds): a reader that
has not taken it by then (descheduled) takes it at the loop's next release."""
YIELD_POLL_S = 0.0002  # seconds between two looks at whether the reader took the lock
READ_POLL_S = 0.005  # seconds between two looks at a waiting reader's give_up


class StateLock:
    """A re-entrant lock (``with lock:``) that readers take through :meth:`reading`, and that
    the daemon's main loop hands to waiting readers between its holds
    (:meth:`yield_to_readers`)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._count = threading.Lock()  # guards _waiting
        self._waiting = 0
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> StateLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
        self._lock.release()

    @contextmanager
    def reading(self, give_up: Callable[[], bool] = lambda: False) -> Iterator[bool]:
        """Hold the lock to read, first in line at the main loop's next
        :meth:`yield_to_readers`: yields True holding it; or, where ``give_up()`` (asked every
        :data:`READ_POLL_S` while waiting) turns true first, False without it."""
        held = False
        with self._count:
            self._waiting += 1
        try:
            while not (held := self._lock.acquire(timeout=READ_POLL_S)):
                if give_up():
                    break
        finally:
            with self._count:
                self._waiting -= 1
        if not held:
            yield False
            return
        self._owner = threading.get_ident()
        self._depth += 1
        try:
            yield True
        finally:
            self.__exit__(None, None, None)

    @property
    def readers_waiting(self) -> int:
        """Readers waiting in :meth:`reading` for the lock now."""
        return self._waiting

    def yield_to_readers(self, limit_s: float = YIELD_LIMIT_S) -> None:
        """Between two holds of the lock (not holding it): if a reader waits, give up the GIL
        until it has taken the lock, at most ``limit_s`` seconds. Returns at once when no
        reader waits or when this thread holds the lock (the reader could not take it)."""
        if not self._waiting or self._owner == threading.get_ident():
            return
        deadline = time.monotonic() + limit_s
        while self._waiting and time.monotonic() < deadline:
            time.sleep(YIELD_POLL_S)
