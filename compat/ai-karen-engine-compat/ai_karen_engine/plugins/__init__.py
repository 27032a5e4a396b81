"""Old import paths of the plugin system karen-hooks replaces.

``ai_karen_engine.plugins.router.PluginRouter``, ``.manager.PluginManager`` and
``.memory_manager.MemoryManager`` are the karen-hooks objects themselves; they
are also available from this package (imported on first use).
"""

from __future__ import annotations

from typing import Any

_SOURCES = {
    "PluginRouter": ("karen_hooks", "PluginRouter"),
    "PluginManager": ("karen_hooks", "PluginManager"),
    "MemoryManager": ("karen_hooks.memory", "MemoryManager"),
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        from ._require import require

        module, attr = _SOURCES[name]
        return require(module, attr, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_SOURCES)
