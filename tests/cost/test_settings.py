"""The [cost] settings (profiler.cost.settings): each value with where it came from, the
environment over the file, and bad values refused in one line that shows what was given."""

from __future__ import annotations

import datetime

import pytest

from profiler.cost.settings import (
    PricingError,
    as_currency,
    as_iso_date,
    as_number,
    as_pue,
    read_settings,
)

WHERE = "/home/u/.profiler/profiler.toml"


def test_values_keep_their_origin_and_the_environment_wins():
    cost = {"pricing": "aws:p4d.24xlarge", "pue": 1.2, "onprem": {"capex_per_gpu": 30000}}
    env = {"PROFILER_PRICING": " flat ", "PROFILER_COUNTRY": "", "PROFILER_MARKET": "spot"}
    settings = read_settings(cost, WHERE, env)
    assert settings.get("pricing") == "flat"  # stripped; an empty variable counts as unset
    assert settings.where("pricing") == "environment PROFILER_PRICING"
    assert settings.get("market") == "spot" and "country" not in settings
    assert settings.get("pue") == 1.2 and settings.where("pue") == f"{WHERE} [cost]"
    assert settings.get("region", "none") == "none"


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        ({"pricng": "flat"}, "unknown key 'pricng' (did you mean 'pricing'?)"),
        ({"onprem": {"capex": 1}}, "[cost.onprem]: unknown key 'capex'"),
        ({"onprem": 5}, "'onprem' must be a table"),
    ],
)
def test_unknown_keys_are_refused_with_the_nearest(cost, message):
    with pytest.raises(PricingError) as e:
        read_settings(cost, WHERE, {})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_value_checks_give_the_unit_or_one_line_with_the_value_as_given():
    assert as_number(" 2.5 ", "k", WHERE, "USD") == 2.5  # from the environment
    assert as_pue(1, "pue", WHERE) == 1.0
    assert as_currency(" eur", "currency", WHERE) == "EUR"
    assert as_iso_date(datetime.date(2026, 11, 1), "as_of", WHERE) == "2026-11-01"
    refused = [
        (lambda: as_number("abc", "k", WHERE, "USD"), "got 'abc'"),
        (lambda: as_number(True, "k", WHERE, "USD"), "got True"),
        (lambda: as_number(float("inf"), "k", WHERE, "USD"), "got inf"),
        (lambda: as_pue(0.9, "pue", WHERE), "must be >= 1, got 0.9"),
        (lambda: as_currency("dollars", "currency", WHERE), "got 'dollars'"),
        (lambda: as_iso_date("24.11.2026", "as_of", WHERE), "got '24.11.2026'"),
    ]
    for call, shown in refused:
        with pytest.raises(PricingError) as e:
            call()
        assert shown in str(e.value) and str(e.value).startswith(WHERE), str(e.value)
