"""The interface every memory backend implements (built-in or from a plugin)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from .._errors import TenantError
from ._records import MemoryRecord

#: Methods an object must have to be accepted as a backend (duck typing is fine).
BACKEND_METHODS = ("write", "write_many", "read", "delete", "list_by_user", "close")


class MemoryBackend(abc.ABC):
    """Storage for :class:`MemoryRecord` objects, isolated by tenant.

    Rules every implementation follows (``karen_hooks.memory.testing`` checks them):

    - ``tenant_id`` is a required argument of every method; nothing is ever
      read, listed or deleted outside it. It is never inferred.
    - ``read`` ranks by full-text relevance of ``query`` against each
      record's query text (matching *any* of its words, see
      :func:`karen_hooks.memory.tokenize`), best first, newest first on
      ties, and applies ``limit`` in the storage engine. A query with no
      words returns the newest records. User text is never passed to the
      engine as query syntax.
    - Records with ``expires_at <= now`` are never returned.
    - Errors of the storage engine are raised as
      :class:`karen_hooks.MemoryBackendError` with a message holding no
      record content.
    - Safe to call from many threads at once.
    """

    def write(self, tenant_id: str, record: MemoryRecord) -> None:
        """Store one record (``record.tenant_id`` must equal ``tenant_id``)."""
        self.write_many(tenant_id, [record])

    @abc.abstractmethod
    def write_many(self, tenant_id: str, records: Sequence[MemoryRecord]) -> None:
        """Store several records of one tenant atomically (all or none)."""

    @abc.abstractmethod
    def read(
        self, tenant_id: str, query: str, *, user_id: str | None = None, limit: int = 5, now: float
    ) -> list[MemoryRecord]:
        """Up to ``limit`` live records of ``tenant_id`` (and ``user_id`` when given), ranked."""

    @abc.abstractmethod
    def delete(self, tenant_id: str, record_id: str, *, user_id: str | None = None) -> bool:
        """Delete one record of ``tenant_id`` (and ``user_id`` when given); ``True`` if it existed."""

    @abc.abstractmethod
    def list_by_user(self, tenant_id: str, user_id: str, *, limit: int = 50, now: float) -> list[MemoryRecord]:
        """Up to ``limit`` live records of one user of ``tenant_id``, newest first."""

    def purge_expired(self, now: float) -> int:
        """Delete expired records of every tenant; return how many. Optional housekeeping."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections. The backend is not used afterwards."""


def check_batch(tenant_id: str, records: Sequence[MemoryRecord]) -> None:
    """Refuse a batch holding a record of another tenant (a backend calls this first)."""
    for r in records:
        if r.tenant_id != tenant_id:
            raise TenantError("a memory record's tenant_id differs from the tenant it is written to")


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    return min(limit, 1000)
