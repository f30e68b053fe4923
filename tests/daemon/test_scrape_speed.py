"""The scrape's fast paths (profiler.daemon.exposition, profiler.daemon.statelock): numbers spelt
exactly as ``repr(float(value))``, step histograms kept between pages but never stale, a scrape
that waits for the daemon's lock is given it between the main loop's holds, and one during a
ledger flush is answered with the page as the flush began instead of waiting for it."""

import math
import os
import threading
import time
import urllib.request

import pytest
from inprocess import hello, make_daemon

from profiler.daemon.exporter import render_metrics
from profiler.daemon.exposition import number
from profiler.daemon.metrics_http import page_held, serve_metrics
from profiler.daemon.statelock import StateLock
from profiler.ingest.messages import StepBatch


def reference(value: float) -> str:
    """The text format's spelling of a value, the slow and obvious way."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@pytest.mark.parametrize(
    "value",
    [0, 1, -7, 10**15 - 1, -(10**15) + 1, 10**15, 2**53 + 1, 10**16, 10**20, True, False,
     0.0, -0.0, 0.1, 1 / 3, 1e-320, 5e-324, 1e16, 1e300, -2.5e-7, math.inf, -math.inf,
     math.nan],
)  # fmt: skip
def test_number_spells_every_value_as_repr_of_its_float(value):
    assert number(value) == reference(value)


def buckets(page: bytes, family: str, run: str) -> dict[str, float]:
    """``le`` -> count of ``family``'s buckets for ``run``, plus ``_count`` and ``_sum``."""
    out = {}
    for line in page.decode().splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(f'{family}_bucket{{run="{run}",le="'):
            out[head.split('le="')[1].rstrip('"}')] = float(value)
        elif head in (f'{family}_count{{run="{run}"}}', f'{family}_sum{{run="{run}"}}'):
            out[head.split("{")[0].removeprefix(family)] = float(value)
    return out


def steps(d, clock, run: str, first: int, seconds: list[float]) -> None:
    """Steps ``first``.. of ``run`` back to back ending now, of the durations given."""
    t = clock.now - sum(seconds)
    rows = []
    for i, s in enumerate(seconds):
        rows.append((first + i, t, t + s, 8, None))
        t += s
    d.handle(StepBatch(run, os.getpid(), tuple(rows), 0))


def test_step_histograms_follow_every_new_step_between_pages(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 250.0)]])
    d.handle(hello("r", os.getpid(), clock.now))
    clock.now += 1.0
    steps(d, clock, "r", 1, [0.02, 0.02, 0.02])
    first = render_metrics(d)
    h = buckets(first, "profiler_step_duration_seconds", "r")
    assert (h["0.01"], h["0.025"], h["0.25"], h["+Inf"], h["_count"]) == (0, 3, 3, 3, 3)
    assert render_metrics(d) == first  # nothing new: the same page
    clock.now += 1.0
    steps(d, clock, "r", 4, [0.2, 0.2])
    h = buckets(render_metrics(d), "profiler_step_duration_seconds", "r")
    assert (h["0.025"], h["0.1"], h["0.25"], h["+Inf"], h["_count"]) == (3, 3, 5, 5, 5)
    assert h["_sum"] == pytest.approx(0.46, abs=1e-9)


