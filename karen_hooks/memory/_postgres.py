"""``postgresql://...``: shared memory for several host processes on several machines.

psycopg 3 with a ``psycopg_pool`` connection pool. The table (default
``karen_memories``) is created or migrated on first use under a transaction
advisory lock, so many hosts may start at once.

Ranking: ``ts_rank_cd(terms, q)`` (cover density, no length normalisation)
where ``terms`` holds each word of the record's query text as a tenant-scoped
and a user-scoped lexeme (GIN-indexed, so a search walks only its own scope's
postings) and ``q`` ORs the read query's words in the same scope; then
``created_at`` descending, then insertion order descending.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import MemoryBackendError
from ._backend import MemoryBackend, check_batch, check_limit
from ._records import MemoryRecord, scope_keys, tokenize, words

_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")

# Each migration runs once per table, in order; append, never edit.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS {t} (
        pk bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        tenant_id text NOT NULL,
        user_id text NOT NULL,
        query text NOT NULL,
        payload text NOT NULL,
        plugin text,
        created_at double precision NOT NULL,
        expires_at double precision,
        terms tsvector NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {t}_terms ON {t} USING gin (terms);
    CREATE INDEX IF NOT EXISTS {t}_tenant_user_created ON {t} (tenant_id, user_id, created_at DESC);
    CREATE INDEX IF NOT EXISTS {t}_tenant_created ON {t} (tenant_id, created_at DESC);
    """,
]

_COLUMNS = "id, tenant_id, user_id, query, payload, plugin, created_at, expires_at"


def insert_sql(table: str) -> str:
    return (
        f"INSERT INTO {table} (id, tenant_id, user_id, query, payload, plugin, created_at, expires_at, terms)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CAST(%s AS tsvector))"
    )


def search_sql(table: str, by_user: bool) -> str:
    """The ranked search: params (tsquery literal, tenant_id, [user_id], now, limit)."""
    user_sql = " AND user_id = %s" if by_user else ""
    return (
        f"SELECT {_COLUMNS} FROM {table}, CAST(%s AS tsquery) q"
        f" WHERE terms @@ q AND tenant_id = %s{user_sql} AND (expires_at IS NULL OR expires_at > %s)"
        " ORDER BY ts_rank_cd(terms, q) DESC, created_at DESC, pk DESC LIMIT %s"
    )


