"""The FOCUS 1.2 export checked against the columns extracted from the specification
(tests/data/focus_1_2_columns.json): presence, types, formats, allowed values, periods, money."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from decimal import Decimal
from pathlib import Path

import pytest

from profiler.report.focus import (
    COLUMNS,
    CUSTOM_COLUMNS,
    FOCUS_COLUMNS,
    FOCUS_VERSION,
    FocusUsage,
    write_focus,
)

SPEC_FILE = Path(__file__).parents[1] / "data" / "focus_1_2_columns.json"
SPEC = json.loads(SPEC_FILE.read_text())
SPEC_COLUMNS = {c["name"]: c for c in SPEC["columns"]}
MANDATORY = [c["name"] for c in SPEC["columns"] if c["feature_level"] == "Mandatory"]
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PLAIN_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
TIME_UNITS = {"Hours", "Days", "Minutes", "Seconds", "Months", "Years"}
NASTY_NAME = "sweep, \"v2\" <script>alert('x')</script>\nline two"
MONTH = dt.date(2025, 3, 1)


def usage(run_id: str, dom: int, cost_gpu: float, cost_energy: float, **kw: object) -> FocusUsage:
    fields: dict[str, object] = dict(
        run_id=run_id, run_name=f"name-{run_id}", project="vision", user="ada",
        framework="pytorch", host="node-1", gpu_model="A100-SXM4-40GB",
        day=dt.date(2025, 3, dom), currency="USD", cost_gpu_time=cost_gpu,
        cost_energy=cost_energy, gpu_hours=2.5, kwh=1.25, co2_kg=0.4,
        pricing_profile="aws:p4d.24xlarge (on_demand)", simulated=False,
    )  # fmt: skip
    fields.update(kw)
    return FocusUsage(**fields)  # type: ignore[arg-type]


USAGES = [
    usage("run-a", 1, 10.5, 0.25),
    usage("run-a", 2, 0.1, 0.2),  # 0.1 + 0.2: the float sum is 0.30000000000000004
    usage(
        "run-b",
        2,
        3.0,
        0.0,
        run_name=NASTY_NAME,
        project="",
        simulated=True,
        co2_kg=None,
        pricing_profile="gcp:a2-highgpu-1g (spot)",
        user='o\'brien "ob"',
    ),
    usage("run-c", 31, 1e-9, 2e21, pricing_profile="onprem", gpu_hours=1e-7, kwh=0.0),
    usage(
        "run-d",
        15,
        7.0,
        1.0,
        pricing_profile="aws:p5.48xlarge (reserved_1y)",
        run_name="run-d",
        currency="EUR",
    ),
]


def export(usages: list[FocusUsage], month: dt.date = MONTH) -> tuple[int, str]:
    out = io.StringIO(newline="")
    n = write_focus(usages, month, out)
    return n, out.getvalue()


def read(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def written() -> tuple[int, list[str], list[dict[str, str]]]:
    n, text = export(USAGES)
    header, rows = read(text)
    return n, header, rows


def test_extracted_spec_is_focus_1_2():
    assert SPEC["focus_version"] == FOCUS_VERSION == "1.2"
    assert len(SPEC_COLUMNS) == len(SPEC["columns"]) == 57
    # the columns the v1.2 changelog introduces
    new_in_1_2 = {
        "BillingAccountType", "InvoiceId", "PricingCurrency", "SubAccountType",
        "PricingCurrencyContractedUnitPrice", "PricingCurrencyEffectiveCost",
        "PricingCurrencyListUnitPrice",
    }  # fmt: skip
    assert {c["name"] for c in SPEC["columns"] if c["introduced"] == "1.2"} == new_in_1_2
    # 1.3 renamed the provider columns; 1.2 still has ProviderName
    assert "ProviderName" in SPEC_COLUMNS and "ServiceProviderName" not in SPEC_COLUMNS
    for c in SPEC["columns"]:
        assert c["feature_level"] in {"Mandatory", "Conditional", "Recommended", "Optional"}
        assert c["data_type"] in {"String", "Decimal", "Date/Time", "JSON"}
        assert isinstance(c["allows_nulls"], bool)
        assert c["source"].startswith("specification/columns/") and c["source"].endswith(".md")
    assert "AI and Machine Learning" in SPEC_COLUMNS["ServiceCategory"]["allowed_values"]
    assert len(MANDATORY) == 21


def test_header_has_every_mandatory_column_and_nothing_unprefixed_outside_the_spec(written):
    _, header, _ = written
    assert header == list(COLUMNS)
    assert len(set(header)) == len(header)
    assert set(MANDATORY) <= set(header)
    for name in header:
        assert name in SPEC_COLUMNS or name.startswith("x_"), name
    assert set(FOCUS_COLUMNS) <= set(SPEC_COLUMNS)
    assert all(c.startswith("x_") for c in CUSTOM_COLUMNS)
    # FOCUS columns first, then custom ones, never intermixed
    first_custom = min(header.index(c) for c in CUSTOM_COLUMNS)
    assert all(header.index(c) < first_custom for c in FOCUS_COLUMNS)


def test_every_value_matches_its_spec_type_nullability_and_allowed_values(written):
    n, header, rows = written
    assert n == len(rows) == len(USAGES)
    for row in rows:
        for name in header:
            value = row[name]
            spec = SPEC_COLUMNS.get(name)
            if value == "":  # a null in CSV
                assert spec is None or spec["allows_nulls"], f"{name} is null"
                continue
            kind = spec["data_type"] if spec else None
            if kind == "Decimal" or name in ("x_Co2Kg", "x_EnergyKwh", "x_GpuHours"):
                assert PLAIN_DECIMAL.match(value), f"{name}={value!r}"
                assert Decimal(value).is_finite()
            elif kind == "Date/Time":
                assert DATETIME.match(value), f"{name}={value!r}"
                parsed = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
                assert parsed.time() == dt.time(0, 0)
            elif kind == "JSON":
                obj = json.loads(value)
                assert isinstance(obj, dict)
                scalars = (str, int, float, bool, type(None))
                assert all(isinstance(v, scalars) for v in obj.values())
            allowed = spec.get("allowed_values") if spec else None
            if isinstance(allowed, list):
                assert value in allowed, f"{name}={value!r}"
            elif isinstance(allowed, dict):  # ServiceSubcategory, by parent ServiceCategory
                assert value in allowed[row["ServiceCategory"]], f"{name}={value!r}"
        assert re.match(r"^[A-Z]{3}$", row["BillingCurrency"])
        assert row["ChargeCategory"] == "Usage"
        assert row["ChargeClass"] == ""  # null: not a correction
        assert row["ServiceCategory"] == "AI and Machine Learning"
        assert row["x_Simulated"] in ("true", "false")


def test_units_follow_the_unit_format(written):
    _, _, rows = written
    for row in rows:
        for col in ("ConsumedUnit", "PricingUnit"):
            noun, _, time_unit = row[col].partition("-")
            assert noun[:1].isupper() and noun.isalnum(), row[col]
            assert time_unit in TIME_UNITS, row[col]
        assert row["ConsumedQuantity"] == row["PricingQuantity"] == row["x_GpuHours"]


def test_charge_period_is_the_usage_day_and_billing_period_the_month(written):
    _, _, rows = written
    month_start = dt.datetime(2025, 3, 1)
    month_end = dt.datetime(2025, 4, 1)
    by_key = {(u.run_id, u.day): u for u in USAGES}
    for row in rows:
        start = dt.datetime.strptime(row["ChargePeriodStart"], "%Y-%m-%dT%H:%M:%SZ")
        end = dt.datetime.strptime(row["ChargePeriodEnd"], "%Y-%m-%dT%H:%M:%SZ")
        assert start < end == start + dt.timedelta(days=1)
        assert (row["ResourceId"], start.date()) in by_key
        assert row["BillingPeriodStart"] == "2025-03-01T00:00:00Z"
        assert row["BillingPeriodEnd"] == "2025-04-01T00:00:00Z"
        assert month_start <= start and end <= month_end
    # one row per run per day, sorted by day then run
    keys = [(r["ChargePeriodStart"], r["ResourceId"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_costs_equal_the_hand_sums(written):
    _, _, rows = written
    expected = {
        ("run-a", "2025-03-01"): Decimal("10.75"),
        ("run-a", "2025-03-02"): Decimal("0.3"),
        ("run-b", "2025-03-02"): Decimal("3"),
        ("run-c", "2025-03-31"): Decimal("2000000000000000000000.000000001"),
        ("run-d", "2025-03-15"): Decimal("8"),
    }
    for row in rows:
        key = (row["ResourceId"], row["ChargePeriodStart"][:10])
        for col in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost"):
            assert Decimal(row[col]) == expected[key], (key, col, row[col])
        u = next(u for u in USAGES if (u.run_id, u.day.isoformat()) == key)
        assert math.isclose(float(row["BilledCost"]), u.cost_gpu_time + u.cost_energy)
        assert row["BillingCurrency"] == u.currency
    usd = sum(Decimal(r["BilledCost"]) for r in rows if r["BillingCurrency"] == "USD")
    assert (
        usd == Decimal("10.75") + Decimal("0.3") + Decimal("3") + expected[("run-c", "2025-03-31")]
    )


def test_tiny_and_huge_figures_have_no_exponent(written):
    _, _, rows = written
    row = next(r for r in rows if r["ResourceId"] == "run-c")
    assert row["ConsumedQuantity"] == "0.0000001"
    assert row["x_EnergyKwh"] == "0"
    assert "e" not in row["BilledCost"].lower()


def test_nasty_run_name_and_tags_survive_a_csv_round_trip(written):
    _, _, rows = written
    row = next(r for r in rows if r["ResourceId"] == "run-b")
    assert row["ResourceName"] == NASTY_NAME
    assert NASTY_NAME in row["ChargeDescription"]
    tags = json.loads(row["Tags"])
    assert tags == {
        "user": 'o\'brien "ob"',
        "mlprofiler/framework": "pytorch",
        "mlprofiler/host": "node-1",
        "mlprofiler/gpu_model": "A100-SXM4-40GB",
        "mlprofiler/simulated": "true",
    }  # no project: it is empty
    assert row["SubAccountId"] == row["SubAccountName"] == row["x_Project"] == ""
    assert row["x_Co2Kg"] == ""  # unknown carbon is null, not 0
    assert row["PricingCategory"] == "Dynamic"  # spot


def test_tags_and_custom_columns_of_a_plain_run(written):
    _, _, rows = written
    row = next(r for r in rows if r["ResourceId"] == "run-a")
    assert json.loads(row["Tags"]) == {
        "project": "vision", "user": "ada", "mlprofiler/framework": "pytorch",
        "mlprofiler/host": "node-1", "mlprofiler/gpu_model": "A100-SXM4-40GB",
        "mlprofiler/simulated": "false",
    }  # fmt: skip
    assert row["SubAccountId"] == row["SubAccountName"] == row["x_Project"] == "vision"
    assert (row["x_RunId"], row["x_User"], row["x_Framework"]) == ("run-a", "ada", "pytorch")
    assert (row["x_GpuHours"], row["x_EnergyKwh"], row["x_Co2Kg"]) == ("2.5", "1.25", "0.4")
    assert row["x_PricingProfile"] == "aws:p4d.24xlarge (on_demand)"
    assert row["x_Simulated"] == "false"
    assert row["PricingCategory"] == "Standard"
    assert row["ResourceName"] == "name-run-a"


def test_resource_name_never_repeats_the_id_and_reserved_is_not_committed(written):
    _, _, rows = written
    row = next(r for r in rows if r["ResourceId"] == "run-d")
    assert row["ResourceName"] == ""
    assert row["PricingCategory"] == "Other"
    assert row["BillingCurrency"] == "EUR"


def test_december_bill_ends_on_new_year_and_any_day_names_its_month():
    n, text = export([usage("r", 1, 1.0, 0.0, day=dt.date(2025, 12, 31))], dt.date(2025, 12, 9))
    _, rows = read(text)
    assert n == 1
    assert rows[0]["BillingPeriodStart"] == "2025-12-01T00:00:00Z"
    assert rows[0]["BillingPeriodEnd"] == "2026-01-01T00:00:00Z"
    assert rows[0]["ChargePeriodEnd"] == "2026-01-01T00:00:00Z"


def test_no_usage_writes_the_header_only():
    n, text = export([])
    header, rows = read(text)
    assert n == 0 and rows == [] and header == list(COLUMNS)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (usage("r", 1, 1.0, 0.0, day=dt.date(2025, 4, 1)), "outside the billing period"),
        (usage("r", 1, 1.0, 0.0, day=dt.date(2025, 2, 28)), "outside the billing period"),
        (usage("r", 1, 1.0, 0.0, currency="usd"), "ISO 4217"),
        (usage("r", 1, 1.0, 0.0, currency=""), "ISO 4217"),
        (usage("r", 1, float("nan"), 0.0), "cost_gpu_time"),
        (usage("r", 1, 1.0, float("inf")), "cost_energy"),
        (usage("r", 1, 1.0, 0.0, co2_kg=float("nan")), "co2_kg"),
    ],
)
def test_bad_usage_is_refused_before_anything_is_written(bad, message):
    out = io.StringIO()
    with pytest.raises(ValueError, match=message):
        write_focus([USAGES[0], bad], MONTH, out)
    assert out.getvalue() == ""


def test_two_usages_of_one_run_on_one_day_are_refused():
    with pytest.raises(ValueError, match="two usages"):
        write_focus([USAGES[0], USAGES[0]], MONTH, io.StringIO())
