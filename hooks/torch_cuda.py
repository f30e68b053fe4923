"""torch's CUDA, as the torch-based hooks read it: step times on CUDA events, the caching
allocator's memory and device UUIDs. Never synchronises the GPU except in
:meth:`CudaEventClock.wait` (which :class:`hooks.recorder.StepRecorder` calls only at a run's
end) and never initialises CUDA: the training does."""

from __future__ import annotations

from typing import Any

import torch


class CudaEventClock:
    """:class:`hooks.recorder.DeviceClock` on CUDA events of the current stream."""

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def done(self, token: Any) -> bool:
        return token.query()

    def elapsed_s(self, earlier: Any, later: Any) -> float:
        return earlier.elapsed_time(later) / 1000.0

    def wait(self, token: Any) -> None:
        token.synchronize()


def torch_cuda_memory() -> tuple[int | None, int | None, int | None] | None:
    """This process's CUDA caching-allocator memory on the current device, in bytes:
    ``(allocated, peak allocated, reserved)``; None before CUDA is initialised."""
    if not torch.cuda.is_initialized():
        return None
    stats = torch.cuda.memory_stats()
    return (
        stats.get("allocated_bytes.all.current"),
        stats.get("allocated_bytes.all.peak"),
        stats.get("reserved_bytes.all.current"),
    )


def cuda_device_uuid() -> str | None:
    """The NVML-style UUID (``GPU-...``) of the current CUDA device, if CUDA is initialised."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return gpu_uuid(torch.cuda.current_device())


def gpu_uuid(index: int) -> str:
    """The NVML-style UUID (``GPU-...``) of CUDA device ``index``."""
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
