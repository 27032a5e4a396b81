"""Operator settings: a TOML file (``KAREN_CONFIG``) plus environment overrides.

Trust, roles and limits come only from here, never from a plugin.
See docs/configuration.md for every setting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by the py310 tox env
    import tomli as tomllib

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str, name: str) -> bool:
    """Parse a boolean setting strictly: ``1/true/yes/on`` or ``0/false/no/off``.

    Anything else raises :class:`ConfigError` (the old system treated any
    non-empty string, even ``"false"``, as true).
    """
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean: use one of 1/true/yes/on or 0/false/no/off")


def env_list(name: str, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """A comma-separated list; ``None`` when unset, ``[]`` when set to the empty string."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


class Limits(BaseModel):
    """Per-call sandbox limits. Every field has a sane default; operators override per plugin."""

    model_config = ConfigDict(extra="forbid")

    # Upper bounds too: a limit the kernel, the selector or a timestamp cannot hold (inf, 1e300,
    # a memory size past 64 bits) would load fine and then fail every call with an OverflowError.
    wall_seconds: float = Field(10.0, gt=0, le=86_400, allow_inf_nan=False)
    cpu_seconds: int = Field(5, gt=0, le=86_400)
    memory_mb: int = Field(512, gt=16, le=1 << 20)
    open_files: int = Field(64, gt=8, le=1 << 20)
    file_size_mb: int = Field(16, gt=0, le=1 << 20)
    work_dir_mb: int = Field(64, gt=0, le=1 << 20)
    processes: int = Field(32, gt=0, le=1 << 20)
    stdout_bytes: int = Field(1 << 20, gt=0, le=1 << 30)
    stderr_bytes: int = Field(1 << 20, gt=0, le=1 << 30)
    reply_bytes: int = Field(4 << 20, gt=0, le=256 << 20)  # (the protocol's hard frame ceiling)
    memory_write_bytes: int = Field(1 << 20, gt=0, le=1 << 30)


class PluginSettings(BaseModel):
    """Operator settings for one plugin, under ``[plugins.NAME]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trusted: bool = False
    ui_trusted: bool = False
    required_roles: list[str] | None = None
    intent_roles: dict[str, list[str]] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    # Only the fields given here override the host's limits (``model_fields_set``); validated with
    # the settings, so a typo or a bad value fails at load, named plugins.NAME.limits.FIELD.
    limits: Limits = Field(default_factory=Limits)
    mode: Literal["fork", "warm"] = "fork"
    warm_max_calls: int = Field(100, gt=0)
    remember: bool = True


# Shared by every unconfigured plugin; PluginSettings is frozen, so nobody can change it for all.
_DEFAULT_PLUGIN_SETTINGS = PluginSettings()


class Settings(BaseModel):
    """All host settings. Build with :func:`load_settings`."""

    model_config = ConfigDict(extra="forbid")

    advanced_mode: bool = False
    strict: bool = False
    allow_ui_html: bool = False
    trace_plugins: bool = False
    # audit log / trace: record params and results too (they can hold secrets)
    audit_params: bool = False
    plugin_dir: str | None = None
    load_plugins: list[str] | None = None
    disable_plugins: list[str] = Field(default_factory=list)
    trusted_plugins: list[str] = Field(default_factory=list)
    default_tenant: str | None = None
    memory_url: str | None = None
    remember_runs: bool = True
    remember_params: bool = False
    role_inheritance: dict[str, list[str]] = Field(default_factory=lambda: {"admin": ["user"]})
    limits: Limits = Field(default_factory=Limits)
    plugins: dict[str, PluginSettings] = Field(default_factory=dict)

    def plugin(self, name: str) -> PluginSettings:
        """``[plugins.NAME]``, or the defaults (one shared instance: this is on every call's path)."""
        found = self.plugins.get(name)
        return found if found is not None else _DEFAULT_PLUGIN_SETTINGS

    def is_trusted(self, name: str) -> bool:
        return name in self.trusted_plugins or self.plugin(name).trusted

    def limits_for(self, name: str) -> Limits:
        """The host's limits with ``[plugins.NAME.limits]`` applied (validated when the settings loaded)."""
        given = self.plugin(name).limits
        overrides = given.model_dump(include=given.model_fields_set)
        return self.limits.model_copy(update=overrides) if overrides else self.limits


_BOOL_ENV = {
    "ADVANCED_MODE": "advanced_mode",
    "KAREN_STRICT": "strict",
    "KAREN_ALLOW_UI_HTML": "allow_ui_html",
    "KAREN_TRACE_PLUGINS": "trace_plugins",
    "KAREN_AUDIT_PARAMS": "audit_params",
    "KAREN_REMEMBER_RUNS": "remember_runs",
    "KAREN_REMEMBER_PARAMS": "remember_params",
}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the config file (``KAREN_CONFIG`` when not given), apply env vars, then ``overrides``."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = config_file or env.get("KAREN_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"KAREN_CONFIG points at {str(path)!r}, which does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              "save it as UTF-8") from None
        except OSError as exc:  # a directory, no permission, ...
            raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}); point KAREN_CONFIG at "
                              "a readable TOML file") from None

    for var, key in _BOOL_ENV.items():
        if env.get(var, "").strip():
            data[key] = parse_bool(env[var], var)
    for var, key in (("KAREN_LOAD_PLUGINS", "load_plugins"),):
        if (value := env_list(var, env)) is not None:
            data[key] = value
    for var, key in (("KAREN_DISABLE_PLUGINS", "disable_plugins"), ("KAREN_TRUSTED_PLUGINS", "trusted_plugins")):
        if value := env_list(var, env):
            listed = data.get(key, [])
            # merged with the file's list only once that is a list of names: a string there would
            # otherwise be taken apart into characters ("whoami" -> w, h, o, ...)
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise ConfigError(f"{key} in the config file must be a list of plugin names, like "
                                  f'{key} = ["{listed if isinstance(listed, str) else "name"}"]; got {listed!r}')
            data[key] = sorted(set(listed) | set(value))
    for var, key in (
        ("KARI_PLUGIN_DIR", "plugin_dir"),
        ("KAREN_PLUGIN_DIR", "plugin_dir"),
        ("KAREN_DEFAULT_TENANT", "default_tenant"),
        ("KAREN_MEMORY_URL", "memory_url"),
    ):
        if env.get(var):
            data[key] = env[var]
    if env.get("KARI_CPU_LIMIT"):
        raw = env["KARI_CPU_LIMIT"]
        try:
            cpu = int(raw)
            if cpu <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"KARI_CPU_LIMIT={raw!r} must be a positive whole number of CPU seconds") from None
        limits = data.setdefault("limits", {})
        if not isinstance(limits, dict):
            raise ConfigError(f"limits in the config file must be a table, like [limits] with cpu_seconds = 5; "
                              f"got {limits!r}")
        limits["cpu_seconds"] = cpu
    data.update(overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid karen-hooks settings: {problems}") from None
