"""Heavy dependencies are imported only where used."""

import json
import subprocess
import sys

HEAVY = [
    "torch", "tensorflow", "keras", "tf_keras", "jax", "lightning", "pytorch_lightning",
    "transformers", "prometheus_client", "codecarbon", "pandas",
]  # fmt: skip


def loaded_after(statement: str) -> list[str]:
    listing = f"[m for m in {HEAVY!r} if m in sys.modules]"
    code = f"import sys, json; {statement}; print(json.dumps({listing}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_import_hooks_and_client_is_light():
    assert loaded_after("import hooks, hooks.wire, hooks.client, hooks.runid, hooks.recorder") == []


def test_keras_hook_imports_no_framework_until_training():
    assert (
        loaded_after("from hooks.keras import EnergyCallback; EnergyCallback(batch_size=8)") == []
    )


def test_daemon_side_never_imports_frameworks():
    loaded = loaded_after(
        "import profiler.cli.main, profiler.daemon.core, profiler.daemon.exporter, "
        "profiler.cli.daemon_cmds, profiler.cli.report_cmds, profiler.cli.run, "
        "profiler.cli.attach, "
        "profiler.sensors.nvml, "
        "profiler.sensors.simulated, profiler.cli.demo; "
        "from profiler.daemon.service import build_daemon; from profiler.config import load_config"
    )
    assert [m for m in loaded if m not in ("prometheus_client",)] == []
