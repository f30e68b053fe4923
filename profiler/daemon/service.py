"""The daemon as a process (:class:`Service`): its lock, socket, ``/metrics`` server, main loop
at a fixed rate on the monotonic clock, signals and shutdown; and building a daemon from the
configuration (:func:`build_daemon`). The loop's boundaries count and log a message or flush
that trips a bug instead of ending the daemon.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from profiler import __version__
from profiler.config import Config
from profiler.daemon.core import Daemon
from profiler.daemon.lock import home_error, lock_state, start_ticks
from profiler.daemon.metrics_http import page_held, serve_metrics
from profiler.ingest.messages import Message
from profiler.ingest.receiver import Inbox, Receiver, group_id
from profiler.ledger.recovery import make_reserve, release_reserve, write_exit_report

if TYPE_CHECKING:
    from profiler.cost.pricing import Pricing

log = logging.getLogger(__name__)

HANDLE_CHUNK = 16  # messages handled per hold of the daemon's lock
# How long a thread computing in Python keeps the GIL from one asking for it (seconds): a scrape
# gives the GIL up a handful of times (reading the request, sending the page) and, while the
# main loop computes, waits this long each time to get it back (CPython's default is 5 ms).
GIL_SWITCH_INTERVAL_S = 0.001
# Step batches wait for the loop's next wake-up, at most this long (a hello or bye wakes it
# at once; profiler.ingest.receiver.Inbox): one wake-up per sample, not one per datagram.
MESSAGE_DELAY_S = 0.1


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Service:
    """The daemon as a process: lock, socket, metrics server, main loop, signals."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.stop_event = threading.Event()
        self._lock_fd: int | None = None
        self.receiver: Receiver | None = None
        self.inbox: Inbox | None = None
        self.http = None
        self.metrics_url = ""

    def acquire_lock(self) -> None:
        """One daemon per home: hold an exclusive lock on ``daemon.lock`` for life."""
        home = self.config.home
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.config.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DaemonError(home_error(home, e)) from None
        # A CLI testing the lock holds it shared for an instant: retry for up to 1 s.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 19:
                    time.sleep(0.05)
        else:
            os.close(fd)
            other = lock_state(self.config.lock_file).pid or "?"
            raise DaemonError(
                f"a daemon (pid {other}) already runs for {self.config.home}; "
                "use `profiler status`, or `profiler stop` first"
            ) from None
        self._lock_fd = fd
        # Warned only by the daemon that keeps the home (a refused second one says one line).
        loose = home.stat().st_mode & (0o077 if not self.config.socket_group else 0o067)
        if loose:
            log.warning(
                "%s is open to other users (mode %o); the daemon keeps its files owner-only, "
                "but `chmod 700 %s` is safer", home, home.stat().st_mode & 0o777, home,
            )  # fmt: skip

    def start(self) -> None:
        """Take the lock, open the ledger, serve ``/metrics``, open the socket and write
        ``daemon.json`` (raises DaemonError saying why one of them cannot be done)."""
        self.acquire_lock()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # the daemon's process: see above
        self.daemon.open_ledger()
        try:
            make_reserve(self.config)
        except OSError as e:
            log.warning(
                "cannot set aside space for a last ledger write in %s (%s): on a full disk, "
                "what the daemon holds at exit may not be written", self.config.home, e.strerror,
            )  # fmt: skip
        try:
            self.http, port = serve_metrics(
                self.daemon, self.config.metrics_host, self.config.metrics_port
            )
        except OSError as e:
            raise DaemonError(
                f"cannot serve /metrics on {self.config.metrics_host}:{self.config.metrics_port}"
                f" ({e.strerror}): choose another port with PROFILER_METRICS_PORT (0 = any free)"
            ) from e
        host = self.config.metrics_host
        shown = f"[{host}]" if ":" in host else host
        self.metrics_url = f"http://{shown}:{port}/metrics"
        group = None
        if self.config.socket_group:
            group = group_id(self.config.socket_group)
            # The group may pass through the home directory to the socket (not list it).
            os.chown(self.config.home, -1, group)
            os.chmod(self.config.home, 0o710)
        self.receiver = Receiver(self.config.socket, self.daemon.message_counts, group=group)
        self.inbox = Inbox(self.receiver)
        self._write_status()
        log.info(
            "daemon %s listening on %s, metrics at %s; %s",
            __version__,
            self.config.socket,
            self.metrics_url,
            self.daemon.describe_gpu(),
        )

    def _write_status(self) -> None:
        """``daemon.json``, whole or not at all (written aside, then renamed): the status, and
        this process's start time (``/proc/<pid>/stat`` ticks), which with the pid names this
        process for good (``profiler stop`` signals nothing else)."""
        status = dict(
            self.daemon.status(self.metrics_url),
            start_ticks=start_ticks(os.getpid()),
            exit_report=True,  # `profiler stop` expects daemon.exit.json from this daemon
        )
        tmp = self.config.status_file.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(status, indent=1))
            tmp.replace(self.config.status_file)
        except OSError as e:
            raise DaemonError(home_error(self.config.home, e)) from None

    def install_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP stop the loop (the daemon then flushes and exits)."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def run(self) -> None:
        """Main loop at a fixed rate on the monotonic clock until ``stop_event``."""
        d, cfg = self.daemon, self.config
        assert self.inbox is not None
        now = time.monotonic()
        next_sample = now
        next_flush = now + cfg.flush_interval_s
        next_check = now + cfg.process_check_interval_s
        while not self.stop_event.is_set():
            timeout = max(0.0, min(next_sample, next_flush, next_check) - time.monotonic())
            messages = self.inbox.get(min(timeout, MESSAGE_DELAY_S))
            if messages:
                for i in range(0, len(messages), HANDLE_CHUNK):
                    d.lock.yield_to_readers()
                    with d.lock:  # let a scrape in between chunks of a burst
                        for m in messages[i : i + HANDLE_CHUNK]:
                            self._handle(m)
            now = time.monotonic()
            if now >= next_sample:
                readings = d.read_sensors()
                d.apply_readings(readings)  # takes the lock per device (scrapes get in between)
                next_sample += cfg.sample_interval_s
                if next_sample < now:
                    next_sample = now + cfg.sample_interval_s
            if now >= next_check:
                with d.lock:
                    d.lifecycle.check_processes()
                    d.account_cpu()
                    d.lifecycle.forget_finished()
                next_check = now + cfg.process_check_interval_s
            if now >= next_flush:
                # scrapes meanwhile get the page as the flush began (the state it holds still)
                with d.lock, page_held(self.http, d):
                    self._flush()
                next_flush = now + cfg.flush_interval_s

    def _flush(self) -> None:
        """A periodic flush; one that trips a bug (a failed write is handled by the flush
        itself) is counted and logged (once with its traceback), and the next one tries again
        with everything still in memory."""
        try:
            self.daemon.flush()
        except Exception:  # noqa: BLE001 - a flush bug must not end the daemon
            first = not self.daemon.health["flush_errors"]
            self.daemon.health["flush_errors"] += 1
            if first:
                log.exception("a ledger flush failed unexpectedly; data stays in memory")

    def _handle(self, message: Message) -> None:
        """Apply one message; a message that trips a bug is counted and logged (once with its
        traceback) instead of stopping the daemon that every training process relies on."""
        try:
            self.daemon.handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not end the daemon
            first = not self.daemon.health["handler_errors"]
            self.daemon.health["handler_errors"] += 1
            if first:
                log.exception("a %s message could not be applied", type(message).__name__)

    def shutdown(self) -> None:
        """Apply what the socket still holds, attribute up to the last sample, flush (or write
        the recovery file), close everything and write the exit report for `profiler stop`."""
        d = self.daemon
        if self.receiver is not None:
            left = self.inbox.stop() if self.inbox is not None else self.receiver.drain()
            with d.lock:
                for m in left:
                    self._handle(m)
            self.receiver.close()
        with d.lock:
            if d.gpu_sensor is not None:
                d.sample()
                d.attribute_all()
            outcome = d.final_flush()
        if self.http is not None:
            self.http.shutdown()
        if d.annotator is not None:
            d.annotator.close(2.0)
        if d.ledger is not None:
            d.ledger.close()
        if d.gpu_sensor is not None:
            d.gpu_sensor.close()
        release_reserve(self.config)  # set aside again by the next daemon
        try:
            write_exit_report(self.config, os.getpid(), outcome)
        except OSError as e:
            log.error("cannot record the outcome of the final flush for `profiler stop` (%s)", e)
        try:
            self.config.status_file.unlink()
        except FileNotFoundError:
            pass
        if outcome.ok:
            log.info("daemon stopped; %s", outcome.message)
        else:
            log.error("daemon stopped; %s", outcome.message)


