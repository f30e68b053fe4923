"""The socket side of ingest: the receiver reads datagrams over a real socket and counts them, the
inbox thread keeps the socket empty while the daemon's loop is busy (profiler.ingest.receiver)."""

import os
import socket
import time

from hooks import wire
from profiler.ingest.messages import Bye
from profiler.ingest.receiver import Receiver


def test_receiver_counts_over_a_real_socket(tmp_path):
    r = Receiver(tmp_path / "d.sock")
    try:
        assert oct((tmp_path / "d.sock").stat().st_mode & 0o777) == "0o600"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"junk", str(tmp_path / "d.sock"))
        s.sendto(wire.encode(wire.bye("r", os.getpid(), "finished", time.monotonic())),
                 str(tmp_path / "d.sock"))  # fmt: skip
        time.sleep(0.05)
        messages = r.drain()
        assert len(messages) == 1 and isinstance(messages[0], Bye)
        assert r.counts["received"] == 2 and r.counts["malformed:not_json"] == 1
    finally:
        r.close()
    assert not (tmp_path / "d.sock").exists()


def test_the_inbox_keeps_the_socket_empty_while_the_loop_is_busy(tmp_path):
    """Linux queues only ~10 datagrams on the socket: with the inbox thread reading it, 200
    sent while nobody calls get() all arrive, none refused, in order."""
    from profiler.ingest.receiver import Inbox

    path = str(tmp_path / "d.sock")
    r = Receiver(tmp_path / "d.sock")
    inbox = Inbox(r)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        now = time.monotonic()
        give_up = now + 10  # with nobody reading, the 11th send would be refused forever
        for i in range(200):
            msg = wire.encode(wire.steps("r", os.getpid(), [[i, now, now, 1]]))
            while True:
                try:
                    s.sendto(msg, path)
                    break
                except BlockingIOError:  # the thread has not caught up yet: try again
                    assert time.monotonic() < give_up, f"datagram {i} refused for 10 s"
                    time.sleep(0.001)
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < 199 and time.monotonic() < deadline:
            got += inbox.get(0.2)
        got += inbox.stop()  # the rest, and whatever was still on the socket
        assert [m.rows[0][0] for m in got] == list(range(200))
        assert r.counts["received"] == 200
        assert inbox.get(0.0) == []
    finally:
        s.close()
        r.close()


def test_a_signal_during_the_inbox_wait_never_makes_it_wait_for_good(tmp_path):
    """The daemon's SIGTERM handler runs while its loop waits in Inbox.get. On CPython 3.11 a
    SimpleQueue.get(timeout) whose handler outlasts the deadline blocks until the next datagram
    (the daemon then never stopped, seen once in CI); the inbox must return at its timeout."""
    import signal
    import threading

    from profiler.ingest.receiver import Inbox

    r = Receiver(tmp_path / "d.sock")
    inbox = Inbox(r)
    rescue = threading.Timer(10, lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(
        wire.encode(wire.bye("r", os.getpid(), "finished", time.monotonic())),
        str(tmp_path / "d.sock")))  # fmt: skip
    rescue.start()
    old = signal.signal(signal.SIGALRM, lambda *_: time.sleep(0.3))  # outlives the deadline
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        assert inbox.get(0.25) == []
        assert time.monotonic() - started < 5  # not the 10 s rescue
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        rescue.cancel()
        inbox.stop()
        r.close()


def test_step_batches_wait_for_the_loop_and_a_bye_or_hello_wakes_it(tmp_path):
    """The inbox hands the loop step batches at its own pace (one wake-up per sample, not one
    per datagram); a bye or hello (a hook may wait for the answer) wakes it at once, with
    everything received before it, in order."""
    import threading

    from profiler.ingest.receiver import Inbox

    path = str(tmp_path / "d.sock")
    r = Receiver(tmp_path / "d.sock")
    inbox = Inbox(r)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list = []
    waiting = threading.Thread(target=lambda: got.extend(inbox.get(120.0)))
    try:
        now = time.monotonic()
        for i in range(20):
            s.sendto(wire.encode(wire.steps("r", os.getpid(), [[i, now, now, 1]])), path)
        deadline = time.monotonic() + 10
        while r.counts["received"] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.counts["received"] == 20  # read off the socket by the inbox thread
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and got == []  # step batches alone do not wake the loop
        s.sendto(wire.encode(wire.bye("r", os.getpid(), "finished", now)), path)
        waiting.join(60)  # woken by the bye, long before get's 120 s
        assert not waiting.is_alive()
        assert [m.rows[0][0] for m in got[:20]] == list(range(20))
        assert len(got) == 21 and isinstance(got[20], Bye)
    finally:
        s.close()
        inbox.stop()
        r.close()
        waiting.join(120)


def test_a_backlog_of_step_batches_wakes_the_loop(tmp_path):
    """Without a bye or hello, :data:`Inbox.WAKE_AT` waiting messages wake the loop (a burst is
    handled as it comes, not at the next sample)."""
    import threading

    from profiler.ingest.receiver import Inbox

    path = str(tmp_path / "d.sock")
    r = Receiver(tmp_path / "d.sock")
    inbox = Inbox(r)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # blocking: waits while it is full
    got: list = []
    waiting = threading.Thread(target=lambda: got.extend(inbox.get(120.0)))
    waiting.start()
    try:
        now = time.monotonic()
        for i in range(Inbox.WAKE_AT):
            s.sendto(wire.encode(wire.steps("r", os.getpid(), [[i, now, now, 1]])), path)
        waiting.join(60)  # woken by the backlog, long before get's 120 s
        assert not waiting.is_alive()
        assert [m.rows[0][0] for m in got] == list(range(Inbox.WAKE_AT))  # all, in one hand-off
    finally:
        s.close()
        inbox.stop()
        r.close()
        waiting.join(120)
