"""A GPU's measured idle power (the *measured floor*), for devices whose sensor gives no idle
figure (real NVML and amdsmi GPUs; the simulated ones give their model's idle watts).

The floor is learnt only from readings taken while the device was truly idle: no compute process
listed on it and no run holding it (the caller judges that, :func:`device_held`). Consecutive
idle readings are grouped in blocks of :data:`IDLE_BLOCK_READINGS`; a block's figure is the
*median* of its readings, so one or two glitchy readings (a 0 W or a spike) never set it; a block
is dropped when the idle stretch it was in is broken before it fills. The floor is the lowest
block median among the last :data:`IDLE_BLOCKS_KEPT` blocks: right after work a GPU stays in a
high-power state for seconds (and NVML's power reading is a 1 s average on Ampere and newer), so
the lowest block is the device's real floor, not the tail of its last job. Until a block has
filled the floor is unknown (None), never 0. Watts throughout; times are monotonic seconds.
Plain data: no I/O.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

IDLE_BLOCK_READINGS = 5
"""Consecutive idle power readings (0.5 s at the default 10 Hz sample) whose median is one
candidate for the floor."""
IDLE_BLOCKS_KEPT = 256
"""How many recent idle blocks the floor is the lowest of (a count, not a time: a device busy
for days keeps the floor it last measured)."""

MODEL = "model"
"""Idle power source: the sensor's own figure (the simulated GPU's model)."""
MEASURED_FLOOR = "measured_floor"
"""Idle power source: the floor this daemon measured (:class:`IdleFloor`)."""


class DeclaringProcess(Protocol):
    """What :func:`device_held` reads of a run's process (``runs.ProcessInfo``)."""

    @property
    def devices(self) -> tuple[str, ...]: ...


class HoldingRun(Protocol):
    """What :func:`device_held` reads of a run (``runs.Run``; not imported: runs imports mig,
    which imports devices, which imports this module)."""

    @property
    def end_mono(self) -> float | None: ...

    @property
    def device_since(self) -> Mapping[str, float]: ...

    @property
    def processes(self) -> Mapping[int, DeclaringProcess]: ...


@dataclass
class IdleFloor:
    """The lowest median power (watts) of short stretches in which the device was idle."""

    _block: list[float] = field(default_factory=list)
    _blocks: deque[float] = field(default_factory=lambda: deque(maxlen=IDLE_BLOCKS_KEPT))

    def observe(self, power_w: float | None, idle: bool) -> None:
        """Take one reading of the device's power (watts; None: not read, ignored). ``idle``:
        the device had no compute process and no run held it; a busy reading ends the stretch
        (an unfinished block is dropped)."""
        if not idle:
            self._block.clear()
            return
        if power_w is None or power_w < 0:
            return
        self._block.append(power_w)
        if len(self._block) >= IDLE_BLOCK_READINGS:
            self._blocks.append(statistics.median(self._block))
            self._block.clear()

    @property
    def watts(self) -> float | None:
        """The measured floor in watts; None until one idle block has filled."""
        return min(self._blocks) if self._blocks else None


def device_held(uuid: str, index: int, mig_uuids: Iterable[str], runs: Iterable[HoldingRun],
                t_s: float) -> bool:  # fmt: skip
    """Whether any run may hold device ``uuid`` (number ``index``; its MIG instances'
    ``mig_uuids``) at ``t_s``: a run not ended by then that was seen on it
    (``device_since``) or one of whose processes declared it. Errs toward held: a device
    judged held only keeps a reading out of the floor."""
    names = {uuid, str(index), *mig_uuids}
    for run in runs:
        if run.end_mono is not None and run.end_mono < t_s:
            continue
        if uuid in run.device_since:
            return True
        if any(names.intersection(p.devices) for p in run.processes.values()):
            return True
    return False
