"""Run <-> ledger row (profiler.ledger.rows): a run written and read back through a real ledger is
the run a restarted daemon continues, unknown counts included."""

import pytest

from profiler.accounting.runs import Run
from profiler.ledger.rows import run_from_row, run_to_row
from profiler.ledger.store import Ledger


def test_a_run_written_and_read_back_is_the_same_run(tmp_path):
    run = Run(id="r", name="train", project="vision", user="ann", framework="pytorch",
              status="finished", started_at=1.7e9, ended_at=1.7e9 + 60, start_mono=100.0,
              last_event_mono=160.0, wall_offset_s=1.7e9 - 100.0, steps=40, samples=1280,
              steps_known=True, rank_steps={0: 40, 1: 40}, rank_samples={0: 640, 1: 640},
              gpu_energy_j={"GPU-0": 1234.5}, gpu_seconds={"GPU-0": 60.0}, cpu_energy_j=80.0,
              last_loss=0.25, owner_uid=1000, unrecorded_steps=2)  # fmt: skip
    row = run_to_row(run, marks={}, gpu_source="simulated", energy_source="counter",
                     flushed_mono=160.0)  # fmt: skip
    assert row["steps"] == 40 and row["gpu_energy_j"] == 1234.5 and row["simulated"] is True
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.write([row], [("r", "GPU-0", "A100-SXM4-40GB", 1234.5, 60.0)], [], [])
    back = run_from_row(ledger.run("r"))
    ledger.close()
    for key in ("id", "name", "project", "user", "framework", "status", "started_at",
                "start_mono", "last_event_mono", "wall_offset_s", "steps", "samples",
                "steps_known", "rank_steps", "rank_samples", "gpu_energy_j", "gpu_seconds",
                "last_loss", "owner_uid", "unrecorded_steps"):  # fmt: skip
        assert getattr(back, key) == getattr(run, key), key
    assert back.cpu_energy_j == pytest.approx(80.0) and back.to_wall(130.0) == 1.7e9 + 30.0


def test_a_restored_run_keeps_null(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    meta = {"steps_known": False, "samples_source": "", "start_mono": 1.0}
    ledger.write([{"id": "r", "name": "r", "status": "running", "started_at": 1.0,
                   "steps": None, "samples": None, "meta": meta}], [], [], [])  # fmt: skip
    row = ledger.run("r")
    assert row["steps"] is None and row["samples"] is None
    run = run_from_row(row)
    assert run.known_steps is None and run.known_samples is None
    ledger.close()


def test_the_attribution_basis_and_idle_share_survive_the_ledger_and_unknown_stays_unknown(
    tmp_path,
):
    """Issue 16: the device-seconds per split basis and the idle share are kept per run, so a
    restarted daemon, `profiler runs` and the monthly report read them back; a run written
    before any GPU time (or by an older daemon) has no basis and an unknown idle share."""
    ledger = Ledger(tmp_path / "l.sqlite")
    run = Run(id="r", name="r", status="finished", started_at=1.7e9, start_mono=1.0,
              gpu_energy_j={"GPU-0": 900.0}, gpu_seconds={"GPU-0": 30.0},
              gpu_idle_energy_j=150.0, attribution_s={"activity": 20.0, "equal": 10.0})  # fmt: skip
    bare = Run(id="b", name="b", status="running", started_at=1.7e9, start_mono=1.0)
    rows = [run_to_row(r, marks={}, gpu_source="simulated", energy_source="counter",
                       flushed_mono=2.0) for r in (run, bare)]  # fmt: skip
    ledger.write(rows, [("r", "GPU-0", "A100", 900.0, 30.0)], [], [])
    back, back_bare = run_from_row(ledger.run("r")), run_from_row(ledger.run("b"))
    ledger.close()
    assert back.attribution_s == {"activity": 20.0, "equal": 10.0}
    assert back.attribution == "mixed" and back.gpu_idle_energy_j == 150.0
    assert back_bare.attribution is None and back_bare.gpu_idle_energy_j is None
