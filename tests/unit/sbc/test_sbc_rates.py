"""Rate deck parsing: every bad line is named and nothing partial is accepted."""

from __future__ import annotations

import datetime as dt
import decimal
import io

import pytest
from centralita.sbc.rates import RateDeckError, parse_deck

NOW = dt.datetime(2026, 11, 1, 0, 0, 0)


def deck(text: str, **kwargs):
    return parse_deck(io.StringIO(text), effective_from=NOW, **kwargs)


def test_minimal_deck_takes_the_defaults_for_billing_and_dates():
    (row,) = deck("prefix,rate\n573,0.0123\n")
    assert row.prefix == "573"
    assert row.rate == decimal.Decimal("0.012300")
    assert (row.billing_initial, row.billing_increment) == (60, 60)
    assert row.effective_from == NOW and row.effective_to is None


def test_columns_are_found_by_name_in_any_order_and_plus_is_dropped():
    (row,) = deck(
        "Destination,Rate,Code,billing_initial,billing_increment,effective_from,effective_to\n"
        "Colombia Mobile,0.02,+57300,1,1,2026-12-01,2027-01-01 00:00\n"
    )
    assert row.prefix == "57300"
    assert row.destination == "Colombia Mobile"
    assert (row.billing_initial, row.billing_increment) == (1, 1)
    assert row.effective_from == dt.datetime(2026, 12, 1)
    assert row.effective_to == dt.datetime(2027, 1, 1)


def test_every_bad_line_is_reported_with_its_number():
    with pytest.raises(RateDeckError) as caught:
        deck("prefix,rate\n57,0.01\n57a,0.01\n58,-1\n59,abc\n,0.3\n60,0.1,\n")
    text = str(caught.value)
    assert "4 bad line(s), nothing imported" in text
    for number in (3, 4, 5, 6):
        assert f"line {number}:" in text


def test_a_prefix_twice_in_one_deck_is_refused():
    with pytest.raises(RateDeckError, match="line 3: prefix 57 appears again"):
        deck("prefix,rate\n57,0.01\n57,0.02\n")


def test_header_must_name_prefix_and_rate():
    with pytest.raises(RateDeckError, match="line 1: the header must name the columns rate"):
        deck("prefix,cost\n57,0.01\n")


def test_end_before_start_is_refused():
    with pytest.raises(RateDeckError, match="is not after effective_from"):
        deck("prefix,rate,effective_from,effective_to\n57,0.01,2026-12-01,2026-11-01\n")


def test_empty_deck_is_refused():
    with pytest.raises(RateDeckError, match="empty"):
        deck("")
    with pytest.raises(RateDeckError, match="no rates"):
        deck("prefix,rate\n\n")


def test_three_hundred_thousand_rows_parse_quickly():
    lines = ["prefix,rate"] + [f"{5700000 + i},{(i % 900) / 10000:.4f}" for i in range(300_000)]
    started = dt.datetime.now()
    rows = deck("\n".join(lines) + "\n")
    assert len(rows) == 300_000
    assert (dt.datetime.now() - started).total_seconds() < 30
