"""karen-plugin-time-query: what time is it, in the format and timezone asked for."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, Field, field_validator

from karen_hooks import hookimpl


class TimeParams(BaseModel):
    """Params of ``time.now``."""

    format: Literal["iso", "unix", "human"] = Field("iso", description="iso (RFC 3339), unix (seconds) or human")
    timezone: str = Field("UTC", description="an IANA timezone name such as Europe/Paris")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        if v.upper() == "UTC":
            return "UTC"
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}; use an IANA name such as 'Europe/Paris'") from None
        return v


@hookimpl
def karen_intent() -> list[dict]:
    return [
        {
            "name": "time.now",
            "description": "Tell the current time and date in a given timezone",
            "examples": ["what time is it", "current time in Tokyo", "what's the time now", "what is today's date"],
            "required_roles": ["user"],
            "params": TimeParams,
        }
    ]


def now(params: TimeParams, clock: float | None = None) -> dict:
    """The answer for ``params`` at ``clock`` (seconds since the epoch; now when omitted)."""
    ts = time.time() if clock is None else clock
    tz = timezone.utc if params.timezone == "UTC" else ZoneInfo(params.timezone)
    moment = datetime.fromtimestamp(ts, tz)
    if params.format == "unix":
        value: str | int = int(ts)
    elif params.format == "human":
        value = moment.strftime("%A %d %B %Y, %H:%M:%S %Z")
    else:
        value = moment.isoformat(timespec="seconds")
    return {"time": value, "format": params.format, "timezone": params.timezone}


@hookimpl
def karen_run(params: TimeParams) -> dict:
    return now(params)


@hookimpl
def karen_render_prompt() -> str:
    return "The user asked for the time. It is {{ result.time }} ({{ params.timezone }}). Answer briefly."


__all__ = ["TimeParams", "available_timezones", "karen_intent", "karen_render_prompt", "karen_run", "now"]
