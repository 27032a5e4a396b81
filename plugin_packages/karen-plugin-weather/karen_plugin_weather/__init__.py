"""karen-plugin-weather: current weather and short forecasts."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, Field

from karen_hooks import hookimpl

from .providers import CITIES, HTTPProvider, OfflineProvider, UnknownCity, provider_from_env


class CurrentParams(BaseModel):
    city: str = Field(min_length=1, max_length=100, description="city name, e.g. Paris or NYC")
    units: Literal["metric", "imperial"] = "metric"


class ForecastParams(CurrentParams):
    days: int = Field(3, ge=1, le=5, description="how many days ahead (1-5)")


def _convert(temp_c: float, units: str) -> dict[str, Any]:
    if units == "imperial":
        return {"temp": round(temp_c * 9 / 5 + 32, 1), "unit": "F"}
    return {"temp": temp_c, "unit": "C"}


@hookimpl
def karen_intent() -> list[dict[str, Any]]:
    return [
        {
            "name": "weather.current",
            "description": "Current weather conditions and temperature in a city",
            "examples": ["what's the weather in Paris", "is it raining in London", "how hot is it in Cairo right now"],
            "required_roles": ["user"],
            "params": CurrentParams,
        },
        {
            "name": "weather.forecast",
            "description": "Weather forecast for the next days in a city",
            "examples": ["weather forecast for Tokyo", "will it rain tomorrow in Berlin", "forecast for the next 3 days"],
            "required_roles": ["user"],
            "params": ForecastParams,
        },
    ]


@hookimpl
async def karen_run(intent: str, params: CurrentParams) -> dict[str, Any]:
    # The HTTP provider blocks on the network: off the event loop when a host trusts us in-process.
    return await asyncio.to_thread(run_intent, intent, params)


def run_intent(intent: str, params: CurrentParams) -> dict[str, Any]:
    """The answer for ``intent`` (blocking: may call the weather API)."""
    provider = provider_from_env()
    now = provider.current(params.city)
    out = {"city": now["city"], "conditions": now["conditions"], "humidity": now["humidity"], "provider": provider.name}
    out.update(_convert(now["temp_c"], params.units))
    if intent == "weather.forecast":
        assert isinstance(params, ForecastParams)
        if not isinstance(provider, OfflineProvider):
            raise ValueError("forecasts are only available from the offline provider in this release")
        out["days"] = [
            {"day": d["day"], "conditions": d["conditions"], **_convert(d["temp_c"], params.units)}
            for d in provider.forecast(params.city, params.days)
        ]
    return out


@hookimpl
def karen_render_prompt(intent: str) -> str:
    if intent == "weather.forecast":
        return (
            "Summarise this {{ params.days }}-day forecast for {{ result.city | title }} in one sentence: "
            "{% for d in result.days %}day {{ d.day }}: {{ d.temp }}{{ d.unit }} {{ d.conditions }}; {% endfor %}"
        )
    return "It is {{ result.temp }}°{{ result.unit }} and {{ result.conditions }} in {{ result.city | title }}. Tell the user."


__all__ = [
    "CITIES",
    "CurrentParams",
    "ForecastParams",
    "HTTPProvider",
    "OfflineProvider",
    "UnknownCity",
    "karen_intent",
    "karen_render_prompt",
    "karen_run",
    "run_intent",
]
