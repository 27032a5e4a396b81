"""Memory benchmark: write throughput and top-5 read latency, framework vs bare SQL.

    python benchmarks/bench_memory.py                      # 1,000,000 records, 100 tenants
    python benchmarks/bench_memory.py --records 20000      # a quick run
    python benchmarks/bench_memory.py --backends sqlite    # skip PostgreSQL

PostgreSQL uses --dsn (default $KAREN_TEST_POSTGRES_DSN, else
postgresql://postgres@127.0.0.1:5432/test) and its own throw-away tables.

Measured per backend:

- batched writes: the full load through the backend's ``write_many`` (records
  built and validated by ``MemoryRecord.create``), batches of --batch; the bare
  equivalent runs the same INSERT with ``executemany`` on a raw connection into
  an identical empty store (--bare-records rows).
- single writes: ``MemoryManager.write`` one record per transaction vs the bare
  INSERT + COMMIT, on the loaded store.
- top-5 reads: ``MemoryManager.read(user_ctx, text, limit=5)`` (the caller's
  own records, ranked) vs the same SQL statement on a raw connection, p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from karen_hooks import load_settings  # noqa: E402
from karen_hooks.memory import MemoryManager, MemoryRecord, SQLiteBackend, tokenize  # noqa: E402
from karen_hooks.memory._postgres import insert_sql, search_sql, tsquery_text, tsvector_text  # noqa: E402  (early: one code version per run)
from karen_hooks.memory._sqlite import _INDEX as SQLITE_INDEX  # noqa: E402
from karen_hooks.memory._sqlite import _INSERT as SQLITE_INSERT  # noqa: E402
from karen_hooks.memory._sqlite import fts_match, index_terms  # noqa: E402

USERS_PER_TENANT = 10


def vocabulary(n: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words)


class Corpus:
    """Deterministic records: 4-8 words each from a Zipf-like vocabulary, spread over tenants and users."""

    def __init__(self, tenants: int, seed: int = 7, vocab: int = 5000) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(vocab, self.rng)
        weights = [1.0 / (i + 1) ** 0.9 for i in range(vocab)]
        self.cum = list(_accumulate(weights))
        self.tenants = [f"tenant{t:03d}" for t in range(tenants)]

    def text(self, k: int | None = None) -> str:
        k = k or self.rng.randint(4, 8)
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=k))

    def raw_batches(self, total: int, batch: int) -> Any:
        """(tenant, [(user, text, payload, created)]) batches; each batch is one tenant's, users mixed."""
        made = 0
        t = 0
        base = time.time() - total
        while made < total:
            n = min(batch, total - made)
            tenant = self.tenants[t % len(self.tenants)]
            t += 1
            rows = [(f"user{self.rng.randrange(USERS_PER_TENANT)}", self.text(), {"n": made + i, "note": "benchmark"},
                     base + made + i) for i in range(n)]
            made += n
            yield tenant, rows

    def batches(self, total: int, batch: int) -> Any:
        for tenant, rows in self.raw_batches(total, batch):
            yield tenant, make_records(tenant, rows)

    def read_queries(self, n: int) -> list[tuple[str, str, str]]:
        return [(self.rng.choice(self.tenants), f"user{self.rng.randrange(USERS_PER_TENANT)}",
                 self.text(self.rng.randint(1, 2))) for _ in range(n)]


def make_records(tenant: str, rows: list[tuple[str, str, Any, float]]) -> list[MemoryRecord]:
    return [MemoryRecord.create(tenant, u, q, p, plugin="bench", now=c) for u, q, p, c in rows]


def bare_record(tenant: str, user: str, text: str, payload: Any, created: float) -> MemoryRecord:
    """A plain record (no validation): what hand-written code would hold before its INSERT."""
    return MemoryRecord(tenant_id=tenant, user_id=user, query=text, payload=payload, plugin="bench",
                        id=uuid.uuid4().hex, created_at=created)


def timed_load(write: Callable[[str, Any], None], corpus: Corpus, total: int, batch: int) -> float:
    """Seconds spent in ``write(tenant, raw_rows)`` over the load (corpus generation excluded)."""
    spent = 0.0
    for tenant, rows in corpus.raw_batches(total, batch):
        t0 = time.perf_counter()
        write(tenant, rows)
        spent += time.perf_counter() - t0
    return spent


def framework_load(backend: Any, corpus: Corpus, total: int, batch: int) -> float:
    """Building and validating records (``MemoryRecord.create``) and ``write_many``."""
    return timed_load(lambda tenant, rows: backend.write_many(tenant, make_records(tenant, rows)), corpus, total, batch)


