"""pytest plugin for plugin authors, registered under ``pytest11`` (always on when karen-hooks is installed).

Fixtures:

- ``karen_user(roles=("user",), tenant="test-tenant", user_id="test-user")``: a factory of ``user_ctx`` dicts.
- ``karen_host``: a host that loads only the plugins named by
  ``@pytest.mark.karen_plugins("my-plugin", sandbox=False)``, with an isolated
  config (no ``KAREN_CONFIG``, no directory plugins) and an in-memory memory
  backend. ``sandbox=False`` (the default) trusts the named plugins so they
  run in-process and are easy to debug; ``sandbox=True`` runs them untrusted,
  through the real process sandbox, exactly as an operator's host would.

``karen_host.run(name, params, user=None, intent=None)`` runs a call and
returns the :class:`karen_hooks.RunResult`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._config import load_settings
from ._manager import PluginManager, RunResult
from ._router import PluginRouter


class KarenHost:
    """A test host: ``router``, ``manager`` and a synchronous ``run``."""

    def __init__(self, plugins: list[str], sandbox: bool, **settings: Any) -> None:
        overrides: dict[str, Any] = {"load_plugins": plugins, "plugin_dir": None}
        if not sandbox:
            overrides["trusted_plugins"] = plugins
        overrides.update(settings)
        self.settings = load_settings(environ={}, **overrides)
        self.router = PluginRouter(self.settings)
        self.manager = PluginManager(router=self.router)

    def run(
        self, name: str, params: dict[str, Any] | None = None, user: dict[str, Any] | None = None, intent: str | None = None
    ) -> RunResult:
        user = user or {"user_id": "test-user", "roles": ["user"], "tenant_id": "test-tenant"}
        return asyncio.run(self.manager.run_plugin(name, params, user, intent=intent))

    def close(self) -> None:
        executor = self.router._executor
        if executor is not None:
            executor.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "karen_plugins(*names, sandbox=False): plugins the karen_host fixture loads"
    )


@pytest.fixture
def karen_user() -> Callable[..., dict[str, Any]]:
    def make(roles: tuple[str, ...] | list[str] = ("user",), tenant: str = "test-tenant", user_id: str = "test-user") -> dict[str, Any]:
        return {"user_id": user_id, "roles": list(roles), "tenant_id": tenant}

    return make


@pytest.fixture
def karen_host(request: pytest.FixtureRequest) -> Iterator[KarenHost]:
    marker = request.node.get_closest_marker("karen_plugins")
    if marker is None or not marker.args:
        raise pytest.UsageError('karen_host needs @pytest.mark.karen_plugins("plugin-name", ...)')
    host = KarenHost(list(marker.args), bool(marker.kwargs.get("sandbox", False)))
    try:
        yield host
    finally:
        host.close()
