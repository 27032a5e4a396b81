"""The record a memory backend stores, and the text rules every backend shares."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import TenantError

#: Longest tenant or user id accepted (characters).
MAX_ID_LENGTH = 256
#: Longest query text stored (characters); longer text is cut, never rejected.
MAX_QUERY_LENGTH = 4096
#: At most this many words of a read query are searched for.
MAX_QUERY_TOKENS = 16
#: Longer words in a read query are ignored (they cannot be meant as words).
MAX_TOKEN_LENGTH = 64

# A "word" is a run of letters and digits (no underscore): the same split
# SQLite's unicode61 tokenizer and PostgreSQL's "simple" parser make.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# control characters, and lone surrogates (not text: no backend can store them as UTF-8)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def tokenize(text: str) -> list[str]:
    """The words of ``text`` a read searches for: lower-cased, de-duplicated, in order, bounded.

    Only these words ever reach a full-text engine, each one quoted, so no
    query syntax (``OR``, ``*``, ``NEAR``, quotes, ``--``) typed by a user is
    ever interpreted.
    """
    seen: dict[str, None] = {}
    for m in _WORD.finditer(text or ""):
        word = m.group(0).lower()
        if len(word) <= MAX_TOKEN_LENGTH:
            seen.setdefault(word, None)
        if len(seen) >= MAX_QUERY_TOKENS:
            break
    return list(seen)


def words(text: str) -> list[str]:
    """Every word of stored text, lower-cased, repeats kept (term frequency), over-long words dropped."""
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if len(w) <= MAX_TOKEN_LENGTH]


def clean_text(text: str) -> str:
    """Query text as stored: control characters (NUL included) removed, length bounded."""
    if not isinstance(text, str):
        raise TypeError(f"memory query text must be a str, got {type(text).__name__}")
    return _CONTROL.sub("", text)[:MAX_QUERY_LENGTH]


#: The longest ``ttl_seconds`` a record may have (about 100 years).
MAX_TTL_SECONDS = 100 * 365.25 * 86400


def check_id(value: Any, what: str) -> str:
    """Validate a tenant or user id: a non-empty str without control characters, bounded."""
    if not isinstance(value, str) or not value.strip():
        raise TenantError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH or _CONTROL.search(value):
        raise TenantError(f"{what} must be at most {MAX_ID_LENGTH} characters of text, without control characters")
    return value


def _key(*parts: str, secret: bytes = b"") -> str:
    return hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=8, key=secret).hexdigest()


@functools.lru_cache(maxsize=4096)
def scope_keys(tenant_id: str, user_id: str | None, secret: bytes = b"") -> tuple[str, str | None]:
    """The prefixes that make a word's index entry private to a tenant, and to one user of it.

    The SQL backends index each stored word twice, as ``<tenant key><word>``
    and ``<tenant+user key><word>``, so a search walks only the postings of
    its own tenant (or user). A hash collision could only widen the candidate
    set: every query also filters on the exact ``tenant_id`` (and ``user_id``).

    SQLite keys them with a secret of its own file (``secret``): its tokenizer can split a
    stored word where this module does not, and with a prefix anyone can compute, a tenant
    could then place index entries in another tenant's scope.
    """
    return ("t" + _key(tenant_id, secret=secret),
            None if user_id is None else "u" + _key(tenant_id, user_id, secret=secret))


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class MemoryRecord:
    """One remembered thing.

    ``payload`` is any JSON-serialisable value. ``created_at`` and
    ``expires_at`` are Unix timestamps (seconds, float); a record whose
    ``expires_at`` is at or before "now" is never returned by any read.
    """

    tenant_id: str
    user_id: str
    query: str
    payload: Any
    plugin: str | None = None
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None

    @classmethod
    def create(
        cls,
        tenant_id: str,
        user_id: str,
        query: str,
        payload: Any,
        *,
        plugin: str | None = None,
        ttl_seconds: float | None = None,
        now: float | None = None,
    ) -> MemoryRecord:
        """Build a validated record (ids checked, text cleaned, payload JSON-checked, TTL applied)."""
        created = time.time() if now is None else now
        if ttl_seconds is not None:
            # finite, and a real number: an infinite TTL was stored and then failed every read of it
            # (not JSON), 10**400 was an OverflowError, and True was one second
            try:
                ttl = float(ttl_seconds)
            except (TypeError, ValueError, OverflowError):
                ttl = math.nan
            if isinstance(ttl_seconds, bool) or not 0 < ttl <= MAX_TTL_SECONDS:
                raise ValueError(f"ttl_seconds must be a number of seconds above 0 and at most {MAX_TTL_SECONDS:.0f} "
                                 f"(100 years), got {ttl_seconds!r}")
            ttl_seconds = ttl
        record = cls(
            tenant_id=check_id(tenant_id, "tenant_id"),
            user_id=check_id(user_id, "user_id"),
            query=clean_text(query),
            payload=payload,
            plugin=plugin,
            created_at=created,
            expires_at=None if ttl_seconds is None else created + float(ttl_seconds),
        )
        record.payload_json()  # fail here, not in a backend, when payload is not JSON
        return record

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> MemoryRecord:
        """From a SQL row ``(id, tenant_id, user_id, query, payload_json, plugin, created_at, expires_at)``."""
        return cls(
            id=row[0], tenant_id=row[1], user_id=row[2], query=row[3], payload=json.loads(row[4]),
            plugin=row[5], created_at=row[6], expires_at=row[7],
        )

    def payload_json(self) -> str:
        try:
            return json.dumps(self.payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"memory payload must be JSON-serialisable: {exc}") from None
        except RecursionError:
            raise ValueError("memory payload nests too deeply to store") from None

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "query": self.query,
            "payload": self.payload,
            "plugin": self.plugin,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
