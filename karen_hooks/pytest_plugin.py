"""pytest plugin for plugin authors, registered under ``pytest11`` (always on when karen-hooks is installed).

Fixtures (see docs/testing-plugins.md):

- ``karen_user(roles=("user",), tenant="test-tenant", user_id="test-user")``: a factory of ``user_ctx`` dicts.
- ``karen_host``: a host that loads only the plugins named by
  ``@pytest.mark.karen_plugins("my-plugin", sandbox=False)``, with an isolated
  config (no ``KAREN_CONFIG``, no environment, no directory plugins unless
  ``plugin_dir=`` is given) and an in-memory memory backend. ``sandbox=False``
  (the default) trusts the named plugins so they run in-process and are easy
  to debug; ``sandbox=True`` runs them untrusted, through the real process
  sandbox, exactly as an operator's host would. ``pytest --karen-sandbox``
  turns ``sandbox=True`` on for every ``karen_host``.
- ``karen_host_factory(*names, sandbox=False, **settings)``: the same host,
  built from arguments instead of the marker (several per test are fine).

A plugin named by the test that fails to load fails the test with the reason
(the host is strict), so a broken plugin can never pass by being skipped.
``karen_host.run(name, params, user=None, intent=None)`` returns the
:class:`karen_hooks.RunResult` (unpacks as ``result, stdout, stderr``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._config import load_settings
from ._manager import PluginManager, RunResult
from ._models import PluginInfo
from ._router import PluginRouter

DEFAULT_USER = {"user_id": "test-user", "roles": ["user"], "tenant_id": "test-tenant"}


def sandbox_unavailable() -> str | None:
    """Why the process sandbox cannot be used here, or ``None`` when it can."""
    try:
        from .sandbox import SandboxExecutor  # noqa: F401
    except ImportError as exc:
        return f"the karen-hooks process sandbox is unavailable here ({exc})"
    return None


class KarenHost:
    """A test host: ``router``, ``manager``, ``settings`` and synchronous helpers."""

    def __init__(
        self, names: list[str], sandbox: bool = False, plugin_dir: str | Path | None = None, **settings: Any
    ) -> None:
        if not names:
            raise ValueError("name at least one plugin for the test host to load")
        overrides: dict[str, Any] = {
            "load_plugins": list(names),
            "plugin_dir": str(plugin_dir) if plugin_dir is not None else None,
            "memory_url": "memory://",
            "strict": True,
            "trusted_plugins": [] if sandbox else list(names),
        }
        overrides.update(settings)
        self.sandbox = sandbox
        self.settings = load_settings(environ={}, **overrides)
        self.router = PluginRouter(self.settings)
        missing = [n for n in names if n not in {p.name for p in self.router.list_plugins()}]
        if missing:
            self.close()
            raise LookupError(
                f"plugin(s) {missing} are not installed in this environment (no 'karen.plugins' entry point"
                f"{' or directory plugin' if plugin_dir else ''} by that name); pip install -e . first"
            )
        self.manager = PluginManager(router=self.router)

    def run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        user: dict[str, Any] | None = None,
        intent: str | None = None,
    ) -> RunResult:
        """Run ``name`` (a plugin or a bare intent) as ``user`` (default: test-user with role ``user``)."""
        return asyncio.run(self.manager.run_plugin(name, params, user or dict(DEFAULT_USER), intent=intent))

    def render_prompt(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        user: dict[str, Any] | None = None,
        intent: str | None = None,
        result: Any = None,
    ) -> str:
        """Render the plugin's prompt through the host (:meth:`PluginManager.render_prompt`)."""
        return asyncio.run(self.manager.render_prompt(name, params, user or dict(DEFAULT_USER), result=result, intent=intent))

    def plugin(self, name: str) -> PluginInfo:
        return self.router.get_plugin(name)

    def intents(self) -> list[str]:
        return self.router.list_intents()

    def close(self) -> None:
        self.router.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("karen", "karen-hooks plugin testing")
    group.addoption(
        "--karen-sandbox",
        action="store_true",
        default=False,
        help="run every karen_host plugin untrusted, through the real process sandbox",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "karen_plugins(*names, sandbox=False, plugin_dir=None, **settings): plugins the karen_host fixture loads",
    )


@pytest.fixture
def karen_user() -> Callable[..., dict[str, Any]]:
    """``karen_user(roles=("user",), tenant="test-tenant", user_id="test-user")`` -> a ``user_ctx`` dict."""

    def make(
        roles: tuple[str, ...] | list[str] = ("user",), tenant: str | None = "test-tenant", user_id: str = "test-user"
    ) -> dict[str, Any]:
        ctx: dict[str, Any] = {"user_id": user_id, "roles": list(roles)}
        if tenant is not None:
            ctx["tenant_id"] = tenant
        return ctx

    return make


@pytest.fixture
def karen_host_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., KarenHost]]:
    """``karen_host_factory("my-plugin", sandbox=False, **settings)`` -> a :class:`KarenHost`, closed after the test."""
    hosts: list[KarenHost] = []
    force_sandbox = bool(request.config.getoption("karen_sandbox", False))

    def make(*names: str, sandbox: bool = False, **settings: Any) -> KarenHost:
        sandbox = sandbox or force_sandbox
        if sandbox and (why := sandbox_unavailable()) is not None:
            pytest.skip(why)
        host = KarenHost(list(names), sandbox, **settings)
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.close()


@pytest.fixture
def karen_host(request: pytest.FixtureRequest, karen_host_factory: Callable[..., KarenHost]) -> KarenHost:
    """A host with only the plugins named by ``@pytest.mark.karen_plugins(...)``."""
    marker = request.node.get_closest_marker("karen_plugins")
    if marker is None or not marker.args:
        raise pytest.UsageError('karen_host needs @pytest.mark.karen_plugins("plugin-name", ...)')
    return karen_host_factory(*marker.args, **marker.kwargs)
