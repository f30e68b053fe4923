"""A process whose hook declares its device (as ``CUDA_VISIBLE_DEVICES`` gives it, a MIG device
included) and takes a step every 0.2 s.

Usage: ``declared_steps.py SECONDS DEVICE RUN_ID NAME``.
"""

import sys
import time

from hooks.client import Client
from hooks.options import RunOptions

seconds, device, run_id, name = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
fields = RunOptions(name=name).hello_fields(
    framework="none", framework_version="", hook="test", samples_source="none", devices=[device]
)
client = Client(run_id, fields, autostart=False)
end = time.monotonic() + seconds
step = 0
while time.monotonic() < end:
    t0 = time.monotonic()
    time.sleep(0.2)
    client.step(step, t0, time.monotonic(), 1)
    step += 1
client.close("finished")
