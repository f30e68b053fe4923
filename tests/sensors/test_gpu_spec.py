"""The grammar of a GPU source (profiler.sensors.gpu_spec), as profiler.toml's ``gpu``,
``PROFILER_GPU`` and ``profiler demo --gpu`` give it."""

from __future__ import annotations

import pytest

from profiler.sensors.gpu_spec import parse_gpu_spec


def test_each_source_and_only_simulated_takes_a_model_and_count():
    assert [parse_gpu_spec(s) for s in ("auto", "nvml", "none", "simulated")] == [
        "auto", "nvml", "none", "simulated"]  # fmt: skip
    assert parse_gpu_spec(" simulated:A100-SXM4-40GB:2 ") == "simulated"
    assert parse_gpu_spec("amdsmi") == "amdsmi"
    assert parse_gpu_spec("simulated-amd") == "simulated-amd"
    assert parse_gpu_spec("simulated-amd:MI300X:8") == "simulated-amd"
    assert parse_gpu_spec("simulated:anything") == "simulated"  # the model is checked later


@pytest.mark.parametrize(
    "spec", ["", "cuda", "NVML", "nvml:0", "none:", "auto:x", "simulate", "amdsmi:0", "amd", "rocm"]
)
def test_anything_else_is_one_line_naming_the_spec_and_the_grammar(spec):
    with pytest.raises(ValueError) as e:
        parse_gpu_spec(spec)
    assert str(e.value) == (
        f"gpu spec {spec!r}: expected auto, nvml, amdsmi, none, simulated[:MODEL[:COUNT]] or "
        "simulated-amd[:MODEL[:COUNT]]"
    )
