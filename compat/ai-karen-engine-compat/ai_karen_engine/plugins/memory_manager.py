"""Old path of :class:`karen_hooks.memory.MemoryManager` (tenant-isolated memory)."""

from ._require import require

MemoryManager = require("karen_hooks.memory", "MemoryManager", __name__)

__all__ = ["MemoryManager"]
