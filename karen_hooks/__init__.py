"""karen-hooks: a plugin host for AI assistants.

Public API only; everything in underscore modules may change.
"""

from __future__ import annotations

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
from .hookspecs import hookimpl, hookspec
from .memory import AsyncMemoryManager, MemoryManager
from ._router import PluginRouter
from ._manager import PluginManager, RunResult
from ._matching import BM25Matcher, IntentMatch, tool_schemas
from ._prompts import render_template
from ._ui import UIComponent, UIComponentResult, validate_component

from ._version import __version__

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
]
