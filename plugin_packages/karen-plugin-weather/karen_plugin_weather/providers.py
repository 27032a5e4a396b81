"""Where weather comes from: a deterministic offline table, or a real HTTP API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

# (temperature °C, humidity %, conditions) — fixed so answers are reproducible.
CITIES: dict[str, tuple[float, int, str]] = {
    "amsterdam": (11.0, 81, "light rain"),
    "berlin": (9.5, 70, "overcast"),
    "cairo": (27.0, 35, "clear"),
    "london": (12.0, 78, "drizzle"),
    "madrid": (19.5, 45, "sunny"),
    "mumbai": (31.0, 74, "humid haze"),
    "nyc": (22.2, 60, "partly cloudy"),
    "paris": (14.0, 66, "cloudy"),
    "san francisco": (16.0, 72, "fog"),
    "sydney": (24.0, 58, "sunny"),
    "tokyo": (18.0, 63, "clear"),
    "toronto": (6.0, 69, "snow showers"),
}
ALIASES = {"new york": "nyc", "new york city": "nyc", "sf": "san francisco"}
_FORECAST_SWING = (0.0, 1.5, -1.0, 2.0, -2.5)


class UnknownCity(ValueError):
    def __init__(self, city: str) -> None:
        known = ", ".join(sorted(CITIES))
        super().__init__(f"unknown city {city!r}; the offline provider knows: {known}")


class Provider(Protocol):
    def current(self, city: str) -> dict[str, Any]: ...


def _key(city: str) -> str:
    k = " ".join(city.lower().split())
    return ALIASES.get(k, k)


class OfflineProvider:
    """Deterministic data for a table of cities; no network."""

    name = "offline"

    def current(self, city: str) -> dict[str, Any]:
        key = _key(city)
        if key not in CITIES:
            raise UnknownCity(city)
        temp, humidity, conditions = CITIES[key]
        return {"city": key, "temp_c": temp, "humidity": humidity, "conditions": conditions}

    def forecast(self, city: str, days: int) -> list[dict[str, Any]]:
        now = self.current(city)
        return [
            {"day": d + 1, "temp_c": round(now["temp_c"] + _FORECAST_SWING[d % 5], 1), "conditions": now["conditions"]}
            for d in range(days)
        ]


class HTTPProvider:
    """An OpenWeatherMap-compatible API (``/weather?q=CITY&appid=KEY&units=metric``)."""

    name = "http"

    def __init__(self, api_key: str, base_url: str, timeout: float = 5.0) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def current(self, city: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"q": city, "appid": self.api_key, "units": "metric"})
        try:
            with urllib.request.urlopen(f"{self.base_url}/weather?{query}", timeout=self.timeout) as resp:  # noqa: S310
                data = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UnknownCity(city) from None
            raise RuntimeError(f"weather API answered HTTP {exc.code} for {city!r}") from None
        try:
            return {
                "city": str(data["name"]).lower(),
                "temp_c": float(data["main"]["temp"]),
                "humidity": int(data["main"]["humidity"]),
                "conditions": str(data["weather"][0]["description"]),
            }
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RuntimeError(f"weather API reply for {city!r} is missing {exc}") from None


def provider_from_env(environ: dict[str, str] | None = None) -> OfflineProvider | HTTPProvider:
    """``KAREN_WEATHER_API_KEY`` selects the HTTP provider; otherwise offline data."""
    env = os.environ if environ is None else environ
    key = env.get("KAREN_WEATHER_API_KEY")
    if key:
        return HTTPProvider(key, env.get("KAREN_WEATHER_API_URL", "https://api.openweathermap.org/data/2.5"))
    return OfflineProvider()
