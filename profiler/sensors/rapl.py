"""Measured CPU/DRAM energy from RAPL counters in the Linux powercap sysfs tree.

Layout (``/sys/class/powercap``)::

    intel-rapl:0/            name=package-0   energy_uj   max_energy_range_uj
    intel-rapl:0:0/          name=core        (inside package-0)
    intel-rapl:0:1/          name=uncore      (inside package-0)
    intel-rapl:0:2/          name=dram        (NOT inside package-0)
    intel-rapl:1/            name=psys        (whole SoC/platform, includes the packages)

Zone indices are hexadecimal (``intel-rapl:a`` is the eleventh zone). AMD Zen parts appear under
the same ``intel-rapl`` control type. Sub-zones are listed both flat under the root and nested in
their parent's directory; both layouts are understood. ``intel-rapl-mmio:N`` zones are a second
view of the same package counters and are deliberately ignored (adding them would count twice).

``energy_uj`` is a wrapping counter in microjoules; it wraps to 0 after ``max_energy_range_uj``.
A wrap is detected when a reading is smaller than the previous one. More than one wrap between two
samples cannot be detected, so sample well within one range: a typical package range of about
262 kJ (2**38 uJ) wraps after about 17 minutes at 250 W, a 65 kJ dram range after about 4 minutes.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from profiler.sensors.base import CpuSample, SensorUnavailable

SOURCE = "rapl"
_ZONE_DIR = re.compile(r"^intel-rapl:([0-9a-fA-F]+)(?::([0-9a-fA-F]+))?$")
_PERMISSION_HINT = (
    "energy_uj is readable only by root since the CVE-2020-8694 fix; run as root, or grant read "
    "access, e.g. `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj` (until reboot) or a "
    'udev rule: ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod a+r /sys%p/energy_uj"'
)


def read_sysfs_text(path: Path) -> str:
    """Read one sysfs attribute file (the default reader; raises OSError)."""
    with open(path, encoding="ascii") as f:
        return f.read()


@dataclass(frozen=True)
class RaplZone:
    """One RAPL zone: ``label`` is ``"package-0"`` for a top-level zone and ``"package-0/dram"``
    for a sub-zone. ``max_energy_range_uj`` is the counter's range in microjoules."""

    label: str
    name: str
    path: Path
    index: tuple[int, ...]
    max_energy_range_uj: int

    @property
    def top_level(self) -> bool:
        return len(self.index) == 1


@dataclass
class _ZoneState:
    """Running total for one zone: last raw counter (microjoules) and joules since start."""

    last_uj: int
    total_j: float = 0.0


def total_zone_labels(labels: Iterable[str]) -> list[str]:
    """The zone labels whose energies add up to the CPU-side total without double counting.

    Rule:

    * if any top-level ``psys`` zone exists, the total is the psys zone(s) alone: psys covers the
      whole SoC/platform, packages and DRAM included;
    * otherwise it is every top-level ``package-N`` zone plus every ``dram`` zone (a dram
      sub-zone ``package-N/dram`` measures memory, which is outside the package);
    * ``core`` and ``uncore`` are parts of their package and never added;
    * a ``cpu`` zone (the :class:`~profiler.sensors.host.HostSensor` estimate) is a total on its
      own.
    """
    labels = list(dict.fromkeys(labels))
    psys = [lab for lab in labels if lab == "psys" or lab.startswith("psys#")]
    if psys:
        return psys
    return [lab for lab in labels if _adds_to_total(lab)]


def _adds_to_total(label: str) -> bool:
    """Whether a zone counts in the total when there is no psys zone."""
    top, _, sub = label.partition("/")
    if sub:
        return _base_name(sub) == "dram"
    name = _base_name(top)
    return name.startswith("package") or name in ("dram", "cpu")


def cpu_total_j(samples: list[CpuSample]) -> float | None:
    """Total CPU-side energy in joules of one ``sample()`` result, by :func:`total_zone_labels`.

    None when no sample is a total zone (for example every package became unreadable): a figure
    that cannot be measured is unsupported, never zero. Pass one ``sample()`` call's list. The
    rule sees only the zones in ``samples``: when a total zone is skipped as unreadable that
    sample's total is low (or, if psys is skipped, switches to packages + dram); callers that need
    a monotone series should check ``RaplSensor.total_zones()`` are all present.
    """
    by_zone = {s.zone: s.energy_j for s in samples}
    chosen = total_zone_labels(by_zone)
    if not chosen:
        return None
    return sum(by_zone[z] for z in chosen)


def _base_name(label_part: str) -> str:
    """``"psys#1"`` -> ``"psys"`` (the suffix only disambiguates duplicate names)."""
    return label_part.split("#", 1)[0]


def _parse_index(dirname: str) -> tuple[int, ...] | None:
    m = _ZONE_DIR.match(dirname)
    if m is None:
        return None
    return tuple(int(g, 16) for g in m.groups() if g is not None)


def _find_zone_dirs(root: Path) -> dict[tuple[int, ...], Path]:
    """Every ``intel-rapl:N[:M]`` directory under root, flat or nested one level, by index."""
    found: dict[tuple[int, ...], Path] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return found
    for entry in entries:
        index = _parse_index(entry.name)
        if index is None:
            continue
        found.setdefault(index, entry)
        if len(index) == 1:
            try:
                children = sorted(entry.iterdir())
            except OSError:
                continue
            for child in children:
                sub = _parse_index(child.name)
                if sub is not None and len(sub) == 2 and sub[0] == index[0]:
                    found.setdefault(sub, child)
    return found


