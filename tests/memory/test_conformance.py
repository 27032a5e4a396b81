"""Every built-in backend passes the public conformance suite (karen_hooks.memory.testing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from karen_hooks.memory import MemoryBackend
from karen_hooks.memory.testing import MemoryBackendConformance


class TestBackends(MemoryBackendConformance):
    @pytest.fixture
    def backend(self, any_backend: MemoryBackend) -> Iterator[MemoryBackend]:
        yield any_backend
