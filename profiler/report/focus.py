"""The month's bill as a FOCUS 1.2 cost-and-usage CSV (FinOps Open Cost and Usage Specification).

One row per run per UTC day: ``ChargeCategory`` "Usage", the charge period that day
(``ChargePeriodStart`` inclusive, ``ChargePeriodEnd`` exclusive, the next midnight) and the
billing period the month (its first day, inclusive, to the first day of the next month,
exclusive). Every column FOCUS 1.2 makes Mandatory is present, plus the Conditional and
Recommended columns that apply to what the profiler knows:

- ``ConsumedQuantity``/``ConsumedUnit``: usage is measured, in GPU-hours. "GPU-Hours" is a
  ``<singular-unit>-<plural-time-units>`` unit (like "GB-Hours") built from a new capitalized
  count-based noun, which the Unit Format attribute allows. ``PricingQuantity``/``PricingUnit``
  (Mandatory) carry the same figure: the price book prices GPU-hours. For a run measured by no
  GPU sensor (``PROFILER_GPU=none``) the GPU-hours are unknown: ``ConsumedQuantity`` and
  ``x_GpuHours`` are null (never 0), while ``PricingQuantity``, which FOCUS forbids to be null
  on a Usage row, is 0: no GPU-hours were priced, so the row's cost is its energy cost only.
- ``ResourceId``/``ResourceName``: the run's id and name (the name is null when it is empty or
  repeats the id, as ``ResourceName`` requires).
- ``SubAccountId``/``SubAccountName``: the project, the grouping runs are allocated to (null
  for a run without a project).
- ``PricingCategory``: the price book has several markets. "on_demand" and non-cloud profiles
  are "Standard", "spot" is "Dynamic"; "reserved_1y" is "Other", since "Committed" would need a
  commitment discount (``CommitmentDiscountId``) the profiler does not track.
- ``Tags``: a JSON object: "project" and "user" (set by the user, written bare) and the keys the
  profiler itself sets, with its prefix as FOCUS 1.2 asks of provider-defined tags:
  "mlprofiler/framework", "mlprofiler/host", "mlprofiler/gpu_model", "mlprofiler/simulated",
  "mlprofiler/attribution" (how the run's GPU energy was split on shared GPUs: "activity",
  "equal", "slices" or "mixed"), "mlprofiler/mig_profiles" (the MIG profiles of the instances
  the run held, comma-separated) (keys with an empty value left out; "simulated" is the string
  "true" or "false").
- ``ChargeFrequency`` "Usage-Based" and ``ServiceSubcategory`` "Machine Learning"
  (Recommended).

Provider, publisher and invoice issuer are all this profiler (an internal allocation, not an
invoice from a vendor); keeping them equal also keeps BilledCost out of the third-party rule
(BilledCost 0 when someone else collects the payment). ``ChargeClass`` is present and null: no
row corrects an earlier billing period.

Custom columns follow the FOCUS columns, both groups in alphabetical order, custom ones
prefixed ``x_``. In the CSV a null is an empty field; no non-null value is ever empty. Decimals
are written in plain positional notation (never an exponent), exactly as the float's shortest
representation, so nothing is rounded away. Open ``out`` with ``newline=""``: rows end in
CRLF as in RFC 4180.

User-supplied text (run id and name, project, user, framework, pricing profile) is exact, with
two exceptions for the spreadsheets a FOCUS file is opened in (OWASP's CSV Injection advice): a
value that starts with ``=``, ``+``, ``-``, ``@``, tab, carriage return or newline (or a
full-width ``=+-@``) gets a leading apostrophe, so it is shown as text and never evaluated,
and a lone surrogate becomes U+FFFD. Inside ``Tags`` (a JSON object) values are exact.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

from profiler.report.text import spreadsheet_text

FOCUS_VERSION = "1.2"
TAG_PREFIX = "mlprofiler/"  # for the tag keys the profiler sets (not the user)

BILLING_ACCOUNT_ID = "ml-energy-profiler"
BILLING_ACCOUNT_NAME = "ML training cost allocation (ml-energy-profiler)"
PROVIDER_NAME = "ml-energy-profiler (internal allocation)"
SERVICE_NAME = "ML Training"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "Machine Learning"
CHARGE_CATEGORY = "Usage"
CHARGE_FREQUENCY = "Usage-Based"
GPU_HOURS_UNIT = "GPU-Hours"

# FOCUS columns first, then custom ones, each group alphabetical (Column Handling).
FOCUS_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ResourceId",
    "ResourceName",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
CUSTOM_COLUMNS = (
    "x_Co2Kg",
    "x_EnergyKwh",
    "x_Framework",
    "x_GpuHours",
    "x_PricingProfile",
    "x_Project",
    "x_RunId",
    "x_Simulated",
    "x_User",
)
COLUMNS = FOCUS_COLUMNS + CUSTOM_COLUMNS
# Columns holding text users (or their configuration) supplied.
USER_TEXT_COLUMNS = frozenset((
    "ChargeDescription", "ResourceId", "ResourceName", "SubAccountId", "SubAccountName", "Tags",
    "x_Framework", "x_PricingProfile", "x_Project", "x_RunId", "x_User",
))  # fmt: skip

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MARKET = re.compile(r"\((on_demand|spot|reserved_1y)\)\s*$")
_PRICING_CATEGORY = {"on_demand": "Standard", "spot": "Dynamic", "reserved_1y": "Other"}
# Enough digits for the exact sum of two doubles of any magnitudes seen in practice.
_DECIMAL_CONTEXT = decimal.Context(prec=60)


@dataclass(frozen=True)
class FocusUsage:
    """One run's usage on one UTC day, in ``currency``."""

    run_id: str
    run_name: str
    project: str
    user: str
    framework: str
    host: str
    gpu_model: str
    day: dt.date  # UTC day the usage happened
    currency: str  # ISO 4217, e.g. "USD"
    cost_gpu_time: float  # currency
    cost_energy: float  # currency
    gpu_hours: float | None  # None: unknown (no GPU sensor)
    kwh: float  # facility kWh (GPU + CPU energy, before PUE)
    co2_kg: float | None
    pricing_profile: str  # e.g. "aws:p4d.24xlarge (on_demand)", "onprem", "flat"
    simulated: bool  # figures measured on a simulated GPU
    attribution: str = ""  # the GPU energy's split basis (whole run); "" unknown
    mig_profiles: str = ""  # the MIG profiles of the instances the run held, comma-separated