def _import() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MemoryBackendError(
            "the PostgreSQL memory backend needs psycopg 3 and psycopg-pool: pip install 'karen-hooks[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def _lexeme(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_text(record: MemoryRecord) -> str:
    """The record's ``terms``: each word as a tenant- and a user-scoped lexeme, with its positions.

    A ``tsvector`` literal (cast, never parsed by a text-search configuration),
    so stored lexemes and queried lexemes are exactly the words
    :func:`karen_hooks.memory.tokenize` makes, prefixed by
    :func:`karen_hooks.memory._records.scope_keys`.
    """
    tk, uk = scope_keys(record.tenant_id, record.user_id)
    positions: dict[str, list[int]] = {}
    for i, w in enumerate(words(record.query), start=1):
        ps = positions.setdefault(w, [])
        if len(ps) < 256:  # PostgreSQL keeps at most 256 positions per lexeme, each <= 16383
            ps.append(min(i, 16383))
    return " ".join(
        f"{_lexeme(key + w)}:{','.join(map(str, sorted(set(ps))))}" for w, ps in positions.items() for key in (tk, str(uk))
    )


def tsquery_text(tenant_id: str, user_id: str | None, query_words: list[str]) -> str:
    """A ``tsquery`` literal ORing the scope-prefixed words (user scope when ``user_id`` is given)."""
    tk, uk = scope_keys(tenant_id, user_id)
    key = tk if uk is None else uk
    return " | ".join(_lexeme(key + w) for w in query_words)


class PostgresBackend(MemoryBackend):
    """Memory in one PostgreSQL table."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "karen_memories",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        psycopg, psycopg_pool = _import()
        if not _TABLE.match(table):
            raise ValueError(f"table must be a lower-case SQL identifier of at most 41 characters, got {table!r}")
        self.table = table
        self._psycopg = psycopg
        try:
            self._pool = psycopg_pool.ConnectionPool(
                dsn, min_size=min_size, max_size=max_size, timeout=timeout, open=True,
                kwargs={"autocommit": True}, name=f"karen-memory-{table}",
            )
        except Exception as exc:
            raise MemoryBackendError(f"cannot connect the PostgreSQL memory: {type(exc).__name__}") from exc
        try:
            self._migrate()
        except Exception:
            self._pool.close()
            raise

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        try:
            with self._pool.connection() as conn:
                return fn(conn)
        except MemoryBackendError:
            raise
        except Exception as exc:  # psycopg.Error, PoolTimeout, ...
            raise MemoryBackendError(f"PostgreSQL memory {what} failed: {type(exc).__name__}: {exc}") from exc

    def _migrate(self) -> None:
        t = self.table

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"karen-memory:{t}",))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS karen_memory_schema (table_name text PRIMARY KEY, version int NOT NULL)"
                )
                row = conn.execute("SELECT version FROM karen_memory_schema WHERE table_name = %s", (t,)).fetchone()
                version = row[0] if row else 0
                for n, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                    conn.execute(script.format(t=t))  # t is a checked identifier
                    conn.execute(
                        "INSERT INTO karen_memory_schema (table_name, version) VALUES (%s, %s)"
                        " ON CONFLICT (table_name) DO UPDATE SET version = excluded.version",
                        (t, n),
                    )

        self._run("schema migration", go)

    def write_many(self, tenant_id: str, records: Sequence[MemoryRecord]) -> None:
        check_batch(tenant_id, records)
        if not records:
            return
        rows = [
            (r.id, r.tenant_id, r.user_id, r.query, r.payload_json(), r.plugin, r.created_at, r.expires_at,
             tsvector_text(r))
            for r in records
        ]
        sql = insert_sql(self.table)

        def go(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)

        self._run("write", go)

    def read(
        self, tenant_id: str, query: str, *, user_id: str | None = None, limit: int = 5, now: float
    ) -> list[MemoryRecord]:
        limit = check_limit(limit)
        query_words = tokenize(query)
        user_sql = " AND user_id = %s" if user_id is not None else ""
        user_args: tuple[Any, ...] = (user_id,) if user_id is not None else ()
        live = " AND (expires_at IS NULL OR expires_at > %s)"
        if query_words:
            sql = search_sql(self.table, user_id is not None)
            args: tuple[Any, ...] = (tsquery_text(tenant_id, user_id, query_words), tenant_id, *user_args, now, limit)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM {self.table} WHERE tenant_id = %s{user_sql}{live}"
                " ORDER BY created_at DESC, pk DESC LIMIT %s"
            )
            args = (tenant_id, *user_args, now, limit)
        return self._run("read", lambda conn: [MemoryRecord.from_row(r) for r in conn.execute(sql, args).fetchall()])

    def list_by_user(self, tenant_id: str, user_id: str, *, limit: int = 50, now: float) -> list[MemoryRecord]:
        return self.read(tenant_id, "", user_id=user_id, limit=limit, now=now)

    def delete(self, tenant_id: str, record_id: str, *, user_id: str | None = None) -> bool:
        sql = f"DELETE FROM {self.table} WHERE id = %s AND tenant_id = %s"
        args: tuple[Any, ...] = (record_id, tenant_id)
        if user_id is not None:
            sql += " AND user_id = %s"
            args += (user_id,)
        return bool(self._run("delete", lambda conn: conn.execute(sql, args).rowcount > 0))

    def purge_expired(self, now: float) -> int:
        sql = f"DELETE FROM {self.table} WHERE expires_at IS NOT NULL AND expires_at <= %s"
        return int(self._run("purge", lambda conn: conn.execute(sql, (now,)).rowcount))

    def drop(self) -> None:
        """Drop the table and its schema row (tests and benchmarks only)."""

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute(f"DROP TABLE IF EXISTS {self.table}")
                conn.execute("DELETE FROM karen_memory_schema WHERE table_name = %s", (self.table,))

        self._run("drop", go)

    def close(self) -> None:
        self._pool.close()
