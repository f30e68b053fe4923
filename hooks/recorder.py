"""What every framework hook shares: counting, timing and describing steps for one run.

A framework hook translates its framework's events into :meth:`StepRecorder.begin` /
:meth:`StepRecorder.end` calls; the recorder turns them into step rows for the
:class:`~hooks.client.Client` (see :mod:`hooks.wire` for the row format). Standard library only.

Promises:

- A step is the time from its ``begin`` (or, without one, from the previous step's end) to its
  ``end``, on CLOCK_MONOTONIC (seconds). ``end(count=N)`` closes N steps at once (Keras with
  ``steps_per_execution=N``): the interval is split evenly among them.
- With a :class:`DeviceClock` (CUDA events), each step's row is held until the device has
  finished the step's work, found by polling (never by waiting), and then carries ``dev_s``, the
  step's duration on the device's clock; at most :data:`MAX_PENDING_DEVICE_STEPS` rows wait,
  beyond that the oldest goes out with host timing only.
- A loss may be a number or anything ``float()`` accepts (a tensor); it is converted when the
  row is sent (after the device finished, so no synchronisation). A NaN or infinite loss is sent
  as ``nonfinite``.
- Framework memory (``memory_probe``) is read at most every ``memory_every_s`` seconds and rides
  on the step it was read at.
- Nothing raises into training: errors are counted in :attr:`errors`.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from hooks.client import Client

MAX_PENDING_DEVICE_STEPS = 1024
MEMORY_EVERY_S = 0.1

MemoryProbe = Callable[[], "tuple[int | None, int | None, int | None] | None"]


class DeviceClock(Protocol):
    """Marks on the device's timeline (CUDA events), read without blocking."""

    def mark(self) -> Any:
        """Record a mark after the work queued so far; returns a token."""

    def done(self, token: Any) -> bool:
        """Whether the device has reached the mark (non-blocking)."""

    def elapsed_s(self, earlier: Any, later: Any) -> float:
        """Seconds between two reached marks."""

    def wait(self, token: Any) -> None:
        """Block until the device reaches the mark (used only when the run ends)."""


