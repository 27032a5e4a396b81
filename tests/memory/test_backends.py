"""Backend specifics beyond the conformance suite: schema creation under concurrency, files, errors."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from karen_hooks import MemoryBackendError
from karen_hooks.memory import MemoryRecord, SQLiteBackend

from .conftest import postgres_dsn


def _start_together(make: Any, n: int = 6) -> list[Any]:
    barrier = threading.Barrier(n)
    made: list[Any] = []
    errors: list[BaseException] = []

    def go() -> None:
        barrier.wait()
        try:
            made.append(make())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return made


def test_sqlite_schema_creation_is_safe_when_many_start_at_once(tmp_path: Path) -> None:
    # A new file switched to WAL by several connections at once: SQLite answers "database is
    # locked" at once to all but one (seen 5-8 times in 150 such starts before the retry)
    for attempt in range(30):
        fresh = tmp_path / f"try{attempt}" / "m.db"
        for b in _start_together(lambda: SQLiteBackend(fresh), n=8):  # noqa: B023 - called before the loop moves on
            b.close()
    path = tmp_path / "deep" / "dir" / "m.db"
    backends = _start_together(lambda: SQLiteBackend(path))
    r = MemoryRecord.create("t", "u", "hello", 1)
    backends[0].write("t", r)
    assert [x.id for x in backends[-1].read("t", "hello", now=r.created_at)] == [r.id]
    for b in backends:
        b.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(MemoryBackendError, match="closed"):
        backends[0].read("t", "hello", now=0)


def test_sqlite_unopenable_path_is_a_memory_backend_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MemoryBackendError, match="cannot open"):
        SQLiteBackend(blocker / "m.db")


def test_postgres_migration_is_safe_when_many_hosts_start_at_once() -> None:
    dsn = postgres_dsn()
    from karen_hooks.memory import PostgresBackend

    table = "karen_mem_test_" + uuid.uuid4().hex[:10]
    backends = _start_together(lambda: PostgresBackend(dsn, table=table, min_size=1, max_size=2))
    try:
        r = MemoryRecord.create("t", "u", "hello world", {"k": [1, 2]})
        backends[0].write("t", r)
        assert backends[-1].read("t", "world", now=r.created_at) == [r]
        version = backends[0]._run("check", lambda c: c.execute(
            "SELECT version FROM karen_memory_schema WHERE table_name = %s", (table,)).fetchone()[0])
        assert version == 1
    finally:
        backends[0].drop()
        for b in backends:
            b.close()


def test_postgres_bad_dsn_and_table_name() -> None:
    postgres_dsn()
    from karen_hooks.memory import PostgresBackend

    with pytest.raises(ValueError, match="identifier"):
        PostgresBackend(postgres_dsn(), table="x; DROP TABLE y")
    with pytest.raises(MemoryBackendError) as info:
        PostgresBackend("postgresql://nobody:s3cretpw@127.0.0.1:1/none", timeout=1)
    assert "s3cretpw" not in str(info.value)


def test_sqlite_delete_and_purge_remove_index_entries(tmp_path: Path) -> None:
    from karen_hooks.memory._sqlite import fts_match

    b = SQLiteBackend(tmp_path / "m.db")
    keep = MemoryRecord.create("t", "u", "zebra crossing", 1, now=100.0)
    gone = MemoryRecord.create("t", "u", "zebra stripes zebra", 2, now=100.0)
    short = MemoryRecord.create("t", "u", "zebra ttl", 3, ttl_seconds=1, now=100.0)
    b.write_many("t", [keep, gone, short])
    assert b.delete("t", gone.id) is True
    assert b.purge_expired(1000.0) == 1
    conn = b._conn()
    for user in ("u", None):
        hits = conn.execute("SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?",
                            (fts_match("t", user, ["zebra"], b._secret),)).fetchall()
        assert len(hits) == 1  # only `keep` is still indexed, in both scopes
    conn.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 0)")
    b.close()


def test_sqlite_index_prefixes_are_keyed_so_no_tenant_can_write_into_anothers_scope(tmp_path: Path) -> None:
    """FTS5 splits words at some characters Python counts as letters (U+19B0...). With prefixes anyone
    could compute, tenant B's text put index entries in tenant A's scope, skewing A's ranking."""
    from karen_hooks.memory._records import scope_keys

    b = SQLiteBackend(tmp_path / "m.db")
    b.write_many("A", [MemoryRecord.create("A", "alice", "secret report quarterly", 1, now=1.0)])
    forged = "z\u19b0" + scope_keys("A", "alice")[1] + "secret"  # the prefix as anyone can compute it
    b.write_many("B", [MemoryRecord.create("B", "bob", forged, 2, now=1.0) for _ in range(50)])
    conn = b._conn()
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS v USING fts5vocab(memories_fts, 'row')")
    real = scope_keys("A", "alice", b._secret)[1] + "secret"
    assert conn.execute("SELECT doc FROM v WHERE term = ?", (real,)).fetchone() == (1,)  # A's own record only
    assert real != scope_keys("A", "alice")[1] + "secret"
    b.close()


def test_a_version_1_sqlite_file_is_reindexed_with_keyed_prefixes(tmp_path: Path) -> None:
    from karen_hooks.memory._sqlite import index_terms

    path = tmp_path / "old.db"
    b = SQLiteBackend(path)
    recs = [MemoryRecord.create("t", "u", f"zebra number {i}", i, now=1.0) for i in range(20)]
    b.write_many("t", recs)
    conn = b._conn()
    # turn it into what version 1 wrote: unkeyed prefixes, no secret, user_version 1
    conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')")
    for pk, rid in conn.execute("SELECT pk, id FROM memories").fetchall():
        rec = next(r for r in recs if r.id == rid)
        conn.execute("INSERT INTO memories_fts (rowid, tenant_terms, user_terms) VALUES (?, ?, ?)",
                     (pk, *index_terms(rec, b"")))
    conn.execute("DROP TABLE memory_meta")
    conn.execute("PRAGMA user_version = 1")
    b.close()
    b = SQLiteBackend(path)
    assert b._conn().execute("PRAGMA user_version").fetchone() == (2,)
    assert len(b.read("t", "zebra", user_id="u", limit=100, now=2.0)) == 20
    assert len(b.read("t", "zebra", limit=100, now=2.0)) == 20
    b.close()
