"""The overhead benchmark's interval arithmetic (bench/paired.py): known inputs, known
intervals. Student t quantiles are checked against published table values; no timing here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench.paired import (  # noqa: E402
    Pairs,
    orders,
    paired_slowdown,
    t_cdf,
    t_interval,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"),
    [  # t(0.975, df), from the standard tables (10 significant digits)
        (1, 12.70620474),
        (2, 4.302652730),
        (4, 2.776445105),
        (10, 2.228138852),
        (30, 2.042272456),
        (1000, 1.962339081),
    ],
)
def test_t_quantile_matches_the_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-8)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-8)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-9)


def test_t_quantile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        t_quantile(1.0, 5)
    with pytest.raises(ValueError):
        t_quantile(0.5, 0)


def test_t_interval_of_one_to_five() -> None:
    # mean 3, sd sqrt(2.5), se sqrt(2.5 / 5) = sqrt(0.5); half = 2.776445105 * 0.7071067812
    ci = t_interval([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5
    assert ci.sd == pytest.approx(math.sqrt(2.5))
    assert ci.lo == pytest.approx(3 - 1.963243161, abs=1e-8)
    assert ci.hi == pytest.approx(3 + 1.963243161, abs=1e-8)
    assert ci.half_width == pytest.approx(1.963243161, abs=1e-8)


def test_t_interval_of_one_value_is_unknown_not_zero() -> None:
    ci = t_interval([0.25])
    assert ci.mean == 0.25 and math.isnan(ci.lo) and math.isnan(ci.hi)
    assert math.isnan(t_interval([]).mean)


def test_paired_slowdown_is_the_t_interval_of_log_ratios_back_transformed() -> None:
    # per-pair ln ratios 0.01 .. 0.05: mean 0.03, sd 0.0158113883, se 0.0070710678,
    # half-width 2.776445105 * 0.0070710678 = 0.0196324316
    with_ns = [1000.0 * math.exp(d) for d in (0.01, 0.02, 0.03, 0.04, 0.05)]
    s = paired_slowdown(with_ns, [1000.0] * 5)
    assert s.log.mean == pytest.approx(0.03)
    assert s.log.lo == pytest.approx(0.0103675684, abs=1e-9)
    assert s.log.hi == pytest.approx(0.0496324316, abs=1e-9)
    assert s.estimate == pytest.approx(math.exp(0.03) - 1)  # 3.0455 %
    assert s.lo == pytest.approx(math.exp(0.0103675684) - 1, abs=1e-9)  # 1.0421 %
    assert s.hi == pytest.approx(math.exp(0.0496324316) - 1, abs=1e-9)  # 5.0885 %
    assert s.text() == "+3.05% (95% CI +1.04..+5.09%)"
    # the width shrinks as 1/sqrt(n): +-0.2 % needs (2.0233 / 0.2)^2 * 5 = 512 pairs
    assert s.pairs_for(0.002) == math.ceil(5 * (s.half_width / 0.002) ** 2)
    assert 500 < s.pairs_for(0.002) < 520


def test_paired_slowdown_of_identical_sides_is_zero_with_a_zero_width_interval() -> None:
    s = paired_slowdown([10.0, 20.0, 30.0], [10.0, 20.0, 30.0])
    assert (s.estimate, s.lo, s.hi) == (0.0, 0.0, 0.0)
    assert s.text() == "+0.00% (95% CI +0.00..+0.00%)"


def test_a_faster_side_gives_a_negative_slowdown() -> None:
    s = paired_slowdown([90.0, 91.0, 89.0, 90.0], [100.0] * 4)
    assert s.hi < 0 and s.lo < s.estimate < s.hi
    assert s.estimate == pytest.approx(
        math.exp(sum(math.log(x / 100) for x in (90, 91, 89, 90)) / 4) - 1
    )


def test_paired_slowdown_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="blocks"):
        paired_slowdown([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_slowdown([1.0, 0.0], [1.0, 1.0])


def test_orders_are_seeded_and_mixed() -> None:
    a, b = orders(200, seed=19), orders(200, seed=19)
    assert a == b and len(a) == 200
    assert all(sorted(o) == [False, True] for o in a)
    firsts = sum(o[0] for o in a)
    assert 60 < firsts < 140  # both orders occur, neither dominates


def test_pairs_collects_block_totals_per_side() -> None:
    p = Pairs()
    p.add(True, 110, 105, [0.1])
    p.add(False, 100, 100, [0.2])
    p.add(False, 200, 200, [0.3])
    p.add(True, 220, 210, [0.4])
    assert p.wall_with == [110, 220] and p.wall_without == [100, 200]
    assert p.wall().estimate == pytest.approx(0.1)
    assert p.cpu().estimate == pytest.approx(math.sqrt(1.05 * 1.05) - 1)
    assert p.steps_with == [0.1, 0.4] and p.steps_without == [0.2, 0.3]


def _pairs(logs_with: list[float]) -> Pairs:
    p = Pairs()
    for d in logs_with:
        p.add(True, round(1e7 * math.exp(d)), round(1e7 * math.exp(d / 2)), [0.01])
        p.add(False, 10_000_000, 10_000_000, [0.01])
    return p


def test_the_slowdown_figure_is_met_on_the_intervals_upper_bound() -> None:
    from bench.overhead import _paired, _slowdown_figure

    # wall: ln ratios 0.001 +- 0.0005 (mean 0.1 %, interval well inside 0.5 %): met, resolved
    tight = _paired(_pairs([0.0005, 0.0015] * 10), 1)
    fig = _slowdown_figure("pytorch", "PyTorch track()", tight, "wall", "0 of 20 steps dropped")
    assert fig.key == "overhead_pytorch_slowdown" and fig.met is True
    assert fig.value == pytest.approx(math.exp(0.001) - 1, rel=1e-4)
    assert fig.ours.startswith("+0.10% (95% CI +0.08..+0.12%)")
    assert "wider than" not in fig.note
    # the same mean with a wide spread: the point is within 0.5 % but the interval is not
    wide = _paired(_pairs([-0.02, 0.022] * 10), 1)
    fig = _slowdown_figure("keras", "Keras EnergyCallback", wide, "wall", "")
    assert fig.value < 0.005 and fig.met is False
    assert "wider than +-0.2%" in fig.note and "pairs would resolve" in fig.note
    # the CPU clock gives its own figure (here half the wall's ln ratio)
    cpu = _slowdown_figure("keras", "Keras EnergyCallback", tight, "cpu", "")
    assert cpu.key == "overhead_keras_slowdown_cpu"
    assert cpu.value == pytest.approx(math.exp(0.0005) - 1, rel=1e-3)
