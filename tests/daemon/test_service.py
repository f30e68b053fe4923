"""The daemon's process shell (profiler.daemon.service): its loop survives what a flush throws."""

from inprocess import make_daemon

from profiler.daemon.service import Service

TRACE = [[(100.0, 300.0)]]


def test_the_service_loop_counts_a_flush_that_trips_a_bug(tmp_path, monkeypatch):
    d, _sim, _clock = make_daemon(tmp_path, TRACE)

    def broken() -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(d, "flush", broken)
    service = Service(d)
    service._flush()
    service._flush()
    assert d.health["flush_errors"] == 2
