"""``sqlite:///path``: the embedded default, stdlib ``sqlite3`` with WAL and FTS5.

Safe under many threads (one connection per thread) and several processes on
one machine (WAL, ``BEGIN IMMEDIATE`` writes, a busy timeout).

Ranking: FTS5 ``bm25()`` over the words of the record's query text (lower is
better), then ``created_at`` descending, then insertion order descending.
Words are indexed with a per-tenant and a per-user prefix (see
:func:`karen_hooks.memory._records.scope_keys`), so a search walks only its own scope's postings and the
term statistics bm25 uses are per tenant or per user.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._errors import MemoryBackendError
from ._backend import MemoryBackend, check_batch, check_limit
from ._records import MemoryRecord, scope_keys, tokenize, words

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS memories (
    pk INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    query TEXT NOT NULL,
    payload TEXT NOT NULL,
    plugin TEXT,
    created_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS memories_tenant_user_created ON memories (tenant_id, user_id, created_at);
CREATE INDEX IF NOT EXISTS memories_tenant_created ON memories (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS memories_expires ON memories (expires_at) WHERE expires_at IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    tenant_terms, user_terms, content='', tokenize='unicode61 remove_diacritics 2'
);
"""

# v2: the scope prefixes are keyed with a secret of the file's own (see scope_keys), and
# opening a v1 file re-indexes it with them
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS memory_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "m.id, m.tenant_id, m.user_id, m.query, m.payload, m.plugin, m.created_at, m.expires_at"


def index_terms(record: MemoryRecord, secret: bytes) -> tuple[str, str]:
    """The two FTS column values of a record (deterministic: also used to un-index it)."""
    tk, uk = scope_keys(record.tenant_id, record.user_id, secret)
    ws = words(record.query)
    return " ".join(tk + w for w in ws), " ".join(f"{uk}{w}" for w in ws)


def fts_match(tenant_id: str, user_id: str | None, query_words: list[str], secret: bytes) -> str:
    """The FTS5 MATCH expression: any of the (quoted, scope-prefixed) words in the scope's column."""
    tk, uk = scope_keys(tenant_id, user_id, secret)
    column, key = ("tenant_terms", tk) if uk is None else ("user_terms", uk)
    quoted = " OR ".join('"' + (key + w).replace('"', '""') + '"' for w in query_words)
    return f"{column} : ({quoted})"


