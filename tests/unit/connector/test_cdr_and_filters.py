from __future__ import annotations

import pytest
from centralita.connector.backfill import format_csv_line, parse_csv_line
from centralita.connector.cdr import CdrError, record_from_event, record_from_fields, resolve_timezone
from centralita.connector.filters import CdrFilter
from centralita.fakes.ami_server import CDR_HEADERS, sample_cdr

BOGOTA = resolve_timezone("America/Bogota")
MADRID = resolve_timezone("Europe/Madrid")


def event(**overrides):
    values = sample_cdr(1, **overrides)
    return {header: values[name] for header, name in CDR_HEADERS}


def record(**overrides):
    return record_from_fields(sample_cdr(1, **overrides), BOGOTA)


def test_every_cdr_event_field_is_kept():
    cdr = record_from_event(event(userfield="vip", accountcode="acme"), BOGOTA)
    assert cdr.userfield == "vip" and cdr.accountcode == "acme"
    assert cdr.linkedid == cdr.uniqueid and cdr.sequence == 1
    assert cdr.clid == '"José Núñez" <3001234567>'


def test_times_are_converted_with_the_servers_zone():
    cdr = record_from_event(event(start="2026-03-10 08:00:00", answer="", end="2026-03-10 08:00:10"), BOGOTA)
    assert cdr.start == "2026-03-10T08:00:00-05:00"
    assert cdr.answer is None


def test_dst_change_gives_the_right_offset():
    winter = record_from_fields(sample_cdr(1, start="2026-01-15 12:00:00"), MADRID)
    summer = record_from_fields(sample_cdr(1, start="2026-07-15 12:00:00"), MADRID)
    assert winter.start.endswith("+01:00") and summer.start.endswith("+02:00")


def test_bad_duration_names_the_field():
    with pytest.raises(CdrError, match="duration"):
        record(duration="ten")


def test_bad_time_names_the_field():
    with pytest.raises(CdrError, match="start"):
        record(start="yesterday")


def test_missing_sequence_gets_a_stable_negative_stand_in():
    values = sample_cdr(3)
    values["sequence"] = ""
    first = record_from_fields(values, BOGOTA)
    second = record_from_fields(dict(values), BOGOTA)
    assert first.sequence < 0 and first.sequence == second.sequence


def test_csv_backfill_line_round_trips_quotes_and_commas():
    values = sample_cdr(9, clid='"O""Brien, Ana" <1>', lastdata="PJSIP/100,30")
    cdr = parse_csv_line(format_csv_line(values).rstrip("\n"), BOGOTA)
    assert cdr == record_from_fields(values, BOGOTA)


def test_csv_line_with_wrong_field_count_is_an_error():
    with pytest.raises(CdrError, match="CSV fields"):
        parse_csv_line('"a","b"', BOGOTA)


default = CdrFilter()


def test_default_filter_drops_only_hangup_handlers():
    assert default.reason(record(dst="h")) == "excluded_destination"
    assert default.reason(record(dst="s", disposition="NO ANSWER", duration="0", billsec="0")) is None
    assert default.reason(record(duration="0", billsec="0", disposition="NO ANSWER")) is None


def test_disabled_filter_keeps_everything():
    assert CdrFilter(enabled=False).reason(record(dst="h")) is None


def test_excluded_s_is_dropped_only_when_unanswered_and_empty():
    rules = CdrFilter(exclude_dst=frozenset({"s", "h"}))
    assert rules.reason(record(dst="s", disposition="NO ANSWER", duration="0")) == "excluded_destination"
    assert rules.reason(record(dst="s", disposition="ANSWERED", duration="45")) is None
    assert rules.reason(record(dst="s", disposition="BUSY", duration="3")) is None
    assert rules.reason(record(dst="h", disposition="ANSWERED", duration="45")) == "excluded_destination"


def test_failed_queue_attempts_filter():
    rules = CdrFilter(queue_attempts=True)
    assert rules.reason(record(dst="s", disposition="NO ANSWER", duration="0")) == "queue_attempt"
    assert rules.reason(record(dst="s", disposition="NO ANSWER", duration="4")) is None


def test_zero_duration_keeps_busy_failed_and_congestion():
    rules = CdrFilter(zero_duration=True)
    assert rules.reason(record(duration="0", disposition="NO ANSWER")) == "zero_duration"
    for disposition in ("BUSY", "FAILED", "CONGESTION"):
        assert rules.reason(record(duration="0", disposition=disposition)) is None


def test_minimum_duration():
    rules = CdrFilter(min_duration=60)
    assert rules.reason(record(duration="59")) == "min_duration"
    assert rules.reason(record(duration="60")) is None


def test_internal_only_needs_both_ends_internal():
    rules = CdrFilter(internal_only=True)
    assert rules.reason(record(src="101", dst="102")) is None
    assert rules.reason(record(src="3001234567", dst="102")) == "not_internal"
