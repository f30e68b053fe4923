"""The grammar of a GPU source, as ``gpu`` in profiler.toml, ``PROFILER_GPU`` and ``profiler demo
--gpu`` give it: ``auto``, ``nvml``, ``none`` or ``simulated[:MODEL[:COUNT]]``.

Parsed here only: the configuration checks a value with :func:`parse_gpu_spec` when it is read,
and :func:`profiler.sensors.nvml.discover_gpu_sensor` picks the sensor by the source it returns.
A simulated GPU's MODEL and COUNT are checked where the simulated GPU is built
(:func:`profiler.sensors.simulated_power.parse_simulated_spec`, which knows the models). Standard
library only, so the configuration can import it at no cost.
"""

from __future__ import annotations

GPU_SOURCES = ("auto", "nvml", "none", "simulated")
GPU_SPEC_GRAMMAR = "auto, nvml, none or simulated[:MODEL[:COUNT]]"


def parse_gpu_spec(spec: str) -> str:
    """The source ``spec`` names, one of :data:`GPU_SOURCES` (blanks around it ignored; written
    in lower case). Only ``simulated`` takes ``:MODEL[:COUNT]`` after it. ValueError, naming
    ``spec``, for anything else."""
    source, colon, _detail = spec.strip().partition(":")
    if source not in GPU_SOURCES or (colon and source != "simulated"):
        raise ValueError(f"gpu spec {spec!r}: expected {GPU_SPEC_GRAMMAR}")
    return source
