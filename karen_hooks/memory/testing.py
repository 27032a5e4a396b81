"""The conformance suite every memory backend passes, for built-in and third-party backends alike.

Run it against your backend by subclassing :class:`MemoryBackendConformance`
in a test module and overriding the ``backend`` fixture (a fresh, empty
backend per test; close it afterwards)::

    # tests/test_my_backend.py
    import pytest
    from karen_hooks.memory.testing import MemoryBackendConformance
    from my_package import RedisMemoryBackend

    class TestRedisMemory(MemoryBackendConformance):
        @pytest.fixture
        def backend(self):
            b = RedisMemoryBackend("redis://localhost/15")
            yield b
            b.close()

then ``pytest tests/test_my_backend.py``. Needs ``pytest`` and
``hypothesis`` (``pip install 'karen-hooks[test]'``). Set
``concurrency_workers`` / ``property_examples`` on the subclass to tune cost.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .._errors import MemoryBackendError, TenantError
from ._backend import MemoryBackend
from ._records import MemoryRecord

#: Query texts full of SQL and full-text syntax; none may raise or leak.
NASTY_QUERIES = [
    "", " ", '"', "'", '""', "''", "*", "weather*", "OR", "AND", "NOT", "NEAR", "NEAR(a b, 2)", "a OR b",
    "a AND NOT b", "-", "--", "-- comment", "; DROP TABLE memories; --", "'; DROP TABLE memories; --",
    "') OR 1=1 --", "query : x", "tenant_key : x", "{query tenant_key}: x", "^start", "a:b", "(", ")", "((a)",
    "\\", "%", "_", "!", "&", "|", "<->", "a <-> b", "a & !b", ":*", "x:*", "'x':*", "\x00", "é", "日本語",
    "emoji 🎉", "a" * 500, " ".join(["word"] * 100),
]

_ids = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
_query_text = st.one_of(
    st.sampled_from(NASTY_QUERIES),
    st.text(max_size=40),
    st.lists(st.sampled_from(["alpha", "beta", "OR", "*", '"', "NEAR", "--", ";", "DROP", "'", "AND"]), max_size=6).map(
        " ".join
    ),
)


def rec(tenant: str, user: str, query: str, payload: Any = None, **kw: Any) -> MemoryRecord:
    return MemoryRecord.create(tenant, user, query, {"q": query} if payload is None else payload, **kw)


class MemoryBackendConformance:
    """Tests of the :class:`MemoryBackend` contract. Override the ``backend`` fixture."""

    concurrency_workers = 8
    concurrency_writes = 25
    property_examples = 40

    @pytest.fixture
    def backend(self) -> Iterator[MemoryBackend]:
        raise NotImplementedError("override the `backend` fixture to yield a fresh backend")

    @pytest.fixture
    def tenant(self) -> str:
        return "tenant-" + uuid.uuid4().hex[:8]

    # -- basics -----------------------------------------------------------------
    def test_write_then_read_round_trips_every_field(self, backend: MemoryBackend, tenant: str) -> None:
        r = rec(tenant, "u1", "weather query", {"location": "NYC", "temp": "72F", "n": [1, 2.5, None, True]},
                plugin="weather", ttl_seconds=3600)
        backend.write(tenant, r)
        got = backend.read(tenant, "weather", user_id="u1", now=r.created_at)
        assert got == [r]

    def test_write_many_and_limit_is_applied(self, backend: MemoryBackend, tenant: str) -> None:
        backend.write_many(tenant, [rec(tenant, "u1", f"note number {i}", now=1000.0 + i) for i in range(12)])
        assert len(backend.read(tenant, "note", limit=5, now=2000.0)) == 5
        assert len(backend.read(tenant, "note", limit=50, now=2000.0)) == 12
        assert backend.read(tenant, "note", limit=0, now=2000.0) == []

    def test_relevance_ranking_best_first(self, backend: MemoryBackend, tenant: str) -> None:
        filler = [rec(tenant, "u1", f"unrelated filler text {i}", now=100.0 + i) for i in range(8)]
        both = rec(tenant, "u1", "paris weather", now=10.0)
        one = rec(tenant, "u1", "london weather", now=20.0)
        backend.write_many(tenant, [*filler, one, both])
        got = backend.read(tenant, "weather in paris", now=500.0)
        assert [r.id for r in got] == [both.id, one.id]

    def test_ties_newest_first(self, backend: MemoryBackend, tenant: str) -> None:
        filler = [rec(tenant, "u1", f"other words {i}", now=1.0) for i in range(6)]
        old, mid, new = (rec(tenant, "u1", "coffee order", now=t) for t in (10.0, 20.0, 30.0))
        backend.write_many(tenant, [*filler, mid, new, old])
        assert [r.id for r in backend.read(tenant, "coffee", now=100.0)] == [new.id, mid.id, old.id]

    def test_empty_query_returns_newest(self, backend: MemoryBackend, tenant: str) -> None:
        rs = [rec(tenant, "u1", f"entry {i}", now=float(i)) for i in range(1, 5)]
        backend.write_many(tenant, rs)
        assert [r.id for r in backend.read(tenant, "  ", limit=3, now=100.0)] == [rs[3].id, rs[2].id, rs[1].id]

    def test_no_match_returns_nothing(self, backend: MemoryBackend, tenant: str) -> None:
        backend.write(tenant, rec(tenant, "u1", "weather query"))
        assert backend.read(tenant, "zebra", now=1e12) == []

    def test_case_insensitive_words(self, backend: MemoryBackend, tenant: str) -> None:
        r = rec(tenant, "u1", "Weather Query")
        backend.write(tenant, r)
        assert [x.id for x in backend.read(tenant, "WEATHER", now=r.created_at)] == [r.id]

    def test_user_filter(self, backend: MemoryBackend, tenant: str) -> None:
        a, b = rec(tenant, "alice", "shared topic"), rec(tenant, "bob", "shared topic")
        backend.write_many(tenant, [a, b])
        now = max(a.created_at, b.created_at)
        assert [r.id for r in backend.read(tenant, "topic", user_id="alice", now=now)] == [a.id]
        assert {r.id for r in backend.read(tenant, "topic", now=now)} == {a.id, b.id}

    # -- tenant isolation -------------------------------------------------------
    def test_other_tenants_are_invisible(self, backend: MemoryBackend, tenant: str) -> None:
        other = tenant + "-other"
        mine, theirs = rec(tenant, "u1", "secret plan"), rec(other, "u1", "secret plan")
        backend.write(tenant, mine)
        backend.write(other, theirs)
        now = theirs.created_at
        assert [r.id for r in backend.read(tenant, "secret plan", now=now)] == [mine.id]
        assert [r.id for r in backend.read(tenant, "", now=now)] == [mine.id]
        assert [r.id for r in backend.list_by_user(tenant, "u1", now=now)] == [mine.id]
        assert backend.delete(tenant, theirs.id) is False
        assert [r.id for r in backend.read(other, "secret", now=now)] == [theirs.id]

    def test_batch_with_foreign_tenant_record_is_refused(self, backend: MemoryBackend, tenant: str) -> None:
        with pytest.raises(TenantError):
            backend.write_many(tenant, [rec(tenant, "u1", "ok"), rec(tenant + "x", "u1", "sneaky")])
        assert backend.read(tenant, "", now=1e12) == []

    # -- TTL, delete, listing ----------------------------------------------------
    def test_expired_records_are_never_returned(self, backend: MemoryBackend, tenant: str) -> None:
        short = rec(tenant, "u1", "parking ticket", ttl_seconds=10, now=1000.0)
        forever = rec(tenant, "u1", "parking spot", now=1000.0)
        backend.write_many(tenant, [short, forever])
        assert {r.id for r in backend.read(tenant, "parking", now=1005.0)} == {short.id, forever.id}
        assert [r.id for r in backend.read(tenant, "parking", now=1010.0)] == [forever.id]
        assert [r.id for r in backend.read(tenant, "", now=1011.0)] == [forever.id]
        assert [r.id for r in backend.list_by_user(tenant, "u1", now=1011.0)] == [forever.id]
        assert backend.purge_expired(1011.0) in (0, 1)  # optional housekeeping; never touches live records
        assert forever.id in {r.id for r in backend.read(tenant, "parking", now=1005.0)}

    def test_delete(self, backend: MemoryBackend, tenant: str) -> None:
        a, b = rec(tenant, "alice", "to forget"), rec(tenant, "bob", "to forget")
        backend.write_many(tenant, [a, b])
        assert backend.delete(tenant, a.id, user_id="bob") is False
        assert backend.delete(tenant, a.id, user_id="alice") is True
        assert backend.delete(tenant, a.id) is False
        assert [r.id for r in backend.read(tenant, "forget", now=1e12)] == [b.id]
        assert backend.delete(tenant, "no-such-id") is False

    def test_list_by_user_newest_first_with_limit(self, backend: MemoryBackend, tenant: str) -> None:
        rs = [rec(tenant, "u1", f"item {i}", now=float(i)) for i in range(1, 8)]
        backend.write_many(tenant, [*rs, rec(tenant, "u2", "item x", now=99.0)])
        assert [r.id for r in backend.list_by_user(tenant, "u1", limit=3, now=100.0)] == [r.id for r in rs[::-1][:3]]

    # -- hostile input ------------------------------------------------------------
    @pytest.mark.parametrize("query", NASTY_QUERIES)
    def test_query_syntax_is_never_interpreted(self, backend: MemoryBackend, tenant: str, query: str) -> None:
        backend.write(tenant, rec(tenant, "u1", "alpha beta gamma"))
        backend.write(tenant + "-x", rec(tenant + "-x", "u1", query or "x"))
        got = backend.read(tenant, query, now=1e12)  # must not raise
        assert all(r.tenant_id == tenant for r in got)
        stored = rec(tenant, "u1", query)
        backend.write(tenant, stored)  # hostile *stored* text is fine too
        assert stored.id in {r.id for r in backend.read(tenant, query, limit=50, now=1e12)} or not any(
            c.isalnum() for c in query
        )

    def test_isolation_property(self, backend: MemoryBackend) -> None:
        """Random tenants, users and queries (SQL and FTS syntax included): no read ever crosses tenants."""
        run = uuid.uuid4().hex[:6]

        @settings(max_examples=self.property_examples, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(
            writes=st.lists(st.tuples(st.integers(0, 3), _ids, _query_text), min_size=1, max_size=8),
            reads=st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), _ids), _query_text), max_size=6),
            tenant_names=st.lists(_ids, min_size=4, max_size=4, unique=True),
        )
        def check(writes: list[tuple[int, str, str]], reads: list[tuple[int, str | None, str]],
                  tenant_names: list[str]) -> None:
            example = uuid.uuid4().hex[:6]
            tenants = [f"{run}{example}{t}" for t in tenant_names]
            written: dict[str, set[str]] = {t: set() for t in tenants}
            for ti, user, text in writes:
                r = rec(tenants[ti], user, text)
                backend.write(tenants[ti], r)
                written[tenants[ti]].add(r.id)
            for ti, reader, text in reads:
                t = tenants[ti]
                got = backend.read(t, text, user_id=reader, limit=10, now=1e12)
                assert all(r.tenant_id == t and r.id in written[t] for r in got)
                assert reader is None or all(r.user_id == reader for r in got)
                listed = backend.list_by_user(t, reader or "u", now=1e12)
                assert all(r.tenant_id == t and r.id in written[t] for r in listed)

        check()

    # -- concurrency ---------------------------------------------------------------
    def test_concurrent_writes_are_all_readable(self, backend: MemoryBackend, tenant: str) -> None:
        errors: list[BaseException] = []
        ids: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            try:
                for i in range(self.concurrency_writes):
                    r = rec(tenant, f"user{n}", f"thread {n} write {i}")
                    backend.write(tenant, r)
                    with lock:
                        ids.append(r.id)
                    backend.read(tenant, f"thread {n}", now=1e12)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(self.concurrency_workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        seen = set()
        for n in range(self.concurrency_workers):
            seen |= {r.id for r in backend.list_by_user(tenant, f"user{n}", limit=1000, now=1e12)}
        assert seen == set(ids) and len(ids) == self.concurrency_workers * self.concurrency_writes

    def test_errors_are_memory_backend_errors_or_values(self, backend: MemoryBackend, tenant: str) -> None:
        r = rec(tenant, "u1", "dup")
        backend.write(tenant, r)
        with pytest.raises((MemoryBackendError, ValueError)):
            backend.write(tenant, r)  # the same id twice
