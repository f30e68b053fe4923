"""MIG for the NVML sensor: a GPU's MIG instances as enumerated at start, and each compute
process's instance.

At start, per GPU: ``nvmlDeviceGetMigMode`` (current mode 1: MIG on; NotSupported or an
nvidia-ml-py without the call: not a MIG GPU), then for each slot up to
``nvmlDeviceGetMaxMigDeviceCount`` the MIG device (``nvmlDeviceGetMigDeviceHandleByIndex``;
NotFound: an empty slot), its ``MIG-`` uuid, its GPU instance id
(``nvmlDeviceGetGpuInstanceId``) and its name, whose ``<n>g.<m>gb`` part is the profile
(``NVIDIA A100-SXM4-80GB MIG 3g.40gb`` -> ``3g.40gb``, ``n`` its compute slices out of
:data:`GPU_SLICES`). The instances are fixed while a GPU is in use (repartitioning needs the GPU
idle), so they are read once. While sampling, a process NVML lists under the parent carries its
``gpuInstanceId``; :data:`NOT_MIG` (0xFFFFFFFF) or a missing field is None.

NVML has no energy or power per instance (NotSupported on a MIG handle): the sensor reads them
on the parent, as on any GPU. ``pynvml`` is never imported here: ``nv`` is the module (or the
simulator) the sensor was given.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from profiler.sensors.base import MigInstance

log = logging.getLogger(__name__)

GPU_SLICES = 7
"""Compute slices of a GPU in MIG mode (A100, H100, H200: 7)."""
NOT_MIG = 0xFFFFFFFF
"""``gpuInstanceId`` of a process on a GPU not in MIG mode."""
_PROFILE = re.compile(r"(\d+)g\.(\d+)gb", re.IGNORECASE)


def profile_of(name: str) -> tuple[str, int] | None:
    """``"NVIDIA A100-SXM4-80GB MIG 3g.40gb"`` -> ``("3g.40gb", 3)``; None when the name shows
    no profile."""
    m = _PROFILE.search(name)
    if m is None:
        return None
    return m.group(0).lower(), int(m.group(1))


def read_mig_instances(nv: Any, handle: Any, index: int) -> tuple[MigInstance, ...]:
    """The MIG instances of the GPU ``handle`` (device ``index``, for the log), in slot order;
    ``()`` when it is not in MIG mode or MIG cannot be read (logged)."""
    mode_of = getattr(nv, "nvmlDeviceGetMigMode", None)
    if mode_of is None:
        return ()
    try:
        current, _pending = mode_of(handle)
        if int(current) != 1:
            return ()
        slots = int(nv.nvmlDeviceGetMaxMigDeviceCount(handle))
    except nv.NVMLError:  # NotSupported: a GPU without MIG
        return ()
    out = []
    for slot in range(slots):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nv.NVMLError:  # NotFound: an empty slot
            continue
        try:
            uuid = _text(nv.nvmlDeviceGetUUID(mig))
            name = _text(nv.nvmlDeviceGetName(mig))
            gpu_instance_id = int(nv.nvmlDeviceGetGpuInstanceId(mig))
        except nv.NVMLError as e:
            log.warning(
                "GPU %d: MIG device %d left out: NVML could not read it (%s)", index, slot, e
            )
            continue
        profile = profile_of(name)
        if profile is None:
            log.warning("GPU %d: MIG device %s has no profile in its name %r", index, uuid, name)
            continue
        try:
            memory = int(nv.nvmlDeviceGetMemoryInfo(mig).total)
        except nv.NVMLError:
            memory = None
        out.append(MigInstance(uuid, gpu_instance_id, profile[0], profile[1], GPU_SLICES, memory))
    return tuple(out)


def instance_id(process: Any, instances: tuple[MigInstance, ...]) -> int | None:
    """The MIG GPU instance of one ``nvmlDeviceGetComputeRunningProcesses`` entry: its
    ``gpuInstanceId`` when the GPU has instances and the id is one of them, else None."""
    if not instances:
        return None
    gi = getattr(process, "gpuInstanceId", None)
    if gi is None or gi == NOT_MIG:
        return None
    gi = int(gi)
    return gi if any(i.gpu_instance_id == gi for i in instances) else None


def describe_mig(instances: tuple[MigInstance, ...]) -> str:
    """``"3g.40gb, 2g.20gb"``."""
    return ", ".join(i.profile for i in instances)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
