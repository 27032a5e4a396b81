import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from karen_plugin_weather import CurrentParams, ForecastParams, karen_run, run_intent
from karen_plugin_weather.providers import HTTPProvider, OfflineProvider, UnknownCity, provider_from_env


def test_offline_current_is_deterministic() -> None:
    out = asyncio.run(karen_run("weather.current", CurrentParams(city="New York")))
    assert out == {"city": "nyc", "conditions": "partly cloudy", "humidity": 60, "provider": "offline", "temp": 22.2, "unit": "C"}


def test_imperial_units() -> None:
    out = run_intent("weather.current", CurrentParams(city="paris", units="imperial"))
    assert (out["temp"], out["unit"]) == (57.2, "F")


def test_forecast_days() -> None:
    out = run_intent("weather.forecast", ForecastParams(city="Tokyo", days=2))
    assert [d["temp"] for d in out["days"]] == [18.0, 19.5]


def test_unknown_city_lists_known_ones() -> None:
    with pytest.raises(UnknownCity, match="unknown city 'Atlantis'.*paris"):
        OfflineProvider().current("Atlantis")


def test_days_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        ForecastParams(city="Paris", days=9)


class _FakeAPI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        q = parse_qs(urlparse(self.path).query)
        if q.get("appid") != ["secret"]:
            self.send_response(401)
            self.end_headers()
            return
        if q["q"][0].lower() != "oslo":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"name": "Oslo", "main": {"temp": -3.5, "humidity": 90}, "weather": [{"description": "snow"}]})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _FakeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_http_provider_selected_by_api_key(api_url: str) -> None:
    provider = provider_from_env({"KAREN_WEATHER_API_KEY": "secret", "KAREN_WEATHER_API_URL": api_url})
    assert isinstance(provider, HTTPProvider)
    assert provider.current("Oslo") == {"city": "oslo", "temp_c": -3.5, "humidity": 90, "conditions": "snow"}


def test_http_unknown_city(api_url: str) -> None:
    with pytest.raises(UnknownCity):
        HTTPProvider("secret", api_url).current("Atlantis")


def test_http_bad_key_is_a_clear_error(api_url: str) -> None:
    with pytest.raises(RuntimeError, match="HTTP 401"):
        HTTPProvider("wrong", api_url).current("Oslo")
