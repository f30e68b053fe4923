"""The packaged catalog, prices.toml (profiler.cost.catalog): the figures of
notes/prices-and-carbon.md, each with its source and date, and overrides that never change the
packaged copy. Expectations typed in from the note, never copied from the code's output."""

from __future__ import annotations

import datetime

import pytest

from profiler.cost.catalog import load_catalog

# The note's on-demand table: instance -> (GPUs, USD per instance-hour).
NOTE_ON_DEMAND = {
    "aws:p4d.24xlarge": (8, 21.957642),
    "aws:p4de.24xlarge": (8, 27.44705),
    "aws:p5.48xlarge": (8, 55.04),
    "aws:g5.xlarge": (1, 1.006),
    "aws:g5.12xlarge": (4, 5.672),
    "aws:g5.48xlarge": (8, 16.288),
    "aws:g6.xlarge": (1, 0.8048),
    "aws:g6.12xlarge": (4, 4.6016),
    "aws:g6.48xlarge": (8, 13.3504),
    "gcp:a2-highgpu-1g": (1, 3.673385),
    "gcp:a2-highgpu-8g": (8, 29.38708),
    "gcp:a3-highgpu-8g": (8, 88.49),
    "gcp:g2-standard-4": (1, 0.7068),
    "gcp:g2-standard-48": (4, 4.0017),
    "azure:ND96asr_v4": (8, 27.197),
    "azure:ND96amsr_A100_v4": (8, 32.77),
    "azure:ND96isr_H100_v5": (8, 98.32),
}
# Not in the note: found for issue 17 (AMD GPUs) on public pages, cited in the entry.
SEARCHED_ON_DEMAND = {"vultr:MI300X": (1, 1.85)}
P4D_PER_HOUR = 21.957642


def test_packaged_catalog_has_the_notes_on_demand_prices():
    instances = load_catalog()["instances"]
    assert set(instances) == set(NOTE_ON_DEMAND) | set(SEARCHED_ON_DEMAND)
    for name, (gpus, price) in (NOTE_ON_DEMAND | SEARCHED_ON_DEMAND).items():
        assert instances[name]["gpus"] == gpus, name
        assert instances[name]["on_demand"] == pytest.approx(price), name
        assert instances[name]["currency"] == "USD"


def test_packaged_catalog_dated_figures_from_the_note():
    cat = load_catalog()
    i = cat["instances"]
    assert i["gcp:a2-highgpu-8g"]["spot"] == 15.42
    assert i["gcp:a3-highgpu-8g"]["spot"] == 50.61
    assert i["gcp:g2-standard-4"]["spot"] == 0.397
    assert i["aws:p4d.24xlarge"]["reserved_1y"] == 13.92
    assert i["azure:ND96asr_v4"]["spot"] == 2.99
    assert cat["gpus"]["A100-SXM4-40GB"]["watts"] == 400
    assert cat["gpus"]["H100-SXM5-80GB"]["watts"] == 700
    assert cat["gpus"]["L4"]["watts"] == 72
    assert cat["gpus"]["MI300X"]["watts"] == 750  # issue 17, cited in the entry
    assert cat["instances"]["vultr:MI300X"]["as_of"] == "2026-05-18"
    assert "V100" not in " ".join(cat["gpus"])  # the note's sources conflict
    assert "A10G" not in cat["gpus"]  # the note found no verified figure
    assert cat["electricity"]["EU"]["non_household"] == 0.1902
    assert cat["electricity"]["EU"]["currency"] == "EUR"
    assert cat["electricity"]["US-NY"]["commercial"] == pytest.approx(19.14 / 100)
    assert cat["electricity"]["US-NY"]["industrial"] == pytest.approx(8.92 / 100)
    assert {k: v["value"] for k, v in cat["pue"].items()} == {
        "industry": 1.58,
        "aws": 1.15,
        "gcp": 1.10,
        "azure": 1.18,
    }


def test_every_packaged_entry_has_source_and_as_of():
    for table, entries in load_catalog().items():
        for name, entry in entries.items():
            assert entry.get("source"), (table, name)
            datetime.date.fromisoformat(entry["as_of"])
            assert all(entry["_as_of"].values()), (table, name)


def test_packaged_catalog_is_not_mutated_by_overrides():
    load_catalog({"instances": {"aws:p4d.24xlarge": {"on_demand": 1.0}}})
    assert load_catalog()["instances"]["aws:p4d.24xlarge"]["on_demand"] == P4D_PER_HOUR
