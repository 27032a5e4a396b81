"""End to end: PluginManager -> PluginRouter -> SandboxExecutor with an old-format directory plugin.

The hostile plugin's manifest says ``"sandbox": false`` but the operator does
not trust it, so it must still run in the sandbox.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from karen_hooks import LimitExceeded, PluginError, PluginTimeout, SandboxError, load_settings

from .conftest import PLUGINS

pytest.importorskip("karen_hooks._manager")
from karen_hooks import PluginManager, PluginRouter  # noqa: E402

USER = {"user_id": "u1", "roles": ["user"], "tenant_id": "acme"}


def _manager(executor, wall: float):
    s = load_settings(environ={"KARI_PLUGIN_DIR": str(PLUGINS), "KARI_CPU_LIMIT": "1"}, load_plugins=["hostile"],
                      plugins={"hostile": {"limits": {"wall_seconds": wall}}}, remember_runs=False)
    m = PluginManager(router=PluginRouter(s, executor=executor), memory=False)
    info = m.router.get_plugin("hostile")
    assert info.sandboxed and not info.trusted
    return m


@pytest.fixture(scope="module")
def manager(executor):
    return _manager(executor, 30)


@pytest.fixture(scope="module")
def impatient(executor):
    return _manager(executor, 1)


def call(m, action: str, **params):
    return asyncio.run(m.run_plugin("hostile", {"action": action, **params}, USER))


def test_runs_in_sandbox_via_manager(manager):
    result, out, err = call(manager, "echo")
    assert result["pid"] != os.getpid() and result["env"] == {}
    assert out == "to stdout\n" and err == "to stderr\n"


@pytest.mark.parametrize(
    ("action", "params", "error", "limit"),
    [
        ("busy", {}, LimitExceeded, "cpu"),  # KARI_CPU_LIMIT=1 is the default CPU limit
        ("huge_alloc", {"mb": 4096}, LimitExceeded, "memory"),
        ("stdout_flood", {"mb": 1024}, LimitExceeded, "stdout"),
        ("segfault", {}, SandboxError, None),
        ("fail", {}, PluginError, None),
    ],
)
def test_hostile_via_manager_then_next_call(manager, action, params, error, limit):
    with pytest.raises(error) as ei:
        call(manager, action, **params)
    assert ei.value.plugin == "hostile"
    if limit:
        assert ei.value.limit == limit
    result, out, _ = call(manager, "echo")  # the host keeps serving
    assert result["params"]["action"] == "echo" and out == "to stdout\n"


def test_wall_time_from_operator_settings(impatient):
    with pytest.raises(PluginTimeout) as ei:
        call(impatient, "sleep", seconds=60)
    assert ei.value.limit == "wall_time" and "1 s" in str(ei.value)
    assert call(impatient, "echo")[0]["params"]["action"] == "echo"


def test_secrets_via_manager(manager, layers):
    os.environ["KAREN_TEST_SECRET"] = "s3cr3t"
    try:
        result, _, _ = call(manager, "secrets", host_pid=os.getpid())
    finally:
        del os.environ["KAREN_TEST_SECRET"]
    assert "s3cr3t" not in str(result)


def test_memory_over_the_protocol_is_tenant_scoped(executor):
    from karen_hooks.memory import MemoryManager
    from karen_hooks.memory._inmemory import InMemoryBackend

    s = load_settings(environ={"KARI_PLUGIN_DIR": str(PLUGINS)}, load_plugins=["hostile"], remember_runs=False)
    mem = MemoryManager(backend=InMemoryBackend(), settings=s)
    m = PluginManager(router=PluginRouter(s, executor=executor), memory=mem)
    a = asyncio.run(m.run_plugin("hostile", {"action": "memory"}, USER))[0]
    assert a["write"]["ok"], a
    assert [r["payload"] for r in a["read"]["value"]] == [{"v": "blue"}]
    assert not a["other_tenant"]["ok"]  # a tenant_id argument is refused before the bridge is called
    other = {"user_id": "u2", "roles": ["user"], "tenant_id": "globex"}
    b = asyncio.run(m.run_plugin("hostile", {"action": "memory"}, other))[0]
    # globex wrote its own record; it never sees acme's
    assert [r["payload"] for r in b["read"]["value"]] == [{"v": "blue"}]
    assert all(r.get("tenant_id", "globex") == "globex" for r in b["read"]["value"])
    assert len(mem.read({"user_id": "u1", "tenant_id": "acme"}, "fav color", limit=10)) == 1


def test_manifest_prompt_renders_in_the_sandbox(manager):
    pytest.importorskip("karen_hooks._prompts")
    text = asyncio.run(manager.render_prompt("hostile", {"action": "x"}, USER))
    assert text == "act=x user=u1"


def _from_a_deep_stack(frames: int, fn):
    """Call ``fn`` with ``frames`` Python frames already on the stack, as a web framework's middleware puts there."""
    return fn() if frames == 0 else _from_a_deep_stack(frames - 1, fn)


def test_a_reply_nested_too_deep_is_refused_where_it_comes_in(manager):
    """Depth is bounded when the host reads a sandbox's reply, not left to whichever recursive code meets it first.

    A 980-deep result used to decode fine and then raise RecursionError from the host's own json.dumps
    when the application called from 100 frames down.
    """
    with pytest.raises(SandboxError, match="more than 100 deep"):
        _from_a_deep_stack(300, lambda: call(manager, "deep_result", depth=980))
    with pytest.raises(SandboxError, match="more than 100 deep"):
        call(manager, "deep_result", depth=101)
    result, _, _ = _from_a_deep_stack(300, lambda: call(manager, "deep_result", depth=100))  # as deep as params
    depth = 0
    while isinstance(result, list):
        result, depth = result[0], depth + 1
    assert depth == 100
