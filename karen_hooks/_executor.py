"""How the manager runs a plugin's hook: in the host (trusted) or in a sandbox.

The manager never calls untrusted code itself; it hands a :class:`PluginSpec`
(data only) to a :class:`SandboxExecutor`-like object implementing
:class:`Executor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ._config import Limits, PluginSettings
from ._models import PluginSpec


@dataclass
class CallOutcome:
    """What one hook call produced: its result and what it printed."""

    result: Any
    stdout: str = ""
    stderr: str = ""


class MemoryBridge(Protocol):
    """Tenant-scoped memory a sandboxed plugin may reach through the host.

    The host builds one per call, bound to the caller's tenant and user;
    the sandbox forwards the plugin's ``ctx.memory`` calls to it by name.
    """

    def write(self, query: str, payload: Any, ttl_seconds: float | None = None) -> Any: ...
    def read(self, query: str, limit: int = 5) -> Any: ...


class Executor(Protocol):
    """Runs one plugin's hooks out of the host process."""

    def describe(self, spec: PluginSpec, settings: PluginSettings, limits: Limits) -> dict[str, Any]:
        """Import the plugin in a sandbox and return ``{"intents": [...]}`` as JSON data.

        Each intent is ``Intent.to_json()``-shaped (params as a JSON Schema).
        """
        ...

    async def call(
        self,
        spec: PluginSpec,
        hook: str,
        kwargs: dict[str, Any],
        settings: PluginSettings,
        limits: Limits,
        memory: MemoryBridge | None = None,
    ) -> CallOutcome:
        """Call ``hook`` of the plugin with JSON ``kwargs`` and return its JSON result."""
        ...

    def close(self) -> None: ...
