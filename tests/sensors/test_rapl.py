"""RaplSensor against fake powercap trees built in tmp_path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from profiler.sensors.base import CpuSample, SensorUnavailable
from profiler.sensors.rapl import (
    RaplSensor,
    cpu_total_j,
    read_sysfs_text,
    total_zone_labels,
    wrapped_delta_uj,
)

PKG_RANGE_UJ = 262_143_328_850  # a real package max_energy_range_uj (about 262 kJ)
DRAM_RANGE_UJ = 65_712_999_613


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class PowercapTree:
    """A powercap tree like the real one: sub-zones nested in their parent, plus flat symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: dict[str, Path] = {}
        root.mkdir(exist_ok=True)
        (root / "intel-rapl").mkdir()  # the control type itself: no index, not a zone
        mmio = root / "intel-rapl-mmio:0"  # a second view of package-0: must be ignored
        mmio.mkdir()
        _write(mmio, name="package-0", energy_uj=5, max_energy_range_uj=PKG_RANGE_UJ)

    def zone(self, dirname: str, name: str, energy_uj: int, max_uj: int = PKG_RANGE_UJ) -> Path:
        parts = dirname.split(":")
        if len(parts) == 3:
            path = self.dirs[":".join(parts[:2])] / dirname
            path.mkdir()
            (self.root / dirname).symlink_to(path)  # the flat view, as in /sys/class/powercap
        else:
            path = self.root / dirname
            path.mkdir()
        _write(path, name=name, energy_uj=energy_uj, max_energy_range_uj=max_uj)
        self.dirs[dirname] = path
        return path

    def set(self, dirname: str, energy_uj: int) -> None:
        (self.dirs[dirname] / "energy_uj").write_text(f"{energy_uj}\n")


def _write(path: Path, **attrs: object) -> None:
    for key, value in attrs.items():
        (path / key).write_text(f"{value}\n")


def two_packages(root: Path, *, psys: bool) -> PowercapTree:
    """package-0 (intel-rapl:0) and package-1 (intel-rapl:a, hex index) with core and dram."""
    tree = PowercapTree(root)
    tree.zone("intel-rapl:0", "package-0", 1_000_000)
    tree.zone("intel-rapl:0:0", "core", 400_000)
    tree.zone("intel-rapl:0:2", "dram", 2_000_000, DRAM_RANGE_UJ)
    tree.zone("intel-rapl:a", "package-1", 3_000_000)
    tree.zone("intel-rapl:a:0", "core", 500_000)
    tree.zone("intel-rapl:a:1", "dram", 7_000_000, DRAM_RANGE_UJ)
    if psys:
        tree.zone("intel-rapl:b", "psys", 9_000_000)
    return tree


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def by_zone(samples: list[CpuSample]) -> dict[str, float]:
    return {s.zone: s.energy_j for s in samples}


def failing_reader(fail: dict[str, Exception]) -> Callable[[Path], str]:
    """A reader that raises ``fail[str(path)]`` for the listed paths and reads the rest."""

    def read(path: Path) -> str:
        error = fail.get(str(path))
        if error is not None:
            raise error
        return read_sysfs_text(path)

    return read


# ---- discovery


def test_discovers_hex_indices_and_sub_zones_once(tmp_path: Path, clock: FakeClock) -> None:
    two_packages(tmp_path, psys=True)
    sensor = RaplSensor(tmp_path, clock=clock)
    assert sensor.zone_labels == [
        "package-0",
        "package-0/core",
        "package-0/dram",
        "package-1",
        "package-1/core",
        "package-1/dram",
        "psys",
    ]
    indices = {z.label: z.index for z in sensor.zones}
    assert indices["package-1"] == (10,)
    assert indices["package-1/dram"] == (10, 1)
    assert indices["psys"] == (11,)
    assert {z.label: z.max_energy_range_uj for z in sensor.zones}["package-0/dram"] == (
        DRAM_RANGE_UJ
    )
    assert not sensor.errors


def test_flat_layout_without_nesting(tmp_path: Path, clock: FakeClock) -> None:
    for dirname, name in [("intel-rapl:0", "package-0"), ("intel-rapl:0:1", "dram")]:
        (tmp_path / dirname).mkdir()
        _write(tmp_path / dirname, name=name, energy_uj=1, max_energy_range_uj=PKG_RANGE_UJ)
    assert RaplSensor(tmp_path, clock=clock).zone_labels == ["package-0", "package-0/dram"]


