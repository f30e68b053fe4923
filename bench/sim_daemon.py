"""The real daemon (``profiler.daemon.service.Service`` around ``Daemon``, configured from the
environment like ``profiler daemon``) on a *scripted* simulated GPU anchored at a given
monotonic time, so a benchmark knows the exact energy every device drew.

``PROFILER_GPU=simulated`` gives the simulator's load mode, which follows the CPU use of the
processes it is told about by walking ``/proc`` with psutil on every recompute; that cost is the
simulator's, not the daemon's, so the ingest, footprint and scrape benchmarks use this launcher.

Run: ``python -m bench.sim_daemon --trace FILE --t0 MONO [--gpus N] [--no-counter] [--repeat]``
with ``PROFILER_HOME`` etc. in the environment. ``FILE`` holds a JSON list of ``[duration_s,
watts]`` phases. SIGTERM flushes the ledger and exits, as for ``profiler daemon``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.simgpu import make_sim  # noqa: E402
from profiler.config import load_config  # noqa: E402
from profiler.daemon.service import build_daemon, serve  # noqa: E402
from profiler.sensors.nvml import NvmlSensor  # noqa: E402
from profiler.sensors.simulated import SimulatedNVML  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, required=True, help="JSON list of [s, W] phases")
    parser.add_argument("--t0", type=float, required=True, help="trace anchor, monotonic s")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--no-counter", action="store_true", help="power polling path only")
    parser.add_argument("--repeat", action="store_true", help="loop the trace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    phases = [tuple(p) for p in json.loads(args.trace.read_text())]
    config = load_config(env={**os.environ, "PROFILER_GPU": "none"})
    daemon = build_daemon(config)
    sim = make_sim(
        [phases] * args.gpus,
        args.t0,
        args.gpus,
        counter=not args.no_counter,
        repeat=args.repeat,
        cls=SimulatedNVML,
    )
    sensor = NvmlSensor(sim)
    daemon.gpu_sensor = sensor
    daemon.gpu_source = sensor.source
    serve(daemon)
    return 0


if __name__ == "__main__":
    sys.exit(main())