def test_two_daemons_with_the_same_run_never_show_each_others_histograms(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _sim, clock_a = make_daemon(tmp_path / "a", [[(100.0, 250.0)]])
    b, _sim, clock_b = make_daemon(tmp_path / "b", [[(100.0, 250.0)]])
    for d, clock, durations in ((a, clock_a, [0.02]), (b, clock_b, [2.0, 2.0])):
        d.handle(hello("r", os.getpid(), clock.now))
        clock.now += 5.0
        steps(d, clock, "r", 1, durations)
    for _ in range(2):  # alternately: each page from its own daemon's counts
        ha = buckets(render_metrics(a), "profiler_step_duration_seconds", "r")
        hb = buckets(render_metrics(b), "profiler_step_duration_seconds", "r")
        assert (ha["0.025"], ha["+Inf"], hb["0.025"], hb["2.5"], hb["+Inf"]) == (1, 1, 0, 2, 2)


def wait_until(predicate, what: str) -> None:
    """Poll ``predicate`` until true; fail (not hang) after a minute."""
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


def test_a_waiting_reader_takes_the_lock_before_the_loop_holds_it_again():
    lock, order = StateLock(), []

    def reader() -> None:
        with lock.reading():
            order.append("reader")

    with lock:
        thread = threading.Thread(target=reader)
        thread.start()
        wait_until(lambda: lock.readers_waiting == 1, "the reader waits")
        lock.yield_to_readers(limit_s=60)  # held by this thread: the reader cannot take it
        order.append("loop, first hold")
    lock.yield_to_readers(limit_s=60)  # released: returns once the reader holds the lock
    with lock:
        order.append("loop, second hold")
    thread.join(60)
    assert order == ["loop, first hold", "reader", "loop, second hold"]
    assert lock.readers_waiting == 0


def test_a_scrape_waiting_when_a_sampling_pass_starts_is_served_first(tmp_path):
    d, _sim, clock = make_daemon(tmp_path, [(100.0, 250.0)], count=2)
    d.handle(hello("r", os.getpid(), clock.now, devices=("0", "1")))
    clock.now += 0.1
    d.sample()
    before = render_metrics(d)
    pages = []
    with d.lock:  # the loop is busy: the scrape waits
        thread = threading.Thread(target=lambda: pages.append(render_metrics(d)))
        thread.start()
        wait_until(lambda: d.lock.readers_waiting == 1, "the scrape waits")
        clock.now += 0.1
        readings = d.read_sensors()
    d.apply_readings(readings)  # gives the waiting scrape the lock before its first device
    thread.join(60)
    assert [energy(page) for page in pages] == [energy(before)]
    assert energy(render_metrics(d)) != energy(before)  # the pass came after the scrape


def energy(page: bytes) -> list[str]:
    """The page's device and run energy lines."""
    lines = page.decode().splitlines()
    return [ln for ln in lines if ln.startswith(("profiler_gpu_energy", "profiler_run_energy"))]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


@pytest.fixture
def served(tmp_path):
    """An in-process daemon with one run on 2 GPUs, its /metrics served on a free port."""
    d, _sim, clock = make_daemon(tmp_path, [(100.0, 250.0)], count=2)
    d.handle(hello("r", os.getpid(), clock.now, devices=("0", "1")))
    clock.now += 0.1
    d.sample()
    server, port = serve_metrics(d, "127.0.0.1", 0)
    yield d, server, f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def test_a_scrape_during_a_flush_gets_the_page_as_the_flush_began(served):
    d, server, url = served
    before = get(url)
    pages = []
    with d.lock, page_held(server, d):  # as the main loop flushes the ledger
        thread = threading.Thread(target=lambda: pages.append(get(url)))
        thread.start()
        thread.join(60)  # answered without the lock: a plain scrape would wait for it
        assert pages == [before]
        assert d.flush()


def test_a_scrape_waiting_when_a_flush_begins_takes_the_flushs_page(served):
    d, server, url = served
    get(url)
    pages = []
    with d.lock:  # the loop is busy: the scrape waits for the lock
        thread = threading.Thread(target=lambda: pages.append(get(url)))
        thread.start()
        wait_until(lambda: d.lock.readers_waiting == 1, "the scrape waits")
        with page_held(server, d):  # a flush begins: the waiting scrape gets its page
            thread.join(60)
            assert len(pages) == 1 and server.held_page == pages[0]
            assert d.lock.readers_waiting == 0


def test_no_page_is_rendered_for_a_flush_where_nobody_scrapes(served):
    d, server, _url = served
    with d.lock, page_held(server, d):
        assert server.held_page is None