def write_focus(usages: Iterable[FocusUsage], month_start: dt.date, out: TextIO) -> int:
    """Write the FOCUS 1.2 CSV of the month holding ``month_start`` to ``out``; return the
    number of rows written (the header excluded).

    BilledCost = EffectiveCost = ListCost = ContractedCost = ``cost_gpu_time + cost_energy``:
    the profiler's cost model computes one price for a run (GPU time at the pricing profile's
    GPU-hour price plus energy at its kWh price). It knows no list price apart from that price,
    no negotiated discount and no commitment or prepaid purchase to amortize, so the billed,
    effective, list and contracted views of a charge are the same amount. ListUnitPrice and
    ContractedUnitPrice (Conditional) are left out: the charge has a GPU-time and an energy part,
    so it is not one unit price times PricingQuantity.

    Rows are sorted by day, then run id. Raises ``ValueError`` for a usage outside the month, a
    second usage of the same run on the same day, an empty run id, a currency that is not an
    ISO 4217 code, or a figure that is not a finite number; nothing is written then.
    """
    if isinstance(month_start, dt.datetime) or not isinstance(month_start, dt.date):
        raise TypeError(f"month_start must be a datetime.date, not {month_start!r}")
    first = month_start.replace(day=1)
    after = (first + dt.timedelta(days=32)).replace(day=1)
    rows = []
    seen: set[tuple[str, dt.date]] = set()
    for u in usages:
        key = (u.run_id, u.day)
        if key in seen:
            raise ValueError(f"run {u.run_id!r} has two usages on {u.day.isoformat()}")
        seen.add(key)
        rows.append(_row(u, first, after))
    rows.sort(key=lambda r: (r["ChargePeriodStart"], r["ResourceId"]))
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows([_cell(c, r[c]) for c in COLUMNS] for r in rows)
    return len(rows)


