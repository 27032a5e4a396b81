"""The ai-karen-engine-compat distribution: old import paths work, and fail loudly when karen-hooks can't be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPAT = REPO / "compat" / "ai-karen-engine-compat"

OLD_USAGE = """
import asyncio
import karen_hooks, karen_hooks.memory
from ai_karen_engine.plugins.router import PluginRouter
from ai_karen_engine.plugins.manager import PluginManager
from ai_karen_engine.plugins.memory_manager import MemoryManager
import ai_karen_engine.plugins as old

assert PluginRouter is karen_hooks.PluginRouter and old.PluginRouter is PluginRouter
assert PluginManager is karen_hooks.PluginManager and old.PluginManager is PluginManager
assert MemoryManager is karen_hooks.memory.MemoryManager and old.MemoryManager is MemoryManager

# the old README's examples, verbatim
manager = PluginManager()
result, stdout, stderr = asyncio.run(manager.run_plugin(
    name="time-query", params={"format": "iso"}, user_ctx={"user_id": "123", "roles": ["user"], "tenant_id": "t1"}
))
assert result["format"] == "iso", result
router = PluginRouter()
assert "time.now" in router.list_intents()
assert router.get_plugin("time-query").name == "time-query"
memory = MemoryManager(tenant_id="tenant123")
memory.write({"user_id": "123", "roles": ["user"]}, "weather query", {"location": "NYC", "temp": "72F"})
assert memory.read({"user_id": "123", "roles": ["user"]}, "weather", limit=5)
print("old imports ok")
"""


@pytest.mark.slow
def test_installed_shims_are_the_karen_hooks_objects(plugin_venv: Any) -> None:
    plugin_venv.pip_install(COMPAT)
    proc = plugin_venv.run(
        "-c", OLD_USAGE,
        KAREN_LOAD_PLUGINS="time-query", KAREN_TRUSTED_PLUGINS="time-query", KAREN_MEMORY_URL="memory://",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "old imports ok"
    dist = plugin_venv.run("-c", "import importlib.metadata as m; print(m.version('ai-karen-engine-compat'))")
    assert dist.stdout.strip() == "1.0.0"


BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError(f"blocked for the test: {{name}}")
        return None
sys.meta_path.insert(0, Blocker())
sys.path.insert(0, {compat!r})
try:
    {statement}
except ImportError as exc:
    print(exc)
    sys.exit(3)
print("imported")
"""


@pytest.mark.parametrize(
    ("blocked", "statement", "old", "real"),
    [
        ("karen_hooks", "from ai_karen_engine.plugins.router import PluginRouter",
         "ai_karen_engine.plugins.router.PluginRouter", "karen_hooks.PluginRouter"),
        ("karen_hooks", "from ai_karen_engine.plugins.manager import PluginManager",
         "ai_karen_engine.plugins.manager.PluginManager", "karen_hooks.PluginManager"),
        ("karen_hooks.memory", "from ai_karen_engine.plugins.memory_manager import MemoryManager",
         "ai_karen_engine.plugins.memory_manager.MemoryManager", "karen_hooks.memory.MemoryManager"),
        ("karen_hooks", "from ai_karen_engine.plugins import PluginRouter",
         "ai_karen_engine.plugins.PluginRouter", "karen_hooks.PluginRouter"),
    ],
)
def test_shims_fail_loudly_when_karen_hooks_is_missing(blocked: str, statement: str, old: str, real: str) -> None:
    code = textwrap.dedent(BLOCKER).format(blocked=blocked, compat=str(COMPAT), statement=statement)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    message = proc.stdout.strip()
    assert message.startswith(f"{old} is a compatibility alias of {real}, which could not be imported")
    assert "blocked for the test" in message and "never falls back to a stub" in message


def test_host_distribution_ships_no_ai_karen_engine() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'include = ["karen_hooks*"]' in text
    assert not (REPO / "ai_karen_engine").exists() and not (REPO / "karen_hooks" / "ai_karen_engine").exists()