def _accumulate(xs: list[float]) -> Any:
    total = 0.0
    for x in xs:
        total += x
        yield total


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


# -- SQLite ------------------------------------------------------------------------
SQLITE_READ = (
    "SELECT m.id, m.tenant_id, m.user_id, m.query, m.payload, m.plugin, m.created_at, m.expires_at"
    " FROM memories_fts JOIN memories m ON m.pk = memories_fts.rowid"
    " WHERE memories_fts MATCH ? AND m.tenant_id = ? AND m.user_id = ? AND (m.expires_at IS NULL OR m.expires_at > ?)"
    " ORDER BY bm25(memories_fts), m.created_at DESC, m.pk DESC LIMIT 5"
)


# the hand-written baseline keys its index prefixes as the backend does (its own constant key)
BARE_SECRET = bytes(16)


def sqlite_rows(recs: list[MemoryRecord]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rows = [(r.id, r.tenant_id, r.user_id, r.query, json.dumps(r.payload), r.plugin, r.created_at, r.expires_at)
            for r in recs]
    return rows, [(*index_terms(r, BARE_SECRET), r.id) for r in recs]


def bench_sqlite(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"backend": "SQLite"}
    corpus = Corpus(args.tenants)
    # bare batched load into an identical empty file (schema made by the backend, then raw sqlite3)
    bare_path = workdir / "bare.sqlite3"
    SQLiteBackend(bare_path).close()
    conn = sqlite3.connect(bare_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    n_bare = min(args.bare_records, args.records)

    def bare_batch(tenant: str, raw: list[tuple[str, str, Any, float]]) -> None:
        rows, terms = sqlite_rows([bare_record(tenant, *x) for x in raw])
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(SQLITE_INSERT, rows)
        conn.executemany(SQLITE_INDEX, terms)
        conn.execute("COMMIT")

    res["bare_batched_wps"] = n_bare / timed_load(bare_batch, Corpus(args.tenants, seed=99), n_bare, args.batch)
    conn.close()

    path = workdir / "memory.sqlite3"
    backend = SQLiteBackend(path)
    res["framework_batched_wps"] = args.records / framework_load(backend, corpus, args.records, args.batch)
    backend._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # start the measurements from a settled file
    print(f"  sqlite: loaded {args.records} records", file=sys.stderr)
    return _common(res, args, corpus, MemoryManager(backend=backend, settings=load_settings(environ={})),
                   sqlite_bare(path))


def sqlite_bare(path: Path) -> dict[str, Callable[..., Any]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")  # as the backend's connections

    def write(tenant: str, user: str, text: str) -> None:
        rec = MemoryRecord(tenant_id=tenant, user_id=user, query=text, payload={"n": 1}, plugin="bench")
        (row,), (terms,) = sqlite_rows([rec])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(SQLITE_INSERT, row)
        conn.execute(SQLITE_INDEX, terms)
        conn.execute("COMMIT")

    def read(tenant: str, user: str, text: str) -> list[Any]:
        # the hand-written equivalent: quote each scope-prefixed word, same SQL, raw rows
        return conn.execute(SQLITE_READ, (fts_match(tenant, user, tokenize(text), BARE_SECRET), tenant, user,
                                          time.time())).fetchall()

    return {"write": write, "read": read, "close": conn.close}


# -- PostgreSQL ----------------------------------------------------------------------
def bench_postgres(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from karen_hooks.memory import PostgresBackend

    res: dict[str, Any] = {"backend": "PostgreSQL"}
    corpus = Corpus(args.tenants)
    suffix = uuid.uuid4().hex[:8]
    bare_backend = PostgresBackend(args.dsn, table=f"karen_bench_bare_{suffix}")
    backend = PostgresBackend(args.dsn, table=f"karen_bench_{suffix}", max_size=4)
    try:
        insert = insert_sql(bare_backend.table)
        n_bare = min(args.bare_records, args.records)
        with psycopg.connect(args.dsn) as conn:
            def bare_batch(tenant: str, raw: list[tuple[str, str, Any, float]]) -> None:
                rows = [(r.id, r.tenant_id, r.user_id, r.query, json.dumps(r.payload), r.plugin, r.created_at,
                         r.expires_at, tsvector_text(r)) for r in (bare_record(tenant, *x) for x in raw)]
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(insert, rows)

            res["bare_batched_wps"] = n_bare / timed_load(bare_batch, Corpus(args.tenants, seed=99), n_bare,
                                                          args.batch)
        res["framework_batched_wps"] = args.records / framework_load(backend, corpus, args.records, args.batch)
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {backend.table}")
        print(f"  postgresql: loaded {args.records} records", file=sys.stderr)

        bare_conn = psycopg.connect(args.dsn, autocommit=True)
        t = backend.table
        read_sql = search_sql(t, by_user=True)
        ins = insert_sql(t)

        def write(tenant: str, user: str, text: str) -> None:
            with bare_conn.transaction():
                r = bare_record(tenant, user, text, {"n": 1}, time.time())
                bare_conn.execute(ins, (r.id, tenant, user, text, json.dumps(r.payload), "bench", r.created_at, None,
                                        tsvector_text(r)))

        def read(tenant: str, user: str, text: str) -> list[Any]:
            return bare_conn.execute(read_sql, (tsquery_text(tenant, user, tokenize(text)), tenant, user, time.time(),
                                                5)).fetchall()

        bare: dict[str, Callable[..., Any]] = {"write": write, "read": read, "close": bare_conn.close}
        return _common(res, args, corpus, MemoryManager(backend=backend, settings=load_settings(environ={})), bare)
    finally:
        if not args.keep:
            bare_backend.drop()
            backend.drop()
        bare_backend.close()
        backend.close()


# -- shared measurements ---------------------------------------------------------------
def _common(res: dict[str, Any], args: argparse.Namespace, corpus: Corpus, manager: MemoryManager,
            bare: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    queries = corpus.read_queries(args.reads)
    warm = queries[: min(200, len(queries))]
    for tenant, user, text in warm:  # warm caches for both paths alike
        manager.read({"user_id": user, "tenant_id": tenant}, text, limit=5)
        bare["read"](tenant, user, text)
    fw: list[float] = []
    raw: list[float] = []
    hits = 0
    for i, (tenant, user, text) in enumerate(queries):
        # interleaved, so drift hits both alike; the order alternates, so neither path
        # always runs the query second on pages the other just brought into cache
        ctx = {"user_id": user, "tenant_id": tenant}
        for path in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if path == 0:
                hits += len(manager.read(ctx, text, limit=5))
                fw.append((time.perf_counter() - t0) * 1000)
            else:
                bare["read"](tenant, user, text)
                raw.append((time.perf_counter() - t0) * 1000)
    res.update(
        framework_read_p50_ms=pct(fw, 50), framework_read_p99_ms=pct(fw, 99),
        bare_read_p50_ms=pct(raw, 50), bare_read_p99_ms=pct(raw, 99),
        mean_results=hits / len(queries),
    )
    res["read_p50_ratio"] = res["framework_read_p50_ms"] / res["bare_read_p50_ms"]
    writes = corpus.read_queries(args.single_writes)
    fw_s = raw_s = 0.0
    for i, (tenant, user, text) in enumerate(writes):  # interleaved, alternating order, as the reads
        for path in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            if path == 0:
                manager.write({"user_id": user, "tenant_id": tenant}, text, {"n": 1}, plugin="bench")
                fw_s += time.perf_counter() - t0
            else:
                bare["write"](tenant, user, text)
                raw_s += time.perf_counter() - t0
    res["framework_single_wps"] = len(writes) / fw_s
    res["bare_single_wps"] = len(writes) / raw_s
    bare["close"]()
    return res


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"records: {args.records:,} over {args.tenants} tenants ({USERS_PER_TENANT} users each); "
        f"reads: {args.reads} top-5 queries of 1-2 words; batch: {args.batch}; "
        f"bare batched load: {min(args.bare_records, args.records):,} records",
        "",
        "| backend | batched writes/s (framework / bare) | single writes/s (framework / bare) "
        "| read p50 ms (framework / bare) | read p99 ms (framework / bare) | p50 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['framework_batched_wps']:,.0f} / {r['bare_batched_wps']:,.0f} "
            f"| {r['framework_single_wps']:,.0f} / {r['bare_single_wps']:,.0f} "
            f"| {r['framework_read_p50_ms']:.3f} / {r['bare_read_p50_ms']:.3f} "
            f"| {r['framework_read_p99_ms']:.3f} / {r['bare_read_p99_ms']:.3f} | {r['read_p50_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--bare-records", type=int, default=200_000, help="rows in the bare batched-write run")
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--single-writes", type=int, default=500)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--dsn", default=os.environ.get("KAREN_TEST_POSTGRES_DSN")
                   or "postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--workdir", help="where the SQLite files go (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the PostgreSQL tables")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            print(f"benchmarking {name} ...", file=sys.stderr)
            results.append(bench_sqlite(args, Path(tmp)) if name == "sqlite" else bench_postgres(args))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

