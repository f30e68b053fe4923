"""The grammar of a GPU source, as ``gpu`` in profiler.toml, ``PROFILER_GPU`` and ``profiler demo
--gpu`` give it: ``auto``, ``nvml``, ``amdsmi``, ``none``, ``simulated[:MODEL[:COUNT]]`` (the
simulated NVIDIA GPU) or ``simulated-amd[:MODEL[:COUNT]]`` (the simulated AMD GPU).

Parsed here only: the configuration checks a value with :func:`parse_gpu_spec` when it is read,
and :func:`profiler.sensors.discovery.discover_gpu_sensor` picks the sensor by the source it
returns. A simulated GPU's MODEL and COUNT are checked where the simulated GPU is built (it knows
the models). Standard library only, so the configuration can import it at no cost.
"""

from __future__ import annotations

GPU_SOURCES = ("auto", "nvml", "amdsmi", "none", "simulated", "simulated-amd")
SIMULATED_SOURCES = ("simulated", "simulated-amd")
"""The sources that take ``:MODEL[:COUNT]`` after them."""
GPU_SPEC_GRAMMAR = (
    "auto, nvml, amdsmi, none, simulated[:MODEL[:COUNT]] or simulated-amd[:MODEL[:COUNT]]"
)


def parse_gpu_spec(spec: str) -> str:
    """The source ``spec`` names, one of :data:`GPU_SOURCES` (blanks around it ignored; written
    in lower case). Only the simulated sources take ``:MODEL[:COUNT]`` after them. ValueError,
    naming ``spec``, for anything else."""
    source, colon, _detail = spec.strip().partition(":")
    if source not in GPU_SOURCES or (colon and source not in SIMULATED_SOURCES):
        raise ValueError(f"gpu spec {spec!r}: expected {GPU_SPEC_GRAMMAR}")
    return source
