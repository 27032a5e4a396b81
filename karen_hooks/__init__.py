"""karen-hooks: a plugin host for AI assistants.

Public API only; everything in underscore modules may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import hookspecs
from ._config import Limits, PluginSettings, Settings, load_settings, parse_bool
from ._errors import (
    AccessDenied,
    AmbiguousIntent,
    ConfigError,
    InvalidParams,
    InvalidResult,
    InvalidUserContext,
    KarenError,
    LimitExceeded,
    MemoryBackendError,
    PluginError,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    SandboxError,
    TemplateError,
    TemplateSecurityError,
    TenantError,
    UntrustedPluginError,
)
from ._models import Intent, LoadProblem, PluginContext, PluginInfo, PluginSpec, UserContext
from ._version import __version__
from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from ._manager import PluginManager, RunResult
    from ._matching import BM25Matcher, IntentMatch, tool_schemas
    from ._prompts import render_template
    from ._router import PluginRouter
    from ._ui import UIComponent, UIComponentResult, validate_component
    from .memory import AsyncMemoryManager, MemoryManager

# The host machinery (router, manager, memory, metrics, jinja2, jsonschema) loads
# on first use, so that a plugin's `from karen_hooks import hookimpl` -- run in
# every sandbox zygote -- imports only the contract, errors and models.
_LAZY = {
    "PluginManager": "._manager",
    "RunResult": "._manager",
    "PluginRouter": "._router",
    "BM25Matcher": "._matching",
    "IntentMatch": "._matching",
    "tool_schemas": "._matching",
    "render_template": "._prompts",
    "UIComponent": "._ui",
    "UIComponentResult": "._ui",
    "validate_component": "._ui",
    "MemoryManager": ".memory",
    "AsyncMemoryManager": ".memory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'karen_hooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "AccessDenied",
    "AmbiguousIntent",
    "AsyncMemoryManager",
    "BM25Matcher",
    "ConfigError",
    "Intent",
    "IntentMatch",
    "InvalidParams",
    "InvalidResult",
    "InvalidUserContext",
    "KarenError",
    "LimitExceeded",
    "Limits",
    "LoadProblem",
    "MemoryBackendError",
    "MemoryManager",
    "PluginContext",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginManager",
    "PluginRouter",
    "PluginNotFound",
    "PluginSettings",
    "PluginSpec",
    "PluginTimeout",
    "RunResult",
    "SandboxError",
    "Settings",
    "TemplateError",
    "TemplateSecurityError",
    "TenantError",
    "UIComponent",
    "UIComponentResult",
    "UntrustedPluginError",
    "UserContext",
    "hookimpl",
    "hookspec",
    "hookspecs",
    "load_settings",
    "parse_bool",
    "render_template",
    "tool_schemas",
    "validate_component",
    "__version__",
]
