"""The operator's 'today' as a UTC range: rows are stored in UTC, people think in local days."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from flask import current_app


def today_range_utc(now: dt.datetime | None = None, zone: str | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the current local day, as naive UTC datetimes matching the DB's DATETIME columns."""
    tz = zoneinfo.ZoneInfo(zone or current_app.config["CENTRALITA_SETTINGS"].timezone)
    local_now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    start_local = dt.datetime.combine(local_now.date(), dt.time(), tzinfo=tz)
    end_local = dt.datetime.combine(local_now.date() + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return (
        start_local.astimezone(dt.UTC).replace(tzinfo=None),
        end_local.astimezone(dt.UTC).replace(tzinfo=None),
    )


def to_local(value: dt.datetime | None, zone: str | None = None) -> str:
    """A naive UTC datetime from the DB shown in the operator's zone."""
    if value is None:
        return ""
    tz = zoneinfo.ZoneInfo(zone or current_app.config["CENTRALITA_SETTINGS"].timezone)
    return value.replace(tzinfo=dt.UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
