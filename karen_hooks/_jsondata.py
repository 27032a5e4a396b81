"""How deeply JSON data nests, measured without recursing.

Data a plugin hands the host (a sandbox's reply, a params schema) is walked later by
recursive code: ``json.dumps``, jsonschema, pydantic, the embedding application's own.
Their limit is Python's recursion limit less however deep the stack already is at that
point, so a depth that passed one place can fail another. The host therefore bounds
nesting where such data comes in, far below that limit.
"""

from __future__ import annotations

from typing import Any

#: Objects and arrays a frame from a sandbox (a reply, a memory call) may nest.
MAX_DATA_DEPTH = 100


def nesting(value: Any, stop_after: int) -> int:
    """How deeply dicts and lists nest in ``value``; counting stops just past ``stop_after``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= stop_after:  # deeper than that is refused anyway: no need to look further
                stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest
