"""Tenant-isolated memory for karen-hooks: a manager over pluggable backends.

Quick use::

    from karen_hooks import MemoryManager
    memory = MemoryManager(tenant_id="tenant123")
    memory.write(user_ctx, "weather query", {"location": "NYC", "temp": "72F"})
    memory.read(user_ctx, "weather", limit=5)   # ranked best first

Backends: ``memory://``, ``sqlite:///path`` (default) and ``postgresql://``
built in; others come from trusted plugins implementing
``karen_memory_backend(url)``. ``karen_hooks.memory.testing`` is the
conformance suite every backend passes. See docs/memory.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import MemoryBackend
from ._inmemory import InMemoryBackend
from ._manager import (
    AsyncMemoryManager,
    MemoryManager,
    MemoryStats,
    MemoryWriteStatus,
    TenantMemory,
    UnavailableMemory,
    summarize,
)
from ._records import MemoryRecord, tokenize
from ._select import default_memory_url, open_backend, redact_url
from ._sqlite import SQLiteBackend

if TYPE_CHECKING:
    from ._postgres import PostgresBackend


def __getattr__(name: str) -> object:
    if name == "PostgresBackend":  # psycopg is optional: import only when asked for
        from ._postgres import PostgresBackend

        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncMemoryManager",
    "InMemoryBackend",
    "MemoryBackend",
    "MemoryManager",
    "MemoryRecord",
    "MemoryStats",
    "MemoryWriteStatus",
    "PostgresBackend",
    "SQLiteBackend",
    "TenantMemory",
    "UnavailableMemory",
    "default_memory_url",
    "open_backend",
    "redact_url",
    "summarize",
    "tokenize",
]
