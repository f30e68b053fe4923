"""``/metrics`` over HTTP: the server (:func:`serve_metrics`), a thread per request, and the page
held for a ledger flush (:func:`page_held`) so that a scrape does not wait for one. The page
itself is :mod:`profiler.daemon.exporter`'s."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from profiler.daemon.exporter import CONTENT_TYPE, render_metrics, render_unless
from profiler.daemon.view import MetricsView

ALLOWED_METHODS = "GET, HEAD, OPTIONS"


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics`` (and ``/``) renders the page, ``HEAD`` gives its headers, ``OPTIONS``
    lists the methods; other paths are 404, other HTTP methods 405 (with ``Allow``), methods
    HTTP does not define 501. A connection idle for ``timeout`` seconds is closed."""

    daemon: MetricsView  # set on the subclass made by serve_metrics
    timeout = 30  # seconds a client may take to send its request

    def _page(self) -> bytes | None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return None
        server = self.server
        if isinstance(server, _MetricsServer):
            body = server.page(self.daemon)
        else:
            body = render_metrics(self.daemon)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        body = self._page()
        if body is not None:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self._page()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self.send_response(204)
        self.send_header("Allow", ALLOWED_METHODS)
        self.end_headers()

    def _not_allowed(self) -> None:
        self.send_response(405, "Method Not Allowed")
        body = b"only GET, HEAD and OPTIONS are served here\n"
        self.send_header("Allow", ALLOWED_METHODS)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the protocol's name
        pass  # one line per scrape would flood the daemon's log


class _MetricsServer(ThreadingHTTPServer):
    """A listen backlog for a burst of scrapes (many Prometheus replicas, dashboards, ``watch``
    sessions at once): http.server's 5 makes the kernel drop the rest's SYNs, which then wait
    for a retransmission (1 s and more). A client that hangs up mid-answer is not an error."""

    request_queue_size = 1024  # the kernel caps it at net.core.somaxconn
    last_scrape_mono: float | None = None  # when the page was last asked for (monotonic s)
    held_page: bytes | None = None  # the page to answer with during a flush (page_held)

    def page(self, daemon: MetricsView) -> bytes:
        """The page held for a flush (:func:`page_held`), else one rendered now; a scrape
        waiting for the lock when a flush begins takes the flush's page."""
        self.last_scrape_mono = time.monotonic()
        while True:
            body = self.held_page or render_unless(daemon, give_up=self._page_held)
            if body is not None:
                return body

    def _page_held(self) -> bool:
        return self.held_page is not None

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the scraper went away; nothing to log
        super().handle_error(request, client_address)


HOLD_PAGE_IF_SCRAPED_WITHIN_S = 60.0
"""A page is rendered for a flush (:func:`page_held`) only where ``/metrics`` was asked for
this recently (seconds): a node nobody scrapes renders no page."""


@contextmanager
def page_held(server: ThreadingHTTPServer | None, daemon: MetricsView) -> Iterator[None]:
    """For a job that holds the daemon's lock long and changes nothing the page shows (a ledger
    flush: 50-150 ms on a busy node with 200 runs): call holding the lock. Scrapes meanwhile
    are answered with the page rendered as the job began, which is the daemon's state until it
    ends (the lock keeps every other change out), instead of waiting for it. A failed write
    counted meanwhile shows at the next scrape after the job."""
    recent = server.last_scrape_mono if isinstance(server, _MetricsServer) else None
    if recent is None or time.monotonic() - recent > HOLD_PAGE_IF_SCRAPED_WITHIN_S:
        yield
        return
    assert isinstance(server, _MetricsServer)
    server.held_page = render_metrics(daemon)
    try:
        yield
    finally:
        server.held_page = None


def serve_metrics(daemon: MetricsView, host: str, port: int) -> tuple[ThreadingHTTPServer, int]:
    """Serve ``/metrics`` on ``host:port`` (IPv4 or IPv6; port 0 picks a free one) from a
    background thread; returns (server, bound port). OSError if the address cannot be bound."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"daemon": daemon})
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, server.server_address[1]
