"""PluginManager + memory: ctx.memory for in-host and sandboxed plugins, write-after-run, visible failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from karen_hooks import MemoryBackendError, PluginError, TenantError, hookimpl, load_settings
from karen_hooks._executor import CallOutcome
from karen_hooks._manager import PluginManager
from karen_hooks._models import Intent, PluginInfo, PluginSpec
from karen_hooks._router import PluginRouter
from karen_hooks.memory import InMemoryBackend, MemoryManager, TenantMemory

TEXT = {"type": "object", "properties": {"text": {"type": "string"}, "api_token": {"type": "string"}}}


class Notes:
    @hookimpl
    def karen_intent(self) -> Any:
        return [{"name": "notes.add", "params": TEXT}, {"name": "notes.find", "params": TEXT}]

    @hookimpl
    def karen_run(self, intent: str, params: Any, ctx: Any) -> Any:
        if intent == "notes.add":
            return ctx.memory.write(params["text"], {"text": params["text"]})["id"]
        return [r["payload"]["text"] for r in ctx.memory.read(params["text"])]


def host(memory: Any = None, **settings: Any) -> tuple[PluginManager, MemoryManager | None]:
    s = load_settings(environ={}, load_plugins=[], plugin_dir=None, **settings)
    router = PluginRouter(s, executor=None)
    router.register_plugin(Notes(), "notes")
    if memory is None:
        memory = MemoryManager(backend=InMemoryBackend(), settings=s, retry_delay=0)
    return PluginManager(router=router, memory=memory), (memory or None)


def run(pm: PluginManager, intent: str, text: str, user: dict[str, Any]) -> Any:
    return asyncio.run(pm.run_plugin("notes", {"text": text, "api_token": "sk-SECRET"}, user, intent=intent))


A = {"user_id": "u1", "roles": ["user"], "tenant_id": "tenant-a"}
B = {"user_id": "u1", "roles": ["user"], "tenant_id": "tenant-b"}


def test_ctx_memory_is_scoped_to_the_callers_tenant() -> None:
    pm, _ = host()
    run(pm, "notes.add", "buy oat milk", A)
    assert run(pm, "notes.find", "milk", A).result == ["buy oat milk"]
    assert run(pm, "notes.find", "milk", B).result == []


def test_successful_runs_are_remembered_without_param_values() -> None:
    pm, memory = host()
    res = run(pm, "notes.add", "call the bank", A)
    assert res.warnings == []
    assert memory is not None
    runs = [r for r in memory.list_by_user(A) if isinstance(r.payload, dict) and r.payload.get("kind") == "run"]
    assert [(r.plugin, r.payload["intent"], r.payload["param_names"]) for r in runs] == [
        ("notes", "notes.add", ["api_token", "text"])]
    assert "sk-SECRET" not in str([r.to_json() for r in memory.list_by_user(A)])
    assert memory.list_by_user(B) == []


def test_opt_outs() -> None:
    pm, memory = host(remember_runs=False)
    run(pm, "notes.add", "x", A)
    assert memory is not None and [r.payload for r in memory.list_by_user(A)] == [{"text": "x"}]
    pm, memory = host(plugins={"notes": {"remember": False}})
    run(pm, "notes.add", "y", A)
    assert memory is not None and [r.payload for r in memory.list_by_user(A)] == [{"text": "y"}]


class Broken(InMemoryBackend):
    def write_many(self, tenant_id: str, records: Any) -> None:
        raise MemoryBackendError("database unreachable")


def test_memory_failure_keeps_the_result_and_is_visible(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(environ={})
    memory = MemoryManager(backend=Broken(), settings=s, retry_delay=0)
    pm, _ = host(memory)
    res = run(pm, "notes.find", "anything", A)
    assert res.result == [] and len(res.warnings) == 1 and "database unreachable" in res.warnings[0]
    assert memory.stats.get("write_failed") == 1 and memory.stats.get("write_retry") == 2
    assert "sk-SECRET" not in caplog.text


def test_no_tenant_is_reported_not_leaked() -> None:
    pm, memory = host()
    no_tenant = {"user_id": "anonymous", "roles": ["user"]}
    with pytest.raises(TenantError):
        run(pm, "notes.add", "leak me", no_tenant)
    assert memory is not None and memory.stats.get("write_ok") == 0
    assert memory.backend._tenants == {}  # type: ignore[attr-defined]  # nothing stored under any tenant


def test_memory_disabled() -> None:
    pm, _ = host(memory=False)
    with pytest.raises(PluginError, match="NoneType"):
        run(pm, "notes.add", "x", A)  # ctx.memory is None


class FakeExecutor:
    def __init__(self) -> None:
        self.memory: Any = None

    def describe(self, *a: Any) -> dict[str, Any]:  # pragma: no cover - not used
        return {"intents": []}

    async def call(self, spec: Any, hook: str, kwargs: dict[str, Any], settings: Any, limits: Any,
                   memory: Any = None) -> CallOutcome:
        self.memory = memory
        memory.write("from the sandbox", {"via": "bridge"})
        return CallOutcome(result={"ok": True})

    def close(self) -> None:
        pass


def test_sandboxed_plugins_get_a_tenant_bound_bridge() -> None:
    s = load_settings(environ={}, load_plugins=[], plugin_dir=None)
    fake = FakeExecutor()
    router = PluginRouter(s, executor=fake)
    spec = PluginSpec(name="boxed", kind="entry_point", target="boxed")
    router._add(PluginInfo(name="boxed", spec=spec, intents=[Intent(name="boxed.do")], trusted=False,
                           sandboxed=True), None)
    memory = MemoryManager(backend=InMemoryBackend(), settings=s)
    pm = PluginManager(router=router, memory=memory)
    res = asyncio.run(pm.run_plugin("boxed", {}, A))
    assert res.result == {"ok": True} and res.warnings == []
    assert isinstance(fake.memory, TenantMemory) and fake.memory.tenant_id == "tenant-a"
    assert [r.payload for r in memory.read(A, "sandbox")] == [{"via": "bridge"}]
    assert memory.read(B, "sandbox") == []


def test_operator_setting_stores_param_values_redacted() -> None:
    s = load_settings(environ={"KAREN_REMEMBER_PARAMS": "yes"}, load_plugins=[], plugin_dir=None)
    memory = MemoryManager(backend=InMemoryBackend(), settings=s)
    assert memory.remember_params is True
    status = memory.remember_run(A, "p", "p.do", {"city": "Paris", "api_token": "s3cret"}, {"ok": 1})
    assert status.ok
    [record] = memory.read(A, "p.do")
    assert record.payload["params"] == {"city": "Paris", "api_token": "***"}
    off = MemoryManager(backend=InMemoryBackend(), settings=load_settings(environ={}))
    off.remember_run(A, "p", "p.do", {"city": "Paris"}, {"ok": 1})
    assert "params" not in off.read(A, "p.do")[0].payload