_INSERT = ("INSERT INTO memories (id, tenant_id, user_id, query, payload, plugin, created_at, expires_at)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INDEX = "INSERT INTO memories_fts (rowid, tenant_terms, user_terms) SELECT pk, ?, ? FROM memories WHERE id = ?"
_UNINDEX = "INSERT INTO memories_fts (memories_fts, rowid, tenant_terms, user_terms) VALUES ('delete', ?, ?, ?)"


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers
    "database is locked" at once (without its busy handler) when another
    connection holds one -- as when several threads or processes open a new
    memory file together. So this waits as the busy timeout would.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:  # SQLITE_BUSY's message; its code is not exposed on 3.10
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class SQLiteBackend(MemoryBackend):
    """Memory in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            with self._tx() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    _run_script(conn, _SCHEMA_V1)
                    _run_script(conn, _SCHEMA_V2)
                    conn.execute("INSERT OR IGNORE INTO memory_meta VALUES ('scope_secret', ?)",
                                 (secrets.token_hex(16),))
                self._secret = bytes.fromhex(conn.execute(
                    "SELECT value FROM memory_meta WHERE name = 'scope_secret'").fetchone()[0])
                if version < SCHEMA_VERSION:
                    if version == 1:  # indexed with unkeyed prefixes: index it again
                        self._reindex(conn)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise MemoryBackendError(f"cannot open the SQLite memory at {str(self.path)!r}: {exc}") from exc

    def _reindex(self, conn: sqlite3.Connection) -> None:
        """Rebuild the text index with this file's keyed prefixes (opening a version 1 file)."""
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')")
        rows = conn.execute("SELECT pk, id, tenant_id, user_id, query FROM memories").fetchall()
        conn.executemany("INSERT INTO memories_fts (rowid, tenant_terms, user_terms) VALUES (?, ?, ?)", [
            (pk, *index_terms(MemoryRecord(id=rid, tenant_id=t, user_id=u, query=q, payload=None), self._secret))
            for pk, rid, t, u, q in rows])

    # -- connections --------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise MemoryBackendError("this SQLite memory backend is closed")
        if os.getpid() != self._pid:  # forked: never reuse the parent's connections
            self._pid = os.getpid()
            self._local = threading.local()
            self._all = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            _set_wal(conn, self._timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- operations -----------------------------------------------------------
    def write_many(self, tenant_id: str, records: Sequence[MemoryRecord]) -> None:
        check_batch(tenant_id, records)
        if not records:
            return
        rows = [
            (r.id, r.tenant_id, r.user_id, r.query, r.payload_json(), r.plugin, r.created_at, r.expires_at)
            for r in records
        ]
        terms = [(*index_terms(r, self._secret), r.id) for r in records]
        try:
            with self._tx() as conn:
                conn.executemany(_INSERT, rows)
                conn.executemany(_INDEX, terms)
        except sqlite3.Error as exc:
            raise MemoryBackendError(f"SQLite memory write failed: {exc}") from exc

    def read(
        self, tenant_id: str, query: str, *, user_id: str | None = None, limit: int = 5, now: float
    ) -> list[MemoryRecord]:
        limit = check_limit(limit)
        query_words = tokenize(query)
        user_sql = " AND m.user_id = ?" if user_id is not None else ""
        user_args: tuple[Any, ...] = (user_id,) if user_id is not None else ()
        if query_words:
            sql = (
                f"SELECT {_COLUMNS} FROM memories_fts JOIN memories m ON m.pk = memories_fts.rowid"
                f" WHERE memories_fts MATCH ? AND m.tenant_id = ?{user_sql}"
                " AND (m.expires_at IS NULL OR m.expires_at > ?)"
                " ORDER BY bm25(memories_fts), m.created_at DESC, m.pk DESC LIMIT ?"
            )
            args: tuple[Any, ...] = (fts_match(tenant_id, user_id, query_words, self._secret), tenant_id, *user_args, now, limit)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM memories m WHERE m.tenant_id = ?{user_sql}"
                " AND (m.expires_at IS NULL OR m.expires_at > ?) ORDER BY m.created_at DESC, m.pk DESC LIMIT ?"
            )
            args = (tenant_id, *user_args, now, limit)
        return self._select(sql, args)

    def list_by_user(self, tenant_id: str, user_id: str, *, limit: int = 50, now: float) -> list[MemoryRecord]:
        return self.read(tenant_id, "", user_id=user_id, limit=limit, now=now)

    def delete(self, tenant_id: str, record_id: str, *, user_id: str | None = None) -> bool:
        where = "id = ? AND tenant_id = ?"
        args: tuple[Any, ...] = (record_id, tenant_id)
        if user_id is not None:
            where += " AND user_id = ?"
            args += (user_id,)
        return self._delete("delete", where, args) > 0

    def purge_expired(self, now: float) -> int:
        return self._delete("purge", "expires_at IS NOT NULL AND expires_at <= ?", (now,))

    def _delete(self, what: str, where: str, args: tuple[Any, ...]) -> int:
        try:
            with self._tx() as conn:
                found = conn.execute(
                    f"SELECT pk, id, tenant_id, user_id, query FROM memories WHERE {where}", args
                ).fetchall()
                unindex = []
                for pk, rid, tenant, user, query in found:
                    rec = MemoryRecord(id=rid, tenant_id=tenant, user_id=user, query=query, payload=None)
                    unindex.append((pk, *index_terms(rec, self._secret)))
                conn.executemany(_UNINDEX, unindex)
                conn.executemany("DELETE FROM memories WHERE pk = ?", [(u[0],) for u in unindex])
                return len(found)
        except sqlite3.Error as exc:
            raise MemoryBackendError(f"SQLite memory {what} failed: {exc}") from exc

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[MemoryRecord]:
        try:
            return [MemoryRecord.from_row(r) for r in self._conn().execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise MemoryBackendError(f"SQLite memory read failed: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our BEGIN IMMEDIATE; run statement by statement instead.
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
