"""The pytest11 plugin's fixtures, used directly (it is active wherever karen-hooks is installed)."""

from __future__ import annotations

from typing import Any

import pytest

from karen_hooks import AccessDenied, PluginLoadError
from karen_hooks.pytest_plugin import KarenHost


@pytest.mark.karen_plugins("time-query")
def test_host_loads_only_the_named_plugins_trusted(karen_host: KarenHost, karen_user: Any) -> None:
    assert karen_host.intents() == ["time.now"]
    info = karen_host.plugin("time-query")
    assert info.trusted and not info.sandboxed
    assert karen_host.settings.memory_url == "memory://" and karen_host.settings.strict
    assert karen_host.run("time.now", {"format": "unix"}, user=karen_user(roles=["admin"])).plugin == "time-query"


@pytest.mark.karen_plugins("time-query")
class TestMarkerOnAClass:
    def test_class_marker(self, karen_host: KarenHost) -> None:
        assert karen_host.intents() == ["time.now"]


@pytest.mark.karen_plugins("time-query")
def test_render_prompt(karen_host: KarenHost) -> None:
    text = karen_host.render_prompt("time-query", {"timezone": "UTC"}, result={"time": "noon"})
    assert "It is noon (UTC)" in text


def test_user_factory(karen_user: Any) -> None:
    assert karen_user() == {"user_id": "test-user", "roles": ["user"], "tenant_id": "test-tenant"}
    assert karen_user(roles=["a", "b"], tenant=None, user_id="u") == {"user_id": "u", "roles": ["a", "b"]}


def test_factory_with_operator_settings(karen_host_factory: Any, karen_user: Any) -> None:
    host = karen_host_factory("time-query", plugins={"time-query": {"required_roles": ["admin"]}})
    with pytest.raises(AccessDenied, match=r"\['admin'\]"):
        host.run("time-query", user=karen_user())


def test_missing_plugin_is_an_error_not_a_skip(karen_host_factory: Any) -> None:
    with pytest.raises(LookupError, match=r"\['no-such-plugin'\] are not installed"):
        karen_host_factory("no-such-plugin")


def test_broken_plugin_fails_loudly(karen_host_factory: Any, tmp_path: Any) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plugin_manifest.json").write_text('{"intent": "x"}')
    (bad / "handler.py").write_text("def run(params):\n    return 1\n")
    with pytest.raises(PluginLoadError, match="plugin_api_version"):
        karen_host_factory("bad", plugin_dir=tmp_path)


@pytest.mark.karen_plugins("time-query", sandbox=True)
def test_sandboxed_host(karen_host: KarenHost, karen_user: Any) -> None:
    info = karen_host.plugin("time-query")
    assert info.sandboxed and not info.trusted
    result, _, _ = karen_host.run("time-query", {"timezone": "Asia/Tokyo"}, user=karen_user())
    assert result["time"].endswith("+09:00")
