#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU: the NVML sensor alone, then daemon + real CUDA training,
# comparing the run's attributed energy with NVML's counter read independently by the script.
# Writes everything under ${OUT:-/tmp/gpu-check}.
set -u
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,power.draw --format=csv | tee "$OUT/nvidia-smi.txt"
echo "== NVML sensor alone (3 s at 10 Hz)"
$PY - <<'PYEOF' 2>&1 | tee "$OUT/sensor.txt"
import time
from profiler.sensors.nvml import NvmlSensor
s = NvmlSensor()
print("source", s.source)
first = s.sample()
time.sleep(3)
last = None
for _ in range(5):
    time.sleep(0.1)
    last = s.sample()
for a, b in zip(first, last):
    print(f"gpu{b.index} {b.name} {b.uuid} energy_source={b.energy_source} power={b.power_w} W "
          f"limit={b.power_limit_w} W util={b.utilization_ratio} mem={b.memory_used_bytes}/"
          f"{b.memory_total_bytes} B  energy over {b.t_s - a.t_s:.2f} s = {b.energy_j - a.energy_j:.1f} J"
          f" (mean {(b.energy_j - a.energy_j) / (b.t_s - a.t_s):.1f} W) processes={b.processes}")
print("errors", dict(s.errors))
PYEOF
echo "== daemon + real CUDA training"
export PROFILER_HOME=$(mktemp -d) PROFILER_GPU=nvml PROFILER_METRICS_PORT=0
$PY -m profiler start
$PY bench/gpu_train.py --seconds "${SECONDS_TRAIN:-20}" | tee "$OUT/train.json"
sleep 2
$PY -m profiler runs --json > "$OUT/runs.json"
$PY -m profiler status --json > "$OUT/status.json"
curl -s "$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_url"])' "$OUT/status.json")" > "$OUT/metrics.txt" || true
$PY -m profiler stop
cp "$PROFILER_HOME/daemon.log" "$OUT/daemon.log"
$PY - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
train = json.loads(open(f"{out}/train.json").read().strip().splitlines()[-1])
run = next(r for r in json.load(open(f"{out}/runs.json")) if r["id"] == train["run_id"])
indep = (train["mj1"] - train["mj0"]) / 1000
print(f"steps: hook saw {run['steps']}, script ran {train['steps']}; status {run['status']}")
print(f"run energy {run['gpu_energy_j']:.1f} J over {run['duration_s']:.2f} s; independent NVML "
      f"counter over the script's window {indep:.1f} J over {train['t1'] - train['t0']:.2f} s; "
      f"ratio {run['gpu_energy_j'] / indep:.4f}")
print(f"energy_source {run['energy_source']}, mean {run['gpu_power_mean_w']:.1f} W, peak "
      f"{run['gpu_power_peak_w']} W, step mean {run['step_time_mean_s']*1e3:.2f} ms, "
      f"p95 {run['step_time_p95_s']*1e3:.2f} ms, gpu_seconds {run['gpu_seconds']:.2f}")
PYEOF