class RaplSensor:
    """Cumulative energy in joules per RAPL zone since the sensor was made.

    ``read_text`` reads one sysfs file and may raise OSError (injectable for tests). Zones whose
    ``energy_uj`` cannot be read at start are left out and counted in ``errors``; if none can be
    read, or the root has no zones, ``SensorUnavailable`` is raised. A zone that becomes
    unreadable later is left out of that sample and counted in ``errors`` (zone label ->
    count, with the latest message in ``last_error``); ``sample()`` never raises OSError.
    """

    source = SOURCE

    def __init__(
        self,
        root: str | Path = "/sys/class/powercap",
        *,
        clock: Callable[[], float] = time.monotonic,
        read_text: Callable[[Path], str] = read_sysfs_text,
    ) -> None:
        self.root = Path(root)
        self.clock = clock
        self._read = read_text
        self.errors: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.zones: list[RaplZone] = self._discover()
        self._state: dict[str, _ZoneState] = {}
        failures: list[tuple[RaplZone, Exception]] = []
        for zone in self.zones:
            try:
                self._state[zone.label] = _ZoneState(self._read_uj(zone.path / "energy_uj"))
            except (OSError, ValueError) as e:
                failures.append((zone, e))
                self._record_error(zone.label, e)
        if not self._state:
            raise SensorUnavailable(_unreadable_message(*failures[0]))
        self.zones = [z for z in self.zones if z.label in self._state]

    # ---- discovery ----------------------------------------------------------------------------

    def _discover(self) -> list[RaplZone]:
        dirs = _find_zone_dirs(self.root)
        if not dirs:
            raise SensorUnavailable(f"RAPL: no intel-rapl:N zones under {self.root}")
        names: dict[tuple[int, ...], str] = {}
        for index, path in sorted(dirs.items()):
            try:
                names[index] = self._read(path / "name").strip() or path.name
            except OSError:
                names[index] = path.name
        zones: list[RaplZone] = []
        used: set[str] = set()
        for index, path in sorted(dirs.items()):
            label = self._label(index, names, used)
            try:
                max_uj = self._read_uj(path / "max_energy_range_uj")
            except (OSError, ValueError) as e:
                self._record_error(label, e)  # no range: wraparound could not be handled
                continue
            if max_uj <= 0:
                self._record_error(label, ValueError(f"max_energy_range_uj is {max_uj}"))
                continue
            zones.append(RaplZone(label, names[index], path, index, max_uj))
        if not zones:
            raise SensorUnavailable(
                f"RAPL: no zone under {self.root} has a readable max_energy_range_uj "
                f"({'; '.join(self.last_error.values())})"
            )
        return zones

    @staticmethod
    def _label(index: tuple[int, ...], names: dict[tuple[int, ...], str], used: set[str]) -> str:
        own = names[index]
        if len(index) == 2:
            parent = names.get(index[:1], f"intel-rapl:{index[0]:x}")
            label = f"{parent}/{own}"
        else:
            label = own
        base, n = label, 1
        while label in used:  # duplicate names (rare): psys, psys#1, ...
            label = f"{base}#{n}"
            n += 1
        used.add(label)
        return label

    def total_zones(self) -> list[str]:
        """Labels of the zones that sum to the CPU total (see :func:`total_zone_labels`)."""
        return total_zone_labels(z.label for z in self.zones)

    # ---- reading ------------------------------------------------------------------------------

    def _read_uj(self, path: Path) -> int:
        """One counter file as an int (microjoules); OSError or ValueError on failure."""
        return int(self._read(path).strip())

    def _record_error(self, label: str, error: Exception) -> None:
        self.errors[label] += 1
        self.last_error[label] = f"{type(error).__name__}: {error}"

    def sample(self) -> list[CpuSample]:
        """Read every zone once: cumulative joules since start per readable zone, at one
        monotonic time (seconds)."""
        t_s = self.clock()
        out: list[CpuSample] = []
        for zone in self.zones:
            state = self._state[zone.label]
            try:
                cur = self._read_uj(zone.path / "energy_uj")
            except (OSError, ValueError) as e:
                self._record_error(zone.label, e)
                continue
            state.total_j += wrapped_delta_uj(state.last_uj, cur, zone.max_energy_range_uj) / 1e6
            state.last_uj = cur
            out.append(CpuSample(zone=zone.label, t_s=t_s, energy_j=state.total_j, source=SOURCE))
        return out

    def describe(self) -> str:
        """One line: which zones are read and which make the total."""
        return (
            f"CPU energy: RAPL (measured) from {self.root}, zones {', '.join(self.zone_labels)}; "
            f"total = {' + '.join(self.total_zones()) or 'none'}"
        )

    @property
    def zone_labels(self) -> list[str]:
        return [z.label for z in self.zones]


def wrapped_delta_uj(prev_uj: int, cur_uj: int, max_energy_range_uj: int) -> int:
    """Microjoules between two counter readings, allowing one wrap at ``max_energy_range_uj``."""
    if cur_uj >= prev_uj:
        return cur_uj - prev_uj
    return cur_uj + max_energy_range_uj - prev_uj


def _unreadable_message(zone: RaplZone, error: Exception) -> str:
    path = zone.path / "energy_uj"
    if isinstance(error, PermissionError):
        return f"RAPL: cannot read {path} (permission denied): {_PERMISSION_HINT}"
    return f"RAPL: no zone's energy_uj is readable (first: {path}: {type(error).__name__}: {error})"
