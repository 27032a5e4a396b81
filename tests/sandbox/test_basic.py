"""The sandbox runs plugins correctly: results, output, env, ctx, hooks, errors, modes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from karen_hooks import InvalidResult, Limits, PluginError, PluginSettings, SandboxError
from karen_hooks.sandbox import SandboxExecutor

from .conftest import EP, HOST_PID, PLUGINS, run, still_serves


def test_result_output_env_and_identity(executor, layers):
    os.environ["KAREN_TEST_HOST_SECRET"] = "hunter2"
    try:
        out = run(executor, "echo", settings=PluginSettings(env={"GIVEN": "yes"}), x=1)
    finally:
        del os.environ["KAREN_TEST_HOST_SECRET"]
    r = out.result
    assert r["params"] == {"action": "echo", "x": 1}
    assert out.stdout == "to stdout\n" and out.stderr == "to stderr\n"
    assert r["env"] == {"GIVEN": "yes"}  # only what the operator configured
    assert r["user"] == "u1" and r["tenant"] == "t1"
    assert r["pid"] != HOST_PID and r["sid"] == r["pid"]  # fresh session
    if layers["uid"].active:
        assert r["uid"] != 0 and r["euid"] != 0
    workdir = r["cwd"]
    assert workdir.startswith(executor._base)
    for _ in range(200):  # removed once the call is cleaned up (right after it returns)
        if not os.path.exists(workdir):
            break
        threading.Event().wait(0.01)
    assert not os.path.exists(workdir)


def test_plugin_exception_is_plugin_error_with_traceback_and_stderr(executor):
    with pytest.raises(PluginError) as ei:
        run(executor, "fail")
    e = ei.value
    assert type(e) is PluginError and e.plugin == "hostile"
    assert "ValueError: boom from plugin" in str(e)
    assert "act_fail" in e.plugin_traceback
    assert "about to fail" in e.stderr
    still_serves(executor)


def test_non_json_result_is_invalid_result(executor):
    with pytest.raises(InvalidResult):
        run(executor, "not_json")
    still_serves(executor)


def test_async_run(executor):
    assert run(executor, "async").result == {"async": True}


def test_describe_entry_point_in_sandbox_and_cached(executor):
    from karen_hooks import PluginSpec

    spec = PluginSpec(name="hostile-ep", kind="entry_point", target="hostile_ep", code_paths=EP.code_paths,
                      distribution="hostile-ep", version="1.0")
    got = executor.describe(spec, PluginSettings(), Limits())
    names = [i["name"] for i in got["intents"]]
    assert names == ["ep.greet", "ep.env"]
    greet = got["intents"][0]
    assert greet["params"]["properties"]["name"]["type"] == "string"  # the pydantic model as JSON Schema
    assert "hostile_ep" not in __import__("sys").modules  # never imported in the host
    assert executor.describe(spec, PluginSettings(), Limits()) == got
    assert (spec.distribution, spec.version) in executor._describe_cache


def test_entry_point_run_gets_pydantic_model_instance(executor):
    kwargs = {"intent": "ep.greet", "params": {"name": "ann", "times": 2}, "ctx": {
        "user_id": "u", "tenant_id": "tt", "roles": [], "intent": "ep.greet", "plugin": "hostile-ep"}}
    out = asyncio.run(executor.call(EP, "karen_run", kwargs, PluginSettings(), Limits()))
    assert out.result == {"type": "Greet", "text": "hi ann hi ann", "tenant": "tt"}
    assert "imported hostile_ep at top level" in out.stdout  # module import ran in the sandbox


def test_ui_component_runs_in_sandbox(executor):
    kwargs = {"intent": "ep.greet", "result": {"a": 1}, "ctx": {
        "user_id": "u", "tenant_id": "tt", "roles": [], "intent": "ep.greet", "plugin": "hostile-ep"}}
    out = asyncio.run(executor.call(EP, "karen_ui_component", kwargs, PluginSettings(), Limits()))
    assert out.result == {"type": "card", "title": "{'a': 1}"}


def test_render_prompt_renders_inside_sandbox(executor):
    pytest.importorskip("karen_hooks._prompts")
    ctx = {"user_id": "u", "tenant_id": "tt", "roles": [], "intent": "ep.greet", "plugin": "hostile-ep"}
    kwargs = {"intent": "ep.greet", "params": {}, "ctx": ctx, "variables": {"name": "Ann"}}
    out = asyncio.run(executor.call(EP, "karen_render_prompt", kwargs, PluginSettings(), Limits()))
    assert out.result == "Hello Ann!"
    # a directory plugin's manifest template is rendered in the sandbox too
    from .conftest import HOSTILE

    kwargs = {"intent": "x", "params": {}, "ctx": ctx, "variables": {"n": 3}, "template": "n={{ n }}"}
    assert asyncio.run(executor.call(HOSTILE, "karen_render_prompt", kwargs, PluginSettings(), Limits())).result == "n=3"


def test_render_prompt_bomb_is_contained(executor):
    pytest.importorskip("karen_hooks._prompts")
    ctx = {"user_id": "u", "tenant_id": "tt", "roles": [], "intent": "ep.bomb", "plugin": "hostile-ep"}
    kwargs = {"intent": "ep.bomb", "params": {}, "ctx": ctx, "variables": {}}
    with pytest.raises(PluginError) as ei:  # LimitExceeded(memory) or the renderer's own cap
        asyncio.run(executor.call(EP, "karen_render_prompt", kwargs, PluginSettings(), Limits(memory_mb=256)))
    assert ei.value.plugin == "hostile-ep"
    still_serves(executor)


def test_memory_rpc_goes_through_the_host_bridge(executor):
    calls = []

    class Bridge:
        def write(self, query, payload, ttl_seconds=None):
            calls.append(("write", query, payload))
            return {"id": "r1"}

        def read(self, query, limit=5):
            calls.append(("read", query, limit))
            return [{"query": query, "payload": {"v": "blue"}}]

        def purge_everything(self):  # pragma: no cover - must never be reachable
            calls.append(("purge",))

    r = run(executor, "memory", memory=Bridge()).result
    assert r["write"] == {"ok": True, "value": {"id": "r1"}}
    assert r["read"] == {"ok": True, "value": [{"query": "fav color", "payload": {"v": "blue"}}]}
    assert not r["other_tenant"]["ok"] and "tenant_id" in r["other_tenant"]["error"]
    assert not r["bad_method"]["ok"] and "not allowed" in r["bad_method"]["error"]
    assert not r["not_json"]["ok"] and "JSON" in r["not_json"]["error"]
    assert r["attrs"] == []  # the proxy holds no credentials or handles
    assert calls == [("write", "fav color", {"v": "blue"}), ("read", "fav color", 3)]
    r = run(executor, "memory").result  # no bridge given: every call fails cleanly
    assert not r["write"]["ok"]


def test_warm_mode_reuses_and_recycles(executor):
    st = PluginSettings(mode="warm", warm_max_calls=3)
    counts = [run(executor, "counter", settings=st).result for _ in range(5)]
    assert counts == [1, 2, 3, 1, 2]  # recycled after 3 calls
    with pytest.raises(PluginError):
        run(executor, "fail", settings=st)
    assert run(executor, "counter", settings=st).result == 1  # recycled after an error
    out = run(executor, "echo", settings=st)
    assert out.stdout == "to stdout\n" and out.stderr == "to stderr\n"  # output is per call


def test_warm_mode_daemon_does_not_outlive_its_call(executor, layers):
    from .conftest import alive, need

    need(layers, "cgroup_pids")
    st = PluginSettings(mode="warm", warm_max_calls=50)
    daemon = run(executor, "daemon", settings=st).result["daemon"]
    for _ in range(200):
        if not alive(daemon):
            break
        threading.Event().wait(0.01)
    assert not alive(daemon)
    assert run(executor, "counter", settings=st).result == 2  # the worker itself survived


def _cpu_ticks(pid: int) -> int:
    from karen_hooks.sandbox._layers import proc_stat

    st = proc_stat(pid)
    assert st is not None, pid
    return int(st[11]) + int(st[12])  # utime + stime of every thread


def _children_of(pid: int) -> list[int]:
    from karen_hooks.sandbox._layers import proc_stat

    return [int(e) for e in os.listdir("/proc") if e.isdigit() and (st := proc_stat(e)) is not None
            and st[1] == str(pid) and st[0] != "Z"]  # (a killed child stays a zombie until the worker resumes)


def test_a_warm_worker_runs_nothing_between_calls(executor):
    """Threads and children a warm call leaves behind used to keep burning CPU (and forking) with no call active."""
    st = PluginSettings(mode="warm", warm_max_calls=41)  # (a worker of its own: the executor is shared)
    first = run(executor, "background_burner", settings=st).result
    worker = first["pid"]
    time.sleep(0.2)
    before = _cpu_ticks(worker)
    time.sleep(1.0)
    assert _cpu_ticks(worker) == before  # stopped: not one tick in a second
    assert _children_of(worker) == []  # the forked burners were killed
    assert run(executor, "counter", settings=st).result == first["calls"] + 1  # the same worker, resumed


def test_a_warm_worker_woken_by_its_own_child_is_not_kept(executor):
    """A child sending SIGCONT between the stop and its own death would leave the worker running."""
    st = PluginSettings(mode="warm", warm_max_calls=43)  # (a worker of its own: the executor is shared)
    first = run(executor, "wake_on_pause", settings=st).result
    time.sleep(1.0)  # the pause gives up waiting for a stop after 0.5 s, and retires the worker
    from karen_hooks.sandbox._layers import proc_stat

    stat = proc_stat(first["pid"])
    assert stat is None or stat[0] in ("T", "t", "Z"), stat  # stopped, or retired (killed)
    assert _children_of(first["pid"]) == []
    assert run(executor, "counter", settings=st).result >= 1  # served, by this worker or a fresh one


def test_fork_mode_is_fresh_each_call(executor):
    assert [run(executor, "counter").result for _ in range(3)] == [1, 1, 1]


def test_concurrent_asyncio_callers_and_threads(executor):
    async def many():
        return await asyncio.gather(*(executor.call(
            __import__("tests.sandbox.conftest", fromlist=["HOSTILE"]).HOSTILE, "karen_run",
            {"intent": "x", "params": {"action": "echo", "i": i}, "ctx": {"user_id": "u", "tenant_id": "t",
                                                                         "roles": [], "intent": "x", "plugin": "h"}},
            PluginSettings(), Limits()) for i in range(6)))

    outs = asyncio.run(many())
    assert [o.result["params"]["i"] for o in outs] == list(range(6))
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(run(executor, "echo", i=i).result["params"]["i"]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]


def test_closed_executor_refuses():
    ex = SandboxExecutor(slots=1)
    ex.close()
    with pytest.raises(SandboxError):
        run(ex, "echo")


def test_plugin_dir_is_readable_but_not_writable(executor):
    r = run(executor, "escape_write", target=str(PLUGINS / "hostile" / "pwned.txt")).result
    assert not (PLUGINS / "hostile" / "pwned.txt").exists()
    assert r["inside"]["ok"]


def test_more_warm_plugins_than_slots_evicts_idle_workers():
    from karen_hooks import PluginSpec

    from .conftest import HOSTILE

    ex = SandboxExecutor(slots=2)
    try:
        st = PluginSettings(mode="warm")
        for i in range(4):  # 4 distinct warm plugins, 2 slots: each new one evicts an idle worker
            spec = PluginSpec(name=f"w{i}", kind="directory", target="handler.py", path=HOSTILE.path,
                              code_paths=HOSTILE.code_paths)
            assert run(ex, "counter", settings=st, spec=spec, limits=Limits(wall_seconds=5)).result == 1
        assert len(ex._warm) <= 2
    finally:
        ex.close()


def test_non_json_arguments_never_reach_the_sandbox(executor):
    from .conftest import HOSTILE

    for mode in ("fork", "warm"):
        with pytest.raises(SandboxError, match="not JSON data"):
            executor.call_sync(HOSTILE, "karen_run", {"intent": "x", "params": {"o": object()}, "ctx": None},
                               PluginSettings(mode=mode), Limits())
    still_serves(executor)
