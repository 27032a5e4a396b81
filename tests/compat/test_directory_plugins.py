"""Old directory plugins (plugin_manifest.json + handler.py + prompt.txt) run unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from karen_hooks import AccessDenied, PluginManager, PluginRouter, load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


def _manager(**settings: object) -> PluginManager:
    s = load_settings(environ={}, plugin_dir=str(EXAMPLES), load_plugins=["hello"], memory_url="memory://", **settings)
    return PluginManager(router=PluginRouter(s))


def test_example_runs_untrusted_in_the_sandbox() -> None:
    manager = _manager()
    info = manager.router.get_plugin("hello")
    assert info.category == "examples" and info.sandboxed and not info.trusted
    assert info.prompt and "{{ result.message }}" in info.prompt
    user = {"user_id": "u1", "roles": ["user"], "tenant_id": "t1"}
    try:
        result, stdout, stderr = asyncio.run(manager.run_plugin("hello", {"name": "Ann"}, user))
        assert result == {"message": "Hello, Ann!"} and stdout == "greeting Ann\n"
        with pytest.raises(AccessDenied):
            asyncio.run(manager.run_plugin("greet", {}, {"user_id": "u2", "roles": ["guest"]}))
    finally:
        if manager.router._executor is not None:
            manager.router._executor.close()


def test_trust_alone_keeps_a_sandbox_true_plugin_sandboxed() -> None:
    info = _manager(trusted_plugins=["hello"]).router.get_plugin("hello")
    assert info.trusted and info.sandboxed  # its manifest says "sandbox": true
