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

__version__ = "1.0.0"

__all__ = [
    "AccessDenied",
    "AmbiguousIntent",
    "ConfigError",
    "Intent",
    "InvalidParams",
    "InvalidResult",
    "InvalidUserContext",
    "KarenError",
    "LimitExceeded",
    "Limits",
    "LoadProblem",
    "MemoryBackendError",
    "PluginContext",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginNotFound",
    "PluginSettings",
    "PluginSpec",
    "PluginTimeout",
    "SandboxError",
    "Settings",
    "TemplateError",
    "TemplateSecurityError",
    "TenantError",
    "UntrustedPluginError",
    "UserContext",
    "hookimpl",
    "hookspec",
    "hookspecs",
    "load_settings",
    "parse_bool",
]
