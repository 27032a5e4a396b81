"""MemoryManager: the tenant rules, retries and accounting on top of any backend."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._config import Settings, load_settings
from .._errors import AccessDenied, MemoryBackendError, TenantError
from .._models import UserContext
from ._backend import MemoryBackend
from ._records import _CONTROL, MemoryRecord, check_id
from ._select import open_backend

log = logging.getLogger("karen_hooks.memory")

#: Param names whose values are never stored, even when params are remembered.
SECRET_HINTS = ("token", "secret", "password", "passwd", "key", "auth", "cookie", "credential", "session")
#: Characters of a result kept in a remembered run's summary.
SUMMARY_CHARS = 500

Listener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class MemoryWriteStatus:
    """What happened to one write-after-run. ``ok=False`` with ``skipped`` set means opted out."""

    ok: bool
    attempts: int = 0
    error: str | None = None
    record_id: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "attempts": self.attempts, "error": self.error,
                "record_id": self.record_id, "skipped": self.skipped}


@dataclass
class MemoryStats:
    """Counters by event name (``write_ok``, ``write_retry``, ``write_failed``, ``read_failed``, ...).

    ``counts`` is a plain dict for a metrics exporter to read; add a listener
    with :meth:`MemoryManager.add_listener` to be called on each event.
    """

    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inc(self, event: str) -> None:
        with self._lock:
            self.counts[event] = self.counts.get(event, 0) + 1

    def get(self, event: str) -> int:
        return self.counts.get(event, 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def summarize(result: Any, limit: int = SUMMARY_CHARS) -> str:
    """A short text form of a plugin result for a remembered run."""
    import json

    text = result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _param_dict(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if hasattr(params, "model_dump"):
        return dict(params.model_dump(mode="json"))
    if isinstance(params, dict):
        return dict(params)
    return {}


def _redact(params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(h in str(k).lower() for h in SECRET_HINTS) else v) for k, v in params.items()}


class MemoryManager:
    """Tenant-isolated memory over a pluggable backend.

    ``tenant_id`` fixes the tenant of every call; otherwise each call's
    ``user_ctx["tenant_id"]`` is used; both given and different raises
    :class:`TenantError`, as does no tenant at all unless the operator set
    ``default_tenant`` (``KAREN_DEFAULT_TENANT``).

    The backend is ``backend`` when given, else the one for ``url``, else for
    ``settings.memory_url`` (``KAREN_MEMORY_URL``), else the SQLite file in the
    per-user data dir. ``hook`` is the pluggy hook relay of trusted plugins
    asked for other URL schemes.
    """

    def __init__(
        self,
        tenant_id: str | None = None,
        *,
        backend: MemoryBackend | None = None,
        url: str | None = None,
        settings: Settings | None = None,
        hook: Any = None,
        default_tenant: str | None = None,
        write_attempts: int = 3,
        retry_delay: float = 0.05,
        remember_params: bool | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.tenant_id = None if tenant_id is None else check_id(tenant_id, "tenant_id")
        dt = default_tenant if default_tenant is not None else self.settings.default_tenant
        self.default_tenant = None if dt is None else check_id(dt, "default_tenant")
        if write_attempts < 1:
            raise ValueError("write_attempts must be at least 1")
        self.write_attempts = write_attempts
        self.retry_delay = retry_delay
        # None: the operator's setting (remember_params / KAREN_REMEMBER_PARAMS, default off)
        self.remember_params = self.settings.remember_params if remember_params is None else remember_params
        self.backend: MemoryBackend = backend if backend is not None else open_backend(
            url or self.settings.memory_url, hook=hook
        )
        self.stats = MemoryStats()
        self._listeners: list[Listener] = []

    # -- tenant rules ---------------------------------------------------------
    def resolve(self, user_ctx: Any) -> tuple[str, str]:
        """``(tenant_id, user_id)`` for a call, applying the tenant rules."""
        ctx = UserContext.parse(user_ctx)
        theirs = None if ctx.tenant_id is None else check_id(ctx.tenant_id, "user_ctx tenant_id")
        if self.tenant_id is not None and theirs is not None and theirs != self.tenant_id:
            raise TenantError(
                "user_ctx tenant_id differs from the MemoryManager's tenant_id; refusing to pick one"
            )
        tenant = self.tenant_id or theirs or self.default_tenant
        if tenant is None:
            raise TenantError(
                "no tenant for this memory call: pass tenant_id to MemoryManager, put tenant_id in user_ctx, "
                "or have the operator set default_tenant (KAREN_DEFAULT_TENANT)"
            )
        return tenant, check_id(ctx.user_id, "user_id")

    # -- events ---------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event, labels)`` on every counted event (for metrics)."""
        self._listeners.append(listener)

    def _event(self, event: str, **labels: Any) -> None:
        self.stats.inc(event)
        for listener in list(self._listeners):
            try:
                listener(event, labels)
            except Exception:  # a broken metrics hook must not break memory
                log.exception("memory event listener failed")

    # -- operations -----------------------------------------------------------
    def write(
        self, user_ctx: Any, query: str, payload: Any, *, ttl_seconds: float | None = None, plugin: str | None = None
    ) -> MemoryRecord:
        """Store one record for the caller; retried up to ``write_attempts`` times, then raises."""
        return self.write_many(user_ctx, [(query, payload)], ttl_seconds=ttl_seconds, plugin=plugin)[0]

    def write_many(
        self, user_ctx: Any, items: Iterable[tuple[str, Any]], *, ttl_seconds: float | None = None,
        plugin: str | None = None,
    ) -> list[MemoryRecord]:
        """Store several ``(query, payload)`` records for the caller in one transaction."""
        tenant, user = self.resolve(user_ctx)
        now = time.time()
        records = [
            MemoryRecord.create(tenant, user, q, p, plugin=plugin, ttl_seconds=ttl_seconds, now=now) for q, p in items
        ]
        status = self._store(tenant, records, plugin=plugin)
        if not status.ok:
            raise MemoryBackendError(f"memory write failed after {status.attempts} attempt(s): {status.error}")
        return records

    def read(self, user_ctx: Any, query: str, limit: int = 5, *, all_users: bool = False) -> list[MemoryRecord]:
        """The caller's records best matching ``query``, best first (``all_users``: the whole tenant's)."""
        tenant, user = self.resolve(user_ctx)
        try:
            return self.backend.read(tenant, query, user_id=None if all_users else user, limit=limit, now=time.time())
        except MemoryBackendError as exc:
            self._event("read_failed", tenant=tenant)
            log.warning("memory read failed for tenant %s: %s", tenant, _first_line(exc))
            raise

    def delete(self, user_ctx: Any, record_id: str) -> bool:
        """Delete one of the caller's own records; ``False`` when there is no such record."""
        tenant, user = self.resolve(user_ctx)
        if not isinstance(record_id, str) or _CONTROL.search(record_id):
            return False  # no record has such an id (and a backend may not even take it)
        return self.backend.delete(tenant, record_id, user_id=user)

    def list_by_user(self, user_ctx: Any, limit: int = 50, *, user_id: str | None = None) -> list[MemoryRecord]:
        """The newest records of the caller (or, for an ``admin`` caller, of ``user_id``) in the tenant."""
        tenant, user = self.resolve(user_ctx)
        if user_id is not None and user_id != user:
            if "admin" not in UserContext.parse(user_ctx).roles:
                raise AccessDenied("listing another user's memories needs the 'admin' role")
            user = check_id(user_id, "user_id")
        return self.backend.list_by_user(tenant, user, limit=limit, now=time.time())

    def scoped(self, user_ctx: Any, plugin: str | None = None) -> TenantMemory:
        """The handle a plugin gets as ``ctx.memory``: bound to the caller's tenant and user."""
        tenant, user = self.resolve(user_ctx)
        return TenantMemory(self, tenant, user, plugin)

    def handle_for(self, user_ctx: Any, plugin: str | None = None) -> TenantMemory | UnavailableMemory:
        """Like :meth:`scoped`, but a caller without a tenant gets a handle that raises on use."""
        try:
            return self.scoped(user_ctx, plugin)
        except TenantError as exc:
            return UnavailableMemory(str(exc))

    def remember_run(
        self, user_ctx: Any, plugin: str, intent: str, params: Any, result: Any, *, store_params: bool | None = None
    ) -> MemoryWriteStatus:
        """Persist one successful run (plugin, intent, param *names*, result summary). Never raises.

        Param values are stored only when ``store_params`` (default: the
        manager's ``remember_params``) is true, and even then values of
        secret-looking names (token, password, key, ...) are replaced by ``***``.
        Honors ``settings.remember_runs`` and ``[plugins.NAME] remember``.
        """
        if not self.settings.remember_runs:
            return MemoryWriteStatus(ok=False, skipped="remember_runs is off")
        if not self.settings.plugin(plugin).remember:
            return MemoryWriteStatus(ok=False, skipped=f"plugins.{plugin}.remember is off")
        try:
            tenant, user = self.resolve(user_ctx)
        except TenantError as exc:
            self._event("run_no_tenant", plugin=plugin)
            log.info("run of plugin %s intent %s not remembered: %s", plugin, intent, exc)
            return MemoryWriteStatus(ok=False, error=f"no tenant: {exc}")
        except Exception as exc:  # e.g. an invalid user_ctx: reported, never raised
            self._event("write_failed", plugin=plugin)
            log.warning("run of plugin %s intent %s not remembered: %s", plugin, intent, _first_line(exc))
            return MemoryWriteStatus(ok=False, error=_first_line(exc))
        try:
            values = _param_dict(params)
            summary = summarize(result)
            payload: dict[str, Any] = {
                "kind": "run", "plugin": plugin, "intent": intent,
                "param_names": sorted(str(k) for k in values), "result_summary": summary,
            }
            if self.remember_params if store_params is None else store_params:
                payload["params"] = _redact(values)
            record = MemoryRecord.create(tenant, user, f"{intent} {summary}", payload, plugin=plugin)
        except Exception as exc:
            self._event("write_failed", plugin=plugin)
            log.warning("memory of a run of plugin %s intent %s not written: %s", plugin, intent, _first_line(exc))
            return MemoryWriteStatus(ok=False, error=_first_line(exc))
        return self._store(tenant, [record], plugin=plugin, intent=intent)

    def _store(
        self, tenant: str, records: list[MemoryRecord], *, plugin: str | None, intent: str | None = None
    ) -> MemoryWriteStatus:
        error = ""
        for attempt in range(1, self.write_attempts + 1):
            try:
                self.backend.write_many(tenant, records)
            except (TenantError, ValueError, TypeError) as exc:  # will not get better by retrying
                error = _first_line(exc)
                break
            except Exception as exc:
                error = _first_line(exc)
                if attempt < self.write_attempts:
                    self._event("write_retry", plugin=plugin)
                    time.sleep(self.retry_delay * (2 ** (attempt - 1)))
                continue
            self._event("write_ok", plugin=plugin)
            return MemoryWriteStatus(ok=True, attempts=attempt, record_id=records[0].id if records else None)
        self._event("write_failed", plugin=plugin)
        log.warning(
            "memory write failed for tenant %s plugin %s intent %s after %d attempt(s): %s",
            tenant, plugin, intent, attempt, error,
        )
        return MemoryWriteStatus(ok=False, attempts=attempt, error=error)

    def purge_expired(self) -> int:
        return self.backend.purge_expired(time.time())

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> MemoryManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TenantMemory:
    """``ctx.memory``: memory bound to one caller's tenant and user (a ``MemoryBridge``).

    Every method takes and returns JSON data, so the same plugin code works
    in the host and in the sandbox (where the host mediates each call).
    """

    def __init__(self, manager: MemoryManager, tenant_id: str, user_id: str, plugin: str | None = None) -> None:
        self._manager = manager
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.plugin = plugin

    @property
    def _ctx(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "tenant_id": self.tenant_id}

    def write(self, query: str, payload: Any, ttl_seconds: float | None = None) -> dict[str, Any]:
        return self._manager.write(self._ctx, query, payload, ttl_seconds=ttl_seconds, plugin=self.plugin).to_json()

    def read(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._manager.read(self._ctx, query, limit=limit)]

    def delete(self, record_id: str) -> bool:
        return self._manager.delete(self._ctx, record_id)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._manager.list_by_user(self._ctx, limit=limit)]

    def __repr__(self) -> str:
        return f"TenantMemory(tenant_id={self.tenant_id!r}, user_id={self.user_id!r}, plugin={self.plugin!r})"


