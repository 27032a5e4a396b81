"""Keep the test run away from the developer's own karen-hooks state.

Tests that build a host without naming a memory URL would otherwise write to
the real per-user SQLite file, and a developer's ``KAREN_CONFIG`` or trust
list would change what the tests see. Subprocesses inherit this environment.
"""

from __future__ import annotations

import os

for _var in ("KAREN_CONFIG", "KAREN_TRUSTED_PLUGINS", "KAREN_LOAD_PLUGINS", "KAREN_DISABLE_PLUGINS",
             "KARI_PLUGIN_DIR", "KAREN_PLUGIN_DIR", "KAREN_STRICT", "ADVANCED_MODE", "KAREN_TRACE_PLUGINS"):
    os.environ.pop(_var, None)
os.environ["KAREN_MEMORY_URL"] = "memory://"
