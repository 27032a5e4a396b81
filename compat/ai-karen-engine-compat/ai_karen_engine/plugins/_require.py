"""Import a name from karen-hooks for an old import path, or fail loudly.

The system karen-hooks replaces returned stubs when the real import failed
(a sandbox that silently returned ``None``). These shims never do: any failure
is an ``ImportError`` naming the old path, the missing name and the fix.
"""

from __future__ import annotations

import importlib
from typing import Any


def require(module: str, name: str, old_path: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"{old_path}.{name} is a compatibility alias of {module}.{name}, which could not be imported "
            f"({type(exc).__name__}: {exc}). Install karen-hooks>=1,<2 in this environment "
            "(pip install karen-hooks). The alias never falls back to a stub."
        ) from exc
