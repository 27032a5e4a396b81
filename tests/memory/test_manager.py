"""MemoryManager: tenant rules, scoping, retries, write-after-run, async twin, URL selection."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karen_hooks import (
    AccessDenied,
    ConfigError,
    InvalidUserContext,
    MemoryBackendError,
    TenantError,
    hookimpl,
    hookspecs,
    load_settings,
)
from karen_hooks.memory import (
    AsyncMemoryManager,
    InMemoryBackend,
    MemoryManager,
    SQLiteBackend,
    TenantMemory,
    UnavailableMemory,
    default_memory_url,
    open_backend,
    redact_url,
    tokenize,
)
from karen_hooks.memory.testing import NASTY_QUERIES

from .conftest import make_postgres, postgres_dsn

ALICE = {"user_id": "alice", "roles": ["user"]}
BOB = {"user_id": "bob", "roles": ["user"]}


def mgr(tenant: str | None = "tenant123", backend: Any = None, **kw: Any) -> MemoryManager:
    s = kw.pop("settings", None) or load_settings(environ={})
    return MemoryManager(tenant, backend=backend or InMemoryBackend(), settings=s, retry_delay=0, **kw)


# -- the issue's example and the tenant rules -------------------------------------
def test_issue_example() -> None:
    memory = mgr()
    user_ctx = {"user_id": "u1", "roles": ["user"]}
    memory.write(user_ctx, "weather query", {"location": "NYC", "temp": "72F"})
    memory.write(user_ctx, "stock price query", {"ticker": "ACME"})
    memories = memory.read(user_ctx, "weather", limit=5)
    assert [m.payload for m in memories] == [{"location": "NYC", "temp": "72F"}]
    r = memories[0]
    assert (r.tenant_id, r.user_id, r.query) == ("tenant123", "u1", "weather query") and r.id and r.created_at


def test_tenant_from_user_ctx_and_mismatch_is_an_error() -> None:
    backend = InMemoryBackend()
    free = mgr(None, backend)
    free.write({**ALICE, "tenant_id": "t1"}, "note", 1)
    assert mgr("t1", backend).read({**ALICE, "tenant_id": "t1"}, "note")[0].payload == 1
    with pytest.raises(TenantError, match="differs"):
        mgr("t1", backend).read({**ALICE, "tenant_id": "t2"}, "note")
    with pytest.raises(TenantError, match="differs"):
        mgr("t1", backend).write({**ALICE, "tenant_id": "t2"}, "note", 2)


def test_no_tenant_is_an_error_unless_operator_default() -> None:
    backend = InMemoryBackend()
    with pytest.raises(TenantError, match="KAREN_DEFAULT_TENANT"):
        mgr(None, backend).write(ALICE, "note", 1)
    s = load_settings(environ={"KAREN_DEFAULT_TENANT": "acme"})
    mgr(None, backend, settings=s).write(ALICE, "note", 1)
    assert mgr("acme", backend).read(ALICE, "note")[0].tenant_id == "acme"
    assert mgr("other", backend).read(ALICE, "note") == []


@pytest.mark.parametrize("bad", ["", "  ", "t\x00", "x" * 300, 5])
def test_bad_tenant_ids_are_refused(bad: Any) -> None:
    with pytest.raises(TenantError):
        mgr(None).write({**ALICE, "tenant_id": bad} if isinstance(bad, str) else ALICE, "q", 1)


def test_invalid_user_ctx() -> None:
    with pytest.raises(InvalidUserContext):
        mgr().write({"roles": ["user"]}, "q", 1)
    with pytest.raises(InvalidUserContext):
        mgr().read("alice", "q")


def test_reads_are_the_callers_own_unless_all_users() -> None:
    m = mgr()
    m.write(ALICE, "shared topic", "a")
    m.write(BOB, "shared topic", "b")
    assert [r.payload for r in m.read(ALICE, "topic")] == ["a"]
    assert {r.payload for r in m.read(ALICE, "topic", all_users=True)} == {"a", "b"}


def test_delete_only_own_and_list_by_user() -> None:
    m = mgr()
    a = m.write(ALICE, "thing one", 1)
    m.write(ALICE, "thing two", 2)
    b = m.write(BOB, "thing three", 3)
    assert m.delete(BOB, a.id) is False
    assert m.delete(ALICE, a.id) is True
    assert [r.payload for r in m.list_by_user(ALICE)] == [2]
    with pytest.raises(AccessDenied):
        m.list_by_user(ALICE, user_id="bob")
    assert [r.id for r in m.list_by_user({"user_id": "root", "roles": ["admin"]}, user_id="bob")] == [b.id]


def test_ttl_and_payload_validation() -> None:
    m = mgr()
    m.write(ALICE, "fleeting", 1, ttl_seconds=0.05)
    assert len(m.read(ALICE, "fleeting")) == 1
    time.sleep(0.08)
    assert m.read(ALICE, "fleeting") == [] and m.list_by_user(ALICE) == []
    with pytest.raises(ValueError, match="ttl_seconds"):
        m.write(ALICE, "x", 1, ttl_seconds=0)
    with pytest.raises(ValueError, match="JSON"):
        m.write(ALICE, "x", {1, 2})
    # an infinite TTL was stored, then broke every read and list of the record (not JSON); 10**400 was an
    # OverflowError; True was one second
    for bad in (float("inf"), float("nan"), 10**400, True, "soon", 1e300):
        with pytest.raises(ValueError, match="ttl_seconds must be a number of seconds"):
            m.write(ALICE, "forever", 1, ttl_seconds=bad)
    assert m.read(ALICE, "forever") == []  # nothing was stored
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nests too deeply"):
        m.write(ALICE, "x", deep)


def test_write_many() -> None:
    m = mgr()
    recs = m.write_many(ALICE, [("alpha one", 1), ("alpha two", 2)])
    assert {r.id for r in m.read(ALICE, "alpha")} == {r.id for r in recs}


# -- scoped handle (ctx.memory) ------------------------------------------------------
def test_scoped_handle_is_json_and_tenant_bound() -> None:
    backend = InMemoryBackend()
    h = mgr(None, backend).scoped({**ALICE, "tenant_id": "t1"}, plugin="notes")
    assert isinstance(h, TenantMemory)
    written = h.write("buy milk", {"item": "milk"}, ttl_seconds=60)
    assert written["plugin"] == "notes" and written["tenant_id"] == "t1"
    assert [r["payload"] for r in h.read("milk")] == [{"item": "milk"}]
    other = mgr(None, backend).scoped({**ALICE, "tenant_id": "t2"})
    assert other.read("milk") == [] and other.list() == [] and other.delete(written["id"]) is False
    assert [r["id"] for r in h.list()] == [written["id"]]
    assert h.delete(written["id"]) is True


def test_handle_without_tenant_raises_on_use() -> None:
    h = mgr(None).handle_for(ALICE)
    assert isinstance(h, UnavailableMemory)
    with pytest.raises(TenantError):
        h.read("x")


# -- failures: bounded retries, visible, counted, logged without secrets -------------------
class Flaky(InMemoryBackend):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def write_many(self, tenant_id: str, records: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise MemoryBackendError("disk on fire")
        super().write_many(tenant_id, records)


def test_writes_are_retried_a_bounded_number_of_times() -> None:
    flaky = Flaky(failures=2)
    m = mgr(backend=flaky, write_attempts=3)
    events: list[str] = []
    m.add_listener(lambda event, labels: events.append(event))
    m.write(ALICE, "eventually", 1)
    assert flaky.calls == 3 and m.stats.get("write_retry") == 2 and m.stats.get("write_ok") == 1
    assert events == ["write_retry", "write_retry", "write_ok"]
    broken = Flaky(failures=10**9)
    m2 = mgr(backend=broken, write_attempts=3)
    with pytest.raises(MemoryBackendError, match="after 3 attempt"):
        m2.write(ALICE, "never", 1)
    assert broken.calls == 3 and m2.stats.get("write_failed") == 1


def test_remember_run_failure_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    m = mgr(backend=Flaky(failures=10**9), write_attempts=2)
    with caplog.at_level(logging.DEBUG, logger="karen_hooks"):
        status = m.remember_run(ALICE, "weather", "weather.now", {"api_token": "sk-SECRET123"}, {"t": 1})
    assert status.ok is False and status.attempts == 2 and "disk on fire" in (status.error or "")
    assert m.stats.get("write_failed") == 1
    assert any(r.levelno == logging.WARNING and "weather" in r.getMessage() for r in caplog.records)
    assert "sk-SECRET123" not in caplog.text


def test_remember_run_stores_param_names_not_values() -> None:
    m = mgr()
    status = m.remember_run(ALICE, "weather", "weather.now", {"city": "Oslo", "api_token": "sk-1"}, {"temp": "5C"})
    assert status.ok and status.attempts == 1
    [rec] = m.read(ALICE, "weather")
    assert rec.plugin == "weather" and rec.payload["intent"] == "weather.now"
    assert rec.payload["param_names"] == ["api_token", "city"] and "params" not in rec.payload
    assert "sk-1" not in str(rec.to_json()) and "5C" in rec.payload["result_summary"]


def test_remember_run_params_opt_in_redacts_secrets() -> None:
    m = mgr(remember_params=True)
    m.remember_run(ALICE, "weather", "weather.now", {"city": "Oslo", "api_token": "sk-1", "Password": "p"}, "ok")
    [rec] = m.read(ALICE, "weather")
    assert rec.payload["params"] == {"city": "Oslo", "api_token": "***", "Password": "***"}


def test_remember_run_opt_outs() -> None:
    off = load_settings(environ={"KAREN_REMEMBER_RUNS": "0"})
    assert mgr(settings=off).remember_run(ALICE, "p", "i", {}, 1).skipped == "remember_runs is off"
    per_plugin = load_settings(environ={}, plugins={"p": {"remember": False}})
    m = mgr(settings=per_plugin)
    assert m.remember_run(ALICE, "p", "i", {}, 1).skipped
    assert m.remember_run(ALICE, "q", "i", {}, 1).ok
    no_tenant = mgr(None).remember_run(ALICE, "p", "i", {}, 1)
    assert not no_tenant.ok and "no tenant" in (no_tenant.error or "")
    bad_ctx = mgr().remember_run({"roles": []}, "p", "i", {}, 1)
    assert not bad_ctx.ok and "InvalidUserContext" in (bad_ctx.error or "")
    unserialisable = mgr().remember_run(ALICE, "p", "i", {}, {1, 2})  # summarised with str(), still stored
    assert unserialisable.ok


# -- async twin --------------------------------------------------------------------
def test_async_memory_manager() -> None:
    async def go() -> list[Any]:
        am = AsyncMemoryManager("t", backend=InMemoryBackend(), settings=load_settings(environ={}))
        r = await am.write(ALICE, "async note", {"n": 1})
        await am.write_many(ALICE, [("async other", 2)])
        found = await am.read(ALICE, "note")
        listed = await am.list_by_user(ALICE)
        assert await am.delete(ALICE, r.id)
        assert (await am.remember_run(ALICE, "p", "i", {}, "x")).ok
        await am.close()
        return [found[0].payload, len(listed)]

    assert asyncio.run(go()) == [{"n": 1}, 2]


# -- tokenizer and URL selection ---------------------------------------------------------
def test_tokenize_keeps_only_words() -> None:
    assert tokenize('weather* OR "NYC" -- ; DROP TABLE x; NEAR(a b)') == [
        "weather", "or", "nyc", "drop", "table", "x", "near", "a", "b"]
    assert tokenize("") == [] and tokenize("foo_bar") == ["foo", "bar"]
    assert len(tokenize(" ".join(f"w{i}" for i in range(100)))) == 16


def test_open_backend_builtin_schemes(tmp_path: Path) -> None:
    assert isinstance(open_backend("memory://"), InMemoryBackend)
    b = open_backend(f"sqlite:///{tmp_path}/x/m.db")
    assert isinstance(b, SQLiteBackend) and b.path == tmp_path / "x" / "m.db"
    b.close()
    assert default_memory_url().startswith("sqlite:///") and "karen-hooks" in default_memory_url()


def test_unknown_scheme_names_it_and_hides_the_password() -> None:
    with pytest.raises(ConfigError, match="redis://") as info:
        open_backend("redis://user:hunter2@host/0")
    assert "hunter2" not in str(info.value)
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_backend_from_a_trusted_plugin_hook() -> None:
    made: list[str] = []

    class RedisPlugin:
        @hookimpl
        def karen_memory_backend(self, url: str) -> Any:
            if url.startswith("redis://"):
                made.append(url)
                return InMemoryBackend()
            return None

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(RedisPlugin())
    m = MemoryManager("t", url="redis://localhost/0", hook=[pm], settings=load_settings(environ={}))
    m.write(ALICE, "from a plugin backend", 1)
    assert made == ["redis://localhost/0"] and len(m.read(ALICE, "plugin")) == 1

    class Bad:
        @hookimpl
        def karen_memory_backend(self, url: str) -> Any:
            return object()

    pm2 = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm2.add_hookspecs(hookspecs)
    pm2.register(Bad())
    with pytest.raises(ConfigError, match="lacks MemoryBackend"):
        open_backend("weird://x", hook=pm2)


def test_memory_url_from_settings(tmp_path: Path) -> None:
    s = load_settings(environ={"KAREN_MEMORY_URL": f"sqlite:///{tmp_path}/env.db"})
    with MemoryManager("t", settings=s) as m:
        assert isinstance(m.backend, SQLiteBackend) and m.backend.path == tmp_path / "env.db"


# -- isolation through the manager, property-based --------------------------------------------
_tenant = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=10).filter(str.strip)
_text = st.one_of(st.sampled_from(NASTY_QUERIES), st.text(max_size=30))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_manager_isolation_property(kind: str, tmp_path: Path) -> None:
    backend: Any = InMemoryBackend() if kind == "memory" else SQLiteBackend(tmp_path / "p.db")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(t1=_tenant, t2=_tenant, user=_tenant, texts=st.lists(_text, min_size=1, max_size=5), q=_text)
    def check(t1: str, t2: str, user: str, texts: list[str], q: str) -> None:
        salt = uuid.uuid4().hex[:6]
        a, b = salt + t1, salt + "-" + t2
        ma, mb = mgr(a, backend), mgr(b, backend)
        for text in texts:
            ma.write({"user_id": user}, text, {"t": a})
            mb.write({"user_id": user}, text, {"t": b})
        for m, t in ((ma, a), (mb, b)):
            for r in m.read({"user_id": user}, q, limit=20, all_users=True) + m.list_by_user({"user_id": user}):
                assert r.tenant_id == t and r.payload == {"t": t}

    check()
    backend.close()


# -- several processes on one store --------------------------------------------------------------
def _proc_writer(url: str, table: str | None, n: int, count: int) -> None:
    from karen_hooks import load_settings as ls
    from karen_hooks.memory import MemoryManager, PostgresBackend, SQLiteBackend

    backend = PostgresBackend(url, table=table) if table else SQLiteBackend(url)
    m = MemoryManager("shared", backend=backend, settings=ls(environ={}))
    for i in range(count):
        m.write({"user_id": f"proc{n}"}, f"process {n} write {i}", {"n": n, "i": i})
    m.close()


def _run_processes(url: str, table: str | None, reader: Any) -> None:
    procs, count = 4, 40
    ctx = multiprocessing.get_context("spawn")
    ps = [ctx.Process(target=_proc_writer, args=(url, table, n, count)) for n in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    m = mgr("shared", reader)
    for n in range(procs):
        got = m.list_by_user({"user_id": f"proc{n}"}, limit=1000)
        assert sorted(r.payload["i"] for r in got) == list(range(count))


def test_many_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    reader = SQLiteBackend(path)
    _run_processes(path, None, reader)
    reader.close()


def test_many_processes_write_one_postgres_table() -> None:
    reader = make_postgres()
    try:
        _run_processes(postgres_dsn(), reader.table, reader)
    finally:
        reader.drop()
        reader.close()


def test_ids_that_are_not_text_are_refused_by_every_backend(tmp_path: Path) -> None:
    """A lone surrogate (JSON "\\udcff", a non-UTF-8 argv) raised a raw UnicodeEncodeError from SQLite."""
    from karen_hooks.memory import MemoryManager

    alice = {**ALICE, "tenant_id": "acme"}
    for url in (f"sqlite:///{tmp_path / 'm.sqlite3'}", "memory://"):
        m = MemoryManager(url=url, settings=load_settings(environ={}))
        m.write(alice, "hello", 1)
        for ctx in ({**alice, "user_id": "u\udcff"}, {**alice, "tenant_id": "t\udcff"}):
            with pytest.raises(TenantError, match="of text"):
                m.read(ctx, "hello")
            with pytest.raises(TenantError, match="of text"):
                m.list_by_user(ctx)
            with pytest.raises(TenantError, match="of text"):
                m.write(ctx, "q", 1)
        assert m.delete(alice, "x\udcff") is False
        assert [r.payload for r in m.read(alice, "hello")] == [1]


def test_memory_backend_stores_what_a_database_would() -> None:
    """memory:// kept the caller's own payload object: changing it after the write changed the record."""
    m = mgr()
    payload = {"v": 1}
    m.write(ALICE, "kept", payload)
    payload["v"] = 2
    payload["bad"] = {1, 2}  # not even JSON any more
    assert [r.payload for r in m.read(ALICE, "kept")] == [{"v": 1}]
    with pytest.raises(MemoryBackendError):  # as SQLite and PostgreSQL refuse it
        m.write(ALICE, "q", {"a": "\ud800"})
