"""Waits for SIGINT and reports where each one came from: ``tty`` (sent by the kernel, as a
terminal's Ctrl-C is: si_code SI_KERNEL), ``parent`` (``profiler run`` forwarding it) or
``other``. Then dies of SIGINT itself, as an interrupted Python program does."""

import os
import signal
import time

SI_KERNEL = 0x80
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("ready", flush=True)
senders = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    info = signal.sigtimedwait({signal.SIGINT}, 0.5 if senders else 1.0)
    if info is None:
        if senders:
            break
        continue
    if info.si_code == SI_KERNEL:
        senders.append("tty")
    elif info.si_pid == os.getppid():
        senders.append("parent")
    else:
        senders.append("other")
print(f"sigint from={','.join(senders)}", flush=True)
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
