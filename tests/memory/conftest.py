"""Fixtures for the memory tests: one backend of each kind, fresh per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from karen_hooks.memory import InMemoryBackend, MemoryBackend, PostgresBackend, SQLiteBackend

POSTGRES_DSN_ENV = "KAREN_TEST_POSTGRES_DSN"


def postgres_dsn() -> str:
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if not dsn:
        pytest.skip(
            f"{POSTGRES_DSN_ENV} is not set: set it to a PostgreSQL DSN "
            "(e.g. postgresql://postgres@127.0.0.1:5432/test) to run the PostgreSQL memory tests"
        )
    return dsn


def make_postgres() -> PostgresBackend:
    from karen_hooks.memory import PostgresBackend

    return PostgresBackend(postgres_dsn(), table="karen_mem_test_" + uuid.uuid4().hex[:10])


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryBackend]:
    """Each built-in backend in turn (PostgreSQL skipped without a DSN)."""
    if request.param == "memory":
        backend: MemoryBackend = InMemoryBackend()
    elif request.param == "sqlite":
        backend = SQLiteBackend(tmp_path / "memory.sqlite3")
    else:
        backend = make_postgres()
    yield backend
    if isinstance(backend, PostgresBackend):
        backend.drop()
    backend.close()
