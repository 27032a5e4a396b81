"""The real thing: run a known sequence of calls, scrape /metrics over HTTP on 127.0.0.1, check exact counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from karen_hooks import (
    AccessDenied,
    InvalidParams,
    InvalidUserContext,
    PluginError,
    PluginNotFound,
    PluginTimeout,
    SandboxError,
)
from karen_hooks.observability import serve_metrics

from ._helpers import SLEEPY, USER, make_manager, samples, scrape, value, write_plugin, write_plugins


@pytest.fixture
def server() -> Any:
    servers = []

    def start(registry: CollectorRegistry | None = None) -> int:
        httpd, thread = serve_metrics(0, registry=registry)
        servers.append((httpd, thread))
        return int(httpd.server_port)

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_known_sequence_is_counted_exactly(tmp_path: Path, server: Any) -> None:
    reg = CollectorRegistry()
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, reg)
    admin = {"user_id": "boss", "roles": ["admin"], "tenant_id": "t-1"}

    async def sequence() -> None:
        for _ in range(3):
            assert (await mgr.run_plugin("okplug", {}, USER)).result == {"ok": True}
        assert (await mgr.run_plugin("ok.run", {}, USER)).result == {"ok": True}  # bare intent name
        assert (await mgr.run_plugin("secret", {}, admin)).result == "secret"
        for _ in range(2):
            with pytest.raises(AccessDenied):
                await mgr.run_plugin("secret", {}, USER)
        with pytest.raises(InvalidParams):
            await mgr.run_plugin("typed", {"n": "not a number"}, USER)
        with pytest.raises(InvalidUserContext):
            await mgr.run_plugin("typed", {"n": 1}, {"roles": ["user"]})
        assert (await mgr.run_plugin("typed", {"n": 21}, USER)).result == 42
        with pytest.raises(PluginError, match="boom"):
            await mgr.run_plugin("crash", {}, USER)
        with pytest.raises(PluginNotFound):
            await mgr.run_plugin("user-supplied-nonsense-123", {}, USER)

    asyncio.run(sequence())
    text = scrape(server(reg))
    found = samples(text)
    calls = "karen_plugin_calls_total"
    assert value(found, calls, plugin="okplug", intent="ok.run", outcome="ok") == 4
    assert value(found, calls, plugin="secret", intent="secret.run", outcome="ok") == 1
    assert value(found, calls, plugin="secret", intent="secret.run", outcome="denied") == 2
    assert value(found, calls, plugin="typed", intent="typed.run", outcome="invalid") == 2
    assert value(found, calls, plugin="typed", intent="typed.run", outcome="ok") == 1
    assert value(found, calls, plugin="crash", intent="crash.run", outcome="error") == 1
    assert value(found, calls, plugin="_unknown", intent="_unknown", outcome="not_found") == 1
    total = sum(v for (n, _), v in found.items() if n == calls)
    assert total == 12
    assert value(found, "karen_rbac_denials_total", plugin="secret", intent="secret.run") == 2
    assert value(found, "karen_plugin_call_duration_seconds_count", plugin="okplug", intent="ok.run") == 4
    assert value(found, "karen_plugin_call_duration_seconds_count", plugin="typed", intent="typed.run") == 3
    assert value(found, "karen_plugin_calls_in_flight", plugin="okplug") == 0
    assert value(found, "karen_plugin_load_errors_total", plugin="broken") == 1
    # bounded labels: the caller's name, user and tenant never become label values
    assert "user-supplied-nonsense-123" not in text and "u-1" not in text and "t-1" not in text
    # naming conventions: counters end in _total, the histogram is in seconds
    assert "# TYPE karen_plugin_calls_total counter" in text
    assert "# TYPE karen_plugin_call_duration_seconds histogram" in text


def _sandbox_usable() -> str | None:
    try:
        from karen_hooks.sandbox import SandboxExecutor  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"karen_hooks.sandbox is not importable yet: {exc}"
    return None


def test_timeout_in_sandbox_is_counted(tmp_path: Path, server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    why = _sandbox_usable()
    if why:
        pytest.skip(why)
    reg = CollectorRegistry()
    write_plugin(tmp_path, "sleepy", SLEEPY, sandbox=True)
    write_plugin(tmp_path, "quick", ("quick.run", [], "def run(params):\n    return 1\n", None), sandbox=True)
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, reg, plugins={"sleepy": {"limits": {"wall_seconds": 0.5}}}, trace_plugins=True)
    assert mgr.router.get_plugin("sleepy").sandboxed

    async def probe() -> None:
        assert (await mgr.run_plugin("quick", {}, USER)).result == 1

    async def sequence() -> None:
        assert (await mgr.run_plugin("okplug", {}, USER)).result == {"ok": True}
        with pytest.raises(PluginTimeout):
            await mgr.run_plugin("sleepy", {}, USER)

    try:
        try:
            asyncio.run(probe())
        except SandboxError as exc:
            pytest.skip(f"the process sandbox cannot run plugins on this machine: {exc}")
        asyncio.run(sequence())
    finally:
        if mgr.router._executor is not None:
            mgr.router._executor.close()
    err = capsys.readouterr().err
    assert "karen trace: sleepy.karen_run(intent='sleepy.run') [sandbox fork]" in err  # traced from the outside
    assert "karen trace: sleepy.karen_run raised PluginTimeout" in err
    found = samples(scrape(server(reg)))
    calls = "karen_plugin_calls_total"
    assert value(found, calls, plugin="sleepy", intent="sleepy.run", outcome="timeout") == 1
    assert value(found, calls, plugin="okplug", intent="ok.run", outcome="ok") == 1
    assert value(found, "karen_sandbox_limit_hits_total", kind="wall_time") == 1
    assert value(found, "karen_plugin_calls_in_flight", plugin="sleepy") == 0


def test_asgi_and_wsgi_apps_serve_the_registry(tmp_path: Path) -> None:
    from wsgiref.util import setup_testing_defaults

    from karen_hooks.observability import make_asgi_app, make_wsgi_app

    reg = CollectorRegistry()
    write_plugins(tmp_path)
    mgr = make_manager(tmp_path, reg)
    asyncio.run(mgr.run_plugin("okplug", {}, USER))
    line = 'karen_plugin_calls_total{intent="ok.run",outcome="ok",plugin="okplug"} 1.0'

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
    asyncio.run(make_asgi_app(reg)(scope, receive, send))
    assert sent[0]["status"] == 200
    assert line in b"".join(m.get("body", b"") for m in sent).decode()

    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(make_wsgi_app(reg)(environ, lambda s, h: status.append(s)))
    assert status == ["200 OK"] and line in body.decode()
