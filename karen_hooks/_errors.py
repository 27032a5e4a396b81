"""Typed errors raised by the host. Every one is a :class:`KarenError`.

Messages name the plugin, the field and the fix, because the person reading
them is usually not the person who wrote the plugin.
"""

from __future__ import annotations


class KarenError(Exception):
    """Base class of every error karen-hooks raises on purpose."""


class ConfigError(KarenError, ValueError):
    """A setting or environment variable has a value the host cannot use."""


class PluginNotFound(KarenError, LookupError):
    """No loaded plugin or intent has the requested name."""


class AmbiguousIntent(PluginNotFound):
    """A bare intent name matches several plugins; pass ``name=`` and ``intent=``."""


class PluginLoadError(KarenError):
    """A plugin could not be loaded or validated (raised only in strict mode)."""

    def __init__(self, plugin: str, reason: str, distribution: str | None = None) -> None:
        self.plugin = plugin
        self.reason = reason
        self.distribution = distribution
        where = f" (distribution {distribution})" if distribution else ""
        super().__init__(f"plugin {plugin!r}{where} failed to load: {reason}")


class InvalidUserContext(KarenError, ValueError):
    """``user_ctx`` is missing a field or has one of the wrong type."""


class AccessDenied(KarenError, PermissionError):
    """The caller's roles do not allow this intent."""


class InvalidParams(KarenError, ValueError):
    """Params failed validation against the intent's schema.

    ``errors`` is a list of ``{"field": "a.b", "problem": "..."}`` dicts.
    """

    def __init__(self, plugin: str, intent: str, errors: list[dict[str, str]]) -> None:
        self.plugin = plugin
        self.intent = intent
        self.errors = errors
        detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors)
        super().__init__(f"invalid params for plugin {plugin!r} intent {intent!r}: {detail}")


class UntrustedPluginError(KarenError, PermissionError):
    """An untrusted plugin was asked to run where no sandbox is available."""


class PluginError(KarenError, RuntimeError):
    """The plugin's own code raised. ``plugin_traceback`` is its traceback text."""

    def __init__(self, plugin: str, message: str, plugin_traceback: str = "", stderr: str = "") -> None:
        self.plugin = plugin
        self.plugin_traceback = plugin_traceback
        self.stderr = stderr
        super().__init__(f"plugin {plugin!r} failed: {message}")


class InvalidResult(PluginError):
    """The plugin returned something that is not JSON-serialisable or not allowed."""


class SandboxError(PluginError):
    """The sandbox itself failed (crash, malformed reply, protocol violation)."""


# The ``[plugins.NAME.limits]`` setting that raises each limit, for the error's hint.
_LIMIT_SETTINGS = {
    "wall_time": "wall_seconds", "cpu": "cpu_seconds", "memory": "memory_mb", "open_files": "open_files",
    "file_size": "file_size_mb", "processes": "processes", "stdout": "stdout_bytes", "stderr": "stderr_bytes",
    "reply_size": "reply_bytes",
}


class LimitExceeded(SandboxError):
    """A sandboxed call hit a limit. ``limit`` names it: wall_time, cpu, memory, ...

    ``setting`` is the ``[plugins.NAME.limits]`` key an operator raises if the plugin
    really needs more (``None`` for a limit no setting controls).
    """

    def __init__(self, plugin: str, limit: str, detail: str = "", stderr: str = "") -> None:
        self.limit = limit
        # a full work dir (ENOSPC) is reported as a file_size hit, but its own setting raises it
        self.setting = "work_dir_mb" if limit == "file_size" and detail.startswith("work dir full") \
            else _LIMIT_SETTINGS.get(limit)
        msg = f"{limit} limit exceeded" + (f" ({detail})" if detail else "")
        if self.setting is not None:
            msg += f"; if the plugin needs more, raise plugins.{plugin}.limits.{self.setting}"
        super().__init__(plugin, msg, stderr=stderr)


class PluginTimeout(LimitExceeded):
    """A sandboxed call ran past its wall-time limit and was killed."""

    def __init__(self, plugin: str, seconds: float, stderr: str = "") -> None:
        super().__init__(plugin, "wall_time", f"killed after {seconds:g} s", stderr=stderr)


class TemplateSecurityError(KarenError):
    """A prompt template tried something the sandboxed environment forbids."""


class TemplateError(KarenError, ValueError):
    """A prompt template is broken (syntax, undefined variable, output too large)."""


class MemoryBackendError(KarenError):
    """A memory backend operation failed."""


class TenantError(KarenError, ValueError):
    """No tenant, or two different tenants, were given for a memory operation."""