def test_first_sample_is_zero_then_counts_joules(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    sensor = RaplSensor(tmp_path, clock=clock)
    first = sensor.sample()
    assert all(s.energy_j == 0.0 and s.source == "rapl" and s.t_s == 100.0 for s in first)
    tree.set("intel-rapl:0", 1_000_000 + 12_500_000)  # +12.5 J
    tree.set("intel-rapl:a:1", 7_000_000 + 250_000)  # +0.25 J
    clock.t = 101.0
    energies = by_zone(sensor.sample())
    assert energies["package-0"] == pytest.approx(12.5)
    assert energies["package-1/dram"] == pytest.approx(0.25)
    assert energies["package-1"] == 0.0


# ---- wraparound


def test_wrapped_delta_formula() -> None:
    assert wrapped_delta_uj(100, 250, PKG_RANGE_UJ) == 150
    # 262_143_000_000 -> 500_000 across the wrap: 328_850 uJ before it, 500_000 after
    assert wrapped_delta_uj(262_143_000_000, 500_000, PKG_RANGE_UJ) == 828_850


def test_wraparound_near_max_range(tmp_path: Path, clock: FakeClock) -> None:
    tree = PowercapTree(tmp_path)
    tree.zone("intel-rapl:0", "package-0", PKG_RANGE_UJ - 2_000_000)  # 2 J below the wrap
    sensor = RaplSensor(tmp_path, clock=clock)
    tree.set("intel-rapl:0", 3_000_000)  # wrapped: 2 J + 3 J
    assert sensor.sample()[0].energy_j == pytest.approx(5.0)


def test_multiple_wraps_across_samples(tmp_path: Path, clock: FakeClock) -> None:
    small = 1_000_000_000  # a 1 kJ counter range makes several wraps easy to write down
    tree = PowercapTree(tmp_path)
    tree.zone("intel-rapl:0", "package-0", 900_000_000, small)
    sensor = RaplSensor(tmp_path, clock=clock)
    readings_and_joules = [
        (100_000_000, 200.0),  # wrap: 100 J to the top + 100 J
        (600_000_000, 500.0),  # plain
        (50_000_000, 450.0),  # wrap: 400 J + 50 J
        (999_000_000, 949.0),  # plain
        (1_000_000, 2.0),  # wrap: 1 J + 1 J
    ]
    total = 0.0
    energies = []
    for step, (reading, joules) in enumerate(readings_and_joules, start=1):
        tree.set("intel-rapl:0", reading)
        clock.t = 100.0 + step
        total += joules
        sample = sensor.sample()[0]
        energies.append(sample.energy_j)
        assert sample.energy_j == pytest.approx(total)
    assert energies == sorted(energies)  # cumulative energy never decreases
    assert total == pytest.approx(2101.0)


# ---- the total


def test_total_without_psys_is_packages_plus_dram(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    sensor = RaplSensor(tmp_path, clock=clock)
    assert sensor.total_zones() == ["package-0", "package-0/dram", "package-1", "package-1/dram"]
    tree.set("intel-rapl:0", 1_000_000 + 10_000_000)  # package-0 +10 J
    tree.set("intel-rapl:0:0", 400_000 + 6_000_000)  # its core +6 J (inside the 10 J)
    tree.set("intel-rapl:0:2", 2_000_000 + 3_000_000)  # dram +3 J
    tree.set("intel-rapl:a", 3_000_000 + 20_000_000)  # package-1 +20 J
    tree.set("intel-rapl:a:1", 7_000_000 + 1_000_000)  # dram +1 J
    assert cpu_total_j(sensor.sample()) == pytest.approx(34.0)


def test_total_with_psys_is_psys_alone(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=True)
    sensor = RaplSensor(tmp_path, clock=clock)
    assert sensor.total_zones() == ["psys"]
    tree.set("intel-rapl:0", 1_000_000 + 10_000_000)
    tree.set("intel-rapl:b", 9_000_000 + 40_000_000)
    assert cpu_total_j(sensor.sample()) == pytest.approx(40.0)


def test_total_rule_on_labels() -> None:
    labels = ["package-0", "package-0/core", "package-0/uncore", "package-0/dram", "dram"]
    assert total_zone_labels(labels) == ["package-0", "package-0/dram", "dram"]
    assert total_zone_labels(["package-0", "psys", "psys#1"]) == ["psys", "psys#1"]
    assert total_zone_labels(["cpu"]) == ["cpu"]
    assert total_zone_labels(["package-0/core"]) == []


def test_total_unsupported_is_none_not_zero() -> None:
    assert cpu_total_j([]) is None
    assert cpu_total_j([CpuSample("package-0/core", 1.0, 5.0, "rapl")]) is None
    assert cpu_total_j([CpuSample("cpu", 1.0, 5.0, "estimated")]) == 5.0


# ---- unavailable and unreadable


def test_no_zones_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SensorUnavailable, match="no intel-rapl"):
        RaplSensor(tmp_path)
    with pytest.raises(SensorUnavailable, match="no intel-rapl"):
        RaplSensor(tmp_path / "missing")


def test_permission_denied_everywhere_explains_the_fix(tmp_path: Path) -> None:
    tree = two_packages(tmp_path, psys=False)
    denied: dict[str, Exception] = {
        str(path / "energy_uj"): PermissionError(13, "Permission denied")
        for path in tree.dirs.values()
    }
    with pytest.raises(SensorUnavailable) as info:
        RaplSensor(tmp_path, read_text=failing_reader(denied))
    message = str(info.value)
    assert "\n" not in message
    assert "CVE-2020-8694" in message and "chmod" in message and "udev" in message
    assert "intel-rapl:0/energy_uj" in message


def test_other_read_errors_everywhere_are_unavailable(tmp_path: Path) -> None:
    tree = two_packages(tmp_path, psys=False)
    broken: dict[str, Exception] = {
        str(path / "energy_uj"): OSError(61, "No data available") for path in tree.dirs.values()
    }
    with pytest.raises(SensorUnavailable, match="No data available"):
        RaplSensor(tmp_path, read_text=failing_reader(broken))


def test_one_denied_zone_is_left_out(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    denied: dict[str, Exception] = {
        str(tree.dirs["intel-rapl:a:1"] / "energy_uj"): PermissionError(13, "Permission denied")
    }
    sensor = RaplSensor(tmp_path, clock=clock, read_text=failing_reader(denied))
    assert "package-1/dram" not in sensor.zone_labels
    assert sensor.errors == {"package-1/dram": 1}
    assert "package-1/dram" not in by_zone(sensor.sample())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_chmod_000_zone_is_left_out(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    target = tree.dirs["intel-rapl:0:2"] / "energy_uj"
    target.chmod(0)
    try:
        sensor = RaplSensor(tmp_path, clock=clock)
        assert "package-0/dram" not in sensor.zone_labels
        assert sensor.errors["package-0/dram"] == 1
    finally:
        target.chmod(0o644)


def test_zone_without_max_range_is_left_out(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    (tree.dirs["intel-rapl:a:0"] / "max_energy_range_uj").unlink()
    sensor = RaplSensor(tmp_path, clock=clock)
    assert "package-1/core" not in sensor.zone_labels
    assert sensor.errors["package-1/core"] == 1


def test_zone_disappearing_mid_run_is_skipped_and_counted(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    sensor = RaplSensor(tmp_path, clock=clock)
    tree.set("intel-rapl:0:2", 2_000_000 + 1_000_000)
    assert by_zone(sensor.sample())["package-0/dram"] == pytest.approx(1.0)
    shutil.rmtree(tree.dirs["intel-rapl:0:2"])  # e.g. a hot-unplugged or unloaded driver
    tree.set("intel-rapl:0", 1_000_000 + 4_000_000)
    for _ in range(3):
        energies = by_zone(sensor.sample())
        assert "package-0/dram" not in energies
        assert energies["package-0"] == pytest.approx(4.0)
    assert sensor.errors == {"package-0/dram": 3}
    assert "FileNotFoundError" in sensor.last_error["package-0/dram"]
    # the total is still a number; the missing dram is visible in errors
    assert cpu_total_j(sensor.sample()) == pytest.approx(4.0 + 0.0 + 0.0)


def test_read_error_then_recovery_keeps_counting(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    fail: dict[str, Exception] = {}
    sensor = RaplSensor(tmp_path, clock=clock, read_text=failing_reader(fail))
    path = str(tree.dirs["intel-rapl:0"] / "energy_uj")
    fail[path] = OSError(5, "Input/output error")
    tree.set("intel-rapl:0", 1_000_000 + 2_000_000)
    assert "package-0" not in by_zone(sensor.sample())
    del fail[path]
    assert by_zone(sensor.sample())["package-0"] == pytest.approx(2.0)
    assert sensor.errors == {"package-0": 1}


def test_garbage_counter_is_an_error_not_a_crash(tmp_path: Path, clock: FakeClock) -> None:
    tree = two_packages(tmp_path, psys=False)
    sensor = RaplSensor(tmp_path, clock=clock)
    (tree.dirs["intel-rapl:a"] / "energy_uj").write_text("")
    assert "package-1" not in by_zone(sensor.sample())
    assert sensor.errors["package-1"] == 1


def test_describe_names_zones_and_total(tmp_path: Path, clock: FakeClock) -> None:
    two_packages(tmp_path, psys=True)
    text = RaplSensor(tmp_path, clock=clock).describe()
    assert "RAPL" in text and "package-1/dram" in text and "total = psys" in text