class UnavailableMemory:
    """``ctx.memory`` when the call has no tenant: every use raises :class:`TenantError` saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise TenantError(self.reason)

    write = read = delete = list = _fail

    def __repr__(self) -> str:
        return f"UnavailableMemory({self.reason!r})"


class AsyncMemoryManager:
    """The asyncio twin of :class:`MemoryManager`: the same calls, awaited.

    Backend calls run in a worker thread (``asyncio.to_thread``), so the event
    loop never blocks on disk or network. Build it with the same arguments as
    :class:`MemoryManager`, or wrap one: ``AsyncMemoryManager(manager=m)``.
    """

    def __init__(self, tenant_id: str | None = None, *, manager: MemoryManager | None = None, **kwargs: Any) -> None:
        self.sync = manager if manager is not None else MemoryManager(tenant_id, **kwargs)

    @property
    def stats(self) -> MemoryStats:
        return self.sync.stats

    async def write(
        self, user_ctx: Any, query: str, payload: Any, *, ttl_seconds: float | None = None, plugin: str | None = None
    ) -> MemoryRecord:
        return await asyncio.to_thread(self.sync.write, user_ctx, query, payload, ttl_seconds=ttl_seconds, plugin=plugin)

    async def write_many(self, user_ctx: Any, items: Iterable[tuple[str, Any]], **kw: Any) -> list[MemoryRecord]:
        return await asyncio.to_thread(self.sync.write_many, user_ctx, list(items), **kw)

    async def read(self, user_ctx: Any, query: str, limit: int = 5, *, all_users: bool = False) -> list[MemoryRecord]:
        return await asyncio.to_thread(self.sync.read, user_ctx, query, limit, all_users=all_users)

    async def delete(self, user_ctx: Any, record_id: str) -> bool:
        return await asyncio.to_thread(self.sync.delete, user_ctx, record_id)

    async def list_by_user(self, user_ctx: Any, limit: int = 50, *, user_id: str | None = None) -> list[MemoryRecord]:
        return await asyncio.to_thread(self.sync.list_by_user, user_ctx, limit, user_id=user_id)

    async def remember_run(self, user_ctx: Any, plugin: str, intent: str, params: Any, result: Any) -> MemoryWriteStatus:
        return await asyncio.to_thread(self.sync.remember_run, user_ctx, plugin, intent, params, result)

    def scoped(self, user_ctx: Any, plugin: str | None = None) -> TenantMemory:
        return self.sync.scoped(user_ctx, plugin)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)
