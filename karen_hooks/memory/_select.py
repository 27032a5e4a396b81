"""Turn a memory URL into a backend: the built-in schemes, then trusted plugins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from .._errors import ConfigError
from ._backend import BACKEND_METHODS, MemoryBackend

BUILTIN_SCHEMES = ("memory", "sqlite", "postgresql", "postgres", "postgresql+psycopg")


def default_memory_url() -> str:
    """``sqlite:///<user data dir>/memory.sqlite3`` (via ``platformdirs.user_data_dir("karen-hooks")``)."""
    path = Path(platformdirs.user_data_dir("karen-hooks")) / "memory.sqlite3"
    return "sqlite:///" + str(path)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log or put in an error)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///`` URL. As in SQLAlchemy, ``sqlite:///rel.db`` is relative and
    ``sqlite:////abs/path.db`` absolute; ``~`` is expanded."""
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError(
            f"memory URL {url!r} is not sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return os.path.expanduser(rest[1:].split("?", 1)[0])


def open_backend(url: str | None = None, *, hook: Any = None) -> MemoryBackend:
    """The backend for ``url`` (the default SQLite file when ``None`` or empty).

    Built-in schemes: ``memory://``, ``sqlite:///...``, ``postgresql://...``
    (also ``postgres://`` and ``postgresql+psycopg://``). Any other scheme is
    offered to ``hook.karen_memory_backend(url=...)``, where ``hook`` is the
    pluggy hook relay (or pluggy ``PluginManager``, or a list of them) of
    *trusted* plugins only; the first non-``None`` answer wins.
    """
    url = url or default_memory_url()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from ._inmemory import InMemoryBackend

        return InMemoryBackend()
    if scheme == "sqlite":
        from ._sqlite import SQLiteBackend

        return SQLiteBackend(sqlite_path(url))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from ._postgres import PostgresBackend

        return PostgresBackend("postgresql" + url[len(scheme):])
    found = None
    for one in _relays(hook):
        found = one.karen_memory_backend(url=url)
        if found is not None:
            break
    if found is None:
        raise ConfigError(
            f"no memory backend handles {scheme + '://' if scheme else 'this URL'} "
            f"(KAREN_MEMORY_URL / memory_url {redact_url(url)!r}); built-in schemes are "
            "memory://, sqlite:///path and postgresql://...; other schemes need a trusted plugin "
            "implementing karen_memory_backend"
        )
    missing = [m for m in BACKEND_METHODS if not callable(getattr(found, m, None))]
    if missing:
        raise ConfigError(
            f"the plugin backend for {scheme}:// lacks MemoryBackend method(s) {', '.join(missing)}"
        )
    return found


def _relays(hook: Any) -> list[Any]:
    if hook is None:
        return []
    many = hook if isinstance(hook, (list, tuple)) else [hook]
    relays = [getattr(h, "hook", h) for h in many]
    return [r for r in relays if hasattr(r, "karen_memory_backend")]