def build_daemon(config: Config) -> Daemon:
    """Discover sensors per the config and make a daemon (raises DaemonError on a bad GPU spec)."""
    from profiler.sensors import discover_gpu_sensor
    from profiler.sensors.base import SensorUnavailable
    from profiler.sensors.host import discover_cpu_sensor

    try:
        gpu, gpu_text = discover_gpu_sensor(config.gpu)
    except (SensorUnavailable, ValueError) as e:
        raise DaemonError(f"gpu = {config.gpu!r}: {e}") from e
    pricing = effective_pricing(config)
    from profiler.budget.settings import BudgetSettingsError, budget_settings

    try:
        budget_settings(config.budget, config.source)
    except BudgetSettingsError as e:
        raise DaemonError(str(e)) from e
    cpu, _cpu_text = discover_cpu_sensor(root=config.rapl_root, tdp_w=config.cpu_tdp_w)
    daemon = Daemon(
        config, gpu_sensor=gpu, no_gpu_reason=gpu_text if gpu is None else "", cpu_sensor=cpu,
        pricing=pricing, hostname=config.hostname or None,
    )  # fmt: skip
    if config.grafana_url:
        from profiler.grafana import Annotator, GrafanaError, token_from

        try:
            token = token_from(os.environ, config.grafana_token_file or None)
            daemon.annotator = Annotator(config.grafana_url, token)
        except GrafanaError as e:
            log.warning("Grafana annotations are off: %s", e)
    return daemon


def effective_pricing(config: Config) -> Pricing:
    """The pricing ``config`` asks for (raises DaemonError with the one-line reason)."""
    from profiler.cost.pricing import resolve_pricing
    from profiler.cost.settings import PricingError

    try:
        return resolve_pricing(config.cost, config.catalog, where=config.source)
    except PricingError as e:
        raise DaemonError(str(e)) from e


def run_foreground(config: Config) -> None:
    """``profiler daemon``: run until SIGTERM/SIGINT, then flush and exit. Files the daemon
    creates (ledger, status, lock) are owner-only: umask 077."""
    os.umask(0o077)
    serve(build_daemon(config))


def serve(daemon: Daemon) -> None:
    """Run a built daemon (its lock, ledger, socket and ``/metrics``) until SIGTERM/SIGINT,
    then flush and exit."""
    service = Service(daemon)
    service.start()
    service.install_signals()
    try:
        service.run()
    finally:
        service.shutdown()