class StepRecorder:
    """Steps of one run in this process."""

    def __init__(
        self,
        client: Client,
        *,
        batch_size: int | None = None,
        device_clock: DeviceClock | None = None,
        memory_probe: MemoryProbe | None = None,
        memory_every_s: float = MEMORY_EVERY_S,
    ) -> None:
        self.client = client
        self.batch_size = batch_size or 0
        self.device_clock = device_clock
        self.memory_probe = memory_probe
        self.memory_every_s = memory_every_s
        self.steps = 0
        self.hook_errors = 0
        self.nonfinite_losses = 0
        self.device_timing_missed = 0
        self._start: float | None = None
        self._last_end: float | None = None
        self._last_memory = -math.inf
        self._start_mark: Any = None
        self._prev_mark: Any = None
        # (row, mark, loss) waiting for the device to reach the mark.
        self._waiting: deque[tuple[list[Any], Any, Any]] = deque()
        # The fast lane: end times (CLOCK_MONOTONIC seconds) of steps that follow the last
        # counted step, each starting where the previous ended, ``batch_size`` samples each.
        # A hook appends to it directly; :meth:`drain_ends` hands them to the client.
        self.ends = array("d")

    @property
    def steps_seen(self) -> int:
        """Steps counted, including those still in the fast lane."""
        return self.steps + len(self.ends)

    def drain_ends(self) -> None:
        """Hand the fast lane's steps to the client (one message per 4096 steps)."""
        if not self.ends:
            return
        chunk = self.ends[:]
        del self.ends[:]
        start = self._last_end if self._last_end is not None else chunk[0]
        self.client.steps_in_a_row(self.steps + 1, start, chunk, self.batch_size)
        self.steps += len(chunk)
        self._last_end = chunk[-1]

    @property
    def errors(self) -> int:
        return self.hook_errors + self.client.errors

    def begin(self, now: float | None = None) -> None:
        """A step starts now (optional: without it a step starts where the previous ended)."""
        self._start = time.monotonic() if now is None else now
        if self.device_clock is not None and self._prev_mark is None:
            self._start_mark = self.device_clock.mark()

    def end(
        self,
        samples: int | None = None,
        loss: Any = None,
        count: int = 1,
        now: float | None = None,
    ) -> None:
        """``count`` steps end now; ``samples`` is their total (None: ``batch_size`` each)."""
        if self.ends:
            self.drain_ends()
        end = time.monotonic() if now is None else now
        start = self._start if self._start is not None else self._last_end
        if start is None or start > end:
            start = end
        self._start = None
        self._last_end = end
        if count == 1 and self.device_clock is None and not self.memory_probe:
            # the common cases, kept short: one row, with no loss or a finite float loss
            if loss is None:
                self.steps += 1
                self.client.step(self.steps, start, end, self.batch_size if samples is None
                                 else samples)  # fmt: skip
                return
            if type(loss) is float and loss - loss == 0.0:  # finite (inf - inf is NaN)
                self.steps += 1
                self.client.step(self.steps, start, end, self.batch_size if samples is None
                                 else samples, {"loss": loss})  # fmt: skip
                return
        count = max(1, int(count))
        if samples is None:
            samples = self.batch_size * count
        extras: dict[str, Any] = {}
        if self.memory_probe is not None and end - self._last_memory >= self.memory_every_s:
            self._last_memory = end
            memory = self.memory_probe()
            if memory is not None:
                extras["mem"] = list(memory)
        rows = []
        width = (end - start) / count
        per_step, extra_samples = divmod(samples, count)
        for i in range(count):
            self.steps += 1
            row_samples = per_step + (1 if i < extra_samples else 0)
            rows.append([self.steps, start + i * width, start + (i + 1) * width, row_samples])
        if extras:
            rows[-1].append(extras)
        if self.device_clock is None:
            self._send_last(rows, loss)
            return
        mark = self.device_clock.mark()
        for row in rows[:-1]:
            self._emit(row, None)
        self._waiting.append((rows[-1], mark, loss))
        self.poll()

    def poll(self) -> None:
        """Send the held rows whose device work has finished (never blocks)."""
        clock = self.device_clock
        while self._waiting:
            row, mark, loss = self._waiting[0]
            if not clock.done(mark):
                if len(self._waiting) <= MAX_PENDING_DEVICE_STEPS:
                    return
                self.device_timing_missed += 1
                self._waiting.popleft()
                self._prev_mark = None
                self._emit(row, loss)
                continue
            self._waiting.popleft()
            earlier = self._prev_mark if self._prev_mark is not None else self._start_mark
            if earlier is not None:
                self._extras(row)["dev_s"] = clock.elapsed_s(earlier, mark)
            self._prev_mark = mark
            self._emit(row, loss)

    def finish(self) -> None:
        """The run ends: wait for the device to finish held steps, then send everything."""
        self.drain_ends()
        if self._waiting:
            self.device_clock.wait(self._waiting[-1][1])
            self.poll()
        self.client.flush()

    def _send_last(self, rows: list[list[Any]], loss: Any) -> None:
        for row in rows[:-1]:
            self._emit(row, None)
        self._emit(rows[-1], loss)

    def _emit(self, row: list[Any], loss: Any) -> None:
        if loss is not None:
            try:
                value = float(loss)
            except (TypeError, ValueError, RuntimeError):
                value = None
                self.hook_errors += 1
            if value is not None:
                if math.isfinite(value):
                    self._extras(row)["loss"] = value
                else:
                    self._extras(row)["nonfinite"] = 1
                    self.nonfinite_losses += 1
        if len(row) == 5:
            self.client.step(row[0], row[1], row[2], row[3], row[4])
        else:
            self.client.step(row[0], row[1], row[2], row[3])

    @staticmethod
    def _extras(row: list[Any]) -> dict[str, Any]:
        if len(row) == 4:
            row.append({})
        return row[4]
