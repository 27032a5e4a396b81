"""The per-call observer the manager wraps around ``run_plugin``: metrics, audit record, span, trace line."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any, NamedTuple

from ._errors import (
    AccessDenied,
    AmbiguousIntent,
    InvalidParams,
    InvalidUserContext,
    LimitExceeded,
    PluginNotFound,
    PluginTimeout,
)
from ._metrics import CallSeries, Metrics

log = logging.getLogger("karen_hooks.metrics")


def classify(exc: BaseException) -> str:
    """The ``outcome`` label of a failed call."""
    if isinstance(exc, AccessDenied):
        return "denied"
    if isinstance(exc, (InvalidParams, InvalidUserContext, AmbiguousIntent)):
        return "invalid"
    if isinstance(exc, PluginTimeout):
        return "timeout"
    if isinstance(exc, LimitExceeded):
        return "limit"
    if isinstance(exc, PluginNotFound):
        return "not_found"
    return "error"


class CallObserver:
    """Counts, times, audits and (with otel) spans every ``run_plugin`` call of one manager.

    Labels come from names the router resolved; the resolution is cached per
    requested ``(name, intent)`` and re-checked against the router on each hit.
    The manager calls :meth:`begin` before a call and :meth:`ok` or
    :meth:`failed` after it: plain calls, not a wrapping coroutine, because this
    runs on every call.
    """

    def __init__(self, manager: Any, metrics: Metrics) -> None:
        from . import _audit, _tracing

        self.manager = manager
        self.metrics = metrics
        self._audit = _audit.audit_call
        self._audit_ok = _audit.audit_ok
        self._audit_site = _audit.audit_site
        self._audit_enabled = _audit.audit_log.isEnabledFor
        self._start_span = _tracing.start_span if _tracing.otel_available() else None
        # opentelemetry.trace, whose ``_TRACER_PROVIDER`` stays None until an app sets a provider:
        # read directly, it saves the no-op start_span call on every call of an app without tracing
        self._otel_trace = _tracing._otel_trace
        self._trace_line = _tracing.trace_line
        self._resolved: dict[tuple[str, str | None], _Site] = {}

    def _lookup(self, name: str, intent: str | None) -> _Site:
        """What ``(name, intent)`` resolves to now; ``info`` is ``None`` when it resolves to nothing."""
        router = self.manager.router
        try:
            hit = self._resolved.get((name, intent))
        except TypeError:  # an unhashable name: the call itself will say what is wrong
            return _Site(None, None, self.metrics.unknown_series(), None, None)
        if hit is not None and router._plugins.get(hit.info.name) is hit.info:
            return hit
        try:
            info, it = router.resolve(name, intent)
        except Exception:  # noqa: BLE001 - an unknown name is counted, the call itself raises the real error
            return _Site(None, None, self.metrics.unknown_series(), None, None)
        settings = self.manager.settings
        mode = settings.plugin(info.name).mode if info.sandboxed else "in_host"
        site = _Site(info, it.name, self.metrics.series(info.name, it.name), mode, self._audit_site(info.name, it.name, mode, name))
        if len(self._resolved) < 4096:
            self._resolved[(name, intent)] = site
        return site

    def begin(self, name: str, intent: str | None) -> _Call | None:
        """Start observing a call of ``name``; ``None`` when it cannot be observed (it then runs unobserved)."""
        try:
            site = self._lookup(name, intent)
            start = self._start_span
            span = (
                start(name)
                if start is not None and getattr(self._otel_trace, "_TRACER_PROVIDER", start) is not None
                else None
            )
            trace = self.manager.settings.trace_plugins and site.info is not None and site.info.sandboxed
            if trace:
                self._trace_line(f"{site.info.name}.karen_run(intent={site.intent!r}) [sandbox {site.mode}]")
            site.series.start()
        except Exception:  # noqa: BLE001 - observing must never stop a call
            log.exception("karen-hooks could not observe this call; it runs unobserved")
            return None
        return (site, span, trace, perf_counter())

    def ok(self, call: _Call, result: Any, params: Any, user: Any) -> None:
        """Record a call that returned ``result`` (a RunResult); ``user`` is the parsed caller. Never raises."""
        site, span, trace, t0 = call
        dt = perf_counter() - t0
        try:
            site.series.finish("ok", dt)
            plugin = site.series.plugin
            if span is not None:
                span.end(plugin, site.intent, "ok", None)
            if trace:
                self._trace_line(f"{plugin}.karen_run returned in {dt * 1000.0:.3f} ms [sandbox]")
            if self._audit_enabled(20):  # logging.INFO
                value = getattr(result, "result", None)
                if site.audit is not None:
                    self._audit_ok(site.audit, user, dt, params, value, self.manager.settings.audit_params)
                else:  # resolved to nothing when the call began, yet it ran: audited the slow way
                    name = getattr(result, "plugin", None)
                    self._audit(user_ctx=user, plugin=name, intent=getattr(result, "intent", None), outcome="ok",
                                duration=dt, sandbox_mode=None, requested=str(name), params=params, result=value,
                                include_params=self.manager.settings.audit_params)
        except Exception:  # noqa: BLE001 - the call succeeded; observing it must not turn it into a failure
            log.exception("karen-hooks could not record a call")

    def failed(self, call: _Call, exc: BaseException, name: str, params: Any, user_ctx: Any) -> None:
        """Record a call that raised ``exc``; never raises itself (the call's own exception must win)."""
        try:
            self._failed(call, exc, name, params, user_ctx)
        except Exception:  # noqa: BLE001 - never replace the call's own exception
            log.exception("karen-hooks could not record a failed call")

    def _failed(self, call: _Call, exc: BaseException, name: str, params: Any, user_ctx: Any) -> None:
        site, span, trace, t0 = call
        dt = perf_counter() - t0
        outcome = classify(exc)
        site.series.finish(outcome, dt)
        limit = getattr(exc, "limit", None)
        if outcome == "denied":
            self.metrics.rbac_denials.labels(site.series.plugin, site.series.intent).inc()
        elif limit is not None:
            self.metrics.sandbox_event("limit", limit)
        plugin = site.info.name if site.info is not None else None
        if span is not None:
            span.end(plugin, site.intent, outcome, exc, self.manager.settings.audit_params)
        if trace:
            self._trace_line(f"{plugin}.karen_run raised {type(exc).__name__} in {dt * 1000.0:.3f} ms [sandbox]")
        self._audit(  # errors here would replace the call's own exception: the inputs are guarded
            user_ctx=user_ctx,
            plugin=plugin,
            intent=site.intent,
            outcome=outcome,
            duration=dt,
            sandbox_mode=site.mode,
            requested=name,
            limit=limit,
            error=type(exc).__name__,
            params=params,
            include_params=self.manager.settings.audit_params,
        )


class _Site(NamedTuple):
    """What one requested ``(name, intent)`` resolved to, with its metric series and audit fields."""

    info: Any
    intent: str | None
    series: CallSeries
    mode: str | None
    audit: dict[str, Any] | None


#: One observed call in flight: ``(site, span, trace, t0)`` (a plain tuple: built on every call).
_Call = tuple[_Site, Any, bool, float]
