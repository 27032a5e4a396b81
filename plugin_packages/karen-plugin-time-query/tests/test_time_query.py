import pytest
from karen_plugin_time_query import TimeParams, karen_intent, now
from pydantic import ValidationError

# 2026-01-02T03:04:05Z
CLOCK = 1767323045.0


def test_iso_utc() -> None:
    assert now(TimeParams(), CLOCK) == {"time": "2026-01-02T03:04:05+00:00", "format": "iso", "timezone": "UTC"}


def test_unix() -> None:
    assert now(TimeParams(format="unix"), CLOCK)["time"] == 1767323045


def test_human_in_timezone() -> None:
    out = now(TimeParams(format="human", timezone="Asia/Tokyo"), CLOCK)
    assert out["time"] == "Friday 02 January 2026, 12:04:05 JST"


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown timezone 'Mars/Olympus'"):
        TimeParams(timezone="Mars/Olympus")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValidationError):
        TimeParams(format="roman")


def test_declares_one_intent() -> None:
    [intent] = karen_intent()
    assert intent["name"] == "time.now" and intent["params"] is TimeParams
