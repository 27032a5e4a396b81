"""The audit log: one structured record per plugin call, through standard logging.

Records go to the ``karen_hooks.audit`` logger at INFO with the call's fields
as record attributes (``extra``): ``tenant``, ``user``, ``roles``, ``plugin``,
``intent``, ``outcome``, ``duration_seconds``, ``sandbox_mode``, ``limit``,
``error`` and ``requested``. Params and results are *not* recorded unless the
operator opts in (``audit_params = true`` / ``KAREN_AUDIT_PARAMS=1``): they can
hold secrets. :class:`JsonFormatter` renders any record as one JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from ._models import UserContext

AUDIT_LOGGER = "karen_hooks.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)

#: The fields every audit record carries (as LogRecord attributes).
AUDIT_FIELDS = (
    "tenant",
    "user",
    "roles",
    "plugin",
    "intent",
    "outcome",
    "duration_seconds",
    "sandbox_mode",
    "limit",
    "error",
    "requested",
)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line: ``time``, ``level``, ``logger``, ``message`` and every ``extra``.

    ``time`` is ISO 8601 in UTC. Values that are not JSON data are rendered with ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_audit_log(
    stream: TextIO | None = None,
    *,
    json_format: bool = True,
    handler: logging.Handler | None = None,
    level: int = logging.INFO,
) -> logging.Handler:
    """Send audit records to ``handler`` (default: a stream handler on ``stream`` or stderr).

    A convenience for apps without their own logging setup; apps with one can
    configure the ``karen_hooks.audit`` logger like any other.
    """
    h = handler if handler is not None else logging.StreamHandler(stream if stream is not None else sys.stderr)
    if json_format:
        h.setFormatter(JsonFormatter())
    audit_log.addHandler(h)
    audit_log.setLevel(level)
    return h


def _user_fields(user_ctx: Any) -> tuple[Any, Any, Any]:
    """``(tenant, user, roles)`` from a raw or parsed user_ctx, best effort (it may be the invalid part)."""
    if type(user_ctx) is UserContext:  # parsed, every field already a str: the hot path
        names = list(user_ctx.roles)
        for r in names:  # a loop, not a comprehension per call: roles are rarely that long
            if len(r) > 64:
                names = [r[:64] for r in names]
                break
        return user_ctx.tenant_id, user_ctx.user_id, names
    if isinstance(user_ctx, dict):
        get = user_ctx.get
        tenant, user, roles = get("tenant_id"), get("user_id"), get("roles")
    else:
        tenant = getattr(user_ctx, "tenant_id", None)
        user = getattr(user_ctx, "user_id", None)
        roles = getattr(user_ctx, "roles", None)
    if roles is not None:
        roles = [str(r)[:64] for r in roles] if isinstance(roles, (list, tuple)) else None
    return (
        tenant if tenant is None or isinstance(tenant, str) else str(tenant)[:128],
        user if user is None or isinstance(user, str) else str(user)[:128],
        roles,
    )


_MSG = "plugin call %s/%s %s in %.3f ms"


def _template() -> dict[str, Any]:
    return logging.LogRecord(AUDIT_LOGGER, logging.INFO, __file__, 0, _MSG, None, None).__dict__.copy()


_TEMPLATE = _template()
_START: float = getattr(logging, "_startTime", time.time())


def _after_fork() -> None:  # the child's process id and name differ
    global _TEMPLATE
    _TEMPLATE = _template()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class AuditRecord(logging.LogRecord):
    """An ordinary LogRecord for handlers and formatters, built several times faster than by the
    generic constructor: the per-process attributes and a call site's fixed fields come from a
    prepared dict (see :func:`audit_site`); only time, thread, caller and outcome are filled per
    record. (``logging.setLogRecordFactory`` is not consulted for audit records.)"""

    def __init__(self, args: tuple[Any, ...], extra: dict[str, Any]) -> None:  # noqa: D107
        d = _TEMPLATE.copy()
        d.update(extra)
        d["args"] = args
        _stamp(d)
        self.__dict__ = d


_new_record = AuditRecord.__new__
_time = time.time
_current_thread = threading.current_thread
_get_ident = threading.get_ident


def _stamp(d: dict[str, Any]) -> None:
    """The per-record attributes every LogRecord carries: time, thread and process."""
    ct = _time()
    d["created"] = ct
    d["msecs"] = ct % 1.0 * 1000.0
    d["relativeCreated"] = (ct - _START) * 1000.0
    if logging.logThreads:  # the stdlib's switch for thread fields, honoured as LogRecord does
        d["thread"], d["threadName"] = _get_ident(), _current_thread()._name  # type: ignore[attr-defined]
    else:
        d["thread"] = d["threadName"] = None
    t = _TEMPLATE  # after a fork, the child's own process id and name (a site may predate the fork)
    d["process"] = t["process"]
    d["processName"] = t["processName"]


def audit_site(plugin: str | None, intent: str | None, sandbox_mode: str | None, requested: Any) -> dict[str, Any]:
    """The fields of every record of one call site (what was requested, what it resolved to), prepared once.

    Callers that audit the same site repeatedly keep this and pass it to :func:`audit_ok`.
    """
    d = _TEMPLATE.copy()
    d.update(dict.fromkeys(AUDIT_FIELDS))  # every key present: per-record stores overwrite, never grow the dict
    d.update(plugin=plugin, intent=intent, sandbox_mode=sandbox_mode, requested=str(requested)[:128])
    return d


def audit_ok(site: dict[str, Any], user_ctx: Any, duration: float, params: Any, result: Any, include_params: bool) -> None:
    """Emit the record of a successful call of ``site``.

    The hot path of an audited call, so it is written for speed (each choice
    measured): a copy of the site's prepared dict, which already holds every
    key, so each store below overwrites and the dict never grows; no keyword
    arguments; no ``extra`` merge.
    """
    d = site.copy()
    d["tenant"], d["user"], d["roles"] = _user_fields(user_ctx)
    d["outcome"] = "ok"
    d["duration_seconds"] = duration
    d["args"] = (d["plugin"], d["intent"], "ok", duration * 1000.0)
    if include_params:
        d["params"] = params
        d["result"] = result
    _stamp(d)
    record = _new_record(AuditRecord)
    record.__dict__ = d
    audit_log.handle(record)


def audit_call(
    *,
    user_ctx: Any,
    plugin: str | None,
    intent: str | None,
    outcome: str,
    duration: float,
    sandbox_mode: str | None,
    requested: str,
    limit: str | None = None,
    error: str | None = None,
    params: Any = None,
    result: Any = None,
    include_params: bool = False,
) -> None:
    """Emit one audit record (cheap no-op when the audit logger is not enabled for INFO)."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    tenant, user, roles = _user_fields(user_ctx)
    extra = {
        "tenant": tenant,
        "user": user,
        "roles": roles,
        "plugin": plugin,
        "intent": intent,
        "outcome": outcome,
        "duration_seconds": duration,
        "sandbox_mode": sandbox_mode,
        "limit": limit,
        "error": error,
        "requested": str(requested)[:128],
    }
    if include_params:
        extra["params"] = params
        extra["result"] = result
    # Built directly rather than through Logger.info: skips the caller lookup (a stack walk) on every call.
    audit_log.handle(AuditRecord((plugin, intent, outcome, duration * 1000.0), extra))
