"""``memory://``: a process-local backend for tests and throwaway hosts."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import replace

from .._errors import MemoryBackendError
from ._backend import MemoryBackend, check_batch, check_limit
from ._records import MemoryRecord, tokenize, words


class InMemoryBackend(MemoryBackend):
    """Dicts under a lock. Ranking is BM25 (k1=1.2, b=0.75) over the tenant's own records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, dict[str, tuple[int, MemoryRecord, list[str]]]] = {}
        self._ids: set[str] = set()  # every record id of every tenant (ids are unique across them)
        self._seq = 0

    def write_many(self, tenant_id: str, records: Sequence[MemoryRecord]) -> None:
        check_batch(tenant_id, records)
        # Stored as what a real backend would store: the payload's JSON, as UTF-8 (a lone
        # surrogate fails here as it does in SQLite), read back. The caller's own object is
        # never kept, so changing it after the write changes nothing stored.
        try:
            stored = [replace(r, payload=json.loads(r.payload_json().encode("utf-8"))) for r in records]
        except (UnicodeEncodeError, ValueError) as exc:
            raise MemoryBackendError(f"memory write failed: {exc}") from None
        with self._lock:
            ids = [r.id for r in stored]
            if len(set(ids)) != len(ids) or any(i in self._ids for i in ids):
                raise MemoryBackendError("memory write failed: a record id already exists")
            rows = self._tenants.setdefault(tenant_id, {})
            for r in stored:
                self._seq += 1
                rows[r.id] = (self._seq, r, words(r.query))
                self._ids.add(r.id)

    def read(
        self, tenant_id: str, query: str, *, user_id: str | None = None, limit: int = 5, now: float
    ) -> list[MemoryRecord]:
        limit = check_limit(limit)
        words = tokenize(query)
        with self._lock:
            rows = list(self._tenants.get(tenant_id, {}).values())
        live = [(seq, r, ws) for seq, r, ws in rows if not r.is_expired(now) and (user_id is None or r.user_id == user_id)]
        if not words:
            live.sort(key=lambda t: (t[1].created_at, t[0]), reverse=True)
            return [r for _, r, _ in live[:limit]]
        n = len(rows) or 1
        avgdl = sum(len(ws) for _, _, ws in rows) / n or 1.0
        df = {w: sum(1 for _, _, ws in rows if w in ws) for w in words}
        scored = []
        for seq, r, ws in live:
            score = 0.0
            for w in words:
                tf = ws.count(w)
                if tf:
                    idf = max(math.log((n - df[w] + 0.5) / (df[w] + 0.5)), 1e-6)
                    score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(ws) / avgdl))
            if score > 0:
                scored.append((score, r.created_at, seq, r))
        scored.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
        return [t[3] for t in scored[:limit]]

    def delete(self, tenant_id: str, record_id: str, *, user_id: str | None = None) -> bool:
        with self._lock:
            rows = self._tenants.get(tenant_id, {})
            row = rows.get(record_id)
            if row is None or (user_id is not None and row[1].user_id != user_id):
                return False
            del rows[record_id]
            self._ids.discard(record_id)
            return True

    def list_by_user(self, tenant_id: str, user_id: str, *, limit: int = 50, now: float) -> list[MemoryRecord]:
        limit = check_limit(limit)
        with self._lock:
            rows = [t for t in self._tenants.get(tenant_id, {}).values() if t[1].user_id == user_id]
        rows = [t for t in rows if not t[1].is_expired(now)]
        rows.sort(key=lambda t: (t[1].created_at, t[0]), reverse=True)
        return [r for _, r, _ in rows[:limit]]

    def purge_expired(self, now: float) -> int:
        gone = 0
        with self._lock:
            for rows in self._tenants.values():
                for rid in [rid for rid, (_, r, _) in rows.items() if r.is_expired(now)]:
                    del rows[rid]
                    self._ids.discard(rid)
                    gone += 1
        return gone

