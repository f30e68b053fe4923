"""torch's CUDA as the torch-based hooks read it (hooks.torch_cuda): nothing before the training
initialises CUDA (and reading never initialises it); on a GPU, step times on CUDA events, the
caching allocator's bytes and the device's NVML-style UUID."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hooks.torch_cuda import (  # noqa: E402
    CudaEventClock,
    cuda_device_uuid,
    gpu_uuid,
    torch_cuda_memory,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_nothing_is_read_before_the_training_initialises_cuda():
    if torch.cuda.is_initialized():
        pytest.skip("CUDA was initialised by an earlier test in this process")
    assert torch_cuda_memory() is None and cuda_device_uuid() is None
    assert not torch.cuda.is_initialized()  # reading did not initialise it


@needs_cuda
def test_on_a_gpu_events_time_the_step_and_memory_counts_the_tensors():
    clock = CudaEventClock()
    a = torch.ones((2048, 2048), device="cuda")  # 16 MiB of float32
    start = clock.mark()
    for _ in range(10):
        b = a @ a
    end = clock.mark()
    clock.wait(end)
    assert clock.done(start) and clock.done(end)
    assert 0.0 < clock.elapsed_s(start, end) < 10.0
    allocated, peak, reserved = torch_cuda_memory()
    assert allocated >= 2 * 2048 * 2048 * 4 and peak >= allocated and reserved >= allocated
    uuid = cuda_device_uuid()
    assert uuid == gpu_uuid(torch.cuda.current_device()) and uuid.startswith("GPU-")
    assert len(uuid) == len("GPU-") + 36  # GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
    del b