def _row(u: FocusUsage, first: dt.date, after: dt.date) -> dict[str, str | None]:
    if isinstance(u.day, dt.datetime) or not isinstance(u.day, dt.date):
        raise TypeError(f"run {u.run_id!r}: day must be a datetime.date, not {u.day!r}")
    if not first <= u.day < after:
        raise ValueError(
            f"run {u.run_id!r}: usage on {u.day.isoformat()} is outside the billing period "
            f"{first.isoformat()}..{after.isoformat()}"
        )
    if not isinstance(u.currency, str) or not _CURRENCY.match(u.currency):
        raise ValueError(f"run {u.run_id!r}: currency {u.currency!r} is not an ISO 4217 code")
    if not u.run_id:
        raise ValueError("a usage has an empty run_id")
    cost = _format(
        _DECIMAL_CONTEXT.add(
            _decimal(u.cost_gpu_time, "cost_gpu_time", u),
            _decimal(u.cost_energy, "cost_energy", u),
        )
    )
    gpu_hours = None if u.gpu_hours is None else _format(_decimal(u.gpu_hours, "gpu_hours", u))
    kwh = _format(_decimal(u.kwh, "kwh", u))
    co2 = None if u.co2_kg is None else _format(_decimal(u.co2_kg, "co2_kg", u))
    simulated = "true" if u.simulated else "false"
    tags = {
        k: v
        for k, v in (
            ("project", u.project),
            ("user", u.user),
            (f"{TAG_PREFIX}framework", u.framework),
            (f"{TAG_PREFIX}host", u.host),
            (f"{TAG_PREFIX}gpu_model", u.gpu_model),
            (f"{TAG_PREFIX}attribution", u.attribution),
            (f"{TAG_PREFIX}mig_profiles", u.mig_profiles),
        )
        if v
    }
    tags[f"{TAG_PREFIX}simulated"] = simulated
    market = _MARKET.search(u.pricing_profile or "")
    label = u.run_name or u.run_id
    description = (
        f"GPU time and energy of ML training run {label} on {u.day.isoformat()} "
        f"({u.gpu_model or 'unknown GPU'}, {u.pricing_profile or 'no pricing profile'}"
        f"{', simulated GPU' if u.simulated else ''})"
    )
    return {
        "BilledCost": cost,
        "BillingAccountId": BILLING_ACCOUNT_ID,
        "BillingAccountName": BILLING_ACCOUNT_NAME,
        "BillingCurrency": u.currency,
        "BillingPeriodEnd": _moment(after),
        "BillingPeriodStart": _moment(first),
        "ChargeCategory": CHARGE_CATEGORY,
        "ChargeClass": None,
        "ChargeDescription": description,
        "ChargeFrequency": CHARGE_FREQUENCY,
        "ChargePeriodEnd": _moment(u.day + dt.timedelta(days=1)),
        "ChargePeriodStart": _moment(u.day),
        "ConsumedQuantity": gpu_hours,
        "ConsumedUnit": GPU_HOURS_UNIT,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": PROVIDER_NAME,
        "ListCost": cost,
        "PricingCategory": _PRICING_CATEGORY[market.group(1)] if market else "Standard",
        "PricingQuantity": "0" if gpu_hours is None else gpu_hours,  # nothing priced; not null
        "PricingUnit": GPU_HOURS_UNIT,
        "ProviderName": PROVIDER_NAME,
        "PublisherName": PROVIDER_NAME,
        "ResourceId": u.run_id,
        "ResourceName": u.run_name if u.run_name and u.run_name != u.run_id else None,
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": SERVICE_NAME,
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SubAccountId": u.project or None,
        "SubAccountName": u.project or None,
        "Tags": json.dumps(tags, ensure_ascii=False, separators=(",", ":")),
        "x_Co2Kg": co2,
        "x_EnergyKwh": kwh,
        "x_Framework": u.framework or None,
        "x_GpuHours": gpu_hours,
        "x_PricingProfile": u.pricing_profile or None,
        "x_Project": u.project or None,
        "x_RunId": u.run_id,
        "x_Simulated": simulated,
        "x_User": u.user or None,
    }


def _cell(column: str, value: str | None) -> str | None:
    """A user-supplied text column through :func:`spreadsheet_text`; the others (figures, dates,
    constants, and ``Tags``, a JSON object that starts with ``{``) as they are."""
    if value is None or column not in USER_TEXT_COLUMNS:
        return value
    return spreadsheet_text(value)


def _moment(day: dt.date) -> str:
    """Midnight UTC of ``day`` in the FOCUS Date/Time Format."""
    return f"{day.isoformat()}T00:00:00Z"


def _decimal(value: object, name: str, u: FocusUsage) -> Decimal:
    """The exact decimal a float was written as (its shortest repr), or an int's value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"run {u.run_id!r}: {name} {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"run {u.run_id!r}: {name} is {value!r}")
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _format(value: Decimal) -> str:
    """Plain positional notation: no exponent, no "+", no "-0"."""
    value = _DECIMAL_CONTEXT.plus(value)
    if value.is_zero():
        return "0"
    return format(value, "f")
